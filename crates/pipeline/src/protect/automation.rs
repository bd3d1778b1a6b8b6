//! Automation: dedup, clustering and entity resolution over the queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use vigil_automate::er::{self, ComponentRisk, ErQuality, Resolution, UserKeys};
use vigil_config::{Config, ErMode};
use vigil_warehouse::Warehouse;
use vigil_warehouse::column_text;

use crate::PipelineError;
use crate::tables::{Col, extend, table, take};

use super::{Queue, Scored, Written};

/// Results of the automation stage.
pub(crate) struct Automation {
    pub is_dup: Vec<bool>,
    pub cluster_of_nondup: Vec<usize>,
    pub resolution: Resolution,
    pub component_risk: Vec<ComponentRisk>,
    pub quality: Vec<(String, ErQuality)>,
}

fn user_keys(wh: &Warehouse) -> Result<Vec<UserKeys>, PipelineError> {
    // The core-tables stage registers user_keys; build it only when it is missing.
    if !wh.table_names().iter().any(|t| t == "user_keys") {
        wh.build("user_keys")?;
    }
    let t = wh.query(
        "entity_keys",
        "SELECT user_id, ip, device_id, payment_id FROM user_keys",
    )?;
    let (u, ip, dev, pay) = (
        column_text(&t, "user_id")?,
        column_text(&t, "ip")?,
        column_text(&t, "device_id")?,
        column_text(&t, "payment_id")?,
    );
    let mut by_user: BTreeMap<&str, [BTreeSet<&str>; 3]> = BTreeMap::new();
    for i in 0..u.len() {
        let e = by_user.entry(u[i].as_str()).or_default();
        for (k, v) in [&ip[i], &dev[i], &pay[i]].into_iter().enumerate() {
            if !v.is_empty() {
                e[k].insert(v.as_str());
            }
        }
    }
    let owned = |s: &BTreeSet<&str>| s.iter().map(|x| x.to_string()).collect();
    Ok(by_user
        .into_iter()
        .map(|(user, [i, d, p])| UserKeys {
            user_id: user.to_string(),
            ips: owned(&i),
            devices: owned(&d),
            payments: owned(&p),
        })
        .collect())
}

