//! The rare-harm stage: every chat message scored with a Sentinel index through
//! `vigil_sentinel::MessageScorer` (the live service's code, so a user-day scores the same in
//! batch and live), each distinct text encoded once. It adds two user-day features,
//! `rare_harm_affinity` (the day's messages) and `rare_harm_affinity_window` (the user's
//! messages of the day and the `window_days - 1` days before), and lists the highest-scored
//! messages with their nearest harmful examples in `rare_harm_messages`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use vigil_config::{CascadeMode, Config};
use vigil_sentinel::cascade::{Screen, StaticEmbeddings, cascade_scores};
use vigil_sentinel::{
    CalibratedScorer, Encoder, Matrix, MessageScorer, MiniLmEncoder, SentinelIndex,
};
use vigil_warehouse::column_text;
use vigil_warehouse::{Table, Warehouse};

use crate::PipelineError;
use crate::tables::{Col, Strings, extend_table, table};

use super::Written;

/// The two feature columns the stage adds to `user_day_features`.
pub const RARE_HARM_FEATURES: [&str; 2] = ["rare_harm_affinity", "rare_harm_affinity_window"];

/// Nearest harmful examples listed per message.
const NEAREST: usize = 3;
/// Texts encoded per call (progress is reported between calls).
const CHUNK: usize = 1024;

/// What the stage used and saw (recorded in `run.json` and the report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RareHarmInfo {
    /// The index location.
    pub index: String,
    /// `calibrated` or `reference`.
    pub scorer: String,
    /// The window aggregator.
    pub aggregator: String,
    /// Chat messages scored.
    pub messages: usize,
    /// Distinct texts encoded.
    pub distinct_texts: usize,
    /// Days behind `rare_harm_affinity_window`.
    pub window_days: u32,
    /// The cascade, when texts were screened before the exact encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<CascadeInfo>,
    /// The index's fingerprint (`SentinelIndex::fingerprint`): which index, wherever it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// What the cascade did (`run.json`'s `rare_harm.cascade`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CascadeInfo {
    /// First-stage probability from which a text went to the exact encoder.
    pub cut: f64,
    /// Distinct texts the exact encoder scored.
    pub candidates: usize,
    /// Of those, the ones with an exact probability of at least 0.5.
    pub notable_candidates: usize,
    /// Screened-out texts scored exactly as a check.
    pub audited: usize,
    /// Of those, the ones the exact scorer finds notable (missed by the screen).
    pub audited_notable: usize,
    /// Estimated share of the notable texts the cascade kept (unset without an audit or
    /// without notable texts).
    pub estimated_recall: Option<f64>,
}

/// Where the stage's messages are scored: the index, the encoder, and (applying a bundle
/// trained through the cascade) the cut to screen with.
pub(crate) struct Source<'a> {
    /// The index location.
    pub index: &'a str,
    /// The sentence-transformers model directory.
    pub model: &'a Path,
    /// What the stage was in training, when applying a bundle that learned the features:
    /// its scoring (the cascade's cut, or exact) and the index it must be.
    pub trained: Option<&'a RareHarmInfo>,
}

/// A user's days: (date, day text, the day's message rows).
type DatedDays<'a> = Vec<(Option<chrono::NaiveDate>, &'a str, &'a Vec<usize>)>;

fn sentinel(e: vigil_sentinel::SentinelError) -> PipelineError {
    PipelineError::Sentinel(Box::new(e))
}

/// The stage needs the encoder: a missing model is the user's to fix, said before any work.
pub(crate) fn check_encoder(model: &Path) -> Result<(), PipelineError> {
    if model.join("model.safetensors").exists() {
        return Ok(());
    }
    Err(PipelineError::Config(format!(
        "the rare-harm stage ([sentinel] index) needs the encoder: no model at {}; {} \
         (for `vigil run` / `vigil score` / `vigil demo`: --sentinel-model DIR)",
        model.display(),
        vigil_sentinel::encoder::MODEL_HELP
    )))
}

