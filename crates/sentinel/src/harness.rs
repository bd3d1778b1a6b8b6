//! The tuning harness: measure which index size, ratio, `top_k`, `min_score` and aggregator
//! separate labelled groups best. Observations are encoded once per sweep; every metric
//! follows the reference library (average ranks on ties, best-F1 threshold over the unique
//! affinities with the lowest threshold winning ties, pooled sample variance for Cohen's d,
//! right-continuous empirical CDFs for KS). Undefined metrics are `None` (`null` in JSON).

use std::collections::HashMap;

use serde::Serialize;

use crate::score::{ScoreParams, Scorer};
use crate::{Aggregator, Matrix, SentinelError, SentinelIndex};

/// A labelled group of one source's observations.
#[derive(Debug, Clone)]
pub struct LabeledGroup {
    /// Group name.
    pub name: String,
    /// 1 = the group belongs to the rare harmful class.
    pub label: u8,
    /// Its messages, in order (duplicates allowed).
    pub observations: Vec<String>,
}

/// Groups with their observations' embeddings (each distinct text encoded once).
#[derive(Debug, Clone)]
pub struct EncodedGroups {
    /// The groups.
    pub groups: Vec<LabeledGroup>,
    /// One matrix per group, rows in observation order.
    pub embeddings: Vec<Matrix>,
}

impl EncodedGroups {
    /// Encode every distinct observation once with `encode` (texts in, one row each).
    pub fn encode(
        groups: Vec<LabeledGroup>,
        encode: &mut dyn FnMut(&[String]) -> Result<Matrix, SentinelError>,
    ) -> Result<Self, SentinelError> {
        let mut distinct: Vec<String> = Vec::new();
        let mut row_of: HashMap<String, usize> = HashMap::new();
        for g in &groups {
            for t in &g.observations {
                if !row_of.contains_key(t) {
                    row_of.insert(t.clone(), distinct.len());
                    distinct.push(t.clone());
                }
            }
        }
        let all = if distinct.is_empty() {
            Matrix {
                data: Vec::new(),
                rows: 0,
                dim: 0,
            }
        } else {
            encode(&distinct)?
        };
        if all.rows != distinct.len() {
            return Err(SentinelError::BadInput(format!(
                "the encoder returned {} rows for {} texts",
                all.rows,
                distinct.len()
            )));
        }
        let embeddings = groups
            .iter()
            .map(|g| {
                let rows: Vec<usize> = g.observations.iter().map(|t| row_of[t]).collect();
                let mut m = all.select(&rows);
                m.dim = all.dim;
                m
            })
            .collect();
        Ok(Self { groups, embeddings })
    }
}

/// Raw scores of one group's distinct observations (before any `min_score` cut), in order of
/// first appearance: duplicates collapse, as in the reference's score map.
#[derive(Debug, Clone, Serialize)]
pub struct GroupScores {
    /// Group name.
    pub name: String,
    /// Its label.
    pub label: u8,
    /// `max(log_ratio, 0)` per distinct observation.
    pub observation_scores: Vec<f64>,
}

/// Score every group's observations against `index` with `top_k` neighbours.
pub fn score_groups(
    index: &SentinelIndex,
    encoded: &EncodedGroups,
    top_k: usize,
) -> Result<Vec<GroupScores>, SentinelError> {
    let scorer = Scorer::new(index);
    let params = ScoreParams {
        top_k,
        min_score_to_consider: 0.0,
        explain: false,
        ..ScoreParams::default()
    };
    encoded
        .groups
        .iter()
        .zip(&encoded.embeddings)
        .map(|(g, e)| {
            let obs = scorer.score_observations(&g.observations, e, &params)?;
            let mut seen: HashMap<&str, usize> = HashMap::new();
            let mut scores: Vec<f64> = Vec::new();
            for (t, o) in g.observations.iter().zip(&obs) {
                match seen.get(t.as_str()) {
                    Some(&k) => scores[k] = o.raw_score,
                    None => {
                        seen.insert(t.as_str(), scores.len());
                        scores.push(o.raw_score);
                    }
                }
            }
            Ok(GroupScores {
                name: g.name.clone(),
                label: g.label,
                observation_scores: scores,
            })
        })
        .collect()
}

