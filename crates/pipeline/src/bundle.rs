//! The model bundle: every stage `vigil run` fitted or froze, saved in `OUT/model/` so that
//! `vigil score` (and the live service) applies exactly those numbers without refitting.
//!
//! Layout (format 1): `manifest.json` (format, versions, feature order, the heuristic and
//! logistic artifacts, review and enforcement settings, the whole config, a training-data
//! summary, the evaluation, and the SHA-256 of every other file), `trees.json` (the boosted
//! model's flat forest) and `model_card.md`. The directory is written beside its final place
//! and renamed into it, so a reader never sees half a bundle.

use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, Float64Array, Int8Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vigil_config::{Config, EnforcementConfig, ReviewConfig};
use vigil_detect::{Features, Forest, Heuristic, Logistic, ModelEval};
use vigil_review::Flags;

/// The `format` field of every bundle's manifest.
pub const FORMAT: &str = "vigil-model-bundle";
/// The layout version this Vigil writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const TREES: &str = "trees.json";
const CARD: &str = "model_card.md";

/// Why a bundle cannot be used. Every variant is the user's to fix (a wrong directory, a
/// bundle from elsewhere, a damaged copy), and each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// User: the directory holds no bundle.
    #[error(
        "{dir} is not a model bundle (no {MANIFEST}); `vigil run --out OUT` writes one to OUT/model"
    )]
    NotABundle {
        /// The directory given.
        dir: PathBuf,
    },
    /// User: the bundle was written by another Vigil version or in another layout.
    #[error(
        "model bundle {dir} was written by Vigil {found} (bundle format {found_format}); this is \
         Vigil {ours} (format {FORMAT_VERSION}): retrain with this version's `vigil run`"
    )]
    Version {
        /// The bundle.
        dir: PathBuf,
        /// The Vigil version that wrote it.
        found: String,
        /// Its format version.
        found_format: u32,
        /// This Vigil's version.
        ours: String,
    },
    /// Data: a file of the bundle is damaged or was edited.
    #[error(
        "model bundle {dir} is corrupted: {file}: {why}; copy the bundle again or retrain with \
         `vigil run`"
    )]
    Corrupt {
        /// The bundle.
        dir: PathBuf,
        /// The file at fault.
        file: String,
        /// What is wrong with it.
        why: String,
    },
    /// User: the bundle needs features the data's tables do not have.
    #[error(
        "model bundle {dir} was trained on features this data does not have: {missing}; score \
         with the feature set (and `[sql] dir`) it was trained with, or retrain"
    )]
    FeatureSet {
        /// The bundle.
        dir: PathBuf,
        /// The missing feature names.
        missing: String,
    },
    /// Environment: a file could not be read or written.
    #[error("model bundle {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A fitted logistic regression, the features it reads (in order) and its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticStage {
    /// Columns read, in order.
    pub features: Vec<String>,
    /// Scaler, coefficients and intercept.
    pub model: Logistic,
    /// Decision threshold (F1 sweep on the training split).
    pub threshold: f64,
}

/// The boosted model's features and threshold; its trees are in `trees.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoostedStage {
    /// Columns read, in order (user-day features, then `user_context` ones).
    pub features: Vec<String>,
    /// Decision threshold (F1 sweep on a held-out quarter of the training split).
    pub threshold: f64,
    /// Trees in `trees.json`.
    pub trees: usize,
}

/// What the bundle was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Events in the dataset.
    pub events: usize,
    /// User-days (rows of `user_day_features`).
    pub user_days: usize,
    /// Distinct users.
    pub users: usize,
    /// Share of user-days labelled abusive (`is_abuse_gt`).
    pub abusive_share: f64,
    /// First day of the data (UTC).
    pub first_day: String,
    /// Last day of the data (UTC).
    pub last_day: String,
}

