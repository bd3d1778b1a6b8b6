//! Side-by-side evaluation of scorers on labelled groups: ROC-AUC, average precision and
//! recall at 1% and 5% false-positive rate, each with a percentile bootstrap interval over
//! the groups (a few hundred groups leave wide intervals; the numbers say how wide).

use serde::Serialize;

/// The four ranking metrics of one set of group affinities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranking {
    /// ROC-AUC (ties count half).
    pub roc_auc: f64,
    /// Average precision: the mean of the precision at each positive's rank, tied scores
    /// taken together (scikit-learn's definition).
    pub average_precision: f64,
    /// Largest recall at a threshold whose false-positive rate is at most 1%.
    pub recall_at_1pct_fpr: f64,
    /// The same at 5%.
    pub recall_at_5pct_fpr: f64,
}

/// The metrics of `scores` against `labels`; `None` without both classes.
pub fn ranking(scores: &[f64], labels: &[bool]) -> Option<Ranking> {
    let n_pos = labels.iter().filter(|&&b| b).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (np, nn) = (n_pos as f64, n_neg as f64);
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut auc, mut ap) = (0.0, 0.0);
    let (mut r1, mut r5) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        // One threshold per distinct score: every tied row crosses it together.
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let pos = order[i..=j].iter().filter(|&&k| labels[k]).count();
        let neg = j + 1 - i - pos;
        // Negatives ranked here beat every positive below and tie those at this score.
        auc += neg as f64 * (np - tp as f64 - pos as f64 * 0.5);
        tp += pos;
        fp += neg;
        if pos > 0 {
            ap += (pos as f64 / np) * (tp as f64 / (tp + fp) as f64);
        }
        let (tpr, fpr) = (tp as f64 / np, fp as f64 / nn);
        if fpr <= 0.01 {
            r1 = r1.max(tpr);
        }
        if fpr <= 0.05 {
            r5 = r5.max(tpr);
        }
        i = j + 1;
    }
    Some(Ranking {
        roc_auc: 1.0 - auc / (np * nn),
        average_precision: ap,
        recall_at_1pct_fpr: r1,
        recall_at_5pct_fpr: r5,
    })
}

/// One scorer-and-aggregator line of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    /// `reference` or `calibrated`.
    pub scorer: String,
    /// Aggregator name.
    pub aggregator: String,
    /// Groups.
    pub n_groups: usize,
    /// Harmful groups.
    pub n_positive: usize,
    /// ROC-AUC and its bootstrap interval.
    pub roc_auc: Option<f64>,
    /// Lower end (2.5th percentile).
    pub roc_auc_low: Option<f64>,
    /// Upper end (97.5th percentile).
    pub roc_auc_high: Option<f64>,
    /// Average precision.
    pub average_precision: Option<f64>,
    /// Lower end.
    pub average_precision_low: Option<f64>,
    /// Upper end.
    pub average_precision_high: Option<f64>,
    /// Recall at 1% false-positive rate.
    pub recall_at_1pct_fpr: Option<f64>,
    /// Lower end.
    pub recall_at_1pct_fpr_low: Option<f64>,
    /// Upper end.
    pub recall_at_1pct_fpr_high: Option<f64>,
    /// Recall at 5% false-positive rate.
    pub recall_at_5pct_fpr: Option<f64>,
    /// Lower end.
    pub recall_at_5pct_fpr_low: Option<f64>,
    /// Upper end.
    pub recall_at_5pct_fpr_high: Option<f64>,
    /// Bootstrap resamples behind the intervals.
    pub resamples: usize,
}