/// One row of `evaluate_groups` (and of the grid search, which adds the index columns).
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    /// Aggregator name.
    pub aggregator: String,
    /// The cut applied before aggregation.
    pub min_score_to_consider: f64,
    /// Groups evaluated.
    pub n_groups: usize,
    /// Positive groups.
    pub n_positive: usize,
    /// ROC-AUC of the affinities.
    pub roc_auc: Option<f64>,
    /// Leaderboard size.
    pub top_n: f64,
    /// Positive share of the top `top_n`.
    pub precision_at_n: Option<f64>,
    /// Share of positives in the top `top_n`.
    pub recall_at_n: Option<f64>,
    /// Mean leaderboard rank of positive groups (1 = highest affinity).
    pub avg_rank_positive: Option<f64>,
    /// Mean rank of negative groups.
    pub avg_rank_negative: Option<f64>,
    /// `avg_rank_positive / avg_rank_negative`.
    pub rank_ratio: Option<f64>,
    /// True positives at the threshold.
    pub tp: Option<f64>,
    /// False positives.
    pub fp: Option<f64>,
    /// False negatives.
    pub r#fn: Option<f64>,
    /// True negatives.
    pub tn: Option<f64>,
    /// Precision at the threshold.
    pub precision: Option<f64>,
    /// Recall at the threshold.
    pub recall: Option<f64>,
    /// F1 at the threshold.
    pub f1: Option<f64>,
    /// False-positive rate at the threshold.
    pub false_positive_rate: Option<f64>,
    /// The threshold (given, or the best-F1 one).
    pub decision_threshold: Option<f64>,
    /// Mean positive affinity minus mean negative affinity.
    pub mean_separation: Option<f64>,
    /// Cohen's d with the pooled sample standard deviation.
    pub cohens_d: Option<f64>,
    /// Largest gap between the two empirical CDFs.
    pub ks_statistic: Option<f64>,
    /// Grid search only: neighbours per observation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Grid search only: requested positives (`None` = all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_n_positive: Option<Option<usize>>,
    /// Grid search only: requested ratio (`None` = all negatives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_neg_to_pos_ratio: Option<Option<f64>>,
    /// Grid search only: positives actually in the index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_n_positive_actual: Option<usize>,
    /// Grid search only: negatives actually in the index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_n_negative_actual: Option<usize>,
}

/// Average ranks (1-based) of `v` in descending order, ties sharing their mean rank.
fn desc_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn sample_var(v: &[f64]) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - 1.0)
}

/// Affinity of one group: scores below `min_score` become 0, then the aggregator (0 for an
/// empty group).
pub fn group_affinity(scores: &[f64], aggregator: Aggregator, min_score: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let cut: Vec<f64> = scores
        .iter()
        .map(|&s| if s < min_score { 0.0 } else { s })
        .collect();
    aggregator.apply(&cut)
}

/// Evaluate one aggregator over scored groups. `name` overrides the aggregator's name in the
/// row; `top_n` defaults to the number of positive groups; without `decision_threshold` the
/// best-F1 threshold is searched.
pub fn evaluate_groups(
    scores: &[GroupScores],
    aggregator: Aggregator,
    name: Option<&str>,
    min_score: f64,
    top_n: Option<i64>,
    decision_threshold: Option<f64>,
) -> EvalRow {
    let aff: Vec<f64> = scores
        .iter()
        .map(|g| group_affinity(&g.observation_scores, aggregator, min_score))
        .collect();
    let y: Vec<bool> = scores.iter().map(|g| g.label == 1).collect();
    let name = name.unwrap_or(aggregator.name());
    evaluate_affinities(&aff, &y, name, min_score, top_n, decision_threshold)
}

