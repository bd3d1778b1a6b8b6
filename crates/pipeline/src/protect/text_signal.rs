//! What the text signal changes in the queue: with the rare-harm features the detection stage
//! also fits the boosted model without them (`gradient_boosting_without_text` in
//! `model_eval.csv`); here that model drives a second review queue of the same capacity and
//! the same enforcement policy (without the rule the text signal adds), and the two queues
//! are compared: user-days queued, ground-truth rare-harm users within the capacity, and the
//! suggested action mix. Nothing of the second queue is written but `text_signal.csv`.

use std::collections::{BTreeMap, HashMap, HashSet};

use vigil_config::Config;
use vigil_core::Action;
use vigil_warehouse::{Table, Warehouse};

use super::{Queue, Scored, Written, enforcement, review_queue};
use crate::PipelineError;
use crate::tables::{Col, extend_table, table};

/// One queue's outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueOutcome {
    /// The model that drove the queue.
    pub model: String,
    /// User-days in the queue.
    pub queued: usize,
    /// Ground-truth rare-harm users with a user-day in the queue (with ground truth).
    pub rare_harm_found: Option<usize>,
    /// Ground-truth rare-harm users (with ground truth).
    pub rare_harm_users: Option<usize>,
    /// Suggested actions by name (every action of the vocabulary, zeros included).
    pub actions: BTreeMap<String, usize>,
}

/// The fused queue against the behaviour-only one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TextSignal {
    /// With the text signal (the run's queue), then without.
    pub queues: [QueueOutcome; 2],
}

/// Ground-truth rare-harm users (actor `rare_harm_*`) with a user-day in `q`, and how many
/// there are; `None` without ground truth or without rare-harm users in it.
fn rare_found(
    s: &Scored,
    q: &Queue,
    truth: Option<&HashMap<String, String>>,
) -> (Option<usize>, Option<usize>) {
    let Some(truth) = truth else {
        return (None, None);
    };
    let rare: HashSet<&str> = truth
        .iter()
        .filter(|(_, actor)| actor.starts_with("rare_harm"))
        .map(|(u, _)| u.as_str())
        .collect();
    if rare.is_empty() {
        return (None, None);
    }
    let found: HashSet<&str> = q
        .entries
        .iter()
        .map(|e| s.user.get(e.row))
        .filter(|u| rare.contains(u))
        .collect();
    (Some(found.len()), Some(rare.len()))
}

fn outcome(
    model: &str,
    s: &Scored,
    q: &Queue,
    actions: &[String],
    truth: Option<&HashMap<String, String>>,
) -> QueueOutcome {
    let mut mix: BTreeMap<String, usize> =
        Action::NAMES.iter().map(|a| (a.to_string(), 0)).collect();
    for a in actions {
        *mix.entry(a.clone()).or_default() += 1;
    }
    let (rare_harm_found, rare_harm_users) = rare_found(s, q, truth);
    QueueOutcome {
        model: model.to_string(),
        queued: q.entries.len(),
        rare_harm_found,
        rare_harm_users,
        actions: mix,
    }
}

/// `table` without the columns `drop` (every batch projected).
fn without_columns(t: &Table, drop: &[&str]) -> Result<Table, PipelineError> {
    let keep: Vec<usize> = (0..t.schema.fields().len())
        .filter(|&i| !drop.contains(&t.schema.field(i).name().as_str()))
        .collect();
    let internal = |e: arrow::error::ArrowError| PipelineError::Internal(e.to_string());
    Ok(Table {
        name: t.name.clone(),
        schema: std::sync::Arc::new(t.schema.project(&keep).map_err(internal)?),
        batches: t
            .batches
            .iter()
            .map(|b| b.project(&keep))
            .collect::<Result<_, _>>()
            .map_err(internal)?,
    })
}

/// Compare the run's queue with the one the behaviour-only model would have driven; `None`
/// when the run has no behaviour-only model (no rare-harm features, a bundle applied, or a
/// risk model other than the boosted one). Writes `text_signal.csv`.
pub(crate) fn text_signal(
    wh: &Warehouse,
    s: &Scored,
    q: &Queue,
    actions: &[String],
    cfg: &Config,
    truth: Option<&HashMap<String, String>>,
    out: &mut Written,
) -> Result<Option<TextSignal>, PipelineError> {
    let Some((risk, threshold)) = s.behaviour_only.as_ref() else {
        return Ok(None);
    };
    if s.model != "gradient_boosting" {
        return Ok(None);
    }
    let uncertainty: Vec<f64> = risk.iter().map(|&r| vigil_detect::uncertainty(r)).collect();
    let base = without_columns(&s.table, &["risk_score", "uncertainty"])?;
    let alt = Scored {
        table: extend_table(
            &s.table.name,
            &base,
            vec![
                ("risk_score", risk.clone()),
                ("uncertainty", uncertainty.clone()),
            ],
        )?,
        day: s.day.clone(),
        user: s.user.clone(),
        risk: risk.clone(),
        uncertainty,
        heuristic: s.heuristic.clone(),
        n_chat: s.n_chat.clone(),
        flags: Vec::new(),
        threshold: *threshold,
        model: "gradient_boosting_without_text".into(),
        detection: None,
        behaviour_only: None,
    };
    // The run without the rare-harm stage: no rare-harm flag, no rule for it.
    let mut alt_cfg = cfg.clone();
    alt_cfg.sentinel.review_at = None;
    alt_cfg
        .enforcement
        .rules
        .retain(|r| r.reason != "rare_harm_affinity");
    let mut scratch = Written::default();
    let alt_q = review_queue(wh, &alt, &alt_cfg, &mut scratch)?;
    let alt_actions = enforcement(&alt, &alt_q, &alt_cfg, &mut scratch)?;
    let signal = TextSignal {
        queues: [
            outcome(&s.model, s, q, actions, truth),
            outcome(&alt.model, &alt, &alt_q, &alt_actions.action, truth),
        ],
    };
    let rows = &signal.queues;
    let opt = |f: fn(&QueueOutcome) -> Option<usize>| {
        Col::Str(
            rows.iter()
                .map(|r| f(r).map_or_else(String::new, |v| v.to_string()))
                .collect(),
        )
    };
    let mut cols = vec![
        (
            "model",
            Col::Str(rows.iter().map(|r| r.model.clone()).collect()),
        ),
        (
            "queued_user_days",
            Col::I64(rows.iter().map(|r| r.queued as i64).collect()),
        ),
        ("rare_harm_users_in_queue", opt(|r| r.rare_harm_found)),
        ("rare_harm_users", opt(|r| r.rare_harm_users)),
    ];
    for a in Action::NAMES {
        cols.push((
            a,
            Col::I64(
                rows.iter()
                    .map(|r| r.actions.get(a).copied().unwrap_or(0) as i64)
                    .collect(),
            ),
        ));
    }
    out.csv(&table("text_signal", cols)?)?;
    Ok(Some(signal))
}
