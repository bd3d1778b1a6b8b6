//! The cascade: a cheap first stage that lets the exact encoder see only the messages that
//! might matter, for runs with far more distinct texts than MiniLM can encode in time.
//!
//! The first stage embeds a text with **static token embeddings distilled from the encoder
//! itself**: row `t` of the table is the encoder's L2-normalised, mean-pooled output for the
//! sequence `[CLS] t [SEP]`, and a text's static embedding is the normalised mean of its
//! tokens' rows. Static embeddings live in the encoder's output space, so the index's own
//! calibrated scorer applies to them unchanged (with its lexical model, which needs no
//! encoder). Texts whose first-stage probability reaches the cut go to the exact encoder; the
//! others keep the first-stage probability.
//!
//! The cut is chosen on the index material only: the index's examples carry exact embeddings,
//! so their exact and first-stage probabilities are both known, and the cut keeps the share
//! `recall` of the examples the exact scorer finds notable (probability >= 0.5).

use std::path::Path;

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::encoder::MiniLmEncoder;
use crate::{CalibratedScorer, Matrix, SentinelError, SentinelIndex};

/// The distilled table's file, written into the model directory on first use (it depends on
/// the model only).
pub const STATIC_FILE: &str = "vigil_static_embeddings.safetensors";
/// `format` in the file's metadata.
const STATIC_FORMAT: &str = "vigil-static-embeddings";
/// The table format this build reads and writes.
const STATIC_VERSION: &str = "1";
/// Token sequences per forward pass while distilling.
const DISTILL_BATCH: usize = 512;
/// Rows recomputed when a cached table is loaded: a table from another model fails the check.
const SPOT_CHECK: [u32; 4] = [1996, 7592, 2064, 29_612];
/// Largest difference allowed between a cached row and its recomputation.
const SPOT_TOLERANCE: f32 = 1e-3;
/// The exact probability at which a message counts as notable (as in `MessageScorer`).
pub const NOTABLE: f64 = 0.5;

/// Static token embeddings: one unit row per vocabulary entry.
#[derive(Clone, PartialEq)]
pub struct StaticEmbeddings {
    table: Vec<f32>,
    vocab: usize,
    dim: usize,
}

impl std::fmt::Debug for StaticEmbeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbeddings")
            .field("vocab", &self.vocab)
            .field("dim", &self.dim)
            .finish()
    }
}

