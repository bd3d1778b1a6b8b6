//! The calibrated scorer: per-message probabilities from models fitted on an index's own
//! examples, and group aggregators built for "a few harmful messages among many ordinary ones".
//!
//! Fitting uses only the index material: an L2 logistic regression on the embeddings and, when
//! the index keeps its texts, one on hashed TF-IDF n-grams; each model's penalty is chosen by
//! stratified 5-fold cross-validation (out-of-fold log-loss), and a two-input logistic
//! regression on the out-of-fold logits blends and calibrates them (Platt scaling). The
//! default group aggregator is chosen on groups simulated from the out-of-fold probabilities
//! (the first of [`GroupAggregator::all`] within [`SELECTION_TOLERANCE`] of the best).
//! It is stored beside the reference library's three index files in two files that library
//! ignores ([`MANIFEST_FILE`], [`TENSORS_FILE`]), so an index stays interchangeable.

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::lexical::{DEFAULT_BUCKETS, Vocabulary};
use crate::logistic::{self, Linear, Rows, sigmoid};
use crate::{Aggregator, Matrix, SentinelError, SentinelIndex};

/// The calibrated scorer's manifest (JSON).
pub const MANIFEST_FILE: &str = "vigil_calibrated_scorer.json";
/// Its weights (safetensors).
pub const TENSORS_FILE: &str = "vigil_calibrated_scorer.safetensors";
/// `format` of the manifest.
pub const FORMAT: &str = "vigil-calibrated-scorer";
/// The manifest version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Default base rate: the share of a source's messages expected to be harmful before reading
/// them, to which probabilities are re-based for the count-style aggregators.
pub const DEFAULT_BASE_RATE: f64 = 0.05;

const FOLDS: usize = 5;
const EMBEDDING_PENALTIES: [f64; 6] = [0.03, 0.1, 0.3, 1.0, 3.0, 10.0];
const LEXICAL_PENALTIES: [f64; 5] = [0.03, 0.1, 0.3, 1.0, 3.0];
const SIMULATED_GROUPS: usize = 2000;
const SIMULATED_GROUP_SIZE: usize = 20;
const SIMULATED_MAX_HARMFUL: usize = 4;
/// About one standard error of a ROC-AUC over the simulated groups: aggregators closer than
/// this to the best are not told apart, and the earlier one in [`GroupAggregator::all`] wins.
const SELECTION_TOLERANCE: f64 = 0.005;

/// How a group's per-message probabilities become one affinity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GroupAggregator {
    /// Expected number of harmful messages: the sum of probabilities re-based to the base rate.
    ExpectedCount,
    /// Probability that at least one message is harmful (independent messages, base rate).
    NoisyOr,
    /// Sum of the positive log-likelihood ratios (evidence for harm; ordinary messages add 0).
    LlrSum,
    /// One of the reference's six, applied to the probabilities.
    Reference(Aggregator),
}

impl GroupAggregator {
    /// Every aggregator: the three count-style ones, then the reference six.
    pub fn all() -> Vec<GroupAggregator> {
        let mut v = vec![Self::ExpectedCount, Self::NoisyOr, Self::LlrSum];
        v.extend(Aggregator::ALL.map(Self::Reference));
        v
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ExpectedCount => "expected_count",
            Self::NoisyOr => "noisy_or",
            Self::LlrSum => "llr_sum",
            Self::Reference(a) => a.name(),
        }
    }

    /// The affinity of a group whose messages have probabilities `p` (at the training prior
    /// `prior`); 0 for an empty group.
    pub fn apply(&self, p: &[f64], prior: f64, base_rate: f64) -> f64 {
        if p.is_empty() {
            return 0.0;
        }
        let shift = logit(base_rate) - logit(prior);
        let rebased = || p.iter().map(move |&q| sigmoid(logit(q) + shift));
        match self {
            Self::ExpectedCount => rebased().sum(),
            Self::NoisyOr => {
                1.0 - rebased()
                    .map(|q| (1.0 - q).max(1e-300).ln())
                    .sum::<f64>()
                    .exp()
            }
            Self::LlrSum => p.iter().map(|&q| (logit(q) - logit(prior)).max(0.0)).sum(),
            Self::Reference(a) => a.apply(p),
        }
    }
}

