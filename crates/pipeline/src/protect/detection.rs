//! Detection: fit (or apply a saved bundle), evaluate and score every user-day.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use vigil_config::Config;
use vigil_detect::{DetectError, Features};
use vigil_warehouse::{Table, Warehouse};

use crate::PipelineError;
use crate::tables::{Col, Strings, extend_table, table};

use super::{Scored, Written, f64_col};

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

/// `x` (columns named by `names`) without the rare-harm columns; `None` when it has none of
/// them or nothing else.
fn without_text<'a>(
    x: &'a Features<'_>,
    names: &[String],
    n: usize,
) -> Result<Option<Features<'a>>, PipelineError> {
    let keep: Vec<usize> = (0..x.d())
        .filter(|&j| {
            !names
                .get(j)
                .is_some_and(|f| crate::protect::RARE_HARM_FEATURES.contains(&f.as_str()))
        })
        .collect();
    if keep.len() == x.d() || keep.is_empty() {
        return Ok(None);
    }
    Ok(Some(Features::new(
        n,
        keep.iter().map(|&j| Cow::Borrowed(x.col(j))).collect(),
    )?))
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
    out: &mut Written,
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
    // The behaviour-only boosted model's risk for every row and its threshold (fitting with
    // the rare-harm features): the queue it would have driven, for the report.
    let mut behaviour_only: Option<(Vec<f64>, f64)> = None;
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
            // With the rare-harm features, the same models without them, for an honest
            // comparison in model_eval.csv (each beside its model with the text signal).
            if let Some(f) = fitted.as_mut() {
                if let Some(without) = without_text(x, &lr_features, n)? {
                    let eval = vigil_detect::logistic_eval(
                        &without,
                        &y,
                        d,
                        "logistic_regression_without_text",
                    )?;
                    let at = f
                        .evals
                        .iter()
                        .position(|e| e.model == "logistic_regression")
                        .map_or(f.evals.len(), |i| i + 1);
                    f.evals.insert(at, eval);
                }
                if let Some(without) = without_text(x_gbt, &gbt_features, n)? {
                    let (eval, risk, t) = vigil_detect::boosted_eval_scored(
                        &without,
                        &y,
                        d,
                        "gradient_boosting_without_text",
                    )?;
                    f.evals.push(eval);
                    behaviour_only = Some((risk, t));
                }
            }
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
                rare_harm: None,
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
                ("test_ece", Col::F64(e.iter().map(|m| m.test_ece).collect())),
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
            behaviour_only,
        },
        bundle,
    ))
}
