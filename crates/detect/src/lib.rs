//! Vigil detection: from user-day features to a `risk_score` on every user-day.
//!
//! Two models are trained on the same stratified split and reported side by side: the
//! spec's logistic regression (the notebook's model, kept for parity) and gradient-boosted
//! trees (Vigil's default). The transparent heuristic score of the spec is computed beside
//! them. Thresholds come from an F1 sweep on training-side predictions: the logistic model
//! uses its training predictions (as the spec); the boosted model, which fits its training
//! rows too well for that, uses a held-out quarter of the training split.

pub mod metrics;
pub mod models;
pub mod split;

use serde::{Deserialize, Serialize};
use vigil_config::{DetectionConfig, ModelKind};

pub use metrics::{PrPoint, best_f1_threshold, pr_curve, precision_recall_f1, roc_auc};
pub use models::{Boosted, Features, Forest, GbtParams, Logistic, Standardizer};
pub use split::{Split, stratified_split};

/// Errors of the detection stage.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Data: the labels cannot support a train/test split.
    #[error(
        "cannot train a model: the labelled data has {positives} abusive and {negatives} \
         benign user-days (at least 2 of each are needed; is `is_abuse_gt` filled?)"
    )]
    NotEnoughLabels {
        /// Rows labelled 1.
        positives: usize,
        /// Rows labelled 0.
        negatives: usize,
    },
    /// Internal: an optimiser or tree builder failed.
    #[error("model fitting failed: {0}")]
    Model(String),
}

/// Test-set evaluation of one model (`model_eval.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEval {
    /// `logistic_regression` or `gradient_boosting`.
    pub model: String,
    /// Decision threshold chosen by the F1 sweep.
    pub threshold: f64,
    /// Precision on the test split.
    pub test_precision: f64,
    /// Recall on the test split.
    pub test_recall: f64,
    /// F1 on the test split.
    pub test_f1: f64,
    /// ROC-AUC on the test split.
    pub test_auc: f64,
    /// Expected calibration error on the test split: the mean gap between predicted
    /// probability and observed rate over ten equal-width bins, weighted by rows.
    #[serde(default)]
    pub test_ece: f64,
}

/// Rows, summed probability and positives in each tenth of [0, 1].
fn calibration_bins(probs: &[f64], y: &[u8]) -> [(usize, f64, f64); 10] {
    let mut bins = [(0usize, 0.0f64, 0.0f64); 10];
    for (&p, &l) in probs.iter().zip(y) {
        let k = ((p * 10.0) as usize).min(9);
        bins[k].0 += 1;
        bins[k].1 += p;
        bins[k].2 += f64::from(u8::from(l != 0));
    }
    bins
}

/// The reliability curve of `probs` against `y`: for each non-empty tenth of [0, 1], the
/// mean predicted probability and the observed positive rate.
pub fn reliability(probs: &[f64], y: &[u8]) -> Vec<(f64, f64)> {
    calibration_bins(probs, y)
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(n, sp, sy)| (sp / n as f64, sy / n as f64))
        .collect()
}

/// Expected calibration error of `probs` against `y` over ten equal-width bins.
pub fn expected_calibration_error(probs: &[f64], y: &[u8]) -> f64 {
    if probs.is_empty() {
        return 0.0;
    }
    calibration_bins(probs, y)
        .iter()
        .map(|&(_, sp, sy)| (sp - sy).abs())
        .sum::<f64>()
        / probs.len() as f64
}

/// Everything detection produces.
#[derive(Debug)]
pub struct Detection {
    /// Probability of the configured model for every row.
    pub risk: Vec<f64>,
    /// That model's threshold.
    pub threshold: f64,
    /// Which model `risk` comes from.
    pub model: String,
    /// One evaluation per model, logistic first.
    pub evals: Vec<ModelEval>,
    /// Test-split precision-recall curve per model.
    pub pr_curves: Vec<(String, Vec<PrPoint>)>,
    /// Test-split reliability curve per model (mean predicted, observed rate per bin).
    pub reliability: Vec<(String, Vec<(f64, f64)>)>,
    /// The split used.
    pub split: Split,
    /// The fitted logistic regression and its threshold.
    pub logistic: (Logistic, f64),
    /// The fitted boosted model and its threshold.
    pub boosted: (Boosted, f64),
}