impl std::str::FromStr for GroupAggregator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::all()
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown aggregator `{s}` (expected one of: {})",
                    Self::all()
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    (p / (1.0 - p)).ln()
}

/// One per-message model's summary in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartSummary {
    /// L2 penalty chosen by cross-validation.
    pub penalty: f64,
    /// Intercept.
    pub bias: f64,
    /// Out-of-fold ROC-AUC per message at that penalty.
    pub cv_roc_auc: f64,
}

/// What `vigil_calibrated_scorer.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Embedding dimension.
    pub dim: usize,
    /// Positive examples fitted on.
    pub n_positive: usize,
    /// Negative examples fitted on.
    pub n_negative: usize,
    /// Positive share of the examples: the prior the probabilities are calibrated at.
    pub prior: f64,
    /// Base rate the count-style aggregators re-base to.
    pub base_rate: f64,
    /// The embedding model.
    pub embedding: PartSummary,
    /// The lexical model (absent when the index keeps no texts).
    pub lexical: Option<PartSummary>,
    /// Hash buckets of the lexical features.
    pub lexical_buckets: Option<u32>,
    /// Blend weights on the two logits (embedding, lexical) and intercept.
    pub blend: [f64; 3],
    /// Out-of-fold ROC-AUC per message of the blend.
    pub cv_roc_auc: f64,
    /// The default aggregator (chosen on simulated groups).
    pub default_aggregator: String,
    /// Each aggregator's ROC-AUC on those simulated groups.
    pub aggregator_selection: Vec<(String, f64)>,
    /// Seed of the folds and the simulation.
    pub seed: u64,
}

/// A fitted calibrated scorer.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibratedScorer {
    /// The manifest.
    pub manifest: Manifest,
    embedding: Vec<f64>,
    lexical: Option<(Vocabulary, Vec<f64>)>,
}

/// splitmix64: a stable stream for folds and simulations (independent of `rand` versions).
struct Stream(u64);
impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// ROC-AUC with ties counted half (`None` without both classes).
pub fn roc_auc(scores: &[f64], y: &[bool]) -> Option<f64> {
    crate::compare::ranking(scores, y).map(|r| r.roc_auc)
}

/// Weighted (balanced) mean log-loss of logits.
fn balanced_log_loss(z: &[f64], y: &[bool]) -> f64 {
    let n_pos = y.iter().filter(|&&b| b).count().max(1) as f64;
    let n_neg = (y.len() as f64 - n_pos).max(1.0);
    z.iter()
        .zip(y)
        .map(|(&z, &yi)| {
            let m = if yi { -z } else { z };
            let l = m.max(0.0) + (-m.abs()).exp().ln_1p();
            if yi { l / n_pos } else { l / n_neg }
        })
        .sum::<f64>()
        / 2.0
}

/// Stratified fold of every row.
fn folds(y: &[bool], seed: u64) -> Vec<usize> {
    let mut stream = Stream(seed);
    let mut fold = vec![0; y.len()];
    for class in [true, false] {
        let mut rows: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        stream.shuffle(&mut rows);
        for (k, &r) in rows.iter().enumerate() {
            fold[r] = k % FOLDS;
        }
    }
    fold
}

