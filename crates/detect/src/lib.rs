//! Vigil detection: from user-day features to a `risk_score` on every user-day.
//!
//! Two models are trained on the same stratified split and reported side by side: the
//! spec's logistic regression (the notebook's model, kept for parity) and gradient-boosted
//! trees (Vigil's default). The transparent heuristic score of the spec is computed beside
//! them. Thresholds come from an F1 sweep on training-side predictions: the logistic model
//! uses its training predictions (as the spec); the boosted model, which fits its training
//! rows too well for that, uses out-of-fold predictions on the training split.

pub mod metrics;
pub mod models;
pub mod split;

use serde::Serialize;
use vigil_config::{DetectionConfig, ModelKind};

pub use metrics::{PrPoint, best_f1_threshold, pr_curve, precision_recall_f1, roc_auc};
pub use models::{Boosted, Features, GbtParams, Logistic};
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
#[derive(Debug, Clone, Serialize)]
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
}

/// Everything detection produces.
#[derive(Debug, Clone)]
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
    /// The split used.
    pub split: Split,
}

/// `1 - 2 |risk - 0.5|`: 1 at a coin flip, 0 at certainty.
pub fn uncertainty(risk: f64) -> f64 {
    1.0 - 2.0 * (risk - 0.5).abs()
}

/// The spec's heuristic score: weighted clipped terms of n_chat, block_rate, n_ips and
/// n_warned, divided by its maximum over all rows (plus 1e-9).
pub fn heuristic_scores(
    n_chat: &[f64],
    block_rate: &[f64],
    n_ips: &[f64],
    n_warned: &[f64],
    cfg: &DetectionConfig,
) -> Vec<f64> {
    let [w0, w1, w2, w3] = cfg.heuristic_weights;
    let [s0, s1, s2, s3] = cfg.heuristic_scales;
    let c = |v: f64| v.clamp(0.0, cfg.heuristic_clip);
    let raw: Vec<f64> = (0..n_chat.len())
        .map(|i| {
            w0 * c(n_chat[i] / s0)
                + w1 * c(block_rate[i] / s1)
                + w2 * c(n_ips[i] / s2)
                + w3 * c(n_warned[i] / s3)
        })
        .collect();
    let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let denom = if max.is_finite() { max + 1e-9 } else { 1.0 };
    raw.into_iter().map(|v| v / denom).collect()
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
    }
}

fn test_pr(probs: &[f64], y: &[u8], split: &Split) -> Vec<PrPoint> {
    let ps: Vec<f64> = split.test.iter().map(|&i| probs[i]).collect();
    let ys: Vec<u8> = split.test.iter().map(|&i| y[i]).collect();
    pr_curve(&ps, &ys, 200)
}

/// Train both models on a stratified split of labelled rows, evaluate them on the test
/// split, and score every row with the configured model. `progress` hears each step's name.
pub fn detect(
    x: &Features,
    y: &[u8],
    cfg: &DetectionConfig,
    progress: &dyn Fn(&str),
) -> Result<Detection, DetectError> {
    let split = stratified_split(y, cfg.test_size, cfg.seed)?;
    let grid = metrics::threshold_grid(cfg.threshold_start, cfg.threshold_end, cfg.threshold_step);

    progress("logistic regression");
    let lr = Logistic::fit(
        x,
        y,
        &split.train,
        cfg.logistic_c,
        cfg.balanced_class_weights,
    )?;
    let lr_probs = lr.predict(x);
    let train_p: Vec<f64> = split.train.iter().map(|&i| lr_probs[i]).collect();
    let train_y: Vec<u8> = split.train.iter().map(|&i| y[i]).collect();
    let lr_t = best_f1_threshold(&train_p, &train_y, &grid);

    progress("gradient boosting");
    // Cap the boosted model's training rows with a stratified sample of the training split.
    let gbt_rows: Vec<usize> = if split.train.len() > cfg.gbt_max_train_rows {
        let keep = cfg.gbt_max_train_rows as f64 / split.train.len() as f64;
        let sub = stratified_split(&train_y, 1.0 - keep, cfg.seed)?;
        sub.train.iter().map(|&k| split.train[k]).collect()
    } else {
        split.train.clone()
    };
    let params = GbtParams {
        trees: cfg.gbt_trees,
        learning_rate: cfg.gbt_learning_rate,
        max_depth: cfg.gbt_max_depth,
        seed: u64::from(cfg.seed),
        balanced: cfg.balanced_class_weights,
    };
    let gbt_y: Vec<u8> = gbt_rows.iter().map(|&i| y[i]).collect();
    let folds = split::stratified_folds(&gbt_y, 3, cfg.seed);
    let mut oof = vec![0.0; gbt_rows.len()];
    for f in 0..3 {
        let fit_rows: Vec<usize> = (0..gbt_rows.len())
            .filter(|&k| folds[k] != f)
            .map(|k| gbt_rows[k])
            .collect();
        let held: Vec<usize> = (0..gbt_rows.len()).filter(|&k| folds[k] == f).collect();
        let model = Boosted::fit(x, y, &fit_rows, params)?;
        let held_x = Features {
            values: held
                .iter()
                .flat_map(|&k| {
                    let i = gbt_rows[k];
                    x.values[i * x.d..(i + 1) * x.d].iter().copied()
                })
                .collect(),
            n: held.len(),
            d: x.d,
        };
        for (k, p) in held.iter().zip(model.predict(&held_x)) {
            oof[*k] = p;
        }
    }
    let gbt_t = best_f1_threshold(&oof, &gbt_y, &grid);
    let gbt = Boosted::fit(x, y, &gbt_rows, params)?;
    let gbt_probs = gbt.predict(x);

    let evals = vec![
        evaluate("logistic_regression", &lr_probs, y, &split, lr_t),
        evaluate("gradient_boosting", &gbt_probs, y, &split, gbt_t),
    ];
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
        split,
    })
}
