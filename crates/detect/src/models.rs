//! The two models: logistic regression exactly as the spec (standardised features, L2 with
//! `C`, balanced class weights, solved by argmin's trust-region Newton method to a tight
//! tolerance) and gradient-boosted trees (forust, the XGBoost algorithm in Rust).

use argmin::core::{
    CostFunction, Executor, Gradient, Hessian, IterState, KV, Problem, Solver, State,
    TerminationReason, TerminationStatus,
};
use argmin::solver::trustregion::{Steihaug, TrustRegion};
use std::borrow::Cow;

use forust_ml::{GradientBooster, Matrix};
use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use crate::DetectError;

/// Feature columns of equal length, column by column: the pipeline reads features from
/// Arrow one column at a time and forust reads them the same way, so no row-major copy of
/// every user-day is ever made. Non-finite values read as 0.
#[derive(Debug, Clone)]
pub struct Features<'a> {
    cols: Vec<Cow<'a, [f64]>>,
    n: usize,
}

impl<'a> Features<'a> {
    /// `n` rows of the columns as given (borrowed ones are copied only if they hold a
    /// non-finite value). Errors when there is no column or one is not `n` long.
    pub fn new(n: usize, cols: Vec<Cow<'a, [f64]>>) -> Result<Self, DetectError> {
        if cols.is_empty() {
            return Err(DetectError::Model("no feature columns".into()));
        }
        if let Some(c) = cols.iter().find(|c| c.len() != n) {
            return Err(DetectError::Model(format!(
                "feature columns differ in length ({} and {n} rows)",
                c.len()
            )));
        }
        let cols = cols
            .into_iter()
            .map(|c| {
                if c.iter().all(|v| v.is_finite()) {
                    c
                } else {
                    let mut v = c.into_owned();
                    v.iter_mut()
                        .filter(|v| !v.is_finite())
                        .for_each(|v| *v = 0.0);
                    Cow::Owned(v)
                }
            })
            .collect();
        Ok(Self { cols, n })
    }

    /// Number of rows.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of features.
    pub fn d(&self) -> usize {
        self.cols.len()
    }

    /// Column `j`.
    pub fn col(&self, j: usize) -> &[f64] {
        &self.cols[j]
    }

    /// Rows `rows` (all rows `start..start + len` when `rows` is `None`) as one column-major
    /// block in `out`, the layout forust's `Matrix` reads.
    fn gather(&self, rows: Option<&[usize]>, start: usize, len: usize, out: &mut Vec<f64>) {
        out.clear();
        for c in &self.cols {
            match rows {
                Some(r) => out.extend(r[start..start + len].iter().map(|&i| c[i])),
                None => out.extend_from_slice(&c[start..start + len]),
            }
        }
    }
}

/// `n / (2 * n_class)` per row when `balanced`, else 1.
pub fn class_weights(y: &[u8], balanced: bool) -> Vec<f64> {
    if !balanced {
        return vec![1.0; y.len()];
    }
    let pos = y.iter().filter(|&&l| l != 0).count() as f64;
    let neg = y.len() as f64 - pos;
    let n = y.len() as f64;
    y.iter()
        .map(|&l| {
            if l != 0 {
                n / (2.0 * pos)
            } else {
                n / (2.0 * neg)
            }
        })
        .collect()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Mean and population standard deviation per feature of the training rows (a zero
/// deviation is replaced by 1, as scikit-learn's `StandardScaler`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Standardizer {
    /// Standardise `z` in place (`d` columns of `n` values, column-major) and keep the means
    /// and deviations it used (a zero deviation becomes 1).
    fn fit_transform(z: &mut [f64], n: usize, d: usize) -> Self {
        let count = n.max(1) as f64;
        let (mut mean, mut scale) = (Vec::with_capacity(d), Vec::with_capacity(d));
        for j in 0..d {
            let col = &mut z[j * n..(j + 1) * n];
            let m = col.iter().sum::<f64>() / count;
            let var = col.iter().map(|v| (v - m) * (v - m)).sum::<f64>();
            let sd = (var / count).sqrt();
            let s = if sd > 0.0 { sd } else { 1.0 };
            col.iter_mut().for_each(|v| *v = (*v - m) / s);
            mean.push(m);
            scale.push(s);
        }
        Self { mean, scale }
    }
}

/// A fitted logistic regression: the artifact `vigil run` saves and `vigil score` applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    /// The training split's means and deviations.
    pub scaler: Standardizer,
    /// Coefficients on the standardised features.
    pub coef: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
}