/// `manifest.json`. Stable fields (read by other tools and later Vigil versions of the same
/// format): `format`, `format_version`, `vigil_version`, `created_at`, `risk_model`,
/// `threshold`, `training`, `evaluation`, `files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The Vigil that wrote it.
    pub vigil_version: String,
    /// When (UTC, RFC 3339).
    pub created_at: String,
    /// The configuration profile.
    pub profile: String,
    /// The model behind `risk_score`: `logistic_regression`, `gradient_boosting` or
    /// `heuristic` (too few labels to train).
    pub risk_model: String,
    /// The risk model's threshold (`None` for the heuristic: no ML flag).
    pub threshold: Option<f64>,
    /// The heuristic score with its frozen (or batch) normaliser.
    pub heuristic: Heuristic,
    /// The logistic regression, when trained.
    pub logistic: Option<LogisticStage>,
    /// The boosted model, when trained.
    pub boosted: Option<BoostedStage>,
    /// Review flag thresholds, priority weights, queue size.
    pub review: ReviewConfig,
    /// The enforcement policy.
    pub enforcement: EnforcementConfig,
    /// The whole configuration that produced the bundle.
    pub config: Config,
    /// The training data.
    pub training: TrainingSummary,
    /// Held-out evaluation of every model.
    pub evaluation: Vec<ModelEval>,
    /// SHA-256 (hex) of every other file of the bundle.
    pub files: std::collections::BTreeMap<String, String>,
    /// The rare-harm stage the models learned from, when they did: its index, scorer,
    /// aggregator, window and (through the cascade) the cut that `vigil score` and the live
    /// service apply so that a text scores as it did in training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rare_harm: Option<crate::RareHarmInfo>,
}

impl Manifest {
    /// Whether a model learned from the rare-harm stage's features (so applying the bundle
    /// needs the stage, with the same index and cut).
    pub fn learns_rare_harm(&self) -> bool {
        let lr = self.logistic.as_ref().map(|l| &l.features);
        let gbt = self.boosted.as_ref().map(|b| &b.features);
        [lr, gbt]
            .into_iter()
            .flatten()
            .flatten()
            .any(|c| crate::RARE_HARM_FEATURES.contains(&c.as_str()))
    }
}

/// A loaded (or freshly fitted) bundle: the manifest and the trees.
#[derive(Debug, Clone)]
pub struct ModelBundle {
    /// The manifest.
    pub manifest: Manifest,
    /// The boosted model's trees, when it was trained.
    pub forest: Option<Forest>,
}

