//! The protection stages after the features: detection, the review queue, automation
//! (dedup, clustering, entity resolution), enforcement and incidents. Each returns what the
//! report needs and writes its tables through [`crate::Outputs`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use arrow::record_batch::RecordBatch;
use vigil_automate::er::{self, ComponentRisk, ErQuality, Resolution, UserKeys};
use vigil_config::{Config, ErMode};
use vigil_detect::{DetectError, Detection, Features};
use vigil_monitor::{Alert, column_f64, column_text};
use vigil_review::{Flags, QueueEntry};
use vigil_warehouse::{Table, Warehouse};

use crate::tables::{Col, Strings, extend, extend_table, table, take};
use crate::{Outputs, PipelineError};

/// Every user-day with its model risk and the inputs of the queue.
pub(crate) struct Scored {
    /// `user_day_scored`: the features with `risk_score` and `uncertainty`.
    pub table: Table,
    pub day: Strings,
    pub user: Strings,
    pub risk: Vec<f64>,
    pub uncertainty: Vec<f64>,
    pub heuristic: Vec<f64>,
    pub n_chat: Vec<f64>,
    pub flags: Vec<Flags>,
    pub threshold: f64,
    pub model: String,
    pub detection: Option<Detection>,
}

fn f64_col(t: &Table, c: &str) -> Result<Vec<f64>, PipelineError> {
    Ok(column_f64(t, c)?)
}

/// The boosted model's columns: user-day features as they are (taken from `have` when
/// already read), `user_context` columns joined by user (`groups`: each row's user number,
/// `ids`: user id -> number).
fn gbt_columns<'a>(
    wh: &Warehouse,
    features: &Table,
    names: &[String],
    have: &HashMap<&str, &'a [f64]>,
    groups: &[u32],
    ids: &UserIds<'_>,
) -> Result<Vec<Cow<'a, [f64]>>, PipelineError> {
    let has = |t: &Table, c: &str| t.schema.column_with_name(c).is_some();
    let need_context = names.iter().any(|c| !has(features, c));
    let started = std::time::Instant::now();
    let context = if need_context {
        if !wh.table_names().iter().any(|t| t == "user_keys") {
            wh.build("user_keys")?;
        }
        Some(wh.build("user_context")?)
    } else {
        None
    };
    tracing::debug!(
        "user_keys and user_context built in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // Each row's index in user_context: one lookup per user, not per row.
    let row_ctx: Vec<Option<usize>> = match &context {
        Some(t) => {
            let mut ctx_of = vec![None; ids.len()];
            for (i, u) in Strings::read(t, "user_id")?.iter().enumerate() {
                if let Some(&g) = ids.get(u) {
                    ctx_of[g as usize] = Some(i);
                }
            }
            groups.iter().map(|&g| ctx_of[g as usize]).collect()
        }
        None => Vec::new(),
    };
    tracing::debug!(
        "user-day rows mapped at {:.2} s",
        started.elapsed().as_secs_f64()
    );
    names
        .iter()
        .map(|c| {
            if let Some(v) = have.get(c.as_str()) {
                return Ok(Cow::Borrowed(*v));
            }
            if has(features, c) {
                return Ok(Cow::Owned(f64_col(features, c)?));
            }
            let t = context.as_ref().filter(|t| has(t, c)).ok_or_else(|| {
                PipelineError::Config(format!(
                    "detection.gbt_features: `{c}` is neither a column of user_day_features \
                     nor of user_context"
                ))
            })?;
            let v = f64_col(t, c)?;
            Ok(Cow::Owned(
                row_ctx.iter().map(|r| r.map_or(0.0, |i| v[i])).collect(),
            ))
        })
        .collect()
}

/// User id -> dense user number, hashed with foldhash (millions of lookups per run).
type UserIds<'a> = std::collections::HashMap<&'a str, u32, foldhash::fast::RandomState>;

/// Each row's user as a dense number (first appearance order), and the map that numbers them.
fn number_users(users: &Strings) -> (Vec<u32>, UserIds<'_>) {
    let mut ids = UserIds::default();
    let groups = users
        .iter()
        .map(|u| {
            let next = ids.len() as u32;
            *ids.entry(u).or_insert(next)
        })
        .collect();
    (groups, ids)
}