struct LogLoss<'a> {
    z: Vec<f64>, // standardised training rows, column-major (column j at j * n)
    y: &'a [u8],
    w: &'a [f64],
    d: usize,
    inv_c: f64,
    sw_sum: f64,
    /// The last point evaluated: the line search asks for cost and gradient at the same
    /// point and Newton's method then for the Hessian there; one pass yields all three.
    last: std::sync::Mutex<Option<Evaluated>>,
    /// Passes over the rows so far (for the debug log).
    passes: std::sync::atomic::AtomicUsize,
}

/// A point with its cost, gradient and Hessian.
struct Evaluated {
    at: Vec<f64>,
    cost: f64,
    grad: Vec<f64>,
    hessian: Vec<Vec<f64>>,
}

/// Sums of one block of rows: loss, gradient and the packed upper triangle of the Hessian.
type BlockSums = (f64, Vec<f64>, Vec<f64>);

impl LogLoss<'_> {
    /// Cost, gradient and Hessian at `p` in one pass over the training rows (blocks in
    /// parallel, block results summed in block order so the result does not depend on
    /// scheduling). The Hessian costs one weighted outer product per row, cheap next to the
    /// `exp` and `ln_1p` every row needs anyway.
    fn eval<T>(&self, p: &[f64], pick: impl Fn(&Evaluated) -> T) -> T {
        if let Ok(guard) = self.last.lock()
            && let Some(e) = guard.as_ref()
            && e.at.as_slice() == p
        {
            return pick(e);
        }
        self.passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self.d;
        let n = self.y.len();
        let (coef, b) = (&p[..d], p[d]);
        let packed = (d + 1) * (d + 2) / 2;
        let blocks: Vec<BlockSums> = (0..n.div_ceil(BLOCK))
            .into_par_iter()
            .map(|blk| {
                let (lo, hi) = (blk * BLOCK, n.min((blk + 1) * BLOCK));
                let col = |j: usize| &self.z[j * n + lo..j * n + hi];
                // Margins column by column (vectorised), then the per-row transcendental part.
                let mut m = vec![b; hi - lo];
                for (j, c) in coef.iter().enumerate() {
                    m.iter_mut().zip(col(j)).for_each(|(mi, z)| *mi += c * z);
                }
                let mut loss = 0.0;
                let mut e = vec![0.0; hi - lo]; // weighted residuals: the gradient's terms
                let mut curv = vec![0.0; hi - lo]; // weighted curvature: the Hessian's
                for (k, &mk) in m.iter().enumerate() {
                    let i = lo + k;
                    // log(1 + e^m) - y m without overflow, and the sigmoid from the same exp.
                    let (softplus, sig) = if mk > 0.0 {
                        let t = (-mk).exp();
                        (mk + t.ln_1p(), 1.0 / (1.0 + t))
                    } else {
                        let t = mk.exp();
                        (t.ln_1p(), t / (1.0 + t))
                    };
                    let yi = f64::from(self.y[i]);
                    loss += self.w[i] * (softplus - yi * mk);
                    e[k] = self.w[i] * (sig - yi);
                    curv[k] = self.w[i] * sig * (1.0 - sig);
                }
                let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
                let mut g: Vec<f64> = (0..d).map(|j| dot(&e, col(j))).collect();
                g.push(e.iter().sum());
                // Upper triangle of sum(curv x x') over the columns and the intercept's 1s.
                let mut h = Vec::with_capacity(packed);
                let mut scaled = vec![0.0; hi - lo];
                for j in 0..d {
                    scaled
                        .iter_mut()
                        .zip(&curv)
                        .zip(col(j))
                        .for_each(|((s, c), z)| *s = c * z);
                    h.extend((j..d).map(|k| dot(&scaled, col(k))));
                    h.push(scaled.iter().sum());
                }
                h.push(curv.iter().sum());
                (loss, g, h)
            })
            .collect();
        let mut loss = 0.0;
        let mut g = vec![0.0; d + 1];
        let mut h = vec![0.0; packed];
        for (l, bg, bh) in &blocks {
            loss += l;
            g.iter_mut().zip(bg).for_each(|(x, y)| *x += y);
            h.iter_mut().zip(bh).for_each(|(x, y)| *x += y);
        }
        let reg: f64 = coef.iter().map(|c| c * c).sum::<f64>() * 0.5 * self.inv_c;
        for j in 0..d {
            g[j] += p[j] * self.inv_c;
        }
        g.iter_mut().for_each(|v| *v /= self.sw_sum);
        // Unpack the upper triangle (row j holds columns j..=d) into a symmetric matrix.
        let packed_at = |j: usize, k: usize| j * (d + 1) - j * j.saturating_sub(1) / 2 + (k - j);
        let hessian: Vec<Vec<f64>> = (0..=d)
            .map(|j| {
                (0..=d)
                    .map(|k| {
                        let v = h[packed_at(j.min(k), j.max(k))] / self.sw_sum;
                        if j == k && j < d {
                            v + self.inv_c / self.sw_sum
                        } else {
                            v
                        }
                    })
                    .collect()
            })
            .collect();
        let evaluated = Evaluated {
            at: p.to_vec(),
            cost: (loss + reg) / self.sw_sum,
            grad: g,
            hessian,
        };
        let out = pick(&evaluated);
        if let Ok(mut guard) = self.last.lock() {
            *guard = Some(evaluated);
        }
        out
    }
}