/// What applying the bundle gives every row.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The normalised heuristic score.
    pub heuristic: Vec<f64>,
    /// The risk model's probability.
    pub risk: Vec<f64>,
    /// `1 - 2 |risk - 0.5|`.
    pub uncertainty: Vec<f64>,
    /// The review flags.
    pub flags: Vec<Flags>,
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ModelBundle {
    /// The risk model's threshold (infinite for the heuristic, so no ML flag is set).
    pub fn threshold(&self) -> f64 {
        self.manifest.threshold.unwrap_or(f64::INFINITY)
    }

    /// Every column the bundle reads, in a fixed order (logistic features, then the boosted
    /// model's, then the heuristic's inputs), without repeats.
    pub fn feature_columns(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut out: Vec<String> = Vec::new();
        let lists = [
            m.logistic.as_ref().map(|l| l.features.as_slice()),
            m.boosted.as_ref().map(|b| b.features.as_slice()),
        ];
        let heuristic = HEURISTIC_INPUTS.map(String::from);
        for c in lists
            .into_iter()
            .flatten()
            .flatten()
            .chain(heuristic.iter())
        {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }

    /// Apply every stage to rows given column by column: `x` for the logistic features,
    /// `x_gbt` for the boosted model's (either may be `None` when that model is absent),
    /// `heuristic_inputs` as `[n_chat, block_rate, n_ips, n_warned]`. One code path for one
    /// row or ten million: the batch pipeline, `vigil score` and [`apply_batch`] all call it.
    pub fn apply(
        &self,
        x: Option<&Features>,
        x_gbt: Option<&Features>,
        heuristic_inputs: [&[f64]; 4],
    ) -> Result<Applied, crate::PipelineError> {
        let m = &self.manifest;
        let heuristic = m.heuristic.apply(heuristic_inputs);
        let missing = |what: &str| {
            crate::PipelineError::Internal(format!("the {what} model's columns were not given"))
        };
        let risk = match m.risk_model.as_str() {
            "logistic_regression" => match (&m.logistic, x) {
                (Some(l), Some(x)) => l.model.predict(x),
                _ => return Err(missing("logistic")),
            },
            "gradient_boosting" => match (&self.forest, x_gbt) {
                (Some(f), Some(x)) => f.predict(x),
                _ => return Err(missing("boosted")),
            },
            _ => heuristic.clone(),
        };
        Ok(self.finish(heuristic, risk))
    }

    /// Uncertainty and flags from the risk and heuristic scores.
    pub(crate) fn finish(&self, heuristic: Vec<f64>, risk: Vec<f64>) -> Applied {
        let uncertainty: Vec<f64> = risk.iter().map(|&r| vigil_detect::uncertainty(r)).collect();
        let t = self.threshold();
        let flags = (0..risk.len())
            .map(|i| {
                vigil_review::queue::flags(
                    risk[i],
                    uncertainty[i],
                    heuristic[i],
                    t,
                    &self.manifest.review,
                )
            })
            .collect();
        Applied {
            heuristic,
            risk,
            uncertainty,
            flags,
        }
    }

    /// Write the bundle to `dir` (replaced whole: written beside it, then renamed in).
    pub fn save(&self, dir: &Path) -> Result<(), BundleError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BundleError::Io { path, source }
        };
        let name = dir
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        let parent = dir.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(format!(".{name}.tmp"));
        let old = parent.join(format!(".{name}.old"));
        for stale in [&tmp, &old] {
            if stale.exists() {
                std::fs::remove_dir_all(stale).map_err(io(stale))?;
            }
        }
        let written = (|| {
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            let mut manifest = self.manifest.clone();
            manifest.files.clear();
            let put = |file: &str, bytes: Vec<u8>| -> Result<String, BundleError> {
                let path = tmp.join(file);
                std::fs::write(&path, &bytes).map_err(io(&path))?;
                Ok(hex(&bytes))
            };
            if let Some(forest) = &self.forest {
                let text = serde_json::to_vec(forest).map_err(|e| BundleError::Corrupt {
                    dir: dir.to_path_buf(),
                    file: TREES.into(),
                    why: e.to_string(),
                })?;
                manifest.files.insert(TREES.into(), put(TREES, text)?);
            }
            // The card is for people (and may be edited by them): not checksummed.
            put(CARD, model_card(&manifest).into_bytes())?;
            let text = serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Corrupt {
                dir: dir.to_path_buf(),
                file: MANIFEST.into(),
                why: e.to_string(),
            })?;
            put(MANIFEST, text)?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(io(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(())
    }

    /// Load and check a bundle: its format and Vigil version, every file's checksum, and
    /// that every artifact is internally consistent (lengths, finite numbers, tree links).
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let corrupt = |file: &str, why: String| BundleError::Corrupt {
            dir: dir.to_path_buf(),
            file: file.into(),
            why,
        };
        let path = dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NotABundle {
                    dir: dir.to_path_buf(),
                });
            }
            Err(source) => return Err(BundleError::Io { path, source }),
        };
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| corrupt(MANIFEST, format!("not valid JSON ({e})")))?;
        if value.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
            return Err(corrupt(
                MANIFEST,
                format!("its `format` is not \"{FORMAT}\""),
            ));
        }
        let found = value
            .get("vigil_version")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        let found_format = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0);
        let ours = env!("CARGO_PKG_VERSION");
        if found != ours || found_format != FORMAT_VERSION {
            return Err(BundleError::Version {
                dir: dir.to_path_buf(),
                found,
                found_format,
                ours: ours.into(),
            });
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| corrupt(MANIFEST, e.to_string()))?;
        for (file, sum) in &manifest.files {
            if file.contains(['/', '\\']) || file.starts_with('.') {
                return Err(corrupt(
                    MANIFEST,
                    format!("it lists a file outside the bundle: {file:?}"),
                ));
            }
            let p = dir.join(file);
            let bytes = std::fs::read(&p).map_err(|e| corrupt(file, e.to_string()))?;
            if &hex(&bytes) != sum {
                return Err(corrupt(
                    file,
                    "its SHA-256 differs from the one in manifest.json".into(),
                ));
            }
        }
        let forest = match &manifest.boosted {
            None => None,
            Some(b) => {
                if !manifest.files.contains_key(TREES) {
                    return Err(corrupt(MANIFEST, format!("{TREES} is not listed")));
                }
                let bytes =
                    std::fs::read(dir.join(TREES)).map_err(|e| corrupt(TREES, e.to_string()))?;
                let f: Forest =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(TREES, e.to_string()))?;
                f.check(b.features.len())
                    .map_err(|e| corrupt(TREES, e.to_string()))?;
                if f.n_trees() != b.trees {
                    return Err(corrupt(
                        TREES,
                        format!("{} trees where the manifest says {}", f.n_trees(), b.trees),
                    ));
                }
                Some(f)
            }
        };
        manifest
            .heuristic
            .check()
            .map_err(|e| corrupt(MANIFEST, e.to_string()))?;
        if let Some(l) = &manifest.logistic {
            l.model
                .check(l.features.len())
                .map_err(|e| corrupt(MANIFEST, e.to_string()))?;
        }
        let needs = match manifest.risk_model.as_str() {
            "logistic_regression" => manifest.logistic.is_some(),
            "gradient_boosting" => manifest.boosted.is_some(),
            "heuristic" => true,
            _ => false,
        };
        let threshold_ok = manifest.threshold.is_none_or(f64::is_finite);
        if !needs || !threshold_ok {
            return Err(corrupt(
                MANIFEST,
                format!(
                    "risk model `{}` with threshold {:?} does not match its artifacts",
                    manifest.risk_model, manifest.threshold
                ),
            ));
        }
        manifest
            .config
            .validate()
            .map_err(|e| corrupt(MANIFEST, e.to_string()))?;
        Ok(Self { manifest, forest })
    }
}

