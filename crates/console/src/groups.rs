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
    let labels = vigil_automate::cluster::cluster_with(&docs, a);
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

/// Linked accounts among the undecided queue's users: the batch's entity resolution
/// (`vigil_automate::er::resolve`, `[automation]` rules) over the identifiers the live
/// service holds for them. Only components of two or more users are kept.
#[derive(Debug)]
pub(crate) struct Components {
    pub(crate) at: Instant,
    /// Component of each case id.
    pub(crate) of: HashMap<String, usize>,
    /// Cases of each component, in queue order.
    pub(crate) members: Vec<Vec<String>>,
    /// Users of each component, sorted.
    pub(crate) users: Vec<Vec<String>>,
    /// Edges of each component: (user, user, edge type), one per linked pair and type.
    pub(crate) edges: Vec<Vec<(String, String, &'static str)>>,
}

/// Resolve the undecided queue's users now.
pub(crate) fn compute_components(
    store: &ReviewStore,
    live: &dyn crate::LiveView,
    a: &AutomationConfig,
    now: i64,
) -> Result<Arc<Components>, ConsoleError> {
    let (rows, _) = store.queue_page(&QueueFilter::default(), now, 0, 1_000_000)?;
    let mut users: Vec<String> = rows.iter().map(|r| r.case.user_id.clone()).collect();
    users.sort();
    users.dedup();
    let keys = live.identifiers(&users);
    let res = vigil_automate::er::resolve(&keys, a.er_mode, a.ip_max_fanout, a.max_key_fanout);
    // Components of two or more users, numbered by their first user.
    let mut size: HashMap<usize, usize> = HashMap::new();
    for &c in &res.component {
        *size.entry(c).or_insert(0) += 1;
    }
    let mut number: HashMap<usize, usize> = HashMap::new();
    let mut comp_users: Vec<Vec<String>> = Vec::new();
    for (i, &c) in res.component.iter().enumerate() {
        if size[&c] < 2 {
            continue;
        }
        let n = *number.entry(c).or_insert_with(|| {
            comp_users.push(Vec::new());
            comp_users.len() - 1
        });
        comp_users[n].push(users[i].clone());
    }
    let mut edges = vec![Vec::new(); comp_users.len()];
    let mut seen = std::collections::HashSet::new();
    for e in &res.edges {
        if let Some(&n) = number.get(&res.component[e.a])
            && seen.insert((e.a, e.b, e.edge_type))
        {
            edges[n].push((users[e.a].clone(), users[e.b].clone(), e.edge_type));
        }
    }
    let user_comp: HashMap<&str, usize> = users
        .iter()
        .enumerate()
        .filter_map(|(i, u)| number.get(&res.component[i]).map(|&n| (u.as_str(), n)))
        .collect();
    let mut members = vec![Vec::new(); comp_users.len()];
    let mut of = HashMap::new();
    for r in &rows {
        if let Some(&n) = user_comp.get(r.case.user_id.as_str()) {
            of.insert(r.case.review_id.clone(), n);
            members[n].push(r.case.review_id.clone());
        }
    }
    Ok(Arc::new(Components {
        at: Instant::now(),
        of,
        members,
        users: comp_users,
        edges,
    }))
}

/// A component's users and links as an inline SVG: users on a circle (the case's user
/// filled), one line per linked pair and identifier type.
pub(crate) fn graph_svg(
    users: &[String],
    edges: &[(String, String, &'static str)],
    focus: &str,
) -> String {
    use std::fmt::Write;
    const SHOWN: usize = 40;
    let users: Vec<&String> = users.iter().take(SHOWN).collect();
    let n = users.len().max(1) as f64;
    let (w, h, r) = (560.0, 420.0, 150.0);
    let pos: HashMap<&str, (f64, f64)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let t = std::f64::consts::TAU * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (u.as_str(), (w / 2.0 + r * t.cos(), h / 2.0 + r * t.sin()))
        })
        .collect();
    let mut svg = format!(
        "<svg class=\"er-graph\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" \
         aria-label=\"linked accounts\">"
    );
    for (a, b, t) in edges {
        if let (Some(p), Some(q)) = (pos.get(a.as_str()), pos.get(b.as_str())) {
            let _ = write!(
                svg,
                "<line class=\"{t}\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"><title>{}</title></line>",
                p.0,
                p.1,
                q.0,
                q.1,
                t.replace('_', " ")
            );
        }
    }
    for u in &users {
        let (x, y) = pos[u.as_str()];
        let _ = write!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"7\" class=\"{}\"></circle>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            if u.as_str() == focus { "focus" } else { "" },
            y - 11.0,
            crate::html::esc(u)
        );
    }
    svg.push_str("</svg>");
    svg
}
