//! Scoring live user-days with a model bundle: the batch's own `apply_batch` (heuristic,
//! risk model, flags) and its `CompiledPolicy` (enforcement), applied to the rows the
//! per-user state produces, so a user-day scores the same live as in `vigil score`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int8Array, Int64Array, StringArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int8Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sha2::{Digest, Sha256};
use vigil_pipeline::{CompiledPolicy, ModelBundle};

use crate::ServeError;
use crate::rare::RareHarm;
use crate::state::{DayFeatures, UserContext, UserView};

/// How one user-day scores, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    /// The risk model's probability.
    pub risk: f64,
    /// The normalised heuristic score.
    pub heuristic: f64,
    /// `1 - 2 |risk - 0.5|`.
    pub uncertainty: f64,
    /// Risk at or above the model's threshold.
    pub flag_ml: bool,
    /// Heuristic at or above `review.heuristic_flag`.
    pub flag_heur: bool,
    /// Uncertain and risky enough to look at.
    pub flag_uncertain: bool,
    /// Any flag: the user-day belongs in the review queue.
    pub needs_review: bool,
    /// The queue's priority (expected harm).
    pub priority: f64,
    /// The enforcement policy's suggested action.
    pub action: String,
    /// The reason of the rule that chose it (the policy's default reason when none did).
    pub rule: String,
    /// The safety cap that turned the policy's action into `escalate`, when one did (set by
    /// the service when it settles the action, never by the scorer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capped_by: Option<String>,
    /// The day's last normalised prompts, as the batch queue shows them (for the review
    /// case; never in an answer or a log).
    #[serde(skip)]
    pub recent_prompts: String,
    /// The user's rare-harm affinity reached `[serve] rare_harm_review_at` (set by the
    /// service, never by the scorer).
    #[serde(skip)]
    pub rare_harm: bool,
}

/// One row to score.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The user.
    pub user_id: &'a str,
    /// The day's features.
    pub day: &'a DayFeatures,
    /// The user's history and fanout.
    pub context: &'a UserContext,
    /// The day's chat prompts (raw, in time order).
    pub prompts: &'a [String],
    /// `(rare_harm_affinity, rare_harm_affinity_window)` when the bundle learned from them
    /// ([`Scorer::rare_features`]).
    pub rare: Option<(f64, f64)>,
}

/// The rare-harm stage as a bundle trained with it uses it: the service's index (the same
/// scorer and cut as in training), the window and the review threshold.
#[derive(Debug)]
struct RareUse {
    harm: Arc<RareHarm>,
    window_days: i32,
    review_at: Option<f64>,
}

/// A loaded bundle with its compiled policy.
#[derive(Debug)]
pub struct Scorer {
    bundle: ModelBundle,
    policy: CompiledPolicy,
    /// SHA-256 of the bundle's manifest: the version every decision records.
    version: String,
    dir: PathBuf,
    rare: Option<RareUse>,
}

const DAY_INT_COLUMNS: [&str; 8] = [
    "n_events",
    "n_chat",
    "tokens_in_sum",
    "tokens_out_sum",
    "n_blocked",
    "n_warned",
    "n_ips",
    "n_devices",
];

/// The schema of `review_queue` (what enforcement rules see), as the batch builds it (with
/// the rare-harm columns when the bundle learned from them).
fn queue_schema(rare: bool) -> SchemaRef {
    let mut f = vec![
        Field::new("day", DataType::Date32, false),
        Field::new("user_id", DataType::Utf8, false),
    ];
    for c in ["n_events", "n_chat", "tokens_in_sum", "tokens_out_sum"] {
        f.push(Field::new(c, DataType::Int64, false));
    }
    f.push(Field::new("latency_ms_avg", DataType::Float64, false));
    for c in ["n_blocked", "n_warned", "n_ips", "n_devices"] {
        f.push(Field::new(c, DataType::Int64, false));
    }
    f.push(Field::new("is_abuse_gt", DataType::Int8, true));
    for c in [
        "block_rate",
        "warn_rate",
        "chat_fraction",
        "risk_score",
        "uncertainty",
        "heuristic_score",
    ] {
        f.push(Field::new(c, DataType::Float64, false));
    }
    for c in ["flag_ml", "flag_heur", "flag_uncertain", "needs_review"] {
        f.push(Field::new(c, DataType::Int64, false));
    }
    if rare {
        for c in vigil_pipeline::RARE_HARM_FEATURES {
            f.push(Field::new(c, DataType::Float64, false));
        }
    }
    f.push(Field::new("recent_prompts", DataType::Utf8, false));
    f.push(Field::new("priority", DataType::Float64, false));
    if rare {
        f.push(Field::new("flag_rare_harm", DataType::Int64, false));
    }
    Arc::new(Schema::new(f))
}