/// `1 - 2 |risk - 0.5|`: 1 at a coin flip, 0 at certainty.
pub fn uncertainty(risk: f64) -> f64 {
    1.0 - 2.0 * (risk - 0.5).abs()
}

/// The spec's heuristic score: weighted clipped terms of n_chat, block_rate, n_ips and
/// n_warned, divided by its maximum over all rows (plus 1e-9): the notebook's batch
/// behaviour, [`Heuristic::fit`] then [`Heuristic::apply`] over the same rows.
pub fn heuristic_scores(
    n_chat: &[f64],
    block_rate: &[f64],
    n_ips: &[f64],
    n_warned: &[f64],
    cfg: &DetectionConfig,
) -> Vec<f64> {
    Heuristic::fit_apply(cfg, Normalise::Batch, [n_chat, block_rate, n_ips, n_warned]).1
}

/// How the heuristic's raw score is brought to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalise {
    /// Divide by the largest raw score of the rows scored together: the notebook's rule, where
    /// one row's score depends on the batch around it.
    Batch,
    /// Divide by the largest raw score of the training rows, frozen at fit time (capped at 1),
    /// so a row scores the same alone or among ten million.
    Frozen,
}

/// The heuristic score as a fitted artifact: weights, scales and clip from the config, and
/// the normaliser (frozen at fit time, or the batch's own maximum).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heuristic {
    /// Weights of the n_chat, block_rate, n_ips and n_warned terms.
    pub weights: [f64; 4],
    /// Each term is `clip(value / scale, 0, clip)`.
    pub scales: [f64; 4],
    /// Upper clip of each term.
    pub clip: f64,
    /// The divisor frozen at fit time (the training maximum plus 1e-9); `None` for the
    /// notebook's batch rule.
    pub frozen_divisor: Option<f64>,
}

impl Heuristic {
    /// Raw (unnormalised) scores of the rows given as `[n_chat, block_rate, n_ips, n_warned]`.
    fn raw(&self, cols: [&[f64]; 4]) -> Vec<f64> {
        let [w0, w1, w2, w3] = self.weights;
        let [s0, s1, s2, s3] = self.scales;
        let c = |v: f64| v.clamp(0.0, self.clip);
        let [n_chat, block_rate, n_ips, n_warned] = cols;
        (0..n_chat.len())
            .map(|i| {
                w0 * c(n_chat[i] / s0)
                    + w1 * c(block_rate[i] / s1)
                    + w2 * c(n_ips[i] / s2)
                    + w3 * c(n_warned[i] / s3)
            })
            .collect()
    }

    /// The divisor of a set of raw scores: their maximum plus 1e-9 (1 when there is none).
    fn divisor(raw: &[f64]) -> f64 {
        let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if max.is_finite() { max + 1e-9 } else { 1.0 }
    }

    /// Fit on the training rows `[n_chat, block_rate, n_ips, n_warned]`.
    pub fn fit(cfg: &DetectionConfig, normalise: Normalise, history: [&[f64]; 4]) -> Self {
        Self::fit_apply(cfg, normalise, history).0
    }

    /// Fit on `history` and score those same rows, computing each raw score once (the batch
    /// run's case): the same numbers as `fit` then `apply`.
    pub fn fit_apply(
        cfg: &DetectionConfig,
        normalise: Normalise,
        history: [&[f64]; 4],
    ) -> (Self, Vec<f64>) {
        let mut h = Self {
            weights: cfg.heuristic_weights,
            scales: cfg.heuristic_scales,
            clip: cfg.heuristic_clip,
            frozen_divisor: None,
        };
        let raw = h.raw(history);
        if normalise == Normalise::Frozen {
            h.frozen_divisor = Some(Self::divisor(&raw));
        }
        let scores = h.normalise(raw);
        (h, scores)
    }

    /// Normalised scores of `rows` (`[n_chat, block_rate, n_ips, n_warned]`).
    pub fn apply(&self, rows: [&[f64]; 4]) -> Vec<f64> {
        self.normalise(self.raw(rows))
    }

    fn normalise(&self, raw: Vec<f64>) -> Vec<f64> {
        match self.frozen_divisor {
            Some(d) => raw.into_iter().map(|v| (v / d).min(1.0)).collect(),
            None => {
                let d = Self::divisor(&raw);
                raw.into_iter().map(|v| v / d).collect()
            }
        }
    }

