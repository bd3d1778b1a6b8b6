//! The two models: logistic regression exactly as the spec (standardised features, L2 with
//! `C`, balanced class weights, solved by argmin's L-BFGS to a tight tolerance) and
//! gradient-boosted trees (forust, the XGBoost algorithm in Rust).

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
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
    fn fit(x: &Features, rows: &[usize]) -> Self {
        let n = rows.len().max(1) as f64;
        let (mut mean, mut scale) = (Vec::with_capacity(x.d()), Vec::with_capacity(x.d()));
        for j in 0..x.d() {
            let c = x.col(j);
            let m = rows.iter().fold(0.0, |s, &i| s + c[i]) / n;
            let var = rows.iter().fold(0.0, |s, &i| s + (c[i] - m) * (c[i] - m));
            let sd = (var / n).sqrt();
            mean.push(m);
            scale.push(if sd > 0.0 { sd } else { 1.0 });
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
    z: Vec<f64>, // standardised training rows, row-major
    y: &'a [u8],
    w: &'a [f64],
    d: usize,
    inv_c: f64,
    sw_sum: f64,
    /// The last point evaluated with its cost and gradient: the line search asks for both at
    /// the same point, and one pass over the rows yields both.
    last: std::sync::Mutex<Option<Evaluated>>,
    /// Passes over the rows so far (for the debug log).
    passes: std::sync::atomic::AtomicUsize,
}

/// A point with its cost and gradient.
type Evaluated = (Vec<f64>, f64, Vec<f64>);

impl LogLoss<'_> {
    /// Cost and gradient at `p` in one pass over the training rows (blocks in parallel,
    /// block results summed in block order so the result does not depend on scheduling).
    fn eval(&self, p: &[f64]) -> (f64, Vec<f64>) {
        if let Ok(guard) = self.last.lock()
            && let Some((q, cost, grad)) = guard.as_ref()
            && q.as_slice() == p
        {
            return (*cost, grad.clone());
        }
        self.passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self.d;
        let (coef, b) = (&p[..d], p[d]);
        let blocks: Vec<(f64, Vec<f64>)> = self
            .z
            .par_chunks(BLOCK * d)
            .enumerate()
            .map(|(blk, rows)| {
                let mut loss = 0.0;
                let mut g = vec![0.0; d + 1];
                for (k, r) in rows.chunks_exact(d).enumerate() {
                    let i = blk * BLOCK + k;
                    let m = r.iter().zip(coef).map(|(a, c)| a * c).sum::<f64>() + b;
                    // log(1 + e^m) - y m without overflow, and the sigmoid from the same exp.
                    let (softplus, sig) = if m > 0.0 {
                        let e = (-m).exp();
                        (m + e.ln_1p(), 1.0 / (1.0 + e))
                    } else {
                        let e = m.exp();
                        (e.ln_1p(), e / (1.0 + e))
                    };
                    let yi = f64::from(self.y[i]);
                    loss += self.w[i] * (softplus - yi * m);
                    let e = self.w[i] * (sig - yi);
                    for (gj, xj) in g.iter_mut().zip(r) {
                        *gj += e * xj;
                    }
                    g[d] += e;
                }
                (loss, g)
            })
            .collect();
        let mut loss = 0.0;
        let mut g = vec![0.0; d + 1];
        for (l, bg) in &blocks {
            loss += l;
            g.iter_mut().zip(bg).for_each(|(x, y)| *x += y);
        }
        let reg: f64 = coef.iter().map(|c| c * c).sum::<f64>() * 0.5 * self.inv_c;
        for j in 0..d {
            g[j] += p[j] * self.inv_c;
        }
        g.iter_mut().for_each(|v| *v /= self.sw_sum);
        let cost = (loss + reg) / self.sw_sum;
        if let Ok(mut guard) = self.last.lock() {
            *guard = Some((p.to_vec(), cost, g.clone()));
        }
        (cost, g)
    }
}

/// Rows per parallel block of the loss and gradient sums.
const BLOCK: usize = 16_384;

impl CostFunction for LogLoss<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.eval(p).0)
    }
}

impl Gradient for LogLoss<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.eval(p).1)
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
        let scaler = Standardizer::fit(x, rows);
        let d = x.d();
        // Standardised training rows, row-major: the loss reads one row at a time.
        let mut z = vec![0.0; rows.len() * d];
        for j in 0..d {
            let (c, m, s) = (x.col(j), scaler.mean[j], scaler.scale[j]);
            for (zr, &i) in z.chunks_exact_mut(d).zip(rows) {
                zr[j] = (c[i] - m) / s;
            }
        }
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
        let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
            .with_tolerance_grad(1e-8)
            .and_then(|s| s.with_tolerance_cost(1e-14))
            .map_err(|e| DetectError::Model(e.to_string()))?;
        let solve_started = std::time::Instant::now();
        let result = Executor::new(problem, solver)
            .configure(|s| s.param(vec![0.0; d + 1]).max_iters(1000))
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