/// The heuristic's input columns, in the order [`Heuristic::apply`] takes them.
pub const HEURISTIC_INPUTS: [&str; 4] = ["n_chat", "block_rate", "n_ips", "n_warned"];

/// Apply `bundle` to a record batch holding the columns it reads
/// ([`ModelBundle::feature_columns`]); returns the batch with `heuristic_score`,
/// `risk_score`, `uncertainty`, `flag_ml`, `flag_heur` and `flag_uncertain` appended. One row
/// or ten million: the same code as the batch pipeline.
pub fn apply_batch(
    bundle: &ModelBundle,
    batch: &RecordBatch,
) -> Result<RecordBatch, crate::PipelineError> {
    let n = batch.num_rows();
    let col = |name: &str| -> Result<Vec<f64>, crate::PipelineError> {
        let c = batch.column_by_name(name).ok_or_else(|| {
            crate::PipelineError::Config(format!("the batch has no column `{name}`"))
        })?;
        let c = arrow::compute::cast(c, &DataType::Float64)
            .map_err(|e| crate::PipelineError::Config(format!("column `{name}`: {e}")))?;
        let c = c
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| crate::PipelineError::Internal(format!("column `{name}`")))?;
        Ok((0..n)
            .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
            .collect())
    };
    let features = |names: &[String]| -> Result<Features<'static>, crate::PipelineError> {
        let cols = names
            .iter()
            .map(|c| col(c).map(std::borrow::Cow::Owned))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Features::new(n, cols)?)
    };
    let m = &bundle.manifest;
    let x = m
        .logistic
        .as_ref()
        .map(|l| features(&l.features))
        .transpose()?;
    let x_gbt = m
        .boosted
        .as_ref()
        .map(|b| features(&b.features))
        .transpose()?;
    let h: Vec<Vec<f64>> = HEURISTIC_INPUTS
        .iter()
        .map(|c| col(c))
        .collect::<Result<_, _>>()?;
    let a = bundle.apply(x.as_ref(), x_gbt.as_ref(), [&h[0], &h[1], &h[2], &h[3]])?;
    let flag = |f: fn(&Flags) -> bool| -> ArrayRef {
        std::sync::Arc::new(Int8Array::from_iter_values(
            a.flags.iter().map(|x| i8::from(f(x))),
        ))
    };
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let f64s = |v: &[f64]| -> ArrayRef { std::sync::Arc::new(Float64Array::from(v.to_vec())) };
    for (name, array) in [
        ("heuristic_score", f64s(&a.heuristic)),
        ("risk_score", f64s(&a.risk)),
        ("uncertainty", f64s(&a.uncertainty)),
        ("flag_ml", flag(|f| f.ml)),
        ("flag_heur", flag(|f| f.heuristic)),
        ("flag_uncertain", flag(|f| f.uncertain)),
    ] {
        fields.push(Field::new(name, array.data_type().clone(), false));
        columns.push(array);
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
        .map_err(|e| crate::PipelineError::Internal(format!("scored batch: {e}")))
}