impl Scorer {
    /// Load the bundle at `dir` and compile its enforcement policy; `rare` is the service's
    /// Sentinel index, needed when the bundle learned from the rare-harm features.
    pub fn load(dir: &Path, rare: Option<&Arc<RareHarm>>) -> Result<Self, ServeError> {
        let bundle = ModelBundle::load(dir).map_err(ServeError::Bundle)?;
        Self::from_bundle(dir, bundle, rare)
    }

    /// [`Scorer::load`] of a bundle already read from `dir`.
    pub fn from_bundle(
        dir: &Path,
        bundle: ModelBundle,
        rare: Option<&Arc<RareHarm>>,
    ) -> Result<Self, ServeError> {
        let manifest = std::fs::read(dir.join("manifest.json"))
            .map_err(|e| ServeError::io(&dir.join("manifest.json"), e))?;
        let version: String = Sha256::digest(&manifest)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let rare = if bundle.manifest.learns_rare_harm() {
            Some(Self::rare_use(dir, &bundle, rare)?)
        } else {
            None
        };
        let policy =
            CompiledPolicy::compile(&bundle.manifest.enforcement, queue_schema(rare.is_some()))
                .map_err(ServeError::Pipeline)?;
        Ok(Self {
            bundle,
            policy,
            version,
            dir: dir.to_path_buf(),
            rare,
        })
    }

    /// Check that the service scores messages as the bundle's training run did.
    fn rare_use(
        dir: &Path,
        bundle: &ModelBundle,
        rare: Option<&Arc<RareHarm>>,
    ) -> Result<RareUse, ServeError> {
        let m = &bundle.manifest;
        let trained = m.rare_harm.as_ref();
        let index = trained
            .map(|r| r.index.clone())
            .or_else(|| m.config.sentinel.index.clone())
            .unwrap_or_else(|| "?".into());
        let Some(harm) = rare else {
            return Err(ServeError::Usage(format!(
                "the model bundle {} learned from the rare-harm features: serve it with the \
                 index it was trained with (--sentinel-index {index}, and --sentinel-model for \
                 the encoder)",
                dir.display()
            )));
        };
        if let Some(t) = trained {
            let (scorer, aggregator) = (harm.kind().name(), harm.aggregator_name());
            if t.scorer != scorer || t.aggregator != aggregator {
                return Err(ServeError::Usage(format!(
                    "the model bundle {} learned from rare-harm features scored with the {} \
                     scorer ({}), but the index {} gives the {scorer} scorer ({aggregator}): \
                     serve it with the index it was trained with ({index})",
                    dir.display(),
                    t.scorer,
                    t.aggregator,
                    harm.location()
                )));
            }
            if let Some(f) = &t.fingerprint
                && f != harm.fingerprint()
            {
                return Err(ServeError::Usage(format!(
                    "the model bundle {} was trained with the index {index} (fingerprint {f}); \
                     {} is another index (fingerprint {}): serve it with the index it was \
                     trained with",
                    dir.display(),
                    harm.location(),
                    harm.fingerprint()
                )));
            }
            let cut = t.cascade.as_ref().map(|c| c.cut);
            if cut.map(f64::to_bits) != harm.cut().map(f64::to_bits) {
                return Err(ServeError::Usage(format!(
                    "the model bundle {} scores messages {}, the running service {}: restart \
                     the service to serve it",
                    dir.display(),
                    cut.map_or_else(
                        || "exactly".to_string(),
                        |c| format!("through the cascade cut {c}")
                    ),
                    harm.cut().map_or_else(
                        || "exactly".to_string(),
                        |c| format!("through the cascade cut {c}")
                    ),
                )));
            }
        }
        Ok(RareUse {
            harm: harm.clone(),
            window_days: i32::try_from(m.config.sentinel.window_days).unwrap_or(i32::MAX),
            review_at: m.config.sentinel.review_at,
        })
    }

