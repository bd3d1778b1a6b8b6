//! Clusters of the undecided queue, for bulk decisions: the batch's own dedup and text
//! clustering (`vigil_automate`: TF-IDF of the recent prompts, mini-batch k-means, seeded)
//! over the queued, undecided cases; a duplicate (same text, same day) joins the cluster of
//! the first case with it. Recomputed at most every [`MAX_AGE`], so a page view never waits for it twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_config::AutomationConfig;
use vigil_review::ReviewStore;
use vigil_review::worklist::QueueFilter;

use crate::ConsoleError;

/// How long a clustering is reused.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30);
/// Most cases one bulk decision may touch.
pub(crate) const MAX_BULK: usize = 2000;

/// One clustering of the undecided queue.
#[derive(Debug)]
pub(crate) struct Clusters {
    pub(crate) at: Instant,
    /// Cluster of each case id.
    pub(crate) of: HashMap<String, usize>,
    /// Members of each cluster, in queue order.
    pub(crate) members: Vec<Vec<String>>,
}

/// Cluster the queue's undecided cases now.
pub(crate) fn compute(
    store: &ReviewStore,
    a: &AutomationConfig,
    now: i64,
) -> Result<Arc<Clusters>, ConsoleError> {
    let (rows, _) = store.queue_page(&QueueFilter::default(), now, 0, 1_000_000)?;
    let dd = vigil_automate::dedup::dedup(
        rows.iter()
            .map(|r| (r.case.day.as_str(), r.case.recent_prompts.as_str())),
    );
    let originals: Vec<usize> = (0..rows.len()).filter(|&i| !dd[i].1).collect();
    let docs: Vec<&str> = originals
        .iter()
        .map(|&i| rows[i].case.recent_prompts.as_str())
        .collect();
    let labels = vigil_automate::cluster::cluster_texts(
        &docs,
        a.min_cases_to_cluster,
        a.max_clusters,
        a.min_df,
        a.max_features,
        a.seed,
    );
    // Duplicates are per day (as the batch's dedup): (day, text key) -> cluster.
    let mut by_key: HashMap<(&str, &str), usize> = HashMap::new();
    for (&i, &l) in originals.iter().zip(&labels) {
        by_key
            .entry((rows[i].case.day.as_str(), dd[i].0.as_str()))
            .or_insert(l);
    }
    let k = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut members = vec![Vec::new(); k];
    let mut of = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let Some(&c) = by_key.get(&(r.case.day.as_str(), dd[i].0.as_str())) else {
            continue;
        };
        of.insert(r.case.review_id.clone(), c);
        members[c].push(r.case.review_id.clone());
    }
    Ok(Arc::new(Clusters {
        at: Instant::now(),
        of,
        members,
    }))
}