    /// Refuse a loaded artifact holding a non-positive scale or divisor, or a number that
    /// is not finite.
    pub fn check(&self) -> Result<(), DetectError> {
        let numbers = self.weights.iter().chain(&self.scales).chain([&self.clip]);
        let ok = numbers.clone().all(|v| v.is_finite())
            && self.scales.iter().all(|&s| s > 0.0)
            && self.frozen_divisor.is_none_or(|d| d.is_finite() && d > 0.0);
        if ok {
            Ok(())
        } else {
            Err(DetectError::Model(
                "heuristic: a weight, scale, clip or divisor is not a finite positive number"
                    .into(),
            ))
        }
    }
}

fn evaluate(name: &str, probs: &[f64], y: &[u8], split: &Split, threshold: f64) -> ModelEval {
    let ps: Vec<f64> = split.test.iter().map(|&i| probs[i]).collect();
    let ys: Vec<u8> = split.test.iter().map(|&i| y[i]).collect();
    let (p, r, f) = precision_recall_f1(&ps, &ys, threshold);
    ModelEval {
        model: name.to_string(),
        threshold: (threshold * 1e10).round() / 1e10,
        test_precision: p,
        test_recall: r,
        test_f1: f,
        test_auc: roc_auc(&ps, &ys),
        test_ece: expected_calibration_error(&ps, &ys),
    }
}

fn test_pr(probs: &[f64], y: &[u8], split: &Split) -> Vec<PrPoint> {
    let ps: Vec<f64> = split.test.iter().map(|&i| probs[i]).collect();
    let ys: Vec<u8> = split.test.iter().map(|&i| y[i]).collect();
    pr_curve(&ps, &ys, 200)
}

/// At most `max` of `rows`, as a stratified sample.
fn cap_rows(rows: &[usize], y: &[u8], max: usize, seed: u32) -> Result<Vec<usize>, DetectError> {
    if rows.len() <= max {
        return Ok(rows.to_vec());
    }
    let ys: Vec<u8> = rows.iter().map(|&i| y[i]).collect();
    let keep = max as f64 / rows.len() as f64;
    let sub = stratified_split(&ys, 1.0 - keep, seed)?;
    Ok(sub.train.iter().map(|&k| rows[k]).collect())
}

/// The boosted model's share of `rows`: a stratified sample of at most
/// `gbt_max_train_rows * 4 / 3`, to be split 3:1 into fit and threshold rows.
fn gbt_sample(rows: &[usize], y: &[u8], cfg: &DetectionConfig) -> Result<Vec<usize>, DetectError> {
    let max = cfg.gbt_max_train_rows.saturating_mul(4) / 3;
    cap_rows(rows, y, max.max(cfg.gbt_max_train_rows), cfg.seed)
}

/// Fit on the `rows` outside fold 0 (`folds[k] == 0` marks a held-out `rows[k]`) and place
/// the threshold by the F1 sweep over the model's predictions for the held-out quarter: a
/// boosted model's own training predictions are too sure of themselves to place one. The
/// model returned is the one whose predictions placed the threshold, not a refit on every
/// row (a refit doubled the training time and its threshold came from another model).
fn fit_with_holdout_threshold(
    x: &Features,
    y: &[u8],
    rows: &[usize],
    folds: &[usize],
    params: GbtParams,
    grid: &[f64],
    calibrate: bool,
) -> Result<(Boosted, f64), DetectError> {
    let (held_rows, fit_rows): (Vec<usize>, Vec<usize>) =
        (0..rows.len()).partition(|&r| folds[r] == 0);
    let fit_rows: Vec<usize> = fit_rows.into_iter().map(|r| rows[r]).collect();
    let held_rows: Vec<usize> = held_rows.into_iter().map(|r| rows[r]).collect();
    let mut model = Boosted::fit(x, y, &fit_rows, params)?;
    let mut held_p = model.predict_rows(x, &held_rows);
    let ys: Vec<u8> = held_rows.iter().map(|&i| y[i]).collect();
    if calibrate {
        // The same held-out quarter calibrates the probabilities (class weights and boosting
        // push them to the extremes), then places the threshold on the calibrated scale.
        model.calibrate(&held_p, &ys);
        held_p = model.predict_rows(x, &held_rows);
    }
    Ok((model, best_f1_threshold(&held_p, &ys, grid)))
}