impl StaticEmbeddings {
    /// Distil the table from `encoder`: one forward pass per vocabulary entry (batched),
    /// `progress(done, total)` between batches.
    pub fn distill(
        encoder: &MiniLmEncoder,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Self, SentinelError> {
        let vocab = encoder.vocab_size();
        let dim = crate::Encoder::dim(encoder);
        let ids: Vec<u32> = (0..vocab as u32).collect();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let parts: Vec<Vec<Vec<f32>>> = ids
            .par_chunks(DISTILL_BATCH)
            .map(|chunk| {
                let rows = encoder.encode_tokens(chunk)?;
                let n = done.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                progress(n + chunk.len(), vocab);
                Ok(rows)
            })
            .collect::<Result<_, SentinelError>>()?;
        let table: Vec<f32> = parts.into_iter().flatten().flatten().collect();
        if table.len() != vocab * dim {
            return Err(SentinelError::Internal(format!(
                "distilled {} values for {vocab} tokens of {dim} dimensions",
                table.len()
            )));
        }
        Ok(Self { table, vocab, dim })
    }

    /// The table cached in `model_dir` ([`STATIC_FILE`]), distilled and written there first
    /// when absent or made from another model. A directory that cannot be written only costs
    /// the distillation on every run (a warning says so).
    pub fn load_or_distill(
        encoder: &MiniLmEncoder,
        model_dir: &Path,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Self, SentinelError> {
        let path = model_dir.join(STATIC_FILE);
        if let Ok(bytes) = std::fs::read(&path) {
            match Self::from_bytes(&bytes, &path).and_then(|t| t.spot_check(encoder, &path)) {
                Ok(table) => return Ok(table),
                Err(e) => tracing::warn!("{e}; distilling the static embeddings again"),
            }
        }
        tracing::info!(
            "distilling static token embeddings from the model (once per model directory, \
             cached at {})",
            path.display()
        );
        let started = std::time::Instant::now();
        let table = Self::distill(encoder, progress)?;
        tracing::info!(
            "distilled static token embeddings ({} tokens) in {:.1} s",
            table.vocab,
            started.elapsed().as_secs_f64()
        );
        match vigil_core::write_atomic(&path, &table.to_bytes()?) {
            Ok(()) => {}
            Err((p, e)) => tracing::warn!(
                "could not cache the static embeddings at {}: {e}; they will be distilled \
                 again next time",
                p.display()
            ),
        }
        Ok(table)
    }

    /// Vocabulary entries.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    fn row(&self, t: u32) -> Option<&[f32]> {
        let t = t as usize;
        (t < self.vocab).then(|| &self.table[t * self.dim..(t + 1) * self.dim])
    }

    /// The file's bytes: one F32 tensor `static` (`vocab x dim`) and the format in metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SentinelError> {
        let bytes: Vec<u8> = self.table.iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![self.vocab, self.dim], &bytes)
            .map_err(|e| SentinelError::Internal(e.to_string()))?;
        let meta = [
            ("format".to_string(), STATIC_FORMAT.to_string()),
            ("format_version".to_string(), STATIC_VERSION.to_string()),
        ]
        .into_iter()
        .collect();
        safetensors::serialize([("static", view)], Some(meta))
            .map_err(|e| SentinelError::Internal(e.to_string()))
    }

    /// Read a table written by [`Self::to_bytes`]; `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, SentinelError> {
        let corrupt = |message: String| SentinelError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| corrupt(format!("not a static embedding table: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(STATIC_FORMAT)
            || meta.get("format_version").map(String::as_str) != Some(STATIC_VERSION)
        {
            return Err(corrupt(format!(
                "not a {STATIC_FORMAT} table of version {STATIC_VERSION}"
            )));
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(format!("not a static embedding table: {e}")))?;
        let t = st
            .tensor("static")
            .map_err(|e| corrupt(format!("no `static` tensor: {e}")))?;
        let (&[vocab, dim], Dtype::F32) = (t.shape(), t.dtype()) else {
            return Err(corrupt("`static` is not a 2-D F32 tensor".into()));
        };
        let table: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if table.len() != vocab * dim || table.iter().any(|x| !x.is_finite()) {
            return Err(corrupt("truncated or non-finite values".into()));
        }
        Ok(Self { table, vocab, dim })
    }

    /// Recompute a few rows with `encoder`: a table distilled from another model (or damaged)
    /// is refused.
    fn spot_check(self, encoder: &MiniLmEncoder, path: &Path) -> Result<Self, SentinelError> {
        let stale = |why: &str| SentinelError::Corrupt {
            path: path.to_path_buf(),
            message: format!("the cached static embeddings {why}"),
        };
        if self.vocab != encoder.vocab_size() || self.dim != crate::Encoder::dim(encoder) {
            return Err(stale("have another shape than the model"));
        }
        let ids: Vec<u32> = SPOT_CHECK
            .iter()
            .copied()
            .filter(|&t| (t as usize) < self.vocab)
            .collect();
        let fresh = encoder.encode_tokens(&ids)?;
        for (t, row) in ids.iter().zip(&fresh) {
            let cached = self.row(*t).unwrap_or(&[]);
            let off = cached
                .iter()
                .zip(row)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            if cached.len() != row.len() || off > SPOT_TOLERANCE {
                return Err(stale("were distilled from another model"));
            }
        }
        Ok(self)
    }

    /// Each text's static embedding (unit rows; a text without known tokens gets a zero
    /// row, which every linear model scores at its intercept). The tokenizer splits on
    /// whitespace before anything else and its normalisation is per character, so each
    /// distinct whitespace-separated chunk is tokenised once and a text's tokens are its
    /// chunks' tokens (all of them: no truncation).
    pub fn embed(
        &self,
        encoder: &MiniLmEncoder,
        texts: &[String],
    ) -> Result<Matrix, SentinelError> {
        let mut slot: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        let mut chunks: Vec<String> = Vec::new();
        let text_chunks: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                t.split_whitespace()
                    .map(|c| {
                        *slot.entry(c).or_insert_with(|| {
                            chunks.push(c.to_string());
                            (chunks.len() - 1) as u32
                        })
                    })
                    .collect()
            })
            .collect();
        let ids = encoder.content_token_ids(&chunks)?;
        let dim = self.dim;
        let mut data = vec![0.0f32; texts.len() * dim];
        data.par_chunks_mut(dim.max(1))
            .zip(text_chunks.par_iter())
            .for_each(|(out, parts)| {
                for &c in parts {
                    let tokens = ids.get(c as usize).map_or(&[][..], |v| &v[..]);
                    for row in tokens.iter().filter_map(|&t| self.row(t)) {
                        for (o, x) in out.iter_mut().zip(row) {
                            *o += x;
                        }
                    }
                }
                let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 1e-12 {
                    out.iter_mut().for_each(|x| *x /= norm);
                }
            });
        Ok(Matrix {
            data,
            rows: texts.len(),
            dim,
        })
    }
}