/// Rows per parallel block of the loss, gradient and Hessian sums (a block's columns stay
/// in cache while the Hessian reads each of them d times).
const BLOCK: usize = 4_096;

impl CostFunction for LogLoss<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.eval(p, |e| e.cost))
    }
}

impl Gradient for LogLoss<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.eval(p, |e| e.grad.clone()))
    }
}

impl Hessian for LogLoss<'_> {
    type Param = Vec<f64>;
    type Hessian = Vec<Vec<f64>>;
    fn hessian(&self, p: &Vec<f64>) -> Result<Vec<Vec<f64>>, argmin::core::Error> {
        Ok(self.eval(p, |e| e.hessian.clone()))
    }
}

/// Where the fit stops: the norm of the mean loss's gradient (rounding alone leaves
/// ~1e-13 at a million rows).
const GRADIENT_TOLERANCE: f64 = 1e-10;

/// Newton steps before the fit gives up on the tolerance (about six reach it on the
/// pipeline's features; each step is one pass over the training rows).
const MAX_NEWTON_STEPS: u64 = 50;

/// The Newton state: parameters, gradient and Hessian (argmin's `Vec` backend).
type NewtonState = IterState<Vec<f64>, Vec<f64>, (), Vec<Vec<f64>>, (), f64>;

/// A solver that stops once the gradient's norm is below `tol`: argmin's trust-region
/// method has no convergence test of its own and would otherwise run to `max_iters`.
struct UntilFlat<S> {
    inner: S,
    tol: f64,
}

impl<O, S: Solver<O, NewtonState>> Solver<O, NewtonState> for UntilFlat<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn init(
        &mut self,
        problem: &mut Problem<O>,
        state: NewtonState,
    ) -> Result<(NewtonState, Option<KV>), argmin::core::Error> {
        self.inner.init(problem, state)
    }
    fn next_iter(
        &mut self,
        problem: &mut Problem<O>,
        state: NewtonState,
    ) -> Result<(NewtonState, Option<KV>), argmin::core::Error> {
        self.inner.next_iter(problem, state)
    }
    fn terminate(&mut self, state: &NewtonState) -> TerminationStatus {
        let flat = state
            .get_gradient()
            .is_some_and(|g| g.iter().map(|v| v * v).sum::<f64>().sqrt() < self.tol);
        if flat {
            TerminationStatus::Terminated(TerminationReason::SolverConverged)
        } else {
            self.inner.terminate(state)
        }
    }
}