/// Run the stage over the stored events; returns the features with the two columns added
/// (registered in the warehouse under the same name) and what it used.
pub(crate) fn rare_harm(
    wh: &Warehouse,
    features: &Table,
    cfg: &Config,
    source: &Source<'_>,
    progress: &dyn Fn(usize, usize),
    out: &mut Written,
) -> Result<(Table, RareHarmInfo), PipelineError> {
    let (index_location, model) = (source.index, source.model);
    // Applying a bundle: a text scores as in training (through its cut, or exactly).
    let frozen: Option<Option<f64>> = source.trained.map(|t| t.cascade.as_ref().map(|c| c.cut));
    let frozen_cut = frozen.flatten();
    check_encoder(model)?;
    let index = SentinelIndex::load_from(index_location, None, None).map_err(sentinel)?;
    let calibrated = CalibratedScorer::load_from(index_location).map_err(sentinel)?;
    let encoder = MiniLmEncoder::load(model).map_err(sentinel)?;
    if encoder.dim() != index.dim() {
        return Err(PipelineError::Config(format!(
            "the Sentinel index {index_location} has {}-dimensional embeddings but the model \
             at {} produces {}",
            index.dim(),
            model.display(),
            encoder.dim()
        )));
    }
    let fingerprint = index.fingerprint(calibrated.as_ref()).map_err(sentinel)?;
    if let Some(want) = source.trained.and_then(|t| t.fingerprint.as_ref())
        && *want != fingerprint
    {
        return Err(PipelineError::Config(format!(
            "the model bundle learned the rare-harm features from the index {} (fingerprint \
             {want}); {index_location} is another index or scorer (fingerprint {fingerprint}): \
             score with the index the bundle was trained with",
            source.trained.map_or("?", |t| t.index.as_str())
        )));
    }
    let scorer = MessageScorer::new(&index, calibrated).map_err(sentinel)?;

    let msgs = wh.build("chat_messages")?;
    let (users, days, prompts) = (
        column_text(&msgs, "user_id")?,
        column_text(&msgs, "day")?,
        column_text(&msgs, "prompt")?,
    );
    // Each distinct text once.
    let mut slot: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<String> = Vec::new();
    let text_of: Vec<usize> = prompts
        .iter()
        .map(|p| {
            *slot.entry(p.as_str()).or_insert_with(|| {
                distinct.push(p.clone());
                distinct.len() - 1
            })
        })
        .collect();
    let calibrated_index = scorer
        .calibrated()
        .filter(|_| index.positive_corpus.is_some());
    // A bundle trained through the cascade is applied with its cut (no share floor): a text
    // scores the same here, in the training run and in the live service.
    let mode = match frozen {
        Some(Some(_)) => CascadeMode::On,
        Some(None) => CascadeMode::Off,
        None => cfg.sentinel.cascade,
    };
    let screen = match (mode, calibrated_index) {
        (CascadeMode::Off, _) => None,
        (CascadeMode::Auto, _) if distinct.len() <= cfg.sentinel.cascade_above => None,
        (CascadeMode::Auto, None) => {
            tracing::warn!(
                "{} distinct texts and an index without a calibrated scorer (or without its \
                 example texts): every text goes through the exact encoder, which is slow; \
                 `vigil sentinel calibrate --index {index_location}` makes the cascade possible",
                distinct.len()
            );
            None
        }
        (CascadeMode::On, None) if frozen_cut.is_some() => {
            return Err(PipelineError::Config(format!(
                "the model bundle was trained through the rare-harm cascade, which needs an \
                 index with a calibrated scorer that keeps its example texts; {index_location} \
                 has none: score with the index the bundle was trained with"
            )));
        }
        (CascadeMode::On, None) => {
            return Err(PipelineError::Config(format!(
                "[sentinel] cascade = \"on\" needs an index with a calibrated scorer that \
                 keeps its example texts; fit one with `vigil sentinel calibrate --index \
                 {index_location}` or set cascade = \"auto\""
            )));
        }
        (_, Some(c)) => {
            let t0 = std::time::Instant::now();
            let statics =
                StaticEmbeddings::load_or_distill(&encoder, model, &|_, _| {}).map_err(sentinel)?;
            tracing::debug!(
                "static embeddings ready in {:.2} s",
                t0.elapsed().as_secs_f64()
            );
            let mut screen = Screen::new(
                statics,
                &encoder,
                &index,
                c,
                cfg.sentinel.cascade_recall,
                cfg.sentinel.cascade_share,
            )
            .map_err(sentinel)?;
            if let Some(cut) = frozen_cut {
                screen.cut = cut;
                screen.share = 0.0;
            }
            Some((screen, c))
        }
    };
    let (scores, cascade) = match &screen {
        Some((screen, c)) => {
            let run = cascade_scores(
                screen,
                &encoder,
                c,
                &distinct,
                cfg.sentinel.cascade_audit,
                CHUNK,
                progress,
            )
            .map_err(sentinel)?;
            let info = CascadeInfo {
                cut: run.cut,
                candidates: run.candidates(),
                notable_candidates: run.candidates_notable,
                audited: run.audited,
                audited_notable: run.audited_notable,
                estimated_recall: run.estimated_recall(),
            };
            (run.scores, Some(info))
        }
        None => {
            let mut scores = Vec::with_capacity(distinct.len());
            for chunk in distinct.chunks(CHUNK) {
                let emb = encoder.encode(chunk).map_err(sentinel)?;
                scores.extend(scorer.scores(chunk, &emb).map_err(sentinel)?);
                progress(scores.len(), distinct.len());
            }
            (scores, None)
        }
    };

    let keys: Vec<u64> = distinct
        .iter()
        .map(|t| vigil_sentinel::text_key(t))
        .collect();
    // Messages per user, by day, in time order.
    let mut by_user: HashMap<&str, BTreeMap<&str, Vec<usize>>> = HashMap::new();
    for i in 0..prompts.len() {
        by_user
            .entry(users[i].as_str())
            .or_default()
            .entry(days[i].as_str())
            .or_default()
            .push(i);
    }
    let window_days = i64::from(cfg.sentinel.window_days);
    let dated: HashMap<&str, DatedDays<'_>> = by_user
        .iter()
        .map(|(user, by_day)| {
            let days = by_day
                .iter()
                .map(|(d, m)| (d.parse::<chrono::NaiveDate>().ok(), *d, m))
                .collect();
            (*user, days)
        })
        .collect();
    let group = |ids: &mut dyn Iterator<Item = usize>| -> f64 {
        let scored: Vec<(u64, f64)> = ids
            .map(|i| (keys[text_of[i]], scores[text_of[i]]))
            .collect();
        scorer.set_affinity(&scored)
    };
    // Every user-day of the features, also one without messages of its own: its window
    // still holds the days before it.
    let f_users = Strings::read(features, "user_id")?;
    let f_days = Strings::read(features, "day")?;
    let (mut day_col, mut window_col) = (Vec::new(), Vec::new());
    for r in 0..f_users.len() {
        let (user, day) = (f_users.get(r), f_days.get(r));
        let Some(days) = dated.get(user) else {
            day_col.push(0.0);
            window_col.push(0.0);
            continue;
        };
        let date = day.parse::<chrono::NaiveDate>().ok();
        let in_window = |d: &Option<chrono::NaiveDate>, name: &str| match (date, d) {
            (Some(a), Some(b)) => (a - *b).num_days() < window_days && *b <= a,
            _ => name == day,
        };
        day_col.push(group(
            &mut days
                .iter()
                .filter(|(_, name, _)| *name == day)
                .flat_map(|(_, _, m)| m.iter().copied()),
        ));
        window_col.push(group(
            &mut days
                .iter()
                .filter(|(d, name, _)| in_window(d, name))
                .flat_map(|(_, _, m)| m.iter().copied()),
        ));
    }
    let extended = extend_table(
        &features.name,
        features,
        vec![
            (RARE_HARM_FEATURES[0], day_col),
            (RARE_HARM_FEATURES[1], window_col),
        ],
    )?;
    wh.register(&extended)?;

    // The highest-scored messages (one line per user, day and text), with their nearest
    // harmful examples.
    let mut seen: HashSet<(&str, &str, usize)> = HashSet::new();
    let mut top: Vec<usize> = (0..prompts.len())
        .filter(|&i| seen.insert((users[i].as_str(), days[i].as_str(), text_of[i])))
        .collect();
    top.sort_by(|&a, &b| {
        scores[text_of[b]]
            .total_cmp(&scores[text_of[a]])
            .then(users[a].cmp(&users[b]))
            .then(days[a].cmp(&days[b]))
    });
    top.truncate(cfg.sentinel.top_messages);
    let top_texts: Vec<String> = top.iter().map(|&i| prompts[i].clone()).collect();
    let nearest = if top_texts.is_empty() {
        Vec::new()
    } else {
        let emb: Matrix = encoder.encode(&top_texts).map_err(sentinel)?;
        scorer
            .nearest_harmful(&top_texts, &emb, NEAREST)
            .map_err(sentinel)?
    };
    let near = |k: usize, j: usize| -> (String, f64) {
        nearest
            .get(k)
            .and_then(|n| n.get(j))
            .cloned()
            .unwrap_or_else(|| (String::new(), f64::NAN))
    };
    let mut cols = vec![
        (
            "user_id",
            Col::Str(top.iter().map(|&i| users[i].clone()).collect()),
        ),
        (
            "day",
            Col::Str(top.iter().map(|&i| days[i].clone()).collect()),
        ),
        (
            "score",
            Col::F64(top.iter().map(|&i| scores[text_of[i]]).collect()),
        ),
        ("text", Col::Str(top_texts.clone())),
    ];
    let names = [
        ("nearest_1", "similarity_1"),
        ("nearest_2", "similarity_2"),
        ("nearest_3", "similarity_3"),
    ];
    for (j, (t, s)) in names.iter().enumerate() {
        cols.push((t, Col::Str((0..top.len()).map(|k| near(k, j).0).collect())));
        cols.push((s, Col::F64((0..top.len()).map(|k| near(k, j).1).collect())));
    }
    out.csv(&table("rare_harm_messages", cols)?)?;
    let info = RareHarmInfo {
        index: index_location.to_string(),
        scorer: scorer.kind().name().to_string(),
        aggregator: scorer.aggregator_name().to_string(),
        messages: prompts.len(),
        distinct_texts: distinct.len(),
        window_days: cfg.sentinel.window_days,
        cascade,
        fingerprint: Some(fingerprint),
    };
    tracing::info!(
        "rare harm: {} messages ({} distinct) scored with the {} scorer",
        info.messages,
        info.distinct_texts,
        info.scorer
    );
    if let Some(c) = &info.cascade {
        tracing::info!(
            "rare harm cascade: {} of {} distinct texts encoded exactly (first-stage cut {:.3e}); \
             audit: {} of {} screened-out texts notable; estimated recall {}",
            c.candidates,
            info.distinct_texts,
            c.cut,
            c.audited_notable,
            c.audited,
            c.estimated_recall
                .map_or_else(|| "n/a".to_string(), |r| format!("{r:.4}"))
        );
    }
    Ok((extended, info))
}

#[cfg(test)]
mod tests {
    use vigil_sentinel::GroupAggregator;
    use vigil_sentinel::calibrated::DEFAULT_BASE_RATE;

    /// Regression: with `review_at = 1.0` a user whose one harmful message the scorer was
    /// sure of (probability 1 - 1e-9) summed to an expected count of 0.99999999999 and was
    /// not flagged, while one a hair more certain was. The default sits below one message.
    #[test]
    fn one_message_the_scorer_is_sure_of_reaches_the_default_review_at() {
        let review_at = vigil_config::SentinelConfig::default()
            .review_at
            .unwrap_or(f64::INFINITY);
        let prior = 45.0 / 246.0; // the demo index's share of harmful examples
        let count = |p: &[f64]| GroupAggregator::ExpectedCount.apply(p, prior, DEFAULT_BASE_RATE);
        let sure = count(&[1.0 - 1e-9]);
        assert!(sure < 1.0, "{sure}");
        assert!(sure >= review_at, "{sure} < {review_at}");
        // Ordinary messages stay far below it, even many of them.
        assert!(count(&[0.001; 50]) < 0.1 * review_at);
    }
}