/// The harness row of precomputed group affinities (`y`: the harmful groups), e.g. another
/// scorer's, so it can stand beside the reference's rows.
pub fn evaluate_affinities(
    aff: &[f64],
    y: &[bool],
    name: &str,
    min_score: f64,
    top_n: Option<i64>,
    decision_threshold: Option<f64>,
) -> EvalRow {
    let n = aff.len();
    let n_pos = y.iter().filter(|&&p| p).count();
    let n_neg = n - n_pos;
    let both = n_pos > 0 && n_neg > 0;
    let ranks = desc_ranks(aff);
    let pos_aff: Vec<f64> = (0..n).filter(|&i| y[i]).map(|i| aff[i]).collect();
    let neg_aff: Vec<f64> = (0..n).filter(|&i| !y[i]).map(|i| aff[i]).collect();
    let pos_ranks: Vec<f64> = (0..n).filter(|&i| y[i]).map(|i| ranks[i]).collect();
    let neg_ranks: Vec<f64> = (0..n).filter(|&i| !y[i]).map(|i| ranks[i]).collect();

    let roc_auc = both.then(|| {
        // Mann-Whitney on ascending average ranks
        let asc: Vec<f64> = ranks.iter().map(|r| n as f64 + 1.0 - r).collect();
        let r_pos: f64 = (0..n).filter(|&i| y[i]).map(|i| asc[i]).sum();
        let np = n_pos as f64;
        (r_pos - np * (np + 1.0) / 2.0) / (np * n_neg as f64)
    });
    let top_n_v = top_n.unwrap_or(n_pos as i64).clamp(0, n as i64) as f64;
    let hits = (0..n).filter(|&i| y[i] && ranks[i] <= top_n_v).count() as f64;
    let precision_at_n = (top_n_v > 0.0).then(|| hits / top_n_v);
    let recall_at_n = (top_n_v > 0.0 && n_pos > 0).then(|| hits / n_pos as f64);
    let avg_rank_positive = (n_pos > 0).then(|| mean(&pos_ranks));
    let avg_rank_negative = (n_neg > 0).then(|| mean(&neg_ranks));
    let rank_ratio = match (avg_rank_positive, avg_rank_negative) {
        (Some(p), Some(q)) if q != 0.0 => Some(p / q),
        _ => None,
    };

    let confusion = |t: f64| {
        let (mut tp, mut fp, mut fn_, mut tn) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..n {
            match (aff[i] >= t, y[i]) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                (false, false) => tn += 1.0,
            }
        }
        (tp, fp, fn_, tn)
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let f1_of = |(tp, fp, fn_, _): (f64, f64, f64, f64)| {
        let p = ratio(tp, tp + fp);
        let r = ratio(tp, tp + fn_);
        if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        }
    };
    let threshold = if both {
        match decision_threshold {
            Some(t) => Some(t),
            None => {
                let mut uniq = aff.to_vec();
                uniq.sort_by(f64::total_cmp);
                uniq.dedup();
                let mut best: Option<(f64, f64)> = None;
                for t in uniq {
                    let f = f1_of(confusion(t));
                    if best.is_none_or(|b| f > b.1) {
                        best = Some((t, f));
                    }
                }
                best.map(|b| b.0)
            }
        }
    } else {
        None
    };
    let c = threshold.map(confusion);
    let (mean_separation, cohens_d, ks_statistic) = if both {
        let sep = mean(&pos_aff) - mean(&neg_aff);
        let (n1, n2) = (pos_aff.len() as f64, neg_aff.len() as f64);
        let pooled = (((n1 - 1.0) * sample_var(&pos_aff) + (n2 - 1.0) * sample_var(&neg_aff))
            / (n1 + n2 - 2.0))
            .sqrt();
        let d = (pooled > 0.0 && pooled.is_finite()).then(|| sep / pooled);
        let mut sp = pos_aff.clone();
        let mut sn = neg_aff.clone();
        sp.sort_by(f64::total_cmp);
        sn.sort_by(f64::total_cmp);
        let cdf = |s: &[f64], x: f64| s.partition_point(|v| *v <= x) as f64 / s.len() as f64;
        let ks = aff
            .iter()
            .map(|&x| (cdf(&sp, x) - cdf(&sn, x)).abs())
            .fold(0.0, f64::max);
        (Some(sep), d, Some(ks))
    } else {
        (None, None, None)
    };
    EvalRow {
        aggregator: name.to_string(),
        min_score_to_consider: min_score,
        n_groups: n,
        n_positive: n_pos,
        roc_auc,
        top_n: top_n_v,
        precision_at_n,
        recall_at_n,
        avg_rank_positive,
        avg_rank_negative,
        rank_ratio,
        tp: c.map(|c| c.0),
        fp: c.map(|c| c.1),
        r#fn: c.map(|c| c.2),
        tn: c.map(|c| c.3),
        precision: c.map(|c| ratio(c.0, c.0 + c.1)),
        recall: c.map(|c| ratio(c.0, c.0 + c.2)),
        f1: c.map(f1_of),
        false_positive_rate: c.map(|c| ratio(c.1, c.1 + c.3)),
        decision_threshold: threshold,
        mean_separation,
        cohens_d,
        ks_statistic,
        top_k: None,
        index_n_positive: None,
        index_neg_to_pos_ratio: None,
        index_n_positive_actual: None,
        index_n_negative_actual: None,
    }
}