/// The first stage: a calibrated scorer fitted on the static embeddings of the index's own
/// examples, its cut, and a floor on the share of texts sent on.
#[derive(Debug, Clone)]
pub struct Screen {
    /// The static token embeddings.
    pub statics: StaticEmbeddings,
    /// The first stage's scorer: the calibrated scorer's recipe on static embeddings.
    pub scorer: CalibratedScorer,
    /// First-stage probability from which a text goes to the exact encoder.
    pub cut: f64,
    /// The highest-ranked share of texts that goes to the exact encoder whatever the cut.
    pub share: f64,
    /// The index examples the exact scorer finds notable (the cut's sample).
    pub notable_examples: usize,
}

impl Screen {
    /// Fit the first stage on the index's examples (their texts embedded statically; same
    /// recipe and seed as the calibrated scorer) and choose its cut there: the highest
    /// first-stage probability that keeps the share `recall` of the examples whose exact
    /// probability is notable. `share` of the texts (the highest first-stage scores) go on
    /// whatever the cut, since a run's texts are not the index's. Needs the example texts.
    pub fn new(
        statics: StaticEmbeddings,
        encoder: &MiniLmEncoder,
        index: &SentinelIndex,
        calibrated: &CalibratedScorer,
        recall: f64,
        share: f64,
    ) -> Result<Self, SentinelError> {
        if !(recall > 0.0 && recall <= 1.0) {
            return Err(SentinelError::BadInput(format!(
                "the cascade's recall must be in (0, 1], not {recall}"
            )));
        }
        if !(0.0..=1.0).contains(&share) {
            return Err(SentinelError::BadInput(format!(
                "the cascade's share must be in [0, 1], not {share}"
            )));
        }
        let (Some(pos), Some(neg)) = (&index.positive_corpus, &index.negative_corpus) else {
            return Err(SentinelError::BadInput(
                "the cascade needs an index that keeps its example texts (its first stage is \
                 fitted on them); rebuild the index with `vigil sentinel build`"
                    .into(),
            ));
        };
        let static_index = SentinelIndex::new(
            statics.embed(encoder, pos)?,
            statics.embed(encoder, neg)?,
            Some(pos.clone()),
            Some(neg.clone()),
            index.config.clone(),
        )?;
        let scorer = CalibratedScorer::fit(&static_index, calibrated.manifest.seed)?;
        let mut first = Vec::new();
        for (texts, exact, screened) in [
            (pos, &index.positive, &static_index.positive),
            (neg, &index.negative, &static_index.negative),
        ] {
            let exact_p = calibrated.probabilities(exact, texts)?;
            let screen_p = scorer.probabilities(screened, texts)?;
            first.extend(
                exact_p
                    .iter()
                    .zip(screen_p)
                    .filter(|(e, _)| **e >= NOTABLE)
                    .map(|(_, s)| s),
            );
        }
        first.sort_by(f64::total_cmp);
        let missed = ((1.0 - recall) * first.len() as f64).floor() as usize;
        let cut = first.get(missed).copied().unwrap_or(NOTABLE).min(NOTABLE);
        Ok(Self {
            statics,
            scorer,
            cut,
            share,
            notable_examples: first.len(),
        })
    }
}