/// Check that every column the bundle reads is among `available`.
pub(crate) fn check_features(
    bundle: &ModelBundle,
    dir: &Path,
    available: &[String],
) -> Result<(), BundleError> {
    let missing: Vec<String> = bundle
        .feature_columns()
        .into_iter()
        .filter(|c| !available.contains(c))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BundleError::FeatureSet {
            dir: dir.to_path_buf(),
            missing: missing.join(", "),
        })
    }
}

fn r4(v: f64) -> String {
    format!("{v:.4}")
}

/// `model_card.md`: what the model is for and not for, its data, metrics, thresholds, limits.
fn model_card(m: &Manifest) -> String {
    let t = &m.training;
    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line("# Model card: Vigil abuse risk model");
    line("");
    line(&format!(
        "Written by Vigil {} on {} (profile `{}`, bundle format {}).",
        m.vigil_version, m.created_at, m.profile, m.format_version
    ));
    line("");
    line("## Intended use");
    line("");
    line(
        "Ranks user-days of product activity by the probability that the account is abusive, \
         so human reviewers see the likeliest abuse first (`review_queue.csv`, `review.db`) and \
         enforcement rules can suggest an action. It is a prioritisation aid for trained \
         reviewers.",
    );
    line("");
    line("## Not for");
    line("");
    line(
        "- Automatic enforcement without human review: thresholds were tuned for F1 on the \
         training data, not for a false-positive budget.",
    );
    line(
        "- Data from another product, another event schema or another period without checking \
         drift (`drift.csv`) and re-evaluating on fresh labels.",
    );
    match &m.rare_harm {
        None => line("- Judging the content of messages: see Sentinel for rare harmful text."),
        Some(_) => line(
            "- Judging one message, or harm unlike the index's examples: the text signal is \
             how much a user's messages resemble the index's harmful examples, nothing more.",
        ),
    }
    line("");
    line("## Training data");
    line("");
    line(&format!(
        "{} events, {} user-days of {} users, {} to {} (UTC); {:.2}% of user-days labelled \
         abusive (`is_abuse_gt`).",
        t.events,
        t.user_days,
        t.users,
        t.first_day,
        t.last_day,
        100.0 * t.abusive_share
    ));
    line("");
    line("## Model and thresholds");
    line("");
    line(&format!(
        "`risk_score` comes from **{}**{}.",
        m.risk_model,
        m.threshold
            .map(|t| format!(", flagged for review (`flag_ml`) at risk >= {}", r4(t)))
            .unwrap_or_else(|| " (too few labels to train a model)".into())
    ));
    if let Some(l) = &m.logistic {
        line(&format!(
            "- Logistic regression on {} standardised features ({}), threshold {}.",
            l.features.len(),
            l.features.join(", "),
            r4(l.threshold)
        ));
    }
    if let Some(b) = &m.boosted {
        line(&format!(
            "- Gradient-boosted trees ({} trees) on {} features ({}), threshold {}.",
            b.trees,
            b.features.len(),
            b.features.join(", "),
            r4(b.threshold)
        ));
    }
    line(&format!(
        "- Heuristic score: weights {:?} on n_chat, block_rate, n_ips, n_warned (scales {:?}, \
         clip {}), {}; `flag_heur` at >= {}.",
        m.heuristic.weights,
        m.heuristic.scales,
        m.heuristic.clip,
        if m.heuristic.frozen_divisor.is_some() {
            "normalised by the training maximum (frozen)"
        } else {
            "normalised by the maximum of each scored batch (the notebook's rule)"
        },
        m.review.heuristic_flag
    ));
    line(&format!(
        "- `flag_uncertain` at uncertainty >= {} with risk >= {}; priority weights {:?}.",
        m.review.uncertain_flag, m.review.uncertain_min_risk, m.review.priority_weights
    ));
    if let Some(r) = &m.rare_harm {
        line(&format!(
            "- Message text: `rare_harm_affinity` (the day's messages) and \
             `rare_harm_affinity_window` ({} days) from the Sentinel index `{}`, {} scorer, \
             `{}` over each user-day's messages; {}. Applying the bundle (`vigil score`, \
             `vigil serve`) needs that index and the same encoder.",
            r.window_days,
            r.index,
            r.scorer,
            r.aggregator,
            match &r.cascade {
                Some(c) => format!(
                    "messages screened by the cascade, the exact encoder from first-stage \
                     probability {:.3e} (kept for scoring and serving)",
                    c.cut
                ),
                None => "every message scored by the exact encoder".to_string(),
            }
        ));
        if let Some(at) = m.config.sentinel.review_at {
            line(&format!(
                "- `flag_rare_harm` at window affinity >= {at}; the policy's first rule \
                 escalates those user-days to a person."
            ));
        }
    }
    line("");
    line("## Evaluation (held-out split of the training data)");
    line("");
    if m.evaluation.is_empty() {
        line("No model was trained, so there is no evaluation.");
    } else {
        line("| model | threshold | precision | recall | F1 | ROC-AUC |");
        line("|---|---|---|---|---|---|");
        for e in &m.evaluation {
            line(&format!(
                "| {} | {} | {} | {} | {} | {} |",
                e.model,
                r4(e.threshold),
                r4(e.test_precision),
                r4(e.test_recall),
                r4(e.test_f1),
                r4(e.test_auc)
            ));
        }
    }
    line("");
    line("## Known limits");
    line("");
    line(
        "- The split is by user-day: `gradient_boosting_user_split` (when present) holds out \
         whole users and is the better estimate for accounts never seen in training.",
    );
    line(
        "- Labels are `is_abuse_gt` as given; label noise and labelling policy carry straight \
         into the model.",
    );
    line(
        "- Account-history features (`user_context`) are computed from the data being scored, \
         so a user's first day has little history.",
    );
    line(
        "- On synthetic data (`vigil generate`) the classes are easy to separate; these numbers \
         say nothing about real traffic.",
    );
    s
}