/// The boosted model evaluated on a split by user (no user in both parts), so features that
/// describe the account cannot simply recall its label from training rows.
fn grouped_eval(
    x: &Features,
    y: &[u8],
    groups: &[u32],
    cfg: &DetectionConfig,
    params: GbtParams,
    grid: &[f64],
) -> Result<ModelEval, DetectError> {
    let n_groups = groups.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut group_y = vec![0u8; n_groups];
    for (&g, &l) in groups.iter().zip(y) {
        group_y[g as usize] = group_y[g as usize].max(l);
    }
    let gs = stratified_split(&group_y, cfg.test_size, cfg.seed)?;
    let mut in_test = vec![false; n_groups];
    gs.test.iter().for_each(|&g| in_test[g] = true);
    let (test, train): (Vec<usize>, Vec<usize>) =
        (0..y.len()).partition(|&i| in_test[groups[i] as usize]);
    let train = gbt_sample(&train, y, cfg)?;
    let group_fold = split::stratified_folds(&group_y, 4, cfg.seed);
    let folds: Vec<usize> = train
        .iter()
        .map(|&i| group_fold[groups[i] as usize])
        .collect();
    let (model, t) =
        fit_with_holdout_threshold(x, y, &train, &folds, params, grid, cfg.calibrate_boosted)?;
    let probs = model.predict_rows(x, &test);
    let ys: Vec<u8> = test.iter().map(|&i| y[i]).collect();
    let (p, r, f) = precision_recall_f1(&probs, &ys, t);
    Ok(ModelEval {
        model: "gradient_boosting_user_split".into(),
        threshold: (t * 1e10).round() / 1e10,
        test_precision: p,
        test_recall: r,
        test_f1: f,
        test_auc: roc_auc(&probs, &ys),
        test_ece: expected_calibration_error(&probs, &ys),
    })
}

/// The boosted model fitted and evaluated exactly as [`detect`] does (same split, sample,
/// folds and calibration) on other columns, reported under `name`: e.g. without the text
/// signal, beside the model with it.
pub fn boosted_eval(
    x_gbt: &Features,
    y: &[u8],
    cfg: &DetectionConfig,
    name: &str,
) -> Result<ModelEval, DetectError> {
    Ok(boosted_eval_scored(x_gbt, y, cfg, name)?.0)
}

/// [`boosted_eval`], with the model's probability for every row and its threshold (what a
/// queue driven by this model would see).
pub fn boosted_eval_scored(
    x_gbt: &Features,
    y: &[u8],
    cfg: &DetectionConfig,
    name: &str,
) -> Result<(ModelEval, Vec<f64>, f64), DetectError> {
    let (split, grid) = split_and_grid(y, cfg)?;
    let (model, t) = fit_boosted(x_gbt, y, &split, cfg, &grid)?;
    let risk = model.predict(x_gbt);
    Ok((evaluate(name, &risk, y, &split, t), risk, t))
}

/// The configured stratified split and threshold grid (what every evaluation shares).
fn split_and_grid(y: &[u8], cfg: &DetectionConfig) -> Result<(Split, Vec<f64>), DetectError> {
    let split = stratified_split(y, cfg.test_size, cfg.seed)?;
    let grid = metrics::threshold_grid(cfg.threshold_start, cfg.threshold_end, cfg.threshold_step);
    Ok((split, grid))
}

/// The logistic regression fitted on the training split, every row's probability, and the
/// threshold with the best F1 on the training rows.
fn fit_logistic(
    x: &Features,
    y: &[u8],
    split: &Split,
    cfg: &DetectionConfig,
    grid: &[f64],
) -> Result<(Logistic, Vec<f64>, f64), DetectError> {
    let lr = Logistic::fit(
        x,
        y,
        &split.train,
        cfg.logistic_c,
        cfg.balanced_class_weights,
    )?;
    let probs = lr.predict(x);
    let train_p: Vec<f64> = split.train.iter().map(|&i| probs[i]).collect();
    let train_y: Vec<u8> = split.train.iter().map(|&i| y[i]).collect();
    let t = best_f1_threshold(&train_p, &train_y, grid);
    Ok((lr, probs, t))
}

/// The logistic regression fitted and evaluated exactly as [`detect`] does (same split,
/// penalty and threshold rule) on other columns, reported under `name`.
pub fn logistic_eval(
    x: &Features,
    y: &[u8],
    cfg: &DetectionConfig,
    name: &str,
) -> Result<ModelEval, DetectError> {
    let (split, grid) = split_and_grid(y, cfg)?;
    let (_, probs, t) = fit_logistic(x, y, &split, cfg, &grid)?;
    Ok(evaluate(name, &probs, y, &split, t))
}