impl Logistic {
    /// Fit on `rows` of `x` with labels `y` (indexed like `x`).
    pub fn fit(
        x: &Features,
        y: &[u8],
        rows: &[usize],
        c: f64,
        balanced: bool,
    ) -> Result<Self, DetectError> {
        let d = x.d();
        // The training rows in file order (a split lists them shuffled): the same fit, read
        // from memory in order rather than at random.
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        // Standardised training rows, column by column (the sums below run down columns).
        let mut z = Vec::with_capacity(rows.len() * d);
        for j in 0..d {
            let c = x.col(j);
            z.extend(rows.iter().map(|&i| c[i]));
        }
        let scaler = Standardizer::fit_transform(&mut z, rows.len(), d);
        let ys: Vec<u8> = rows.iter().map(|&i| u8::from(y[i] != 0)).collect();
        let w = class_weights(&ys, balanced);
        let problem = LogLoss {
            z,
            y: &ys,
            sw_sum: w.iter().sum(),
            w: &w,
            d,
            inv_c: 1.0 / c,
            last: std::sync::Mutex::new(None),
            passes: std::sync::atomic::AtomicUsize::new(0),
        };
        // A trust-region Newton method (the Hessian of d + 1 unknowns is tiny, and Steihaug's
        // conjugate gradients solve each step to 1e-9) converges in about six passes over the
        // rows, where L-BFGS needed ~40 to reach a looser tolerance.
        let solver = UntilFlat {
            inner: TrustRegion::new(Steihaug::new().with_max_iters(4 * (d as u64 + 1))),
            tol: GRADIENT_TOLERANCE,
        };
        let solve_started = std::time::Instant::now();
        let result = Executor::new(problem, solver)
            .configure(|s| s.param(vec![0.0; d + 1]).max_iters(MAX_NEWTON_STEPS))
            .run()
            .map_err(|e| DetectError::Model(format!("logistic regression: {e}")))?;
        tracing::debug!(
            "logistic regression: {} rows, {} iterations, {} loss passes, {:.2} s",
            rows.len(),
            result.state().get_iter(),
            result
                .problem
                .problem
                .as_ref()
                .map_or(0, |p| p.passes.load(std::sync::atomic::Ordering::Relaxed)),
            solve_started.elapsed().as_secs_f64()
        );
        let converged = matches!(
            result.state().get_termination_status(),
            TerminationStatus::Terminated(TerminationReason::SolverConverged)
        );
        if !converged {
            let norm = result
                .state()
                .get_gradient()
                .map_or(f64::NAN, |g| g.iter().map(|v| v * v).sum::<f64>().sqrt());
            tracing::warn!(
                "logistic regression stopped after {MAX_NEWTON_STEPS} steps with the gradient's \
                 norm at {norm:.1e}, above {GRADIENT_TOLERANCE:.0e}: the best coefficients \
                 found are used (nearly separable classes with a large `logistic_c`?)"
            );
        }
        let p =
            result.state().get_best_param().cloned().ok_or_else(|| {
                DetectError::Model("logistic regression found no solution".into())
            })?;
        Ok(Self {
            scaler,
            intercept: p[d],
            coef: p[..d].to_vec(),
        })
    }

    /// Refuse a loaded model that does not fit `d` features or holds a non-finite number.
    pub fn check(&self, d: usize) -> Result<(), DetectError> {
        let s = &self.scaler;
        if self.coef.len() != d || s.mean.len() != d || s.scale.len() != d {
            return Err(DetectError::Model(format!(
                "logistic regression: {} coefficients, {} means and {} scales for {d} features",
                self.coef.len(),
                s.mean.len(),
                s.scale.len()
            )));
        }
        let all = self.coef.iter().chain(&s.mean).chain(&s.scale);
        if !self.intercept.is_finite() || all.clone().any(|v| !v.is_finite()) {
            return Err(DetectError::Model(
                "logistic regression: a coefficient, mean or scale is not a finite number".into(),
            ));
        }
        if s.scale.contains(&0.0) {
            return Err(DetectError::Model(
                "logistic regression: a zero scale".into(),
            ));
        }
        Ok(())
    }

    /// Probability of the positive class for every row of `x` (column by column, each
    /// row's terms added in feature order).
    pub fn predict(&self, x: &Features) -> Vec<f64> {
        let mut m = vec![0.0; x.n()];
        for (j, c) in self.coef.iter().enumerate() {
            let (mean, scale) = (self.scaler.mean[j], self.scaler.scale[j]);
            for (mi, v) in m.iter_mut().zip(x.col(j)) {
                *mi += (v - mean) / scale * c;
            }
        }
        m.into_iter().map(|m| sigmoid(m + self.intercept)).collect()
    }
}

/// Gradient-boosted trees settings.
#[derive(Debug, Clone, Copy)]
pub struct GbtParams {
    /// Trees.
    pub trees: usize,
    /// Learning rate.
    pub learning_rate: f32,
    /// Maximum depth.
    pub max_depth: usize,
    /// Seed.
    pub seed: u64,
    /// Balanced class weights.
    pub balanced: bool,
}

/// A fitted gradient-boosted tree ensemble: forust's model and the same trees laid out
/// for fast scoring ([`Forest`], the artifact that is saved and applied).
pub struct Boosted {
    model: GradientBooster,
    forest: Forest,
}

impl std::fmt::Debug for Boosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boosted").finish_non_exhaustive()
    }
}

/// One node of [`Forest`]; a leaf points to itself, so a walk of fixed length stays on it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct FlatNode {
    feature: usize,
    value: f64,
    left: u32,
    right: u32,
    missing: u32,
    weight: f32,
}

/// forust's trees in one array, walked level by level over a chunk of rows at a time: every
/// row of the chunk takes one step per level (no branch on leaves, independent rows side by
/// side), and each row's tree values are added in tree order from the base score, as
/// forust's own `predict` adds them, so the margins are the same to the bit.
/// Saved in the model bundle and applied by `vigil score`: the trees are the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forest {
    base: f64,
    /// forust's missing-value marker; `None` for NaN (JSON has no NaN).
    #[serde(with = "nan_as_none")]
    missing: f64,
    nodes: Vec<FlatNode>,
    /// Each tree's root in `nodes` and the number of steps to its deepest leaf.
    trees: Vec<(u32, usize)>,
    /// Platt scaling `(a, b)`: the probability is `sigmoid(a * margin + b)` (absent: the
    /// raw `sigmoid(margin)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calibration: Option<[f64; 2]>,
}