/// Ground truth: user -> actor or ring id for abusers (`ground_truth.csv` of the generator).
pub(crate) fn read_ground_truth(path: &Path) -> Result<HashMap<String, String>, PipelineError> {
    let mut rdr = csv::Reader::from_path(path).map_err(|e| PipelineError::GroundTruth {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let headers = rdr
        .headers()
        .map_err(|e| PipelineError::GroundTruth {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| PipelineError::GroundTruth {
                path: path.to_path_buf(),
                message: format!("missing column `{name}` (expected user_id,is_abuser,actor_id)"),
            })
    };
    let (cu, ca, cact) = (col("user_id")?, col("is_abuser")?, col("actor_id")?);
    let mut out = HashMap::new();
    for (line, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| PipelineError::GroundTruth {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", line + 2),
        })?;
        if rec.get(ca) == Some("1") {
            out.insert(
                rec.get(cu).unwrap_or_default().to_string(),
                rec.get(cact).unwrap_or_default().to_string(),
            );
        }
    }
    Ok(out)
}

/// Dedup, clustering, entity resolution.
pub(crate) fn automation(
    wh: &Warehouse,
    s: &Scored,
    q: &Queue,
    cfg: &Config,
    ground_truth: Option<&HashMap<String, String>>,
    out: &mut Written,
) -> Result<Automation, PipelineError> {
    let a = &cfg.automation;
    let dd = vigil_automate::dedup::dedup(
        q.entries
            .iter()
            .zip(&q.recent_prompts)
            .map(|(e, p)| (s.day.get(e.row), p.as_str())),
    );
    let is_dup: Vec<bool> = dd.iter().map(|x| x.1).collect();
    let dedup_t = extend(
        "review_queue_dedup",
        &q.batch,
        vec![
            (
                "dedup_key",
                Col::Str(dd.iter().map(|x| x.0.clone()).collect()),
            ),
            (
                "is_dup",
                Col::I64(is_dup.iter().map(|&d| i64::from(d)).collect()),
            ),
        ],
    )?;
    out.csv(&dedup_t)?;
    let nondup: Vec<usize> = (0..is_dup.len()).filter(|&i| !is_dup[i]).collect();
    let docs: Vec<&str> = nondup
        .iter()
        .map(|&i| q.recent_prompts[i].as_str())
        .collect();
    let clusters = vigil_automate::cluster::cluster_with(&docs, a);
    out.csv(&extend(
        "clusters",
        &take(&dedup_t, &nondup)?,
        vec![(
            "cluster_id",
            Col::I64(clusters.iter().map(|&c| c as i64).collect()),
        )],
    )?)?;

    tracing::debug!("dedup and clusters done");
    let keys = user_keys(wh)?;
    tracing::debug!("entity keys of {} users read", keys.len());
    let users: Vec<String> = keys.iter().map(|k| k.user_id.clone()).collect();
    let res = er::resolve(&keys, a.er_mode, a.ip_max_fanout, a.max_key_fanout);
    tracing::debug!("entities resolved: {} edges", res.edges.len());
    out.csv(&table(
        "entity_resolution_edges",
        vec![
            (
                "user_a",
                Col::Str(res.edges.iter().map(|e| users[e.a].clone()).collect()),
            ),
            (
                "user_b",
                Col::Str(res.edges.iter().map(|e| users[e.b].clone()).collect()),
            ),
            (
                "edge_type",
                Col::Str(res.edges.iter().map(|e| e.edge_type.to_string()).collect()),
            ),
            (
                "edge_key",
                Col::Str(res.edges.iter().map(|e| e.key.clone()).collect()),
            ),
        ],
    )?)?;
    out.csv(&table(
        "entity_resolution_components",
        vec![
            ("user_id", Col::Str(users.clone())),
            (
                "component_id",
                Col::I64(res.component.iter().map(|&c| c as i64).collect()),
            ),
        ],
    )?)?;
    // per-user flag and peak risk for component risk
    let index: HashMap<&str, usize> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.as_str(), i))
        .collect();
    let mut flagged = vec![false; users.len()];
    let mut max_risk = vec![0.0f64; users.len()];
    for (r, u) in s.user.iter().enumerate() {
        if let Some(&i) = index.get(u) {
            flagged[i] |= s.flags[r].any();
            max_risk[i] = max_risk[i].max(s.risk[r]);
        }
    }
    let risk = er::component_risk(&res, &flagged, &max_risk);
    out.csv(&table(
        "entity_resolution_component_risk",
        vec![
            (
                "component_id",
                Col::I64(risk.iter().map(|r| r.component_id as i64).collect()),
            ),
            (
                "size",
                Col::I64(risk.iter().map(|r| r.size as i64).collect()),
            ),
            (
                "flagged_users",
                Col::I64(risk.iter().map(|r| r.flagged_users as i64).collect()),
            ),
            (
                "flagged_share",
                Col::F64(risk.iter().map(|r| r.flagged_share).collect()),
            ),
            (
                "max_risk",
                Col::F64(risk.iter().map(|r| r.max_risk).collect()),
            ),
            (
                "n_edges",
                Col::I64(risk.iter().map(|r| r.n_edges as i64).collect()),
            ),
            (
                "edge_types",
                Col::Str(risk.iter().map(|r| r.edge_types.clone()).collect()),
            ),
        ],
    )?)?;
    let mut quality = Vec::new();
    if let Some(gt) = ground_truth {
        let labels: Vec<Option<String>> = users.iter().map(|u| gt.get(u).cloned()).collect();
        for (name, mode) in [
            ("notebook", ErMode::Notebook),
            ("corroborated", ErMode::Corroborated),
        ] {
            let r = if mode == a.er_mode {
                res.clone()
            } else {
                er::resolve(&keys, mode, a.ip_max_fanout, a.max_key_fanout)
            };
            quality.push((name.to_string(), er::evaluate(&r, &labels)));
        }
        let qv = |f: fn(&ErQuality) -> f64| Col::F64(quality.iter().map(|q| f(&q.1)).collect());
        out.csv(&table(
            "er_quality",
            vec![
                (
                    "mode",
                    Col::Str(quality.iter().map(|q| q.0.clone()).collect()),
                ),
                ("users", qv(|q| q.users as f64)),
                ("linked_components", qv(|q| q.linked_components as f64)),
                ("largest_component", qv(|q| q.largest_component as f64)),
                ("largest_share", qv(|q| q.largest_share)),
                ("mean_purity", qv(|q| q.mean_purity)),
                ("abusers", qv(|q| q.abusers as f64)),
                (
                    "abusers_in_components_2_50",
                    qv(|q| q.abusers_in_small_components as f64),
                ),
                ("ring_members", qv(|q| q.ring_members as f64)),
                (
                    "ring_members_in_pure_components",
                    qv(|q| q.ring_members_in_pure_components),
                ),
            ],
        )?)?;
    }
    Ok(Automation {
        is_dup,
        cluster_of_nondup: clusters,
        resolution: res,
        component_risk: risk,
        quality,
    })
}