/// Out-of-fold logits at each penalty, then the penalty with the lowest log-loss: (penalty,
/// out-of-fold logits, model on all rows).
fn choose_penalty(
    x: &dyn Rows,
    y: &[bool],
    fold: &[usize],
    penalties: &[f64],
    what: &str,
) -> Result<(f64, Vec<f64>, Linear), SentinelError> {
    let jobs: Vec<(usize, usize)> = (0..penalties.len())
        .flat_map(|p| (0..FOLDS).map(move |f| (p, f)))
        .collect();
    let fitted: Vec<(usize, usize, Linear)> = jobs
        .par_iter()
        .map(|&(p, f)| {
            let train: Vec<usize> = (0..y.len()).filter(|&i| fold[i] != f).collect();
            logistic::fit(x, y, &train, penalties[p], true).map(|m| (p, f, m))
        })
        .collect::<Result<_, _>>()?;
    let mut best: Option<(f64, f64, Vec<f64>)> = None;
    for (p, &penalty) in penalties.iter().enumerate() {
        let mut oof = vec![0.0; y.len()];
        for (_, f, m) in fitted.iter().filter(|(pp, _, _)| *pp == p) {
            for i in (0..y.len()).filter(|&i| fold[i] == *f) {
                oof[i] = m.logit(x, i);
            }
        }
        let loss = balanced_log_loss(&oof, y);
        tracing::info!(
            "calibrated scorer, {what} model: penalty {penalty}: out-of-fold log-loss {loss:.4}, ROC-AUC {:.4}",
            roc_auc(&oof, y).unwrap_or(f64::NAN)
        );
        if best.as_ref().is_none_or(|(l, _, _)| loss < *l) {
            best = Some((loss, penalty, oof));
        }
    }
    let (_, penalty, oof) =
        best.ok_or_else(|| SentinelError::Internal("no penalty to choose from".into()))?;
    let all: Vec<usize> = (0..y.len()).collect();
    let model = logistic::fit(x, y, &all, penalty, true)?;
    Ok((penalty, oof, model))
}

/// The aggregator that best separates groups simulated from out-of-fold probabilities:
/// groups of 20 messages, half of them holding 1-4 harmful ones.
fn choose_aggregator(
    p: &[f64],
    y: &[bool],
    prior: f64,
    seed: u64,
) -> (GroupAggregator, Vec<(String, f64)>) {
    let pos: Vec<f64> = (0..p.len()).filter(|&i| y[i]).map(|i| p[i]).collect();
    let neg: Vec<f64> = (0..p.len()).filter(|&i| !y[i]).map(|i| p[i]).collect();
    let mut stream = Stream(seed ^ 0x5151);
    let mut groups = Vec::with_capacity(SIMULATED_GROUPS);
    let mut labels = Vec::with_capacity(SIMULATED_GROUPS);
    for g in 0..SIMULATED_GROUPS {
        let harmful = g % 2 == 1;
        let k = if harmful {
            1 + stream.below(SIMULATED_MAX_HARMFUL)
        } else {
            0
        };
        let mut group: Vec<f64> = (0..k).map(|_| pos[stream.below(pos.len())]).collect();
        group.extend((k..SIMULATED_GROUP_SIZE).map(|_| neg[stream.below(neg.len())]));
        groups.push(group);
        labels.push(harmful);
    }
    let table: Vec<(GroupAggregator, f64)> = GroupAggregator::all()
        .into_iter()
        .map(|a| {
            let aff: Vec<f64> = groups
                .iter()
                .map(|g| a.apply(g, prior, DEFAULT_BASE_RATE))
                .collect();
            (a, roc_auc(&aff, &labels).unwrap_or(f64::NAN))
        })
        .collect();
    let best = table.iter().map(|t| t.1).fold(f64::NEG_INFINITY, f64::max);
    // The first in order (count-style first) within the simulation's noise of the best.
    let chosen = table
        .iter()
        .find(|t| t.1 >= best - SELECTION_TOLERANCE)
        .map_or(GroupAggregator::ExpectedCount, |t| t.0);
    let named = table
        .into_iter()
        .map(|(a, auc)| (a.name().to_string(), auc))
        .collect();
    (chosen, named)
}

