//! The six aggregators that turn one group's per-observation scores into one affinity score,
//! reproducing the reference's numpy formulae in f64.

/// Which aggregator, with its parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregator {
    /// `(mean - median) / std` (population std), 0 below `min_size` scores or when std is 0.
    Skewness {
        /// Fewest scores needed (default 10).
        min_size: usize,
    },
    /// Mean of the scores > 0.
    MeanOfPositives,
    /// Mean of the `k` largest scores > 0 (default 3).
    TopKMean {
        /// How many.
        k: usize,
    },
    /// The `q`-th percentile (numpy linear) of the scores > 0 (default 90).
    PercentileScore {
        /// Percentile in [0, 100].
        q: f64,
    },
    /// `sum(softmax(x / t) * x)` over the scores > 0 (default t = 1).
    SoftmaxWeightedMean {
        /// Temperature (at least 1e-6 is used).
        temperature: f64,
    },
    /// Largest score > 0.
    MaxScore,
}

impl Aggregator {
    /// All six with their default parameters, in the reference's order.
    pub const ALL: [Aggregator; 6] = [
        Aggregator::Skewness { min_size: 10 },
        Aggregator::MeanOfPositives,
        Aggregator::TopKMean { k: 3 },
        Aggregator::PercentileScore { q: 90.0 },
        Aggregator::SoftmaxWeightedMean { temperature: 1.0 },
        Aggregator::MaxScore,
    ];

    /// The reference's function name (`aggregation_name`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Skewness { .. } => "skewness",
            Self::MeanOfPositives => "mean_of_positives",
            Self::TopKMean { .. } => "top_k_mean",
            Self::PercentileScore { .. } => "percentile_score",
            Self::SoftmaxWeightedMean { .. } => "softmax_weighted_mean",
            Self::MaxScore => "max_score",
        }
    }

    /// Apply to a score array.
    pub fn apply(&self, scores: &[f64]) -> f64 {
        match *self {
            Self::Skewness { min_size } => skewness(scores, min_size),
            Self::MeanOfPositives => mean_of_positives(scores),
            Self::TopKMean { k } => top_k_mean(scores, k),
            Self::PercentileScore { q } => percentile_score(scores, q),
            Self::SoftmaxWeightedMean { temperature } => softmax_weighted_mean(scores, temperature),
            Self::MaxScore => max_score(scores),
        }
    }
}

impl std::str::FromStr for Aggregator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|a| a.name() == s)
            .copied()
            .ok_or_else(|| {
                format!(
                    "unknown aggregator `{s}` (expected one of: {})",
                    Self::ALL.map(|a| a.name()).join(", ")
                )
            })
    }
}

/// numpy `mean` (pairwise summation is not needed at these sizes; plain summation in order).
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn positives(scores: &[f64]) -> Vec<f64> {
    scores.iter().copied().filter(|s| *s > 0.0).collect()
}

/// numpy `median`.
pub fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Skewness proxy `(mean - median) / std` with the population std.
pub fn skewness(scores: &[f64], min_size: usize) -> f64 {
    if scores.len() < min_size || scores.is_empty() {
        return 0.0;
    }
    let m = mean(scores);
    let var = scores.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / scores.len() as f64;
    let std = var.sqrt();
    if std == 0.0 {
        return 0.0;
    }
    (m - median(scores)) / std
}

/// Mean of the positive scores, 0 when none.
pub fn mean_of_positives(scores: &[f64]) -> f64 {
    let p = positives(scores);
    if p.is_empty() { 0.0 } else { mean(&p) }
}

/// Mean of the `k` largest positive scores, 0 when none.
pub fn top_k_mean(scores: &[f64], k: usize) -> f64 {
    let mut p = positives(scores);
    if p.is_empty() || k == 0 {
        return 0.0;
    }
    p.sort_by(|a, b| b.total_cmp(a));
    let k = k.min(p.len());
    mean(&p[..k])
}

/// numpy `percentile(x, q)` (linear) of the positive scores, 0 when none.
pub fn percentile_score(scores: &[f64], q: f64) -> f64 {
    let p = sorted(&positives(scores));
    if p.is_empty() {
        return 0.0;
    }
    let h = (p.len() - 1) as f64 * (q / 100.0);
    let lo = h.floor();
    let gamma = h - lo;
    let lo = lo as usize;
    let hi = (lo + 1).min(p.len() - 1);
    // numpy's _lerp, computed from the upper end when gamma >= 0.5.
    let diff = p[hi] - p[lo];
    if gamma >= 0.5 {
        p[hi] - diff * (1.0 - gamma)
    } else {
        p[lo] + diff * gamma
    }
}

/// Softmax-weighted mean of the positive scores, 0 when none.
pub fn softmax_weighted_mean(scores: &[f64], temperature: f64) -> f64 {
    let p = positives(scores);
    if p.is_empty() {
        return 0.0;
    }
    let t = temperature.max(1e-6);
    let scaled: Vec<f64> = p.iter().map(|x| x / t).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scaled.iter().map(|x| (x - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().zip(&p).map(|(w, x)| w / z * x).sum()
}

/// Largest positive score, 0 when none.
pub fn max_score(scores: &[f64]) -> f64 {
    positives(scores).into_iter().fold(0.0, f64::max)
}