/// The boosting settings of `cfg`.
fn gbt_params(cfg: &DetectionConfig) -> GbtParams {
    GbtParams {
        trees: cfg.gbt_trees,
        learning_rate: cfg.gbt_learning_rate,
        max_depth: cfg.gbt_max_depth,
        seed: u64::from(cfg.seed),
        balanced: cfg.balanced_class_weights,
    }
}

/// The boosted model on its sample of the training split: fitted on three quarters,
/// calibrated (when configured) and thresholded on the held-out quarter.
fn fit_boosted(
    x_gbt: &Features,
    y: &[u8],
    split: &Split,
    cfg: &DetectionConfig,
    grid: &[f64],
) -> Result<(Boosted, f64), DetectError> {
    let rows = gbt_sample(&split.train, y, cfg)?;
    let ys: Vec<u8> = rows.iter().map(|&i| y[i]).collect();
    let folds = split::stratified_folds(&ys, 4, cfg.seed);
    fit_with_holdout_threshold(
        x_gbt,
        y,
        &rows,
        &folds,
        gbt_params(cfg),
        grid,
        cfg.calibrate_boosted,
    )
}

/// Train both models on a stratified split of labelled rows (`x` holds the logistic
/// regression's features, `x_gbt` the boosted model's, row for row), evaluate them on the
/// test split, and score every row with the configured model. `progress` hears each step.
pub fn detect(
    x: &Features,
    x_gbt: &Features,
    y: &[u8],
    groups: Option<&[u32]>,
    cfg: &DetectionConfig,
    progress: &dyn Fn(&str),
) -> Result<Detection, DetectError> {
    let (split, grid) = split_and_grid(y, cfg)?;

    let params = gbt_params(cfg);
    // The three fits are independent; each is parallel inside but has serial stretches
    // (line searches, tree bookkeeping, threshold sweeps), so they run side by side.
    progress("logistic regression");
    progress("gradient boosting");
    if groups.is_some() {
        progress("gradient boosting on a user-grouped split");
    }
    let logistic = || -> Result<_, DetectError> {
        let fitted = fit_logistic(x, y, &split, cfg, &grid)?;
        tracing::debug!("logistic regression fitted, scored and thresholded");
        Ok(fitted)
    };
    let boosted = || -> Result<_, DetectError> {
        let (gbt, gbt_t) = fit_boosted(x_gbt, y, &split, cfg, &grid)?;
        tracing::debug!("gradient boosting fitted and thresholded");
        let probs = gbt.predict(x_gbt);
        Ok((gbt, probs, gbt_t))
    };
    let grouped = || {
        groups
            .map(|g| grouped_eval(x_gbt, y, g, cfg, params, &grid))
            .transpose()
    };
    let (lr, (gbt, grouped)) = rayon::join(logistic, || rayon::join(boosted, grouped));
    let ((lr, lr_probs, lr_t), (gbt, gbt_probs, gbt_t)) = (lr?, gbt?);

    let mut evals = vec![
        evaluate("logistic_regression", &lr_probs, y, &split, lr_t),
        evaluate("gradient_boosting", &gbt_probs, y, &split, gbt_t),
    ];
    evals.extend(grouped?);
    let pr_curves = vec![
        (
            "logistic_regression".to_string(),
            test_pr(&lr_probs, y, &split),
        ),
        (
            "gradient_boosting".to_string(),
            test_pr(&gbt_probs, y, &split),
        ),
    ];
    let test_reliability = |probs: &[f64]| {
        let ps: Vec<f64> = split.test.iter().map(|&i| probs[i]).collect();
        let ys: Vec<u8> = split.test.iter().map(|&i| y[i]).collect();
        reliability(&ps, &ys)
    };
    let reliability = vec![
        (
            "logistic_regression".to_string(),
            test_reliability(&lr_probs),
        ),
        (
            "gradient_boosting".to_string(),
            test_reliability(&gbt_probs),
        ),
    ];
    let (risk, threshold, model) = match cfg.model {
        ModelKind::Logistic => (lr_probs, lr_t, "logistic_regression"),
        ModelKind::GradientBoosting => (gbt_probs, gbt_t, "gradient_boosting"),
    };
    Ok(Detection {
        risk,
        threshold,
        model: model.to_string(),
        evals,
        pr_curves,
        reliability,
        split,
        logistic: (lr, lr_t),
        boosted: (gbt, gbt_t),
    })
}