impl Forest {
    fn new(model: &GradientBooster, d: usize) -> Result<Self, DetectError> {
        let bad = |why: &str| DetectError::Model(format!("gradient boosting: {why}"));
        let used = model.prediction_iteration.unwrap_or(model.trees.len());
        let mut nodes = Vec::new();
        let mut trees = Vec::with_capacity(used);
        for tree in model.trees.iter().take(used) {
            let offset = nodes.len();
            let at = |k: usize| {
                u32::try_from(offset + k)
                    .ok()
                    .filter(|_| k < tree.nodes.len())
                    .ok_or_else(|| bad("a tree node points outside its tree"))
            };
            for (k, n) in tree.nodes.iter().enumerate() {
                nodes.push(if n.is_leaf {
                    let me = at(k)?;
                    FlatNode {
                        feature: 0,
                        value: 0.0,
                        left: me,
                        right: me,
                        missing: me,
                        weight: n.weight_value,
                    }
                } else {
                    if n.split_feature >= d {
                        return Err(bad("a split on a feature the data does not have"));
                    }
                    FlatNode {
                        feature: n.split_feature,
                        value: n.split_value,
                        left: at(n.left_child)?,
                        right: at(n.right_child)?,
                        missing: at(n.missing_node)?,
                        weight: n.weight_value,
                    }
                });
            }
            if tree.nodes.is_empty() {
                return Err(bad("an empty tree"));
            }
            // Steps from the root to the deepest leaf (a walk bounded by the node count).
            let mut depth = 0;
            let mut stack = vec![(0usize, 0usize)];
            while let Some((k, steps)) = stack.pop() {
                let n = &tree.nodes[k];
                if n.is_leaf {
                    depth = depth.max(steps);
                } else if steps < tree.nodes.len() {
                    for c in [n.left_child, n.right_child, n.missing_node] {
                        if c < tree.nodes.len() {
                            stack.push((c, steps + 1));
                        }
                    }
                } else {
                    return Err(bad("a tree with a cycle"));
                }
            }
            trees.push((at(0)?, depth));
        }
        Ok(Self {
            base: model.base_score,
            missing: model.missing,
            nodes,
            trees,
            calibration: None,
        })
    }

    /// Refuse a loaded forest that could index outside itself or its `d` features, or holds
    /// a non-finite number (a corrupted or hand-edited file).
    pub fn check(&self, d: usize) -> Result<(), DetectError> {
        let bad = |why: String| Err(DetectError::Model(format!("gradient boosting: {why}")));
        let n = self.nodes.len();
        if !self.base.is_finite() {
            return bad("the base score is not a finite number".into());
        }
        for (k, node) in self.nodes.iter().enumerate() {
            let leaf = node.left as usize == k && node.right as usize == k;
            if [node.left, node.right, node.missing]
                .iter()
                .any(|&c| c as usize >= n)
            {
                return bad(format!("node {k} points outside the forest"));
            }
            if !leaf && node.feature >= d {
                return bad(format!(
                    "node {k} splits on feature {} of {d}",
                    node.feature
                ));
            }
            if !node.weight.is_finite() || (!leaf && node.value.is_nan()) {
                return bad(format!("node {k} holds a number that is not finite"));
            }
        }
        if let Some((root, depth)) = self.trees.iter().find(|t| t.0 as usize >= n || t.1 > n) {
            return bad(format!(
                "a tree rooted at {root} with depth {depth} in {n} nodes"
            ));
        }
        Ok(())
    }

    /// Trees in the forest.
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// Probability of the positive class for every row of `x`.
    pub fn predict(&self, x: &Features) -> Vec<f64> {
        self.predict_chunks(x, None)
    }

