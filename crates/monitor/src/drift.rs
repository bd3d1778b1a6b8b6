//! Population stability index (PSI) per user-day feature, exactly as the notebook computes it:
//! reference = every user-day before the last `recent_days` days, current = the last days;
//! bin edges = unique reference quantiles at 0, 1/bins, ..., 1 (numpy's linear method).

use rayon::prelude::*;

/// One feature's PSI.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureDrift {
    /// Feature (column) name.
    pub feature: String,
    /// The PSI.
    pub psi: f64,
    /// 1 when `psi > flag_threshold`.
    pub drift_flag: u8,
}

/// numpy's `_lerp`: `a + (b - a) * t`, computed from the upper end when `t >= 0.5`.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

/// numpy `quantile(sorted, q, method="linear")` of an ascending, NaN-free slice.
pub fn quantile_linear(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let virtual_index = (n - 1) as f64 * q;
    let prev = virtual_index.floor();
    let gamma = virtual_index - prev;
    let lo = (prev.max(0.0) as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    lerp(sorted[lo], sorted[hi], gamma)
}

/// `quantile_linear(sorted(values), q)` for each of `qs` without sorting `values`: only the
/// order statistics the quantiles read are selected (quickselect, recursing on the parts
/// between them), which is several times cheaper than a full sort of millions of values.
/// `values` is reordered; it must be NaN-free.
pub fn quantiles_linear(values: &mut [f64], qs: &[f64]) -> Vec<f64> {
    let n = values.len();
    if n == 0 {
        return vec![f64::NAN; qs.len()];
    }
    let index = |q: f64| {
        let virtual_index = (n - 1) as f64 * q;
        let prev = virtual_index.floor();
        let lo = (prev.max(0.0) as usize).min(n - 1);
        (lo, (lo + 1).min(n - 1), virtual_index - prev)
    };
    let mut wanted: Vec<usize> = qs
        .iter()
        .flat_map(|&q| {
            let (lo, hi, _) = index(q);
            [lo, hi]
        })
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    select_positions(values, 0, &wanted);
    qs.iter()
        .map(|&q| {
            let (lo, hi, gamma) = index(q);
            lerp(values[lo], values[hi], gamma)
        })
        .collect()
}

/// Place the values of ascending `positions` (indices into the whole slice, `offset` being
/// where `part` starts) where a full sort would put them.
fn select_positions(part: &mut [f64], offset: usize, positions: &[usize]) {
    if positions.is_empty() || part.is_empty() {
        return;
    }
    let mid = positions.len() / 2;
    let p = positions[mid] - offset;
    part.select_nth_unstable_by(p, f64::total_cmp);
    let (left, rest) = part.split_at_mut(p);
    select_positions(left, offset, &positions[..mid]);
    select_positions(&mut rest[1..], offset + p + 1, &positions[mid + 1..]);
}

/// numpy `linspace(0, 1, bins + 1)`.
fn linspace01(bins: usize) -> Vec<f64> {
    let step = 1.0 / bins as f64;
    let mut v: Vec<f64> = (0..=bins).map(|i| i as f64 * step).collect();
    if let Some(last) = v.last_mut() {
        *last = 1.0;
    }
    v
}

/// numpy `histogram(x, bins=edges)` normalised to sum 1, then clipped to `[1e-6, 1]`.
fn histogram_share(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let nb = edges.len() - 1;
    let mut counts = vec![0u64; nb];
    let (first, last) = (edges[0], edges[nb]);
    for &v in values {
        if !(v >= first && v <= last) {
            continue;
        }
        // searchsorted(edges, v, side="right") - 1; the last edge belongs to the last bin.
        let idx = edges
            .partition_point(|e| *e <= v)
            .saturating_sub(1)
            .min(nb - 1);
        counts[idx] += 1;
    }
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            let share = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            share.clamp(1e-6, 1.0)
        })
        .collect()
}

/// PSI between a reference and a current sample.
pub fn psi(reference: &[f64], current: &[f64], bins: usize) -> f64 {
    let r: Vec<f64> = reference.iter().copied().filter(|v| !v.is_nan()).collect();
    let c: Vec<f64> = current.iter().copied().filter(|v| !v.is_nan()).collect();
    psi_of_numbers(r, &c, bins)
}

/// [`psi`] of samples already without NaN (the reference is reordered in place).
fn psi_of_numbers(mut r: Vec<f64>, c: &[f64], bins: usize) -> f64 {
    if r.is_empty() || c.is_empty() {
        return 0.0;
    }
    let constant = |s: &[f64]| s.iter().all(|v| *v == s[0]);
    if constant(&r) && constant(c) {
        return 0.0;
    }
    let mut edges = quantiles_linear(&mut r, &linspace01(bins));
    edges.dedup();
    if edges.len() < 3 {
        return 0.0;
    }
    let e = histogram_share(&r, &edges);
    let a = histogram_share(c, &edges);
    a.iter().zip(&e).map(|(a, e)| (a - e) * (a / e).ln()).sum()
}

