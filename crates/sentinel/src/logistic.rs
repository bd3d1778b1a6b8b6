//! L2-regularised, class-weighted logistic regression over dense or sparse rows, solved with
//! argmin's L-BFGS: the per-message models of the calibrated scorer.

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

use crate::{Matrix, SentinelError};

/// Rows a linear model can be fitted on and applied to.
pub trait Rows: Sync {
    /// Number of columns (weights).
    fn cols(&self) -> usize;
    /// `row(i) . w`.
    fn dot(&self, i: usize, w: &[f64]) -> f64;
    /// `g += a * row(i)`.
    fn add_to(&self, i: usize, a: f64, g: &mut [f64]);
}

impl Rows for Matrix {
    fn cols(&self) -> usize {
        self.dim
    }
    fn dot(&self, i: usize, w: &[f64]) -> f64 {
        self.row(i)
            .iter()
            .zip(w)
            .map(|(&x, &w)| f64::from(x) * w)
            .sum()
    }
    fn add_to(&self, i: usize, a: f64, g: &mut [f64]) {
        for (g, &x) in g.iter_mut().zip(self.row(i)) {
            *g += a * f64::from(x);
        }
    }
}

/// Sparse rows: `(column, value)` pairs per row.
#[derive(Debug, Clone, Default)]
pub struct SparseRows {
    /// Column count.
    pub cols: usize,
    /// Each row's non-zero entries.
    pub rows: Vec<Vec<(u32, f32)>>,
}

impl Rows for SparseRows {
    fn cols(&self) -> usize {
        self.cols
    }
    fn dot(&self, i: usize, w: &[f64]) -> f64 {
        self.rows[i]
            .iter()
            .map(|&(c, x)| f64::from(x) * w[c as usize])
            .sum()
    }
    fn add_to(&self, i: usize, a: f64, g: &mut [f64]) {
        for &(c, x) in &self.rows[i] {
            g[c as usize] += a * f64::from(x);
        }
    }
}

/// A fitted linear model: `logit = w . x + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Weights, one per column.
    pub weights: Vec<f64>,
    /// Intercept (not regularised).
    pub bias: f64,
}

impl Linear {
    /// The logit of row `i`.
    pub fn logit(&self, x: &dyn Rows, i: usize) -> f64 {
        x.dot(i, &self.weights) + self.bias
    }
}

/// A point with its loss and gradient.
type Evaluated = (Vec<f64>, f64, Vec<f64>);

/// The training problem: rows `subset` of `x` with labels `y`, per-row weights and `lambda`.
struct Problem<'a> {
    x: &'a dyn Rows,
    subset: &'a [usize],
    y: &'a [bool],
    weight: [f64; 2],
    lambda: f64,
    /// The last point evaluated: the line search asks for the cost and then the gradient at
    /// the same point, and one pass over the rows yields both.
    last: std::cell::RefCell<Option<Evaluated>>,
}

impl Problem<'_> {
    fn evaluate(&self, p: &[f64]) -> (f64, Vec<f64>) {
        if let Some((q, loss, g)) = self.last.borrow().as_ref()
            && q.as_slice() == p
        {
            return (*loss, g.clone());
        }
        let (loss, g) = self.loss_and_gradient(p);
        *self.last.borrow_mut() = Some((p.to_vec(), loss, g.clone()));
        (loss, g)
    }

    /// Weighted log-loss plus `lambda / 2 * |w|^2`, and its gradient (bias last).
    fn loss_and_gradient(&self, p: &[f64]) -> (f64, Vec<f64>) {
        let d = self.x.cols();
        let (w, b) = (&p[..d], p[d]);
        let mut g = vec![0.0; d + 1];
        let mut loss = 0.0;
        for &i in self.subset {
            let z = self.x.dot(i, w) + b;
            let yi = self.y[i];
            let c = self.weight[usize::from(yi)];
            // log(1 + e^-z) for a positive, log(1 + e^z) for a negative, computed stably.
            let m = if yi { -z } else { z };
            loss += c * (m.max(0.0) + (-m.abs()).exp().ln_1p());
            let r = c * (sigmoid(z) - if yi { 1.0 } else { 0.0 });
            self.x.add_to(i, r, &mut g[..d]);
            g[d] += r;
        }
        let mut reg = 0.0;
        for (gj, &wj) in g[..d].iter_mut().zip(w) {
            *gj += self.lambda * wj;
            reg += wj * wj;
        }
        (loss + 0.5 * self.lambda * reg, g)
    }
}