impl vigil_core::Classify for DetectError {
    fn kind(&self) -> vigil_core::ErrorKind {
        match self {
            // Too few labels: the run cannot train here (exit 1, as before kinds).
            DetectError::NotEnoughLabels { .. } => vigil_core::ErrorKind::Environment,
            DetectError::Model(_) => vigil_core::ErrorKind::Bug,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn inputs() -> [Vec<f64>; 4] {
        [
            vec![0.0, 12.0, 80.0, 3.0, 40.0],
            vec![0.0, 0.05, 0.4, 0.0, 0.2],
            vec![1.0, 1.0, 6.0, 2.0, 3.0],
            vec![0.0, 1.0, 9.0, 0.0, 2.0],
        ]
    }

    fn refs(c: &[Vec<f64>; 4]) -> [&[f64]; 4] {
        [&c[0], &c[1], &c[2], &c[3]]
    }

    #[test]
    fn frozen_heuristic_scores_a_row_alone_as_in_its_training_batch() {
        let cfg = DetectionConfig::default();
        let c = inputs();
        let frozen = Heuristic::fit(&cfg, Normalise::Frozen, refs(&c));
        let batch = heuristic_scores(&c[0], &c[1], &c[2], &c[3], &cfg);
        // On the rows it was fitted on, frozen and batch normalising agree to the bit.
        let all = frozen.apply(refs(&c));
        assert!(
            all.iter()
                .zip(&batch)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // The spec's formula, written out for row 1: 0.35*12/50 + 0.35*0.05/0.10 + 0.15/3
        // + 0.15/5, over the largest raw score (row 2: 0.35*1.6 + 0.35*3 + 0.15*2 + 0.15*1.8).
        let (raw1, max) = (
            0.35 * 0.24 + 0.35 * 0.5 + 0.15 / 3.0 + 0.15 * 0.2,
            0.35 * 1.6 + 0.35 * 3.0 + 0.15 * 2.0 + 0.15 * 1.8,
        );
        assert!((all[1] - raw1 / (max + 1e-9)).abs() < 1e-12);
        // One row alone: frozen gives the same score, the batch rule does not (it is 1).
        let one: [Vec<f64>; 4] = std::array::from_fn(|k| vec![c[k][1]]);
        assert_eq!(frozen.apply(refs(&one))[0].to_bits(), all[1].to_bits());
        let alone = heuristic_scores(&one[0], &one[1], &one[2], &one[3], &cfg);
        assert!((alone[0] - 1.0).abs() < 1e-6);
        // A row above the training maximum is capped at 1.
        let big: [Vec<f64>; 4] = [vec![500.0], vec![1.0], vec![50.0], vec![50.0]];
        assert_eq!(frozen.apply(refs(&big))[0], 1.0);
    }

    #[test]
    fn a_loaded_heuristic_with_a_bad_number_is_refused() {
        let cfg = DetectionConfig::default();
        let c = inputs();
        let mut h = Heuristic::fit(&cfg, Normalise::Frozen, refs(&c));
        h.check().unwrap();
        h.scales[2] = 0.0;
        assert!(h.check().is_err());
        let mut h = Heuristic::fit(&cfg, Normalise::Frozen, refs(&c));
        h.frozen_divisor = Some(-1.0);
        assert!(h.check().is_err());
    }

    #[test]
    fn calibration_error_is_zero_when_rates_match_and_large_when_they_do_not() {
        // Half the rows at 0.2 with 20% positives, half at 0.8 with 80%.
        let mut p = Vec::new();
        let mut y = Vec::new();
        for i in 0..100 {
            p.push(0.2);
            y.push(u8::from(i % 5 == 0));
            p.push(0.8);
            y.push(u8::from(i % 5 != 0));
        }
        assert!(expected_calibration_error(&p, &y) < 1e-12);
        // Always 0.99 while half are positive: off by 0.49.
        let sure = vec![0.99; 200];
        let half: Vec<u8> = (0..200).map(|i| u8::from(i % 2 == 0)).collect();
        assert!((expected_calibration_error(&sure, &half) - 0.49).abs() < 1e-12);
    }
}