/// What [`cascade_scores`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CascadeRun {
    /// The cut applied: the screen's, or lower to send its share of texts on.
    pub cut: f64,
    /// Each text's probability: exact for the candidates, the first stage's for the others.
    pub scores: Vec<f64>,
    /// Whether the exact encoder scored the text.
    pub exact: Vec<bool>,
    /// Screened-out texts scored exactly as well, to estimate the cascade's recall.
    pub audited: usize,
    /// Of those, how many the exact scorer finds notable.
    pub audited_notable: usize,
    /// Candidates the exact scorer finds notable.
    pub candidates_notable: usize,
}

impl CascadeRun {
    /// Texts the exact encoder scored as candidates.
    pub fn candidates(&self) -> usize {
        self.exact.iter().filter(|e| **e).count()
    }

    /// Estimated share of the exactly-notable texts the cascade sent to the exact encoder:
    /// the notable candidates over those plus the notable share of the audit sample scaled to
    /// every screened-out text. `None` without an audit or without notable texts.
    pub fn estimated_recall(&self) -> Option<f64> {
        if self.audited == 0 {
            return None;
        }
        let screened_out = self.exact.len() - self.candidates();
        let missed = self.audited_notable as f64 * screened_out as f64 / self.audited as f64;
        let kept = self.candidates_notable as f64;
        (kept + missed > 0.0).then(|| kept / (kept + missed))
    }
}