impl vigil_core::Classify for BundleError {
    fn kind(&self) -> vigil_core::ErrorKind {
        use vigil_core::ErrorKind as K;
        match self {
            BundleError::Corrupt { .. } => K::BadData,
            BundleError::NotABundle { .. }
            | BundleError::Version { .. }
            | BundleError::FeatureSet { .. } => K::Usage,
            BundleError::Io { .. } => K::Environment,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;

    /// A bundle fitted on `n` synthetic rows of the heuristic's four inputs (which are also
    /// both models' features), and those rows as a record batch.
    fn fitted(n: usize, model: &str) -> (ModelBundle, RecordBatch) {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); 4];
        let mut y = Vec::new();
        for _ in 0..n {
            let v = [
                80.0 * uniform(),
                0.3 * uniform(),
                (6.0 * uniform()).floor(),
                8.0 * uniform(),
            ];
            let m = v[0] / 40.0 + 10.0 * v[1] - 2.5;
            y.push(u8::from(uniform() < 1.0 / (1.0 + (-m).exp())));
            for (c, x) in cols.iter_mut().zip(v) {
                c.push(x);
            }
        }
        let x = Features::new(
            n,
            cols.iter().map(|c| Cow::Borrowed(c.as_slice())).collect(),
        )
        .unwrap();
        let rows: Vec<usize> = (0..n).collect();
        let cfg = Config::default();
        let names: Vec<String> = HEURISTIC_INPUTS.iter().map(|s| s.to_string()).collect();
        let lr = Logistic::fit(&x, &y, &rows, 1.0, true).unwrap();
        let params = vigil_detect::GbtParams {
            trees: 15,
            learning_rate: 0.3,
            max_depth: 3,
            seed: 1,
            balanced: true,
        };
        let gbt = vigil_detect::Boosted::fit(&x, &y, &rows, params).unwrap();
        let refs = [&cols[0][..], &cols[1][..], &cols[2][..], &cols[3][..]];
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            vigil_version: env!("CARGO_PKG_VERSION").into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            profile: "default".into(),
            risk_model: model.into(),
            threshold: Some(0.5),
            heuristic: Heuristic::fit(&cfg.detection, vigil_detect::Normalise::Frozen, refs),
            logistic: Some(LogisticStage {
                features: names.clone(),
                model: lr,
                threshold: 0.5,
            }),
            boosted: Some(BoostedStage {
                features: names.clone(),
                threshold: 0.5,
                trees: gbt.forest().n_trees(),
            }),
            review: cfg.review.clone(),
            enforcement: cfg.enforcement.clone(),
            config: cfg,
            training: TrainingSummary {
                events: n,
                user_days: n,
                users: n,
                abusive_share: 0.0,
                first_day: String::new(),
                last_day: String::new(),
            },
            evaluation: Vec::new(),
            files: Default::default(),
            rare_harm: None,
        };
        let fields: Vec<Field> = names
            .iter()
            .map(|c| Field::new(c, DataType::Float64, false))
            .collect();
        let arrays: Vec<ArrayRef> = cols
            .iter()
            .map(|c| Arc::new(Float64Array::from(c.clone())) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        let bundle = ModelBundle {
            manifest,
            forest: Some(gbt.forest().clone()),
        };
        (bundle, batch)
    }