    /// Predictions in parallel chunks of rows: read from the columns in place for all rows,
    /// or gathered into a small column-major buffer per chunk for a subset.
    fn predict_chunks(&self, x: &Features, rows: Option<&[usize]>) -> Vec<f64> {
        const CHUNK: usize = 4_096;
        let n = rows.map_or(x.n(), <[usize]>::len);
        let mut out = vec![0.0; n];
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                let (start, len) = (c * CHUNK, chunk.len());
                match rows {
                    None => {
                        let cols: Vec<&[f64]> =
                            (0..x.d()).map(|j| &x.col(j)[start..start + len]).collect();
                        self.margins(&cols, chunk);
                    }
                    Some(r) => {
                        let mut data = Vec::with_capacity(len * x.d());
                        x.gather(Some(r), start, len, &mut data);
                        let cols: Vec<&[f64]> = data.chunks_exact(len).collect();
                        self.margins(&cols, chunk);
                    }
                }
                match self.calibration {
                    Some([a, b]) => chunk.iter_mut().for_each(|v| *v = sigmoid(a * *v + b)),
                    None => chunk.iter_mut().for_each(|v| *v = sigmoid(*v)),
                }
            });
        out
    }

    /// Margins (log-odds) of the rows held in `cols` (one slice per feature, all as long as
    /// `out`) into `out`.
    fn margins(&self, cols: &[&[f64]], out: &mut [f64]) {
        let missing_is_nan = self.missing.is_nan();
        let is_missing = |v: f64| {
            if missing_is_nan {
                v.is_nan()
            } else {
                v == self.missing
            }
        };
        out.fill(self.base);
        let mut at = vec![0u32; out.len()];
        for &(root, depth) in &self.trees {
            at.fill(root);
            for _ in 0..depth {
                for (row, k) in at.iter_mut().enumerate() {
                    let n = &self.nodes[*k as usize];
                    let v = cols[n.feature][row];
                    *k = if is_missing(v) {
                        n.missing
                    } else if v < n.value {
                        n.left
                    } else {
                        n.right
                    };
                }
            }
            for (o, k) in out.iter_mut().zip(&at) {
                *o += f64::from(self.nodes[*k as usize].weight);
            }
        }
    }
}

impl Boosted {
    /// Fit on `rows` of `x`.
    pub fn fit(
        x: &Features,
        y: &[u8],
        rows: &[usize],
        params: GbtParams,
    ) -> Result<Self, DetectError> {
        let mut data = Vec::with_capacity(rows.len() * x.d());
        x.gather(Some(rows), 0, rows.len(), &mut data);
        let m = Matrix::new(&data, rows.len(), x.d());
        let ys: Vec<u8> = rows.iter().map(|&i| u8::from(y[i] != 0)).collect();
        let yf: Vec<f64> = ys.iter().map(|&l| f64::from(l)).collect();
        let w = class_weights(&ys, params.balanced);
        let mut model = GradientBooster::default()
            .set_iterations(params.trees)
            .set_learning_rate(params.learning_rate)
            .set_max_depth(params.max_depth)
            .set_seed(params.seed)
            .set_parallel(true);
        model
            .fit(&m, &yf, &w, None)
            .map_err(|e| DetectError::Model(format!("gradient boosting: {e}")))?;
        let forest = Forest::new(&model, x.d())?;
        Ok(Self { model, forest })
    }

    /// The fitted forust model (for feature importance or export).
    pub fn model(&self) -> &GradientBooster {
        &self.model
    }

    /// The trees laid out flat: the saved artifact.
    pub fn forest(&self) -> &Forest {
        &self.forest
    }

    /// Probability of the positive class for every row of `x`.
    pub fn predict(&self, x: &Features) -> Vec<f64> {
        self.forest.predict(x)
    }

    /// Calibrate the probabilities on held-out rows (their current probabilities `p` and
    /// labels `y`): Platt scaling, a two-parameter logistic regression on the margins.
    pub fn calibrate(&mut self, p: &[f64], y: &[u8]) {
        let z: Vec<f64> = p
            .iter()
            .map(|&q| {
                let q = q.clamp(1e-12, 1.0 - 1e-12);
                let m = (q / (1.0 - q)).ln();
                // Undo an earlier calibration: fit on the raw margins.
                match self.forest.calibration {
                    Some([a, b]) if a != 0.0 => (m - b) / a,
                    _ => m,
                }
            })
            .collect();
        self.forest.calibration = platt(&z, y);
    }

    /// Probability of the positive class for rows `rows` of `x`, in that order.
    pub fn predict_rows(&self, x: &Features, rows: &[usize]) -> Vec<f64> {
        self.forest.predict_chunks(x, Some(rows))
    }
}

