//! Evaluation: confusion counts at a threshold, the F1 threshold sweep, ROC-AUC (with ties
//! counted half, as scikit-learn's `roc_auc_score`) and the precision-recall curve.

use serde::Serialize;

/// Precision, recall and F1 of `score >= threshold` against labels.
pub fn precision_recall_f1(scores: &[f64], y: &[u8], threshold: f64) -> (f64, f64, f64) {
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (&s, &l) in scores.iter().zip(y) {
        match (s >= threshold, l != 0) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let div = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    (
        div(tp, tp + fp),
        div(tp, tp + fn_),
        div(2 * tp, 2 * tp + fp + fn_),
    )
}

/// The thresholds `start, start + step, ..., end` (numpy `arange` arithmetic, end inclusive
/// within half a step).
pub fn threshold_grid(start: f64, end: f64, step: f64) -> Vec<f64> {
    let n = ((end - start) / step + 0.5).floor() as usize + 1;
    (0..n).map(|i| start + i as f64 * step).collect()
}

/// The first threshold of the grid with the best F1 (ties keep the lower threshold).
/// One pass over the scores for an ascending grid: each score is counted at the number of
/// thresholds it reaches, and the counts summed from the top give every threshold's
/// confusion counts (the same integers as [`precision_recall_f1`] at each threshold).
pub fn best_f1_threshold(scores: &[f64], y: &[u8], grid: &[f64]) -> f64 {
    let first = grid.first().copied().unwrap_or(0.5);
    if !grid.is_sorted() {
        return best_f1_threshold_per_threshold(scores, y, grid);
    }
    // reached[k]: (positives, negatives) among scores with exactly k thresholds <= score.
    let mut reached = vec![(0u64, 0u64); grid.len() + 1];
    for (&s, &l) in scores.iter().zip(y) {
        let k = grid.partition_point(|&t| s >= t);
        if l != 0 {
            reached[k].0 += 1;
        } else {
            reached[k].1 += 1;
        }
    }
    let total_pos: u64 = reached.iter().map(|r| r.0).sum();
    // Predicted positive at grid[i]: scores reaching more than i thresholds.
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut f1 = vec![0.0; grid.len()];
    for i in (0..grid.len()).rev() {
        tp += reached[i + 1].0;
        fp += reached[i + 1].1;
        let denominator = 2 * tp + fp + (total_pos - tp);
        f1[i] = if denominator == 0 {
            0.0
        } else {
            (2 * tp) as f64 / denominator as f64
        };
    }
    let mut best = (f64::NEG_INFINITY, first);
    for (&t, &f) in grid.iter().zip(&f1) {
        if f > best.0 {
            best = (f, t);
        }
    }
    best.1
}

/// [`best_f1_threshold`] for a grid in any order: one pass per threshold.
fn best_f1_threshold_per_threshold(scores: &[f64], y: &[u8], grid: &[f64]) -> f64 {
    let mut best = (f64::NEG_INFINITY, grid.first().copied().unwrap_or(0.5));
    for &t in grid {
        let f1 = precision_recall_f1(scores, y, t).2;
        if f1 > best.0 {
            best = (f1, t);
        }
    }
    best.1
}

/// Area under the ROC curve; 0.5 when only one class is present.
pub fn roc_auc(scores: &[f64], y: &[u8]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum_pos, mut n_pos) = (0.0, 0u64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if y[k] != 0 {
                rank_sum_pos += avg_rank;
                n_pos += 1;
            }
        }
        i = j + 1;
    }
    let n_neg = scores.len() as u64 - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return 0.5;
    }
    let np = n_pos as f64;
    (rank_sum_pos - np * (np + 1.0) / 2.0) / (np * n_neg as f64)
}

/// One point of a precision-recall curve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PrPoint {
    /// Scores at or above this are predicted positive.
    pub threshold: f64,
    /// Precision at that threshold.
    pub precision: f64,
    /// Recall at that threshold.
    pub recall: f64,
}

/// The precision-recall curve at every distinct score, thinned to at most `max_points`
/// points (evenly in rank order; the ends are kept).
pub fn pr_curve(scores: &[f64], y: &[u8], max_points: usize) -> Vec<PrPoint> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let total_pos = y.iter().filter(|&&l| l != 0).count() as f64;
    let mut points = Vec::new();
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            if y[order[i]] != 0 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        points.push(PrPoint {
            threshold: s,
            precision: tp / (tp + fp),
            recall: if total_pos > 0.0 { tp / total_pos } else { 0.0 },
        });
    }
    if points.len() > max_points && max_points >= 2 {
        let last = points.len() - 1;
        let step = last as f64 / (max_points - 1) as f64;
        points = (0..max_points)
            .map(|k| points[((k as f64 * step).round() as usize).min(last)])
            .collect();
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ties_as_half() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert!((roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1]) - 0.75).abs() < 1e-12);
        // a tie between a positive and a negative counts one half
        assert!((roc_auc(&[0.5, 0.5], &[0, 1]) - 0.5).abs() < 1e-12);
        assert!((roc_auc(&[0.1, 0.9], &[0, 1]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn f1_sweep_keeps_the_lower_threshold_on_ties() {
        let grid = threshold_grid(0.1, 0.9, 0.01);
        assert_eq!(grid.len(), 81);
        assert!((grid[80] - 0.9).abs() < 1e-9);
        // every threshold above 0.2 and up to 0.85 separates perfectly: the first one wins
        let t = best_f1_threshold(&[0.1, 0.2, 0.85, 0.95], &[0, 0, 1, 1], &grid);
        assert!((t - 0.21).abs() < 1e-9, "{t}");
    }

    #[test]
    fn one_pass_f1_sweep_picks_what_a_pass_per_threshold_picks() {
        let grid = threshold_grid(0.1, 0.9, 0.01);
        let mut state = 88_172_645_463_325_252_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..50 {
            let n = 1 + (next() % 400) as usize;
            let scores: Vec<f64> = (0..n)
                .map(|_| match next() % 10 {
                    // scores exactly on a threshold, outside the grid, and NaN
                    0 => grid[(next() % 81) as usize],
                    1 => f64::NAN,
                    2 => 1.5,
                    _ => (next() % 1000) as f64 / 1000.0,
                })
                .collect();
            let y: Vec<u8> = scores
                .iter()
                .map(|s| u8::from(next() % 100 < (s.max(0.0) * 60.0) as u64 + 5))
                .collect();
            let fast = best_f1_threshold(&scores, &y, &grid);
            let slow = best_f1_threshold_per_threshold(&scores, &y, &grid);
            assert_eq!(fast.to_bits(), slow.to_bits(), "round {round}");
        }
        // all-negative labels: every F1 is 0 and the first threshold is kept
        assert_eq!(best_f1_threshold(&[0.3, 0.7], &[0, 0], &grid), grid[0]);
        // a grid out of order is still answered
        assert_eq!(best_f1_threshold(&[0.2, 0.8], &[0, 1], &[0.9, 0.5]), 0.5);
    }

    #[test]
    fn precision_without_predicted_positives_is_zero() {
        assert_eq!(
            precision_recall_f1(&[0.1, 0.2], &[0, 1], 0.5),
            (0.0, 0.0, 0.0)
        );
    }
}