/// Score `texts` through the cascade: first stage for all, the exact encoder for the texts at
/// or above the cut, and for `audit` screened-out texts (an even spread, scored exactly but
/// keeping their first-stage probability) to estimate recall. `progress(done, total)` counts
/// texts through both stages.
pub fn cascade_scores(
    screen: &Screen,
    encoder: &MiniLmEncoder,
    calibrated: &CalibratedScorer,
    texts: &[String],
    audit: usize,
    chunk: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<CascadeRun, SentinelError> {
    let chunk = chunk.max(1);
    let started = std::time::Instant::now();
    let mut scores = Vec::with_capacity(texts.len());
    let (mut t_embed, mut t_prob) = (0.0, 0.0);
    for part in texts.chunks(chunk.saturating_mul(16)) {
        let t0 = std::time::Instant::now();
        let emb = screen.statics.embed(encoder, part)?;
        t_embed += t0.elapsed().as_secs_f64();
        let t0 = std::time::Instant::now();
        scores.extend(screen.scorer.probabilities(&emb, part)?);
        t_prob += t0.elapsed().as_secs_f64();
    }
    tracing::debug!("cascade first stage: embed {t_embed:.2} s, probabilities {t_prob:.2} s");
    let first_stage = started.elapsed();
    let first = scores.clone();
    // The cut, lowered to the score of the `share`-th highest text when that is lower.
    let mut ranked = scores.clone();
    ranked.sort_by(|a, b| b.total_cmp(a));
    let floor = ((screen.share * texts.len() as f64).ceil() as usize).min(texts.len());
    let cut = match floor.checked_sub(1).and_then(|k| ranked.get(k)) {
        Some(&s) => s.min(screen.cut),
        None => screen.cut,
    };
    let candidates: Vec<usize> = (0..texts.len()).filter(|&i| scores[i] >= cut).collect();
    let out: Vec<usize> = (0..texts.len()).filter(|&i| scores[i] < cut).collect();
    let audit = audit.min(out.len());
    let audited: Vec<usize> = (0..audit).map(|k| out[k * out.len() / audit]).collect();
    let total = texts.len() + candidates.len() + audited.len();
    progress(texts.len(), total);
    let mut exact = vec![false; texts.len()];
    let mut done = texts.len();
    let mut exact_notable = |ids: &[usize], keep: bool| -> Result<usize, SentinelError> {
        let mut notable = 0;
        for part in ids.chunks(chunk) {
            let batch: Vec<String> = part.iter().map(|&i| texts[i].clone()).collect();
            let emb = crate::Encoder::encode(encoder, &batch)?;
            let p = calibrated.probabilities(&emb, &batch)?;
            for (&i, p) in part.iter().zip(p) {
                notable += usize::from(p >= NOTABLE);
                if !keep && p >= NOTABLE {
                    let above = first.iter().filter(|&&s| s > first[i]).count();
                    tracing::debug!(
                        "cascade audit: a notable text (exact {p:.3}) screened out at {:.4}, \
                         first-stage rank {above} of {}",
                        first[i],
                        first.len()
                    );
                }
                if keep {
                    scores[i] = p;
                    exact[i] = true;
                }
            }
            done += part.len();
            progress(done, total);
        }
        Ok(notable)
    };
    let started = std::time::Instant::now();
    let candidates_notable = exact_notable(&candidates, true)?;
    tracing::debug!(
        "cascade: first stage {:.2} s for {} texts, exact {:.2} s for {} candidates",
        first_stage.as_secs_f64(),
        texts.len(),
        started.elapsed().as_secs_f64(),
        candidates.len()
    );
    let audited_notable = exact_notable(&audited, false)?;
    if tracing::enabled!(tracing::Level::DEBUG) {
        let mut ranked: Vec<usize> = candidates.clone();
        ranked.sort_by(|&a, &b| first[b].total_cmp(&first[a]));
        let last = ranked.iter().rposition(|&i| scores[i] >= NOTABLE);
        tracing::debug!(
            "cascade: the lowest-ranked notable candidate is at first-stage rank {last:?} of {}",
            texts.len()
        );
    }
    Ok(CascadeRun {
        cut,
        scores,
        exact,
        audited: audited.len(),
        audited_notable,
        candidates_notable,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table() -> StaticEmbeddings {
        StaticEmbeddings {
            table: (0..12).map(|i| i as f32 * 0.25 - 1.0).collect(),
            vocab: 4,
            dim: 3,
        }
    }

    #[test]
    fn a_static_table_round_trips_and_a_foreign_or_truncated_file_is_refused() {
        let t = table();
        let bytes = t.to_bytes().unwrap();
        let back = StaticEmbeddings::from_bytes(&bytes, Path::new("x")).unwrap();
        assert_eq!((back.vocab, back.dim, &back.table), (4, 3, &t.table));
        assert_eq!(back.row(3), Some(&t.table[9..12]));
        assert_eq!(back.row(4), None);

        let cut = StaticEmbeddings::from_bytes(&bytes[..bytes.len() - 4], Path::new("x"));
        assert!(matches!(cut, Err(SentinelError::Corrupt { .. })), "{cut:?}");
        // A safetensors file without the format in its metadata (another tool's) is refused.
        let data = vec![0u8; 12 * 4];
        let view = TensorView::new(Dtype::F32, vec![4, 3], &data).unwrap();
        let foreign = safetensors::serialize([("static", view)], None).unwrap();
        let err = StaticEmbeddings::from_bytes(&foreign, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vigil-static-embeddings"), "{err}");
    }

    #[test]
    fn estimated_recall_scales_the_audit_to_every_screened_out_text() {
        // 1,000 texts, 100 candidates (50 notable), 90 of the 900 others audited, 1 notable:
        // about 10 notable texts missed in all.
        let run = CascadeRun {
            cut: 0.1,
            scores: vec![0.0; 1000],
            exact: (0..1000).map(|i| i < 100).collect(),
            audited: 90,
            audited_notable: 1,
            candidates_notable: 50,
        };
        assert_eq!(run.candidates(), 100);
        let r = run.estimated_recall().unwrap();
        assert!((r - 50.0 / 60.0).abs() < 1e-12, "{r}");
        let unaudited = CascadeRun {
            audited: 0,
            ..run.clone()
        };
        assert_eq!(unaudited.estimated_recall(), None);
        let nothing = CascadeRun {
            audited_notable: 0,
            candidates_notable: 0,
            ..run
        };
        assert_eq!(nothing.estimated_recall(), None);
    }
}