impl CostFunction for Problem<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.evaluate(p).0)
    }
}

impl Gradient for Problem<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.evaluate(p).1)
    }
}

/// The logistic function.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Fit on rows `subset` of `x` (labels `y`, indexed like `x`). `balanced` weighs each class
/// by `n / (2 * n_class)` so a rare class counts as much as a common one; `lambda` is the L2
/// penalty (scikit-learn's `1 / C`).
pub fn fit(
    x: &dyn Rows,
    y: &[bool],
    subset: &[usize],
    lambda: f64,
    balanced: bool,
) -> Result<Linear, SentinelError> {
    let n_pos = subset.iter().filter(|&&i| y[i]).count();
    let n = subset.len();
    if n_pos == 0 || n_pos == n {
        return Err(SentinelError::BadInput(
            "fitting a classifier needs examples of both classes".into(),
        ));
    }
    let weight = if balanced {
        [
            n as f64 / (2.0 * (n - n_pos) as f64),
            n as f64 / (2.0 * n_pos as f64),
        ]
    } else {
        [1.0, 1.0]
    };
    let problem = Problem {
        x,
        subset,
        y,
        weight,
        lambda,
        last: std::cell::RefCell::new(None),
    };
    let d = x.cols();
    let internal = |e: argmin::core::Error| SentinelError::Internal(format!("L-BFGS: {e}"));
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(1e-7)
        .map_err(internal)?
        .with_tolerance_cost(1e-12)
        .map_err(internal)?;
    let result = Executor::new(problem, solver)
        .configure(|s| s.param(vec![0.0; d + 1]).max_iters(500))
        .run()
        .map_err(internal)?;
    let p = result
        .state()
        .get_best_param()
        .cloned()
        .ok_or_else(|| SentinelError::Internal("L-BFGS returned no parameters".into()))?;
    Ok(Linear {
        weights: p[..d].to_vec(),
        bias: p[d],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_separable_direction_is_found_and_the_penalty_shrinks_it() {
        // Class 1 iff the first coordinate is positive; the second coordinate is noise.
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for i in 0..200 {
            let a = (i as f32 / 100.0) - 1.0 + 0.005;
            let b = ((i * 37 % 200) as f32 / 100.0) - 1.0;
            rows.push(vec![a, b]);
            y.push(a > 0.0);
        }
        let x = Matrix::from_rows(&rows).unwrap();
        let all: Vec<usize> = (0..200).collect();
        let loose = fit(&x, &y, &all, 0.01, true).unwrap();
        let tight = fit(&x, &y, &all, 10.0, true).unwrap();
        assert!(loose.weights[0] > 5.0 * loose.weights[1].abs(), "{loose:?}");
        assert!(tight.weights[0] > 0.0 && tight.weights[0] < loose.weights[0]);
        let correct = all
            .iter()
            .filter(|&&i| (loose.logit(&x, i) > 0.0) == y[i])
            .count();
        assert!(correct >= 198, "{correct}");
        // The same problem as sparse rows gives the same model.
        let sparse = SparseRows {
            cols: 2,
            rows: rows.iter().map(|r| vec![(0, r[0]), (1, r[1])]).collect(),
        };
        let s = fit(&sparse, &y, &all, 0.01, true).unwrap();
        assert!((s.weights[0] - loose.weights[0]).abs() < 1e-3 * loose.weights[0].abs());
        assert!(
            fit(&x, &y, &all[..50], 1.0, true).is_err(),
            "one class only"
        );
    }
}