    /// The cascade cut a bundle at `dir` was trained with, when it learned from the
    /// rare-harm features through the cascade (what the service's index must screen with).
    pub fn trained_cut(bundle: &ModelBundle) -> Option<f64> {
        bundle
            .manifest
            .rare_harm
            .as_ref()
            .filter(|_| bundle.manifest.learns_rare_harm())
            .and_then(|r| r.cascade.as_ref())
            .map(|c| c.cut)
    }

    /// The rare-harm window (days) when the bundle learned from it: the state keeps that
    /// many days of scored messages before each retained day.
    pub fn rare_window(&self) -> Option<u32> {
        self.rare
            .as_ref()
            .map(|r| u32::try_from(r.window_days).unwrap_or(u32::MAX))
    }

    /// Day `i` of `view`'s rare-harm features as the batch stage defines them: the
    /// affinity of the day's messages and of the messages of the `window_days` days up to
    /// it. `None` when the bundle does not use them.
    pub fn rare_features(&self, view: &UserView, i: usize) -> Option<(f64, f64)> {
        let r = self.rare.as_ref()?;
        let day = view.days.get(i)?.day;
        let of_day = view
            .rare
            .iter()
            .find(|(d, _)| *d == day)
            .map_or(&[][..], |(_, m)| m.as_slice());
        let window: Vec<(u64, f64)> = view
            .rare
            .iter()
            .filter(|(d, _)| *d <= day && *d > day - r.window_days)
            .flat_map(|(_, m)| m.iter().copied())
            .collect();
        Some((r.harm.set_affinity(of_day), r.harm.set_affinity(&window)))
    }

    /// The bundle's version hash.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the bundle was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundle.
    pub fn bundle(&self) -> &ModelBundle {
        &self.bundle
    }