/// PSI of every feature, sorted by PSI descending (ties keep feature order).
/// `days[i]` is the day (any sortable key) of row `i`; `columns` pairs names with values.
pub fn drift_table(
    days: &[i32],
    columns: &[(String, Vec<f64>)],
    recent_days: usize,
    min_days: usize,
    bins: usize,
    flag_threshold: f64,
) -> Vec<FeatureDrift> {
    // A handful of distinct days among millions of rows: a set, not a sort of every row.
    let unique: Vec<i32> = days
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<i32>>()
        .into_iter()
        .collect();
    if unique.len() < min_days || unique.len() <= recent_days {
        return Vec::new();
    }
    let cutoff = unique[unique.len() - recent_days];
    let mut out: Vec<FeatureDrift> = columns
        .par_iter()
        .map(|(name, values)| {
            // Split into reference and recent days, leaving NaN out as `psi` does.
            let (mut r, mut c) = (Vec::with_capacity(values.len()), Vec::new());
            for (d, &v) in days.iter().zip(values) {
                if v.is_nan() {
                    continue;
                }
                if *d >= cutoff {
                    c.push(v);
                } else {
                    r.push(v);
                }
            }
            let p = psi_of_numbers(r, &c, bins);
            FeatureDrift {
                feature: name.clone(),
                psi: p,
                drift_flag: u8::from(p > flag_threshold),
            }
        })
        .collect();
    out.sort_by(|a, b| b.psi.total_cmp(&a.psi));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        // numpy.quantile([1, 2, 3, 4], [0, .1, .5, .9, 1]) = [1, 1.3, 2.5, 3.7, 4]
        let s = [1.0, 2.0, 3.0, 4.0];
        let got: Vec<f64> = [0.0, 0.1, 0.5, 0.9, 1.0]
            .iter()
            .map(|q| quantile_linear(&s, *q))
            .collect();
        let want = [1.0, 1.3, 2.5, 3.7, 4.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn selected_quantiles_equal_the_sorted_ones() {
        // Values with runs of duplicates and negative zeros, the shapes features have.
        let values: Vec<f64> = (0..10_007u64)
            .map(|i| match i % 7 {
                0 => -0.0,
                1 => 0.0,
                k => ((i * 2_654_435_761) % 1_000) as f64 / f64::from(k as u32),
            })
            .collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let qs = linspace01(10);
        let mut scratch = values.clone();
        let got = quantiles_linear(&mut scratch, &qs);
        for (q, g) in qs.iter().zip(&got) {
            assert_eq!(
                g.to_bits(),
                quantile_linear(&sorted, *q).to_bits(),
                "q = {q}"
            );
        }
        assert!(quantiles_linear(&mut [], &qs).iter().all(|v| v.is_nan()));
        assert_eq!(
            quantiles_linear(&mut [3.0], &[0.0, 0.5, 1.0]),
            [3.0, 3.0, 3.0]
        );
    }

    #[test]
    fn identical_samples_have_zero_psi_and_shifted_ones_do_not() {
        let r: Vec<f64> = (0..1000).map(|i| f64::from(i % 97)).collect();
        assert!(psi(&r, &r, 10).abs() < 1e-12);
        let shifted: Vec<f64> = r.iter().map(|v| v + 30.0).collect();
        assert!(psi(&r, &shifted, 10) > 0.2);
    }

    #[test]
    fn degenerate_cases_are_zero() {
        assert_eq!(psi(&[1.0; 50], &[1.0; 5], 10), 0.0);
        // Only two distinct edges: fewer than 3 -> 0.
        let r: Vec<f64> = (0..100).map(|i| if i < 95 { 0.0 } else { 1.0 }).collect();
        assert_eq!(psi(&r, &[1.0, 1.0, 0.0], 10), 0.0);
    }

    #[test]
    fn table_needs_enough_days_and_sorts_by_psi() {
        let days: Vec<i32> = (0..700).map(|i| i / 100).collect();
        let flat: Vec<f64> = (0..700).map(|i| f64::from(i % 10)).collect();
        let moved: Vec<f64> = (0..700)
            .map(|i| f64::from(i % 10) + if i >= 400 { 5.0 } else { 0.0 })
            .collect();
        let cols = vec![("flat".to_string(), flat), ("moved".to_string(), moved)];
        let t = drift_table(&days, &cols, 3, 6, 10, 0.2);
        assert_eq!(t[0].feature, "moved");
        assert_eq!(t[0].drift_flag, 1);
        assert_eq!(t[1].drift_flag, 0);
        assert!(drift_table(&days[..500], &cols, 3, 6, 10, 0.2).is_empty());
    }
}