    #[test]
    fn one_row_at_a_time_scores_as_the_whole_batch_for_every_risk_model() {
        for model in ["gradient_boosting", "logistic_regression", "heuristic"] {
            let (bundle, batch) = fitted(600, model);
            let whole = apply_batch(&bundle, &batch).unwrap();
            let col = |b: &RecordBatch, name: &str| -> Vec<f64> {
                let c = b.column_by_name(name).unwrap();
                let c = c.as_any().downcast_ref::<Float64Array>().unwrap();
                c.values().to_vec()
            };
            let risk = col(&whole, "risk_score");
            let heur = col(&whole, "heuristic_score");
            assert!(
                risk.iter().any(|&r| r > 0.5) && risk.iter().any(|&r| r < 0.5),
                "{model}"
            );
            for i in 0..batch.num_rows() {
                let one = apply_batch(&bundle, &batch.slice(i, 1)).unwrap();
                assert_eq!(
                    col(&one, "risk_score")[0].to_bits(),
                    risk[i].to_bits(),
                    "{model} {i}"
                );
                assert_eq!(col(&one, "heuristic_score")[0].to_bits(), heur[i].to_bits());
            }
        }
    }

    #[test]
    fn a_saved_bundle_loads_back_and_scores_the_same() {
        let (bundle, batch) = fitted(300, "gradient_boosting");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model");
        bundle.save(&path).unwrap();
        let loaded = ModelBundle::load(&path).unwrap();
        let (a, b) = (
            apply_batch(&bundle, &batch).unwrap(),
            apply_batch(&loaded, &batch).unwrap(),
        );
        assert_eq!(a, b);
        // Saving again replaces the bundle whole and leaves no temporary directory behind.
        bundle.save(&path).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["model"]);
    }
}
