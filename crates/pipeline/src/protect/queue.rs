//! The review queue and its enrichment (recent prompts).

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use vigil_config::Config;
use vigil_review::{Flags, QueueEntry};
use vigil_warehouse::Warehouse;
use vigil_warehouse::column_text;

use crate::PipelineError;
use crate::tables::{Col, extend, table, take};

use super::Written;

use super::Scored;

/// The review queue with its enrichment.
pub(crate) struct Queue {
    pub entries: Vec<QueueEntry>,
    pub recent_prompts: Vec<String>,
    pub batch: RecordBatch,
}

/// The last `n` non-empty normalised chat prompts of each queued user-day, in time order.
fn recent_prompts(
    wh: &Warehouse,
    keys: &[(String, String)],
    n: usize,
) -> Result<Vec<String>, PipelineError> {
    let key_table = table(
        "queue_keys",
        vec![
            ("day", Col::Str(keys.iter().map(|k| k.0.clone()).collect())),
            (
                "user_id",
                Col::Str(keys.iter().map(|k| k.1.clone()).collect()),
            ),
        ],
    )?;
    wh.register(&key_table)?;
    let t = wh.build("queue_prompts")?;
    let (days, users, prompts) = (
        column_text(&t, "day")?,
        column_text(&t, "user_id")?,
        column_text(&t, "prompt")?,
    );
    let mut by_key: HashMap<(&str, &str), Vec<String>> = HashMap::new();
    for i in 0..prompts.len() {
        by_key
            .entry((days[i].as_str(), users[i].as_str()))
            .or_default()
            .push(vigil_automate::normalize_text(&prompts[i]));
    }
    Ok(keys
        .iter()
        .map(|(d, u)| {
            by_key
                .get(&(d.as_str(), u.as_str()))
                .map(|v| v[v.len().saturating_sub(n)..].join(" | "))
                .unwrap_or_default()
        })
        .collect())
}

/// Flags, priority, enrichment: `review_queue` and `audit_log_template`.
pub(crate) fn review_queue(
    wh: &Warehouse,
    s: &Scored,
    cfg: &Config,
    out: &mut Written,
) -> Result<Queue, PipelineError> {
    // The rare-harm signal, when the stage ran and feeds the queue ([sentinel] review_at).
    let rare_affinity = match (&cfg.sentinel.index, cfg.sentinel.review_at) {
        (Some(_), Some(_)) if cfg.sentinel.model_features => Some(vigil_warehouse::column_f64(
            &s.table,
            "rare_harm_affinity_window",
        )?),
        _ => None,
    };
    let rare = rare_affinity.as_deref().zip(cfg.sentinel.review_at);
    let entries = vigil_review::build_queue_with(
        &s.risk,
        &s.uncertainty,
        &s.heuristic,
        &s.n_chat,
        s.threshold,
        &cfg.review,
        rare,
    );
    let keys: Vec<(String, String)> = entries
        .iter()
        .map(|e| (s.day.get(e.row).to_string(), s.user.get(e.row).to_string()))
        .collect();
    let prompts = recent_prompts(wh, &keys, cfg.review.recent_prompts)?;
    let rows: Vec<usize> = entries.iter().map(|e| e.row).collect();
    let flag =
        |f: fn(&Flags) -> bool| Col::I64(entries.iter().map(|e| i64::from(f(&e.flags))).collect());
    let mut cols = vec![
        (
            "heuristic_score",
            Col::F64(rows.iter().map(|&r| s.heuristic[r]).collect()),
        ),
        ("flag_ml", flag(|f| f.ml)),
        ("flag_heur", flag(|f| f.heuristic)),
        ("flag_uncertain", flag(|f| f.uncertain)),
        ("needs_review", flag(|f| f.any())),
        ("recent_prompts", Col::Str(prompts.clone())),
        (
            "priority",
            Col::F64(entries.iter().map(|e| e.priority).collect()),
        ),
    ];
    if rare.is_some() {
        cols.push(("flag_rare_harm", flag(|f| f.rare_harm)));
    }
    let q = extend("review_queue", &take(&s.table, &rows)?, cols)?;
    out.csv(&q)?;
    let n = entries.len();
    let empty = || Col::Str(vec![String::new(); n]);
    out.csv(&table(
        "audit_log_template",
        vec![
            ("day", Col::Str(keys.iter().map(|k| k.0.clone()).collect())),
            (
                "user_id",
                Col::Str(keys.iter().map(|k| k.1.clone()).collect()),
            ),
            (
                "risk_score",
                Col::F64(rows.iter().map(|&r| s.risk[r]).collect()),
            ),
            (
                "uncertainty",
                Col::F64(rows.iter().map(|&r| s.uncertainty[r]).collect()),
            ),
            ("recent_prompts", Col::Str(prompts.clone())),
            (
                "review_id",
                Col::Str(
                    keys.iter()
                        .map(|(day, user)| vigil_review::case_id(user, day))
                        .collect(),
                ),
            ),
            ("reviewer", empty()),
            ("decision", empty()),
            ("reason_code", empty()),
            ("notes", empty()),
            ("decision_ts", empty()),
        ],
    )?)?;
    Ok(Queue {
        entries,
        recent_prompts: prompts,
        batch: q.concat()?,
    })
}