/// `evaluate_groups` for each of the six aggregators.
pub fn compare_aggregators(
    scores: &[GroupScores],
    min_score: f64,
    top_n: Option<i64>,
    decision_threshold: Option<f64>,
) -> Vec<EvalRow> {
    Aggregator::ALL
        .iter()
        .map(|&a| evaluate_groups(scores, a, None, min_score, top_n, decision_threshold))
        .collect()
}

/// What a grid search sweeps.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Index sizes (`None` = all positives).
    pub n_positive_values: Vec<Option<usize>>,
    /// Negative-to-positive ratios (`None` = all negatives).
    pub neg_to_pos_ratios: Vec<Option<f64>>,
    /// Neighbours per observation.
    pub top_k_values: Vec<usize>,
    /// `min_score_to_consider` values.
    pub min_score_values: Vec<f64>,
    /// Aggregators.
    pub aggregators: Vec<Aggregator>,
    /// Seed of the index subsampling.
    pub index_seed: Option<u64>,
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            n_positive_values: vec![None],
            neg_to_pos_ratios: vec![None],
            top_k_values: vec![1, 5, 10],
            min_score_values: vec![0.0, 0.1, 0.2],
            aggregators: Aggregator::ALL.to_vec(),
            index_seed: None,
        }
    }
}

/// Sweep the grid (outermost first: index size, ratio, top_k, min_score, aggregator).
/// `progress(done, total)` hears each finished scoring pass.
pub fn run_grid_search(
    index: &SentinelIndex,
    encoded: &EncodedGroups,
    grid: &Grid,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<EvalRow>, SentinelError> {
    let total =
        grid.n_positive_values.len() * grid.neg_to_pos_ratios.len() * grid.top_k_values.len();
    let mut done = 0;
    let mut rows = Vec::new();
    for &n_pos in &grid.n_positive_values {
        for &ratio in &grid.neg_to_pos_ratios {
            let sub;
            let idx = if n_pos.is_none() && ratio.is_none() {
                index
            } else {
                sub = index.subsample(n_pos, ratio, grid.index_seed)?;
                &sub
            };
            for &top_k in &grid.top_k_values {
                let scores = score_groups(idx, encoded, top_k)?;
                done += 1;
                progress(done, total);
                for &min_score in &grid.min_score_values {
                    for &agg in &grid.aggregators {
                        let mut row = evaluate_groups(&scores, agg, None, min_score, None, None);
                        row.top_k = Some(top_k);
                        row.index_n_positive = Some(n_pos);
                        row.index_neg_to_pos_ratio = Some(ratio);
                        row.index_n_positive_actual = Some(idx.positive.rows);
                        row.index_n_negative_actual = Some(idx.negative.rows);
                        rows.push(row);
                    }
                }
            }
        }
    }
    Ok(rows)
}