/// Platt scaling: `(a, b)` maximising the likelihood of `y` under `sigmoid(a * z + b)`, by
/// Newton's method with a tiny ridge; `None` without both classes or when it does not settle.
pub fn platt(z: &[f64], y: &[u8]) -> Option<[f64; 2]> {
    let pos = y.iter().filter(|&&l| l != 0).count();
    if pos == 0 || pos == y.len() {
        return None;
    }
    let (mut a, mut b) = (1.0f64, 0.0f64);
    for _ in 0..100 {
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (&zi, &yi) in z.iter().zip(y) {
            let p = sigmoid(a * zi + b);
            let r = p - f64::from(u8::from(yi != 0));
            let w = p * (1.0 - p);
            g0 += r * zi;
            g1 += r;
            h00 += w * zi * zi;
            h01 += w * zi;
            h11 += w;
        }
        let det = h00 * h11 - h01 * h01;
        if det.abs() < 1e-18 {
            return None;
        }
        let (da, db) = ((h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det);
        a -= da;
        b -= db;
        if !(a.is_finite() && b.is_finite()) {
            return None;
        }
        if da.abs().max(db.abs()) < 1e-10 {
            return Some([a, b]);
        }
    }
    Some([a, b])
}

/// forust marks missing values with NaN by default, which JSON cannot hold: NaN is written
/// as `null`.
mod nan_as_none {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        (!v.is_nan()).then_some(*v).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Rows from a fixed logistic model with a deterministic pseudo-random stream, one
    /// feature on a large scale and one constant (its deviation is replaced by 1).
    fn rows(n: usize) -> (Vec<Vec<f64>>, Vec<u8>) {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut cols: Vec<Vec<f64>> = (0..4).map(|_| Vec::with_capacity(n)).collect();
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b, c) = (uniform() - 0.5, 1000.0 * uniform(), uniform());
            let m = 3.0 * a - 0.004 * b + 1.5 * c * c - 0.5;
            y.push(u8::from(uniform() < 1.0 / (1.0 + (-m).exp())));
            for (col, v) in cols.iter_mut().zip([a, b, c, 7.0]) {
                col.push(v);
            }
        }
        (cols, y)
    }

    /// The columns borrowed as [`Features`].
    fn features(cols: &[Vec<f64>]) -> Features<'_> {
        let n = cols.first().map_or(0, Vec::len);
        Features::new(
            n,
            cols.iter().map(|c| Cow::Borrowed(c.as_slice())).collect(),
        )
        .unwrap()
    }

    fn params(trees: usize, max_depth: usize, balanced: bool) -> GbtParams {
        GbtParams {
            trees,
            learning_rate: 0.3,
            max_depth,
            seed: 3,
            balanced,
        }
    }

    #[test]
    fn logistic_fit_reaches_the_regularised_optimum() {
        let n = 6_000;
        let (cols, y) = rows(n);
        let x = features(&cols);
        // Every third row is left out, as a split would.
        let train: Vec<usize> = (0..n).filter(|i| i % 3 != 0).collect();
        let c = 0.5;
        let lr = Logistic::fit(&x, &y, &train, c, true).unwrap();
        // The objective's gradient, written out independently of the solver's passes.
        let ys: Vec<u8> = train.iter().map(|&i| y[i]).collect();
        let w = class_weights(&ys, true);
        let d = cols.len();
        let mut g = vec![0.0; d + 1];
        for (k, &i) in train.iter().enumerate() {
            let z: Vec<f64> = (0..d)
                .map(|j| (cols[j][i] - lr.scaler.mean[j]) / lr.scaler.scale[j])
                .collect();
            let m = lr.intercept + z.iter().zip(&lr.coef).map(|(a, b)| a * b).sum::<f64>();
            let r = w[k] * (1.0 / (1.0 + (-m).exp()) - f64::from(ys[k]));
            for (gj, zj) in g.iter_mut().zip(z.iter().chain([&1.0])) {
                *gj += r * zj;
            }
        }
        for (gj, cj) in g.iter_mut().zip(&lr.coef) {
            *gj += cj / c;
        }
        let sw: f64 = w.iter().sum();
        let worst = g.iter().map(|v| (v / sw).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-9, "gradient {g:?} / {sw}");
        // The constant column carries nothing, and the informative ones point the right way.
        assert!(lr.coef[3].abs() < 1e-12, "{:?}", lr.coef);
        assert!(
            lr.coef[0] > 0.0 && lr.coef[1] < 0.0 && lr.coef[2] > 0.0,
            "{:?}",
            lr.coef
        );
    }

    #[test]
    fn saved_models_score_every_row_to_the_bit_after_a_json_round_trip() {
        let n = 5_000;
        let (cols, y) = rows(n);
        let x = features(&cols);
        let train: Vec<usize> = (0..n).filter(|i| i % 4 != 0).collect();
        let gbt = Boosted::fit(&x, &y, &train, params(20, 4, true)).unwrap();
        let text = serde_json::to_string(gbt.forest()).unwrap();
        let loaded: Forest = serde_json::from_str(&text).unwrap();
        loaded.check(x.d()).unwrap();
        let (a, b) = (gbt.predict(&x), loaded.predict(&x));
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        // forust's NaN missing marker survives JSON (which has no NaN).
        assert!(loaded.missing.is_nan() && text.contains("\"missing\":null"));

        let lr = Logistic::fit(&x, &y, &train, 1.0, true).unwrap();
        let loaded: Logistic = serde_json::from_str(&serde_json::to_string(&lr).unwrap()).unwrap();
        loaded.check(x.d()).unwrap();
        let (a, b) = (lr.predict(&x), loaded.predict(&x));
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }

    #[test]
    fn corrupted_models_are_refused_by_check() {
        let n = 2_000;
        let (cols, y) = rows(n);
        let x = features(&cols);
        let rows_all: Vec<usize> = (0..n).collect();
        let gbt = Boosted::fit(&x, &y, &rows_all, params(5, 3, false)).unwrap();
        // Fewer features than the trees split on, a link out of the forest, a NaN weight.
        assert!(gbt.forest().check(0).is_err());
        let mut f = gbt.forest().clone();
        let last = f.nodes.len() as u32;
        f.nodes[0].left = last;
        assert!(f.check(x.d()).is_err());
        let mut f = gbt.forest().clone();
        f.nodes[0].weight = f32::NAN;
        assert!(f.check(x.d()).is_err());
        let mut lr = Logistic::fit(&x, &y, &rows_all, 1.0, true).unwrap();
        assert!(lr.check(x.d() + 1).is_err());
        lr.coef[1] = f64::INFINITY;
        assert!(lr.check(x.d()).is_err());
    }

    #[test]
    fn flat_forest_gives_forusts_own_margins_to_the_bit() {
        let n = 9_000; // more than two chunks of rows
        let (cols, y) = rows(n);
        let x = features(&cols);
        let train: Vec<usize> = (0..n).filter(|i| i % 4 != 0).collect();
        let params = GbtParams {
            trees: 25,
            learning_rate: 0.3,
            max_depth: 5,
            seed: 7,
            balanced: true,
        };
        let gbt = Boosted::fit(&x, &y, &train, params).unwrap();
        // Rows as stored, some with a missing (NaN) value forust routes on its own branch.
        let mut data: Vec<f64> = cols.iter().flatten().copied().collect();
        for k in (0..n).step_by(7) {
            data[(k % 3) * n + k] = f64::NAN;
        }
        let m = Matrix::new(&data, n, cols.len());
        let theirs = gbt.model().predict(&m, false);
        let slices: Vec<&[f64]> = data.chunks_exact(n).collect();
        let mut ours = vec![0.0; n];
        gbt.forest.margins(&slices, &mut ours);
        for (k, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "row {k}: {a} vs {b}");
        }
        // The public paths: every row, and a subset in a given order, across chunk edges.
        let all = gbt.predict(&x);
        assert_eq!(all.len(), n);
        let subset: Vec<usize> = (0..n).rev().step_by(2).collect();
        let some = gbt.predict_rows(&x, &subset);
        for (p, &i) in some.iter().zip(&subset) {
            assert_eq!(p.to_bits(), all[i].to_bits());
        }
        assert!(all.iter().all(|p| (0.0..=1.0).contains(p)));
    }

    #[test]
    fn one_class_training_rows_still_give_a_finite_model() {
        let n = 200;
        let col: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let x = Features::new(n, vec![Cow::Borrowed(col.as_slice())]).unwrap();
        let y = vec![1u8; n];
        let rows: Vec<usize> = (0..n).collect();
        let lr = Logistic::fit(&x, &y, &rows, 1.0, false).unwrap();
        let p = lr.predict(&x);
        assert!(p.iter().all(|v| v.is_finite() && *v > 0.5), "{p:?}");
    }

    #[test]
    fn platt_scaling_recovers_a_known_slope_and_offset() {
        // Labels drawn (deterministically, by quantiles) from sigmoid(2z - 1).
        let mut z = Vec::new();
        let mut y = Vec::new();
        for i in 0..4000 {
            let zi = (i % 200) as f64 / 25.0 - 4.0;
            let p = sigmoid(2.0 * zi - 1.0);
            z.push(zi);
            y.push(u8::from(((i / 200) as f64 + 0.5) / 20.0 < p));
        }
        let [a, b] = platt(&z, &y).unwrap();
        assert!((a - 2.0).abs() < 0.15 && (b + 1.0).abs() < 0.15, "{a} {b}");
        assert!(platt(&z, &vec![0; z.len()]).is_none(), "one class only");
    }
}
