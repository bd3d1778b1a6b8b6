//! Review cases from the live service: every scored user-day that needs review is upserted
//! into `DATA/review.db`, the store `vigil review` (and the reviewer console) work from,
//! with the enrichment of the batch queue (flags, priority, recent prompts, suggested
//! action and rule); a user-day that stops needing review leaves the queue, decisions kept.
//!
//! Requests only record the newest state of each case in a pending map (no I/O on the hot
//! path); one writer thread takes the map every `INTERVAL` and writes it in one
//! transaction. Cases are derived from stored events, so the service re-derives them at
//! every start: a case not yet written when the process died is written then.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use vigil_review::{Case, ReviewStore, case_id};

use crate::ServeError;
use crate::event::day_text;
use crate::scoring::Score;

/// How often pending cases are written.
const INTERVAL: Duration = Duration::from_millis(250);

/// Pending updates by case id: `Some` = in the queue with these values, `None` = out.
type Pending = HashMap<String, Option<Case>>;

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<(Pending, bool)>,
    wake: Condvar,
}

/// The handle requests use; cheap to clone.
#[derive(Debug, Clone)]
pub struct Cases {
    shared: Arc<Shared>,
}

/// The writer thread; [`CaseWriter::stop`] writes what is pending and ends it.
#[derive(Debug)]
pub struct CaseWriter {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The path of the service's review store.
pub fn store_path(data: &Path) -> PathBuf {
    data.join("review.db")
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, (Pending, bool)> {
    s.pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The case of a scored user-day (`None`: it does not need review). A flagged user-day is
/// a case, and so is one whose automated action a safety cap turned into a review, or whose
/// user's rare-harm affinity reached `rare_harm_review_at`.
pub fn case_of(user: &str, day: i32, s: &Score) -> Option<Case> {
    if !s.needs_review && s.capped_by.is_none() && !s.rare_harm {
        return None;
    }
    let names: Vec<&str> = [
        (s.flag_ml, "ml"),
        (s.flag_heur, "heuristic"),
        (s.flag_uncertain, "uncertain"),
        (s.capped_by.is_some(), "safety_cap"),
        (s.rare_harm, "rare_harm"),
    ]
    .iter()
    .filter(|x| x.0)
    .map(|x| x.1)
    .collect();
    let day = day_text(day);
    Some(Case {
        review_id: case_id(user, &day),
        queue_pos: None,
        day,
        user_id: user.to_string(),
        risk_score: s.risk,
        uncertainty: s.uncertainty,
        priority: s.priority,
        recent_prompts: s.recent_prompts.clone(),
        suggested_action: s.action.clone(),
        suggested_reason: s.rule.clone(),
        flags: names.join(","),
    })
}

impl Cases {
    /// Record the newest state of scored user-days.
    pub fn update<'a>(&self, scored: impl IntoIterator<Item = (&'a str, i32, &'a Score)>) {
        let mut g = lock(&self.shared);
        for (user, day, s) in scored {
            let id = case_id(user, &day_text(day));
            g.0.insert(id, case_of(user, day, s));
        }
        drop(g);
    }
}

/// Open the store (creating it) and start the writer.
pub fn start(data: &Path) -> Result<(Cases, CaseWriter), ServeError> {
    let path = store_path(data);
    let mut store = ReviewStore::create(&path)?;
    let mut queued: HashSet<String> = store.queued_ids()?.into_iter().collect();
    let shared = Arc::new(Shared::default());
    let me = shared.clone();
    let thread = std::thread::Builder::new()
        .name("vigil-cases".into())
        .spawn(move || {
            loop {
                let (batch, stopping) = {
                    let mut g = lock(&me);
                    if !g.1 {
                        g = me
                            .wake
                            .wait_timeout(g, INTERVAL)
                            .map(|r| r.0)
                            .unwrap_or_else(|p| p.into_inner().0);
                    }
                    (std::mem::take(&mut g.0), g.1)
                };
                let written = batch.is_empty() || write(&mut store, &mut queued, batch, &me);
                if stopping && (!written || lock(&me).0.is_empty()) {
                    if !written {
                        tracing::error!(
                            "review cases not written at shutdown; they are derived again at \
                             the next start"
                        );
                    }
                    return;
                }
                if !written {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .map_err(|e| ServeError::Internal(format!("cannot start the case writer: {e}")))?;
    Ok((
        Cases {
            shared: shared.clone(),
        },
        CaseWriter {
            shared,
            thread: Some(thread),
        },
    ))
}

/// Write one batch; on a failure the batch goes back to the pending map (newer updates of
/// the same case win) to be tried again, and the answer is `false`.
fn write(
    store: &mut ReviewStore,
    queued: &mut HashSet<String>,
    batch: Pending,
    me: &Shared,
) -> bool {
    let mut cases = Vec::new();
    let mut left = Vec::new();
    for (id, c) in &batch {
        match c {
            Some(c) => cases.push(c.clone()),
            None if queued.contains(id) => left.push(id.clone()),
            None => {}
        }
    }
    if cases.is_empty() && left.is_empty() {
        return true;
    }
    match store.upsert_live(&cases, &left) {
        Ok(()) => {
            for c in &cases {
                queued.insert(c.review_id.clone());
            }
            for id in &left {
                queued.remove(id);
            }
            metrics::counter!("vigil_review_cases_written_total").increment(cases.len() as u64);
            metrics::gauge!("vigil_review_queue_cases").set(queued.len() as f64);
            true
        }
        Err(e) => {
            tracing::error!("cannot write review cases (retrying): {e}");
            let mut g = lock(me);
            for (id, c) in batch {
                g.0.entry(id).or_insert(c);
            }
            drop(g);
            false
        }
    }
}

impl CaseWriter {
    /// Write what is pending and stop the thread.
    pub fn stop(mut self) {
        lock(&self.shared).1 = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the case writer panicked");
        }
    }
}