/// Percentile `q` (0..1) of sorted values, linear between neighbours.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// Evaluate one scorer's group affinities, with `resamples` bootstrap resamples of the groups
/// (drawn with `seed`, so two scorers compared with one seed see the same resamples).
pub fn compare_row(
    scorer: &str,
    aggregator: &str,
    affinities: &[f64],
    labels: &[bool],
    resamples: usize,
    seed: u64,
) -> CompareRow {
    let point = ranking(affinities, labels);
    let mut draws: [Vec<f64>; 4] = Default::default();
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let n = affinities.len();
    let (mut s, mut l) = (vec![0.0; n], vec![false; n]);
    for _ in 0..resamples {
        for k in 0..n {
            let pick = (next() % n as u64) as usize;
            s[k] = affinities[pick];
            l[k] = labels[pick];
        }
        if let Some(r) = ranking(&s, &l) {
            for (d, v) in draws.iter_mut().zip([
                r.roc_auc,
                r.average_precision,
                r.recall_at_1pct_fpr,
                r.recall_at_5pct_fpr,
            ]) {
                d.push(v);
            }
        }
    }
    for d in &mut draws {
        d.sort_by(f64::total_cmp);
    }
    let lo = |k: usize| percentile(&draws[k], 0.025);
    let hi = |k: usize| percentile(&draws[k], 0.975);
    CompareRow {
        scorer: scorer.into(),
        aggregator: aggregator.into(),
        n_groups: n,
        n_positive: labels.iter().filter(|&&b| b).count(),
        roc_auc: point.map(|r| r.roc_auc),
        roc_auc_low: lo(0),
        roc_auc_high: hi(0),
        average_precision: point.map(|r| r.average_precision),
        average_precision_low: lo(1),
        average_precision_high: hi(1),
        recall_at_1pct_fpr: point.map(|r| r.recall_at_1pct_fpr),
        recall_at_1pct_fpr_low: lo(2),
        recall_at_1pct_fpr_high: hi(2),
        recall_at_5pct_fpr: point.map(|r| r.recall_at_5pct_fpr),
        recall_at_5pct_fpr_low: lo(3),
        recall_at_5pct_fpr_high: hi(3),
        resamples,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        // Ranked: P(0.9) N(0.8) P(0.7) N(0.2) N(0.1).
        let s = [0.9, 0.8, 0.7, 0.2, 0.1];
        let y = [true, false, true, false, false];
        let r = ranking(&s, &y).unwrap();
        // Pairs: (0.9 beats all 3 negatives) + (0.7 beats 2 of 3) = 5 of 6.
        assert!((r.roc_auc - 5.0 / 6.0).abs() < 1e-12);
        // AP = 1/2 * (1/1) + 1/2 * (2/3).
        assert!((r.average_precision - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // No false positive before the first positive only: recall 0.5 at FPR 0.
        assert_eq!(r.recall_at_1pct_fpr, 0.5);
        assert_eq!(r.recall_at_5pct_fpr, 0.5);
        // Ties: one positive and one negative at the same score count half.
        let t = ranking(&[0.5, 0.5], &[true, false]).unwrap();
        assert_eq!(t.roc_auc, 0.5);
        assert_eq!(t.recall_at_1pct_fpr, 0.0);
        assert!(ranking(&[0.1], &[true]).is_none());
    }

    #[test]
    fn bootstrap_intervals_hold_the_point_and_narrow_with_more_groups() {
        let make = |n: usize| -> (Vec<f64>, Vec<bool>) {
            let y: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
            let s: Vec<f64> = (0..n)
                .map(|i| (i * 7919 % 100) as f64 / 100.0 + if y[i] { 0.3 } else { 0.0 })
                .collect();
            (s, y)
        };
        let (s, y) = make(100);
        let small = compare_row("x", "a", &s, &y, 500, 1);
        let (lo, hi, p) = (
            small.roc_auc_low.unwrap(),
            small.roc_auc_high.unwrap(),
            small.roc_auc.unwrap(),
        );
        assert!(lo <= p && p <= hi, "{lo} {p} {hi}");
        let (s, y) = make(2000);
        let big = compare_row("x", "a", &s, &y, 500, 1);
        assert!(big.roc_auc_high.unwrap() - big.roc_auc_low.unwrap() < hi - lo);
    }
}