    /// Score rows (one or many: the same code).
    pub fn score(&self, rows: &[Row<'_>]) -> Result<Vec<Score>, ServeError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let bug = |e: arrow::error::ArrowError| ServeError::Internal(e.to_string());
        let n = rows.len();
        let int = |f: fn(&DayFeatures) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| f(r.day))))
        };
        let flt = |f: &dyn Fn(&Row<'_>) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(rows.iter().map(f)))
        };
        let day: ArrayRef = Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|r| r.day.day),
        ));
        let user: ArrayRef = Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.user_id),
        ));
        let gt: ArrayRef = Arc::new(Int8Array::from_iter(rows.iter().map(|r| r.day.is_abuse_gt)));
        let ints = [
            int(|d| d.n_events),
            int(|d| d.n_chat),
            int(|d| d.tokens_in_sum),
            int(|d| d.tokens_out_sum),
            int(|d| d.n_blocked),
            int(|d| d.n_warned),
            int(|d| d.n_ips),
            int(|d| d.n_devices),
        ];
        let mut fields = vec![
            Field::new("day", DataType::Date32, false),
            Field::new("user_id", DataType::Utf8, false),
        ];
        let mut cols: Vec<ArrayRef> = vec![day.clone(), user.clone()];
        for (name, c) in DAY_INT_COLUMNS.iter().zip(ints.iter()) {
            fields.push(Field::new(*name, DataType::Int64, false));
            cols.push(c.clone());
        }
        let latency = flt(&|r| r.day.latency_ms_avg);
        let ratios = [
            ("block_rate", flt(&|r| r.day.block_rate)),
            ("warn_rate", flt(&|r| r.day.warn_rate)),
            ("chat_fraction", flt(&|r| r.day.chat_fraction)),
        ];
        let context = [
            ("user_block_rate", flt(&|r| r.context.user_block_rate)),
            ("user_warn_rate", flt(&|r| r.context.user_warn_rate)),
            ("user_days_active", flt(&|r| r.context.user_days_active)),
            (
                "user_events_per_day",
                flt(&|r| r.context.user_events_per_day),
            ),
            ("ip_fanout", flt(&|r| r.context.ip_fanout)),
            ("device_fanout", flt(&|r| r.context.device_fanout)),
            ("payment_fanout", flt(&|r| r.context.payment_fanout)),
        ];
        fields.push(Field::new("latency_ms_avg", DataType::Float64, false));
        cols.push(latency.clone());
        for (name, c) in ratios.iter().chain(context.iter()) {
            fields.push(Field::new(*name, DataType::Float64, false));
            cols.push(c.clone());
        }
        let rare_cols: Option<[ArrayRef; 2]> = self.rare.as_ref().map(|_| {
            let get = |k: usize| -> ArrayRef {
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| {
                    let (d, w) = r.rare.unwrap_or((0.0, 0.0));
                    if k == 0 { d } else { w }
                })))
            };
            [get(0), get(1)]
        });
        if let Some(rc) = &rare_cols {
            for (name, c) in vigil_pipeline::RARE_HARM_FEATURES.iter().zip(rc) {
                fields.push(Field::new(*name, DataType::Float64, false));
                cols.push(c.clone());
            }
        }
        let features = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(bug)?;
        let scored =
            vigil_pipeline::apply_batch(&self.bundle, &features).map_err(ServeError::Pipeline)?;
        let f64s = |name: &str| -> Result<Vec<f64>, ServeError> {
            Ok(scored
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or_else(|| ServeError::Internal(format!("scored rows lack `{name}`")))?
                .values()
                .to_vec())
        };
        let flags = |name: &str| -> Result<Vec<i64>, ServeError> {
            Ok(scored
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Int8Type>())
                .ok_or_else(|| ServeError::Internal(format!("scored rows lack `{name}`")))?
                .values()
                .iter()
                .map(|v| i64::from(*v))
                .collect())
        };
        let (risk, unc, heur) = (
            f64s("risk_score")?,
            f64s("uncertainty")?,
            f64s("heuristic_score")?,
        );
        let (ml, fh, fu) = (
            flags("flag_ml")?,
            flags("flag_heur")?,
            flags("flag_uncertain")?,
        );
        let review = &self.bundle.manifest.review;
        let mut priority: Vec<f64> = (0..n)
            .map(|i| {
                vigil_review::queue::priority(risk[i], unc[i], rows[i].day.n_chat as f64, review)
            })
            .collect();
        // The batch queue's rare-harm flag and priority floor, from the window affinity.
        let mut rare_flag = vec![0i64; n];
        if let Some(at) = self.rare.as_ref().and_then(|r| r.review_at) {
            for i in 0..n {
                let w = rows[i].rare.map_or(0.0, |r| r.1);
                let (flag, p) = vigil_review::queue::rare_harm_priority(priority[i], w, at);
                rare_flag[i] = i64::from(flag);
                priority[i] = p;
            }
        }
        let needs: Vec<i64> = (0..n)
            .map(|i| i64::from(ml[i] + fh[i] + fu[i] + rare_flag[i] > 0))
            .collect();
        let keep = review.recent_prompts;
        let prompts: Vec<String> = rows
            .iter()
            .map(|r| {
                let from = r.prompts.len().saturating_sub(keep);
                r.prompts[from..]
                    .iter()
                    .map(|p| vigil_automate::normalize_text(p))
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        let i64s = |v: &[i64]| -> ArrayRef { Arc::new(Int64Array::from(v.to_vec())) };
        let f64a = |v: &[f64]| -> ArrayRef { Arc::new(Float64Array::from(v.to_vec())) };
        let mut qcols: Vec<ArrayRef> = vec![day, user];
        qcols.extend(ints[..4].iter().cloned());
        qcols.push(latency);
        qcols.extend(ints[4..].iter().cloned());
        qcols.push(gt);
        qcols.extend(ratios.iter().map(|r| r.1.clone()));
        qcols.extend([f64a(&risk), f64a(&unc), f64a(&heur)]);
        qcols.extend([i64s(&ml), i64s(&fh), i64s(&fu), i64s(&needs)]);
        if let Some(rc) = &rare_cols {
            qcols.extend(rc.iter().cloned());
        }
        qcols.push(Arc::new(StringArray::from_iter_values(prompts.iter())));
        qcols.push(f64a(&priority));
        if rare_cols.is_some() {
            qcols.push(i64s(&rare_flag));
        }
        let queue = RecordBatch::try_new(queue_schema(rare_cols.is_some()), qcols).map_err(bug)?;
        let (actions, reasons) = self.policy.apply(&queue).map_err(ServeError::Pipeline)?;
        debug_assert_eq!(queue.column(0).len(), n);
        Ok(prompts
            .into_iter()
            .enumerate()
            .map(|(i, recent_prompts)| Score {
                risk: risk[i],
                heuristic: heur[i],
                uncertainty: unc[i],
                flag_ml: ml[i] == 1,
                flag_heur: fh[i] == 1,
                flag_uncertain: fu[i] == 1,
                needs_review: needs[i] == 1,
                priority: priority[i],
                action: actions[i].clone(),
                rule: reasons[i].clone(),
                capped_by: None,
                recent_prompts,
                rare_harm: rare_flag[i] == 1,
            })
            .collect())
    }
}