impl CalibratedScorer {
    /// Fit on an index's examples (and its texts, when it keeps them). `seed` fixes the folds
    /// and the simulated groups, so a refit gives the same scorer.
    pub fn fit(index: &SentinelIndex, seed: u64) -> Result<Self, SentinelError> {
        let (n_pos, n_neg) = (index.positive.rows, index.negative.rows);
        if n_pos < FOLDS || n_neg < FOLDS {
            return Err(SentinelError::BadInput(format!(
                "the calibrated scorer needs at least {FOLDS} positive and {FOLDS} negative \
                 examples for its cross-validation; the index has {n_pos} and {n_neg}"
            )));
        }
        let mut x = index.positive.clone();
        x.data.extend_from_slice(&index.negative.data);
        x.rows += n_neg;
        let y: Vec<bool> = (0..n_pos + n_neg).map(|i| i < n_pos).collect();
        let fold = folds(&y, seed);
        let (e_pen, e_oof, e_model) =
            choose_penalty(&x, &y, &fold, &EMBEDDING_PENALTIES, "embedding")?;
        let texts = match (&index.positive_corpus, &index.negative_corpus) {
            (Some(p), Some(n)) if p.len() == n_pos && n.len() == n_neg => {
                Some(p.iter().chain(n).cloned().collect::<Vec<String>>())
            }
            _ => {
                tracing::warn!(
                    "the index keeps no example texts: the calibrated scorer uses the embeddings alone"
                );
                None
            }
        };
        let lexical = match texts {
            Some(texts) => {
                let vocab = Vocabulary::fit(&texts, DEFAULT_BUCKETS, 2);
                // Fitted over the buckets in use only, then spread back to all of them.
                let mut rows = vocab.rows(&texts);
                let used: Vec<u32> = (0..vocab.buckets)
                    .filter(|&b| vocab.idf[b as usize] > 0.0)
                    .collect();
                let mut column = vec![0u32; vocab.buckets as usize];
                for (c, &b) in used.iter().enumerate() {
                    column[b as usize] = c as u32;
                }
                for row in &mut rows.rows {
                    for e in row.iter_mut() {
                        e.0 = column[e.0 as usize];
                    }
                }
                rows.cols = used.len();
                let (pen, oof, mut model) =
                    choose_penalty(&rows, &y, &fold, &LEXICAL_PENALTIES, "lexical")?;
                let mut weights = vec![0.0; vocab.buckets as usize];
                for (c, &b) in used.iter().enumerate() {
                    weights[b as usize] = model.weights[c];
                }
                model.weights = weights;
                Some((vocab, pen, oof, model))
            }
            None => None,
        };
        // Blend and calibrate on the out-of-fold logits, unweighted: probabilities at the
        // index's own class balance (`prior`).
        let stacked: Vec<Vec<f32>> = (0..y.len())
            .map(|i| {
                vec![
                    e_oof[i] as f32,
                    lexical.as_ref().map_or(0.0, |l| l.2[i] as f32),
                ]
            })
            .collect();
        let stacked = Matrix::from_rows(&stacked)?;
        let all: Vec<usize> = (0..y.len()).collect();
        let blend = logistic::fit(&stacked, &y, &all, 1e-6, false)?;
        let oof_p: Vec<f64> = (0..y.len())
            .map(|i| sigmoid(blend.logit(&stacked, i)))
            .collect();
        let prior = n_pos as f64 / (n_pos + n_neg) as f64;
        let (default, selection) = choose_aggregator(&oof_p, &y, prior, seed);
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            dim: index.positive.dim,
            n_positive: n_pos,
            n_negative: n_neg,
            prior,
            base_rate: DEFAULT_BASE_RATE,
            embedding: PartSummary {
                penalty: e_pen,
                bias: e_model.bias,
                cv_roc_auc: roc_auc(&e_oof, &y).unwrap_or(f64::NAN),
            },
            lexical: lexical.as_ref().map(|(_, pen, oof, m)| PartSummary {
                penalty: *pen,
                bias: m.bias,
                cv_roc_auc: roc_auc(oof, &y).unwrap_or(f64::NAN),
            }),
            lexical_buckets: lexical.as_ref().map(|(v, ..)| v.buckets),
            blend: [blend.weights[0], blend.weights[1], blend.bias],
            cv_roc_auc: roc_auc(&oof_p, &y).unwrap_or(f64::NAN),
            default_aggregator: default.name().into(),
            aggregator_selection: selection,
            seed,
        };
        Ok(Self {
            manifest,
            embedding: e_model.weights,
            lexical: lexical.map(|(v, _, _, m)| (v, m.weights)),
        })
    }

    /// Whether the lexical model takes part (then every call needs the texts).
    pub fn uses_text(&self) -> bool {
        self.lexical.is_some()
    }

    /// The default aggregator.
    pub fn default_aggregator(&self) -> Result<GroupAggregator, SentinelError> {
        self.manifest
            .default_aggregator
            .parse()
            .map_err(SentinelError::BadInput)
    }

    /// Each message's probability of being harmful, at the index's class balance. `texts`
    /// are the messages behind the embedding rows (needed when [`Self::uses_text`]).
    pub fn probabilities(
        &self,
        embeddings: &Matrix,
        texts: &[String],
    ) -> Result<Vec<f64>, SentinelError> {
        if embeddings.rows > 0 && embeddings.dim != self.manifest.dim {
            return Err(SentinelError::BadInput(format!(
                "embeddings have dimension {}, the calibrated scorer {}",
                embeddings.dim, self.manifest.dim
            )));
        }
        if self.lexical.is_some() && texts.len() != embeddings.rows {
            return Err(SentinelError::BadInput(format!(
                "{} texts for {} embeddings: the calibrated scorer needs each message's text",
                texts.len(),
                embeddings.rows
            )));
        }
        let [we, wl, b] = self.manifest.blend;
        Ok((0..embeddings.rows)
            .into_par_iter()
            .map(|i| {
                let ze = embeddings.dot(i, &self.embedding) + self.manifest.embedding.bias;
                let zl = match (&self.lexical, &self.manifest.lexical) {
                    (Some((vocab, w)), Some(part)) => {
                        let row = crate::logistic::SparseRows {
                            cols: vocab.buckets as usize,
                            rows: vec![vocab.row(&texts[i])],
                        };
                        row.dot(0, w) + part.bias
                    }
                    _ => 0.0,
                };
                sigmoid(we * ze + wl * zl + b)
            })
            .collect())
    }

    /// A group's affinity under `aggregator` from its messages' probabilities.
    pub fn aggregate(&self, probabilities: &[f64], aggregator: GroupAggregator) -> f64 {
        aggregator.apply(probabilities, self.manifest.prior, self.manifest.base_rate)
    }

    /// Load the scorer stored with an index (a directory or `s3://bucket/prefix`); `None`
    /// when the index has none.
    pub fn load_from(location: &str) -> Result<Option<Self>, SentinelError> {
        let mut files =
            crate::store::read_files(location, &[(MANIFEST_FILE, false), (TENSORS_FILE, false)])?
                .into_iter();
        match (files.next().flatten(), files.next().flatten()) {
            (Some(m), Some(t)) => {
                Self::from_files(&m, &t, std::path::Path::new(location)).map(Some)
            }
            (None, None) => Ok(None),
            (Some(_), None) => Err(SentinelError::Corrupt {
                path: std::path::Path::new(location).join(TENSORS_FILE),
                message: format!(
                    "missing beside {MANIFEST_FILE}: refit with `vigil sentinel calibrate`"
                ),
            }),
            (None, Some(_)) => Err(SentinelError::Corrupt {
                path: std::path::Path::new(location).join(MANIFEST_FILE),
                message: format!(
                    "missing beside {TENSORS_FILE}: refit with `vigil sentinel calibrate`"
                ),
            }),
        }
    }

    /// Store the scorer beside an index (the index's own files are not touched).
    pub fn save_to(&self, location: &str) -> Result<(), SentinelError> {
        crate::store::write_files(location, self.to_files()?)
    }

    /// The two files' names and bytes.
    pub fn to_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, SentinelError> {
        let internal = |e: &dyn std::fmt::Display| SentinelError::Internal(e.to_string());
        let bytes =
            |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect() };
        let emb = bytes(&self.embedding);
        let (lw, idf) = match &self.lexical {
            Some((vocab, w)) => (
                bytes(w),
                vocab.idf.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let mut tensors = vec![(
            "embedding_weights",
            TensorView::new(Dtype::F32, vec![self.embedding.len()], &emb)
                .map_err(|e| internal(&e))?,
        )];
        if let Some((vocab, w)) = &self.lexical {
            tensors.push((
                "lexical_weights",
                TensorView::new(Dtype::F32, vec![w.len()], &lw).map_err(|e| internal(&e))?,
            ));
            tensors.push((
                "lexical_idf",
                TensorView::new(Dtype::F32, vec![vocab.idf.len()], &idf)
                    .map_err(|e| internal(&e))?,
            ));
        }
        let st = safetensors::serialize(tensors, None).map_err(|e| internal(&e))?;
        let manifest = serde_json::to_vec_pretty(&self.manifest).map_err(|e| internal(&e))?;
        Ok(vec![(MANIFEST_FILE, manifest), (TENSORS_FILE, st)])
    }

    /// Read the two files' bytes; `origin` names where they came from in errors.
    pub fn from_files(
        manifest: &[u8],
        tensors: &[u8],
        origin: &std::path::Path,
    ) -> Result<Self, SentinelError> {
        let m_path = origin.join(MANIFEST_FILE);
        let t_path = origin.join(TENSORS_FILE);
        let corrupt = |path: &std::path::Path, message: String| SentinelError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let manifest: Manifest = serde_json::from_slice(manifest)
            .map_err(|e| corrupt(&m_path, format!("not a calibrated-scorer manifest: {e}")))?;
        if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
            return Err(corrupt(
                &m_path,
                format!(
                    "format `{}` version {}; this build reads `{FORMAT}` version \
                     {FORMAT_VERSION}: refit it with `vigil sentinel calibrate --index DIR`",
                    manifest.format, manifest.format_version
                ),
            ));
        }
        manifest
            .default_aggregator
            .parse::<GroupAggregator>()
            .map_err(|e| corrupt(&m_path, e))?;
        let st = SafeTensors::deserialize(tensors).map_err(|e| corrupt(&t_path, e.to_string()))?;
        let read = |name: &str, len: usize| -> Result<Vec<f32>, SentinelError> {
            let t = st
                .tensor(name)
                .map_err(|e| corrupt(&t_path, format!("tensor `{name}`: {e}")))?;
            if t.dtype() != Dtype::F32 || t.shape() != [len] {
                return Err(corrupt(
                    &t_path,
                    format!(
                        "tensor `{name}` is {:?} {:?}, expected F32 [{len}]",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(corrupt(
                    &t_path,
                    format!("tensor `{name}` holds a value that is not a finite number"),
                ));
            }
            Ok(v)
        };
        let embedding = read("embedding_weights", manifest.dim)?
            .into_iter()
            .map(f64::from)
            .collect();
        let lexical = match (manifest.lexical.as_ref(), manifest.lexical_buckets) {
            (Some(_), Some(buckets)) => {
                let w = read("lexical_weights", buckets as usize)?
                    .into_iter()
                    .map(f64::from)
                    .collect();
                let idf = read("lexical_idf", buckets as usize)?;
                Some((Vocabulary { buckets, idf }, w))
            }
            (None, None) => None,
            _ => {
                return Err(corrupt(
                    &m_path,
                    "`lexical` and `lexical_buckets` must be both present or both absent".into(),
                ));
            }
        };
        Ok(Self {
            manifest,
            embedding,
            lexical,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn count_style_aggregators_rank_a_few_harmful_among_many_above_none() {
        let prior = 0.25;
        let ordinary = vec![0.05; 20];
        let mut few = vec![0.05; 18];
        few.extend([0.95, 0.9]);
        for a in [
            GroupAggregator::ExpectedCount,
            GroupAggregator::NoisyOr,
            GroupAggregator::LlrSum,
            GroupAggregator::Reference(Aggregator::MaxScore),
        ] {
            let (lo, hi) = (a.apply(&ordinary, prior, 0.05), a.apply(&few, prior, 0.05));
            assert!(hi > lo, "{}: {hi} < {lo}", a.name());
        }
        // Expected count of a group of certain messages is the group size; noisy-OR stays <= 1.
        assert!(
            (GroupAggregator::ExpectedCount.apply(&[1.0 - 1e-13; 3], prior, 0.05) - 3.0).abs()
                < 1e-6
        );
        assert!(GroupAggregator::NoisyOr.apply(&few, prior, 0.05) <= 1.0);
        // A message at the prior carries no evidence.
        assert_eq!(GroupAggregator::LlrSum.apply(&[prior], prior, 0.05), 0.0);
        assert_eq!(GroupAggregator::ExpectedCount.apply(&[], prior, 0.05), 0.0);
        assert_eq!(
            "noisy_or".parse::<GroupAggregator>(),
            Ok(GroupAggregator::NoisyOr)
        );
        assert!(
            "nope"
                .parse::<GroupAggregator>()
                .unwrap_err()
                .contains("expected_count")
        );
    }

    /// A small index: positives lean along the first axis and say "idiot"; negatives do not.
    fn toy_index() -> SentinelIndex {
        let mut stream = Stream(3);
        let mut noise = || (stream.next() % 1000) as f32 / 1000.0 - 0.5;
        let mut rows = |n: usize, lean: f32| -> Matrix {
            let mut m = Matrix::from_rows(
                &(0..n)
                    .map(|_| {
                        (0..8)
                            .map(|d| if d == 0 { lean + noise() } else { noise() })
                            .collect()
                    })
                    .collect::<Vec<Vec<f32>>>(),
            )
            .unwrap();
            m.normalize_rows();
            m
        };
        let (pos, neg) = (rows(30, 0.6), rows(90, -0.2));
        let pt = (0..30).map(|i| format!("you idiot number {i}")).collect();
        let nt = (0..90).map(|i| format!("good game number {i}")).collect();
        SentinelIndex::new(pos, neg, Some(pt), Some(nt), crate::IndexConfig::default()).unwrap()
    }

    #[test]
    fn a_stored_scorer_scores_as_the_fitted_one_and_a_foreign_file_is_refused() {
        let index = toy_index();
        let scorer = CalibratedScorer::fit(&index, 1).unwrap();
        assert!(scorer.uses_text());
        assert!(scorer.manifest.cv_roc_auc > 0.9, "{:?}", scorer.manifest);
        // The same seed, the same scorer.
        assert!(
            CalibratedScorer::fit(&index, 1).unwrap() == scorer,
            "a refit with the same seed differs"
        );
        let texts: Vec<String> = vec!["you idiot".into(), "good game".into()];
        let mut probe = index.positive.select(&[0]);
        probe.data.extend_from_slice(index.negative.row(0));
        probe.rows = 2;
        let p = scorer.probabilities(&probe, &texts).unwrap();
        assert!(p[0] > 0.5 && p[1] < 0.5, "{p:?}");
        let files = scorer.to_files().unwrap();
        let origin = std::path::Path::new("idx");
        let loaded = CalibratedScorer::from_files(&files[0].1, &files[1].1, origin).unwrap();
        let q = loaded.probabilities(&probe, &texts).unwrap();
        for (a, b) in p.iter().zip(&q) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Each message's text is needed when the lexical model takes part.
        assert!(scorer.probabilities(&probe, &texts[..1]).is_err());
        // Another format version is refused with what to do.
        let mut m: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        m["format_version"] = serde_json::json!(99);
        let err =
            CalibratedScorer::from_files(&serde_json::to_vec(&m).unwrap(), &files[1].1, origin)
                .unwrap_err()
                .to_string();
        assert!(err.contains("vigil sentinel calibrate"), "{err}");
        // Truncated weights are refused, not read as zeros.
        let cut = &files[1].1[..files[1].1.len() / 2];
        assert!(CalibratedScorer::from_files(&files[0].1, cut, origin).is_err());
        // Too few examples for 5-fold cross-validation: a user error.
        let tiny = SentinelIndex::new(
            index.positive.select(&[0, 1]),
            index.negative.clone(),
            None,
            None,
            crate::IndexConfig::default(),
        )
        .unwrap();
        assert!(matches!(
            CalibratedScorer::fit(&tiny, 1),
            Err(SentinelError::BadInput(_))
        ));
    }

    #[test]
    fn roc_auc_counts_ties_as_half() {
        assert_eq!(roc_auc(&[0.1, 0.9], &[false, true]), Some(1.0));
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        assert_eq!(roc_auc(&[0.5], &[true]), None);
    }
}
