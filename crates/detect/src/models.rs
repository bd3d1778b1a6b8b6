//! The two models: logistic regression exactly as the spec (standardised features, L2 with
//! `C`, balanced class weights, solved by argmin's Newton-CG to a tight tolerance) and
//! gradient-boosted trees (forust, the XGBoost algorithm in Rust).

use argmin::core::{
    CostFunction, Executor, Gradient, Hessian, IterState, KV, Problem, Solver, State,
    TerminationReason, TerminationStatus,
};
use argmin::solver::trustregion::{Steihaug, TrustRegion};
use std::borrow::Cow;

use forust_ml::{GradientBooster, Matrix};
use rayon::prelude::*;

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
#[derive(Debug, Clone)]
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

/// A fitted logistic regression.
#[derive(Debug, Clone)]
pub struct Logistic {
    scaler: Standardizer,
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
            .configure(|s| s.param(vec![0.0; d + 1]).max_iters(30))
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

/// A fitted gradient-boosted tree ensemble.
pub struct Boosted(GradientBooster);

impl std::fmt::Debug for Boosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boosted").finish_non_exhaustive()
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
        Ok(Self(model))
    }

    /// Probability of the positive class for every row of `x`.
    pub fn predict(&self, x: &Features) -> Vec<f64> {
        self.predict_blocks(x, None)
    }

    /// Probability of the positive class for rows `rows` of `x`, in that order.
    pub fn predict_rows(&self, x: &Features, rows: &[usize]) -> Vec<f64> {
        self.predict_blocks(x, Some(rows))
    }

    /// Predictions in blocks of rows, each copied into one reused column-major buffer, so
    /// the copy forust needs stays small and its pages stay mapped.
    fn predict_blocks(&self, x: &Features, rows: Option<&[usize]>) -> Vec<f64> {
        const ROWS: usize = 131_072;
        let n = rows.map_or(x.n(), <[usize]>::len);
        let mut out = Vec::with_capacity(n);
        let mut data = Vec::with_capacity(ROWS.min(n) * x.d());
        let mut start = 0;
        while start < n {
            let len = ROWS.min(n - start);
            x.gather(rows, start, len, &mut data);
            let m = Matrix::new(&data, len, x.d());
            out.extend(self.0.predict(&m, true).into_iter().map(sigmoid));
            start += len;
        }
        out
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

    #[test]
    fn logistic_fit_reaches_the_regularised_optimum() {
        let n = 6_000;
        let (cols, y) = rows(n);
        let x = Features::new(
            n,
            cols.iter().map(|c| Cow::Borrowed(c.as_slice())).collect(),
        )
        .unwrap();
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
}