/// How detection gets its model.
pub(crate) enum DetectWith<'b> {
    /// Fit every model on these rows (`vigil run`); the fitted bundle is returned.
    Fit,
    /// Apply a saved bundle (`vigil score`): no refit.
    Apply(&'b crate::bundle::ModelBundle, &'b Path),
}

/// The training-data summary of a bundle.
fn training_summary(
    days: &Strings,
    users: usize,
    y: &[u8],
    events: usize,
) -> Result<crate::bundle::TrainingSummary, PipelineError> {
    let (mut first, mut last) = (None::<&str>, None::<&str>);
    for d in days.iter() {
        first = Some(first.map_or(d, |f| f.min(d)));
        last = Some(last.map_or(d, |l| l.max(d)));
    }
    Ok(crate::bundle::TrainingSummary {
        events,
        user_days: y.len(),
        users,
        abusive_share: if y.is_empty() {
            0.0
        } else {
            y.iter().filter(|&&l| l != 0).count() as f64 / y.len() as f64
        },
        first_day: first.unwrap_or_default().to_string(),
        last_day: last.unwrap_or_default().to_string(),
    })
}

/// Train, evaluate and score (`user_day_scored`, `model_eval`, `pr_curve`), or apply a saved
/// bundle (`user_day_scored`). Both score through [`crate::bundle::ModelBundle::apply`]'s
/// artifacts; fitting returns the bundle it scored with.
pub(crate) fn detection(
    wh: &Warehouse,
    features: &Table,
    cfg: &Config,
    with: DetectWith<'_>,
    events: usize,
    out: &mut Outputs,
) -> Result<(Scored, Option<crate::bundle::ModelBundle>), PipelineError> {
    let d = &cfg.detection;
    let started = std::time::Instant::now();
    let n = features.num_rows();
    // The feature lists: the config's when fitting, the bundle's when applying.
    let (lr_features, gbt_features) = match &with {
        DetectWith::Fit => (d.features.clone(), d.gbt_features.clone()),
        DetectWith::Apply(b, dir) => {
            let mut available: Vec<String> = features
                .schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            available.extend(
                vigil_config::USER_CONTEXT_FEATURES
                    .iter()
                    .map(|s| s.to_string()),
            );
            crate::bundle::check_features(b, dir, &available)?;
            let m = &b.manifest;
            (
                m.logistic
                    .as_ref()
                    .map(|l| l.features.clone())
                    .unwrap_or_default(),
                m.boosted
                    .as_ref()
                    .map(|g| g.features.clone())
                    .unwrap_or_default(),
            )
        }
    };
    let cols: Vec<Vec<f64>> = lr_features
        .iter()
        .map(|f| f64_col(features, f))
        .collect::<Result<_, _>>()?;
    tracing::debug!(
        "feature columns read at {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let col_refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
    let x = (!col_refs.is_empty())
        .then(|| Features::new(n, col_refs.iter().map(|&c| Cow::Borrowed(c)).collect()))
        .transpose()?;
    let users = Strings::read(features, "user_id")?;
    let (groups, ids) = number_users(&users);
    let n_users = ids.len();
    tracing::debug!("user ids at {:.2} s", started.elapsed().as_secs_f64());
    let have: HashMap<&str, &[f64]> = lr_features
        .iter()
        .map(String::as_str)
        .zip(col_refs.iter().copied())
        .collect();
    let x_gbt = if gbt_features.is_empty() {
        None
    } else {
        let gbt_cols = gbt_columns(wh, features, &gbt_features, &have, &groups, &ids)?;
        Some(Features::new(n, gbt_cols)?)
    };
    drop(ids);
    tracing::debug!(
        "boosted columns at {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let n_chat = f64_col(features, "n_chat")?;
    // Read once as text: the bundle's training summary and the scored rows both need it.
    let days = Strings::read(features, "day")?;
    let heuristic_inputs = [
        f64_col(features, "block_rate")?,
        f64_col(features, "n_ips")?,
        f64_col(features, "n_warned")?,
    ];
    let h_cols = [
        n_chat.as_slice(),
        &heuristic_inputs[0],
        &heuristic_inputs[1],
        &heuristic_inputs[2],
    ];
    let (applied, detection, bundle, threshold, model) = match with {
        DetectWith::Apply(b, _) => (
            b.apply(x.as_ref(), x_gbt.as_ref(), h_cols)?,
            None,
            None,
            b.threshold(),
            b.manifest.risk_model.clone(),
        ),
        DetectWith::Fit => {
            let (x, x_gbt) = match (&x, &x_gbt) {
                (Some(x), Some(g)) => (x, g),
                _ => {
                    return Err(PipelineError::Config(
                        "detection.features and detection.gbt_features must each name a \
                         feature"
                            .into(),
                    ));
                }
            };
            let y: Vec<u8> = f64_col(features, "is_abuse_gt")?
                .iter()
                .map(|v| u8::from(*v >= 0.5))
                .collect();
            // The default profile freezes the heuristic's normaliser at fit time; the
            // notebook profile keeps the notebook's divide-by-this-batch's-maximum.
            let normalise = match cfg.profile {
                vigil_config::Profile::Notebook => vigil_detect::Normalise::Batch,
                vigil_config::Profile::Default => vigil_detect::Normalise::Frozen,
            };
            let (heuristic, heuristic_scores) =
                vigil_detect::Heuristic::fit_apply(d, normalise, h_cols);
            tracing::debug!(
                "detection inputs ({n} user-days) ready in {:.2} s",
                started.elapsed().as_secs_f64()
            );
            let mut fitted = match vigil_detect::detect(x, x_gbt, &y, Some(&groups), d, &|step| {
                tracing::info!("training {step}")
            }) {
                Ok(det) => Some(det),
                Err(e @ DetectError::NotEnoughLabels { .. }) => {
                    tracing::warn!("{e}; risk_score falls back to the heuristic score");
                    None
                }
                Err(e) => return Err(PipelineError::Detect(e)),
            };
            let manifest = crate::bundle::Manifest {
                format: crate::bundle::FORMAT.into(),
                format_version: crate::bundle::FORMAT_VERSION,
                vigil_version: env!("CARGO_PKG_VERSION").into(),
                created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                profile: format!("{:?}", cfg.profile).to_lowercase(),
                risk_model: fitted
                    .as_ref()
                    .map_or_else(|| "heuristic".to_string(), |f| f.model.clone()),
                threshold: fitted.as_ref().map(|f| f.threshold),
                heuristic,
                logistic: fitted.as_ref().map(|f| crate::bundle::LogisticStage {
                    features: lr_features.clone(),
                    model: f.logistic.0.clone(),
                    threshold: f.logistic.1,
                }),
                boosted: fitted.as_ref().map(|f| crate::bundle::BoostedStage {
                    features: gbt_features.clone(),
                    threshold: f.boosted.1,
                    trees: f.boosted.0.forest().n_trees(),
                }),
                review: cfg.review.clone(),
                enforcement: cfg.enforcement.clone(),
                config: cfg.clone(),
                training: training_summary(&days, n_users, &y, events)?,
                evaluation: fitted.as_ref().map(|f| f.evals.clone()).unwrap_or_default(),
                files: BTreeMap::new(),
            };
            let bundle = crate::bundle::ModelBundle {
                forest: fitted.as_ref().map(|f| f.boosted.0.forest().clone()),
                manifest,
            };
            // The fitted models already scored every row for their evaluation, with the
            // artifacts' own predict: those are the risks, and the bundle adds the rest.
            let heuristic = heuristic_scores;
            let applied = match fitted.as_mut() {
                Some(f) => bundle.finish(heuristic, std::mem::take(&mut f.risk)),
                None => {
                    let risk = heuristic.clone();
                    bundle.finish(heuristic, risk)
                }
            };
            let (t, model) = (bundle.threshold(), bundle.manifest.risk_model.clone());
            (applied, fitted, Some(bundle), t, model)
        }
    };
    tracing::debug!("models applied at {:.2} s", started.elapsed().as_secs_f64());
    drop(heuristic_inputs);
    let crate::bundle::Applied {
        heuristic,
        risk,
        uncertainty,
        flags,
    } = applied;
    let scored = extend_table(
        "user_day_scored",
        features,
        vec![
            ("risk_score", risk.clone()),
            ("uncertainty", uncertainty.clone()),
        ],
    )?;
    out.csv_and_parquet(&scored)?;
    tracing::debug!(
        "user_day_scored written at {:.2} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(det) = &detection {
        let e = &det.evals;
        out.csv(&table(
            "model_eval",
            vec![
                (
                    "model",
                    Col::Str(e.iter().map(|m| m.model.clone()).collect()),
                ),
                (
                    "threshold",
                    Col::F64(e.iter().map(|m| m.threshold).collect()),
                ),
                (
                    "test_precision",
                    Col::F64(e.iter().map(|m| m.test_precision).collect()),
                ),
                (
                    "test_recall",
                    Col::F64(e.iter().map(|m| m.test_recall).collect()),
                ),
                ("test_f1", Col::F64(e.iter().map(|m| m.test_f1).collect())),
                ("test_auc", Col::F64(e.iter().map(|m| m.test_auc).collect())),
            ],
        )?)?;
        let pts: Vec<(&str, &vigil_detect::PrPoint)> = det
            .pr_curves
            .iter()
            .flat_map(|(m, p)| p.iter().map(move |x| (m.as_str(), x)))
            .collect();
        out.csv(&table(
            "pr_curve",
            vec![
                (
                    "model",
                    Col::Str(pts.iter().map(|p| p.0.to_string()).collect()),
                ),
                (
                    "threshold",
                    Col::F64(pts.iter().map(|p| p.1.threshold).collect()),
                ),
                (
                    "precision",
                    Col::F64(pts.iter().map(|p| p.1.precision).collect()),
                ),
                ("recall", Col::F64(pts.iter().map(|p| p.1.recall).collect())),
            ],
        )?)?;
    }
    Ok((
        Scored {
            day: days,
            user: users,
            table: scored,
            risk,
            uncertainty,
            heuristic,
            n_chat,
            flags,
            threshold,
            model,
            detection,
        },
        bundle,
    ))
}

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
    out: &mut Outputs,
) -> Result<Queue, PipelineError> {
    let entries = vigil_review::build_queue(
        &s.risk,
        &s.uncertainty,
        &s.heuristic,
        &s.n_chat,
        s.threshold,
        &cfg.review,
    );
    let keys: Vec<(String, String)> = entries
        .iter()
        .map(|e| (s.day.get(e.row).to_string(), s.user.get(e.row).to_string()))
        .collect();
    let prompts = recent_prompts(wh, &keys, cfg.review.recent_prompts)?;
    let rows: Vec<usize> = entries.iter().map(|e| e.row).collect();
    let flag =
        |f: fn(&Flags) -> bool| Col::I64(entries.iter().map(|e| i64::from(f(&e.flags))).collect());
    let q = extend(
        "review_queue",
        &take(&s.table, &rows)?,
        vec![
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
        ],
    )?;
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
    out: &mut Outputs,
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
    let clusters = vigil_automate::cluster::cluster_texts(
        &docs,
        a.min_cases_to_cluster,
        a.max_clusters,
        a.min_df,
        a.max_features,
        a.seed,
    );
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

/// One enforcement suggestion per queue case, in queue order.
pub(crate) struct Actions {
    pub action: Vec<String>,
    pub reason: Vec<String>,
}

/// The enforcement policy compiled once over the queue's columns: its rules in order, the
/// first whose `when` holds picks the action and reason, else the defaults. Applied to a
/// batch of any size with no session tables, so the batch run and a live service (one row)
/// share it. Rules see the row's columns only.
#[derive(Debug)]
pub struct CompiledPolicy {
    rules: Vec<(vigil_warehouse::Predicate, String, String)>,
    default_action: String,
    default_reason: String,
}

impl CompiledPolicy {
    /// Compile every rule of `policy` against `schema`; an error names the rule.
    pub fn compile(
        policy: &vigil_config::EnforcementConfig,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<Self, PipelineError> {
        let mut rules = Vec::with_capacity(policy.rules.len());
        for (i, r) in policy.rules.iter().enumerate() {
            // Parsed as one expression (never pasted as written): a rule cannot close the
            // policy and add branches of its own.
            vigil_warehouse::parse_expression(&r.when).map_err(|e| {
                PipelineError::Config(format!(
                    "enforcement.rules[{i}] (action {}): `when` is not one SQL expression: {e}",
                    r.action
                ))
            })?;
            let p = vigil_warehouse::Predicate::compile(&r.when, schema.clone()).map_err(
                |message| PipelineError::EnforcementRules {
                    source: vigil_warehouse::WarehouseError::Sql {
                        context: format!("enforcement.rules[{i}] (action {})", r.action),
                        message,
                    },
                },
            )?;
            rules.push((p, r.action.clone(), r.reason.clone()));
        }
        Ok(Self {
            rules,
            default_action: policy.default_action.clone(),
            default_reason: policy.default_reason.clone(),
        })
    }

    /// The suggested action and reason of every row of `batch`, in row order.
    pub fn apply(&self, batch: &RecordBatch) -> Result<(Vec<String>, Vec<String>), PipelineError> {
        let n = batch.num_rows();
        let mut chosen: Vec<Option<usize>> = vec![None; n];
        for (k, (p, action, _)) in self.rules.iter().enumerate() {
            if chosen.iter().all(Option::is_some) {
                break;
            }
            let holds = p
                .evaluate(batch)
                .map_err(|message| PipelineError::EnforcementRules {
                    source: vigil_warehouse::WarehouseError::Sql {
                        context: format!("enforcement.rules[{k}] (action {action})"),
                        message,
                    },
                })?;
            for (slot, h) in chosen.iter_mut().zip(holds) {
                if slot.is_none() && h {
                    *slot = Some(k);
                }
            }
        }
        let pick = |c: &Option<usize>,
                    field: fn(&(vigil_warehouse::Predicate, String, String)) -> &String,
                    default: &String| {
            c.map_or_else(|| default.clone(), |k| field(&self.rules[k]).clone())
        };
        Ok((
            chosen
                .iter()
                .map(|c| pick(c, |r| &r.1, &self.default_action))
                .collect(),
            chosen
                .iter()
                .map(|c| pick(c, |r| &r.2, &self.default_reason))
                .collect(),
        ))
    }
}

/// [`CompiledPolicy`] applied to every batch of the queue: (actions, reasons) in row order.
pub fn suggest_actions(
    queue: &Table,
    policy: &vigil_config::EnforcementConfig,
) -> Result<(Vec<String>, Vec<String>), PipelineError> {
    let compiled = CompiledPolicy::compile(policy, queue.schema.clone())?;
    let (mut actions, mut reasons) = (Vec::new(), Vec::new());
    for batch in &queue.batches {
        let (a, r) = compiled.apply(batch)?;
        actions.extend(a);
        reasons.extend(r);
    }
    Ok((actions, reasons))
}

/// Evaluate the ordered policy over the queue (`enforcement_actions`).
pub(crate) fn enforcement(
    s: &Scored,
    q: &Queue,
    cfg: &Config,
    out: &mut Outputs,
) -> Result<Actions, PipelineError> {
    let n = q.entries.len();
    let with_pos = extend(
        "review_queue",
        &q.batch,
        vec![("queue_pos", Col::I64((0..n as i64).collect()))],
    )?;
    let (action, reason) = suggest_actions(&with_pos, &cfg.enforcement)?;
    // enforcement_actions.csv: by action, then risk descending (ties keep queue order)
    let mut order: Vec<usize> = (0..n).collect();
    let risk = |i: usize| s.risk[q.entries[i].row];
    order.sort_by(|&a, &b| action[a].cmp(&action[b]).then(risk(b).total_cmp(&risk(a))));
    let row = |i: usize| q.entries[i].row;
    out.csv(&table(
        "enforcement_actions",
        vec![
            (
                "day",
                Col::Str(
                    order
                        .iter()
                        .map(|&i| s.day.get(row(i)).to_string())
                        .collect(),
                ),
            ),
            (
                "user_id",
                Col::Str(
                    order
                        .iter()
                        .map(|&i| s.user.get(row(i)).to_string())
                        .collect(),
                ),
            ),
            (
                "risk_score",
                Col::F64(order.iter().map(|&i| risk(i)).collect()),
            ),
            (
                "uncertainty",
                Col::F64(order.iter().map(|&i| s.uncertainty[row(i)]).collect()),
            ),
            (
                "suggested_action",
                Col::Str(order.iter().map(|&i| action[i].clone()).collect()),
            ),
            (
                "reason_code",
                Col::Str(order.iter().map(|&i| reason[i].clone()).collect()),
            ),
        ],
    )?)?;
    Ok(Actions { action, reason })
}

/// The incident record (`incident_log.csv` and `incident_<id>.md`).
pub(crate) fn incidents(
    wh: &Warehouse,
    alerts: &[Alert],
    as_of_micros: Option<i64>,
    out: &mut Outputs,
) -> Result<Option<vigil_monitor::Incident>, PipelineError> {
    let end_us = match as_of_micros {
        Some(us) => us as f64,
        None => {
            let t = wh.query(
                "data end",
                "SELECT CAST(MAX(ts) AS BIGINT) AS end_us FROM events",
            )?;
            column_f64(&t, "end_us")?.first().copied().unwrap_or(0.0)
        }
    };
    let as_of =
        chrono::DateTime::from_timestamp_micros(if end_us.is_finite() { end_us as i64 } else { 0 })
            .unwrap_or_default();
    let inc = vigil_monitor::open_incident(alerts, as_of);
    let list: Vec<&vigil_monitor::Incident> = inc.iter().collect();
    let col = |f: fn(&vigil_monitor::Incident) -> &str| {
        Col::Str(list.iter().map(|i| f(i).to_string()).collect())
    };
    out.csv(&table(
        "incident_log",
        vec![
            ("incident_id", col(|i| &i.incident_id)),
            ("created_ts", col(|i| &i.created_ts)),
            ("severity", col(|i| &i.severity)),
            ("summary", col(|i| &i.summary)),
            ("status", col(|i| &i.status)),
            ("retrospective_stub", col(|i| &i.retrospective_stub)),
        ],
    )?)?;
    if let Some(i) = &inc {
        out.text(
            &format!("incident_{}.md", i.incident_id),
            &vigil_monitor::incident_markdown(i, alerts),
        )?;
    }
    Ok(inc)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn queue() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("risk_score", DataType::Float64, true),
            Field::new("uncertainty", DataType::Float64, true),
            Field::new("block_rate", DataType::Float64, true),
            Field::new("n_chat", DataType::Float64, true),
            Field::new("recent_prompts", DataType::Utf8, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from(vec![
                Some(0.95),
                Some(0.8),
                Some(0.6),
                None,
                Some(0.1),
            ])),
            Arc::new(Float64Array::from(vec![0.1, 0.2, 0.9, 0.1, 0.1])),
            Arc::new(Float64Array::from(vec![0.0, 0.02, 0.0, 0.5, 0.0])),
            Arc::new(Float64Array::from(vec![10.0, 5.0, 3.0, 200.0, 2.0])),
            Arc::new(StringArray::from(vec![
                "a",
                "how to bypass it",
                "c",
                "d",
                "e",
            ])),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    #[test]
    fn the_policy_gives_one_row_what_it_gives_that_row_in_a_batch() {
        let policy = vigil_config::EnforcementConfig::default();
        let batch = queue();
        let compiled = CompiledPolicy::compile(&policy, batch.schema()).unwrap();
        let (actions, reasons) = compiled.apply(&batch).unwrap();
        // The spec's policy: block, rate_limit (bypass in the prompts), escalate, and a null
        // risk holds no rule (as SQL's CASE WHEN has it), so the default.
        assert_eq!(
            actions,
            ["block", "rate_limit", "escalate", "allow", "allow"]
        );
        assert_eq!(reasons[0], "high_confidence_abuse");
        assert_eq!(reasons[3], policy.default_reason);
        for i in 0..batch.num_rows() {
            let (a, r) = compiled.apply(&batch.slice(i, 1)).unwrap();
            assert_eq!(
                (a[0].as_str(), r[0].as_str()),
                (actions[i].as_str(), reasons[i].as_str())
            );
        }
        assert_eq!(compiled.apply(&batch.slice(0, 0)).unwrap().0.len(), 0);
    }

    #[test]
    fn a_rule_that_is_no_boolean_or_names_an_unknown_column_or_a_table_is_refused() {
        let schema = queue().schema();
        for (when, want) in [
            ("no_such_column > 1", "no_such_column"),
            ("risk_score + 1", "true or false"),
            (
                "risk_score > (SELECT MAX(risk_score) FROM events)",
                "enforcement.rules[0]",
            ),
            ("false) THEN 'allow' WHEN (true", "not one SQL expression"),
        ] {
            let mut policy = vigil_config::EnforcementConfig::default();
            policy.rules.truncate(1);
            policy.rules[0].when = when.into();
            let err = CompiledPolicy::compile(&policy, schema.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{when}: {err}");
        }
    }
}
