//! Contrastive scoring of observations against an index, and group affinity.
//!
//! For each observation: cosine similarity to every positive and negative row (an exact
//! search over packed index panels, [`crate::search`]), the best `top_k` of each side, a merged walk that keeps the overall best
//! `top_k` (optionally skipping an exact match at position 0), and the log-ratio of the mean
//! exponentiated similarities. A group's affinity aggregates its distinct texts' scores.

use serde::Serialize;

use crate::SentinelError;
use crate::aggregate::Aggregator;
use crate::index::SentinelIndex;
use crate::matrix::Matrix;
use crate::search::{self, PackedSide};

/// How a cosine similarity is rescaled before it enters the contrastive score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleFn {
    /// Identity (MiniLM and most encoders).
    #[default]
    Identity,
    /// E5-family encoders: `(clamp(s, 0.7, 1.0) - 0.7) / 0.3`.
    E5,
}

impl ScaleFn {
    fn apply(self, s: f64) -> f64 {
        match self {
            Self::Identity => s,
            Self::E5 => (s.clamp(0.7, 1.0) - 0.7) / 0.3,
        }
    }
}

/// Scoring parameters (the reference's defaults via `Default`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreParams {
    /// Neighbours per observation (at least 1).
    pub top_k: usize,
    /// Scores below this become 0.
    pub min_score_to_consider: f64,
    /// Skip an exact match (similarity within 1e-3 of 1) at the top of the merged list.
    pub prevent_exact_match: bool,
    /// Rescaling of similarities.
    pub scale_fn: ScaleFn,
    /// The aggregator.
    pub aggregator: Aggregator,
    /// Build explanations.
    pub explain: bool,
    /// Neighbour records per explanation.
    pub neighbors_limit: usize,
}

impl Default for ScoreParams {
    fn default() -> Self {
        Self {
            top_k: 5,
            min_score_to_consider: 0.1,
            prevent_exact_match: false,
            scale_fn: ScaleFn::Identity,
            aggregator: Aggregator::Skewness { min_size: 10 },
            explain: true,
            neighbors_limit: 5,
        }
    }
}

/// One neighbour in an explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbor {
    /// `+` for a positive example, `-` for a negative one.
    pub sign: &'static str,
    /// Raw cosine similarity.
    pub raw_score: f64,
    /// After the scale function.
    pub scaled_score: f64,
    /// The example's text, or its row id when the index has no corpus.
    pub neighbor: serde_json::Value,
    /// Row id in its side of the index.
    pub corpus_id: usize,
}

/// The contrastive components of one observation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contrastive {
    /// `mean(exp(s))` over the positive similarities.
    pub positive_term: f64,
    /// `mean(exp(s))` over the negative similarities.
    pub negative_term: f64,
    /// `ln(positive_term / negative_term)` before clipping.
    pub log_ratio_unclipped: f64,
}

/// Why one observation scored what it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The observation's text.
    pub text: String,
    /// Positive similarities used.
    pub topk_positive: Vec<f64>,
    /// Negative similarities used.
    pub topk_negative: Vec<f64>,
    /// The contrastive terms.
    pub contrastive: Contrastive,
    /// Up to `neighbors_limit` neighbours in merged order.
    pub neighbors: Vec<Neighbor>,
}

/// The contrastive components of two similarity lists: `mean(exp(s))` of each side and the
/// log of their ratio (the observation score is that ratio clipped at 0).
pub fn contrastive_components(positive: &[f64], negative: &[f64]) -> Contrastive {
    let mean_exp = |v: &[f64]| v.iter().map(|s| s.exp()).sum::<f64>() / v.len() as f64;
    let positive_term = mean_exp(positive);
    let negative_term = mean_exp(negative);
    Contrastive {
        positive_term,
        negative_term,
        log_ratio_unclipped: (positive_term / negative_term).ln(),
    }
}

/// The score of one observation (before the `min_score` cut: `raw_score`).
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationScore {
    /// `max(log_ratio, 0)`.
    pub raw_score: f64,
    /// After the `min_score_to_consider` cut.
    pub score: f64,
    /// Present when explanations were requested.
    pub explanation: Option<Explanation>,
}

/// Counts reported with every group result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggregationStats {
    /// Texts in the input, duplicates included.
    pub num_texts: usize,
    /// Distinct texts with a score > 0.
    pub num_positive_scores: usize,
    /// `top_k` used.
    pub top_k_per_observation: usize,
    /// `min_score_to_consider` used.
    pub min_score_to_consider: f64,
}

/// A group's result, in the reference's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupResult {
    /// The aggregated affinity.
    pub affinity: f64,
    /// Distinct texts in first-appearance order with the score of their last occurrence.
    pub observation_scores: Vec<(String, f64)>,
    /// Per position, in input order (duplicates kept).
    pub per_observation: Vec<f64>,
    /// The aggregator's name.
    pub aggregation_name: &'static str,
    /// Counts.
    pub aggregation_stats: AggregationStats,
    /// One per distinct text (last occurrence), when requested.
    pub explanations: Option<Vec<Explanation>>,
}

/// Scores observations against an index. It owns what it needs (normalised, packed rows and
/// the corpora for explanations), so it can live beside the index in a service or a binding.
#[derive(Debug, Clone)]
pub struct Scorer {
    positive_corpus: Option<Vec<String>>,
    negative_corpus: Option<Vec<String>>,
    pos: Matrix,
    neg: Matrix,
    pos_search: PackedSide,
    neg_search: PackedSide,
}

#[derive(Clone, Copy)]
struct Hit {
    score: f32,
    row: usize,
    positive: bool,
}

/// `a · b` accumulated in f64 (eight independent partial sums, for instruction-level
/// parallelism).
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    for (x, y) in ac.zip(bc) {
        for ((s, xi), yi) in acc.iter_mut().zip(x).zip(y) {
            *s += f64::from(*xi) * f64::from(*yi);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The search's hits with their similarity recomputed in f64 from the same f32 vectors, so
/// a reported similarity carries no accumulation-order rounding (the kernel's f32 sums can
/// differ in the last bits, and a contrastive log-ratio near zero amplifies that), re-ranked
/// by the refined value.
fn refined_hits(found: Vec<search::Hit>, positive: bool, side: &Matrix, q: &[f32]) -> Vec<Hit> {
    let mut out: Vec<Hit> = found
        .into_iter()
        .map(|h| Hit {
            score: dot_f64(side.row(h.row), q) as f32,
            row: h.row,
            positive,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
    out
}

impl Scorer {
    /// A scorer over `index` (its rows re-normalised once, as the reference does per call).
    pub fn new(index: &SentinelIndex) -> Self {
        let mut pos = index.positive.clone();
        let mut neg = index.negative.clone();
        pos.normalize_rows();
        neg.normalize_rows();
        let pos_search = PackedSide::new(&pos);
        let neg_search = PackedSide::new(&neg);
        Self {
            positive_corpus: index.positive_corpus.clone(),
            negative_corpus: index.negative_corpus.clone(),
            pos,
            neg,
            pos_search,
            neg_search,
        }
    }

    fn neighbor_text(&self, hit: &Hit) -> serde_json::Value {
        let corpus = if hit.positive {
            &self.positive_corpus
        } else {
            &self.negative_corpus
        };
        match corpus {
            Some(c) => serde_json::Value::String(c[hit.row].clone()),
            None => serde_json::Value::from(hit.row),
        }
    }

    /// Score observations given their embeddings (`texts[i]` is row `i`), one result per
    /// position.
    pub fn score_observations(
        &self,
        texts: &[String],
        embeddings: &Matrix,
        params: &ScoreParams,
    ) -> Result<Vec<ObservationScore>, SentinelError> {
        if params.top_k == 0 {
            return Err(SentinelError::BadInput("top_k must be at least 1".into()));
        }
        if embeddings.rows != texts.len() {
            return Err(SentinelError::BadInput(format!(
                "{} embeddings for {} texts: each text needs exactly one embedding row",
                embeddings.rows,
                texts.len()
            )));
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if embeddings.dim != self.pos.dim {
            return Err(SentinelError::BadInput(format!(
                "observation embeddings have {} dimensions but the index has {}",
                embeddings.dim, self.pos.dim
            )));
        }
        if let Some(bad) = embeddings.data.iter().position(|v| !v.is_finite()) {
            return Err(SentinelError::BadInput(format!(
                "observation embedding {} holds a value that is not a finite number (NaN or \
                 infinite)",
                bad / embeddings.dim.max(1)
            )));
        }
        let mut q = embeddings.clone();
        q.normalize_rows();
        let extra = usize::from(params.prevent_exact_match);
        // No side has more neighbours than rows and no merge more than both sides: a huge
        // top_k is the whole index, not an allocation of top_k slots (same results).
        let most = self.pos.rows.max(self.neg.rows);
        let top_k = params.top_k.min(self.pos.rows + self.neg.rows);
        let mut found = search::top_k_many(
            &[&self.pos_search, &self.neg_search],
            &q,
            top_k.saturating_add(extra).min(most),
        );
        let neg_found = found.pop().unwrap_or_default();
        let pos_found = found.pop().unwrap_or_default();
        let mut merged: Vec<Hit> = Vec::new();
        let mut out = Vec::with_capacity(texts.len());
        for (((text, pf), nf), qi) in texts
            .iter()
            .zip(pos_found)
            .zip(neg_found)
            .zip(q.data.chunks_exact(q.dim))
        {
            let ph = refined_hits(pf, true, &self.pos, qi);
            let nh = refined_hits(nf, false, &self.neg, qi);
            merged.clear();
            merged.extend_from_slice(&ph);
            merged.extend_from_slice(&nh);
            // Stable: on a tie a positive stays before a negative.
            merged.sort_by(|a, b| b.score.total_cmp(&a.score));
            let skip = usize::from(
                params.prevent_exact_match
                    && merged
                        .first()
                        .is_some_and(|h| (f64::from(h.score) - 1.0).abs() < 1e-3),
            );
            let taken = &merged[skip.min(merged.len())..(skip + top_k).min(merged.len())];
            let mut pos_s: Vec<f64> = Vec::with_capacity(top_k);
            let mut neg_s: Vec<f64> = Vec::with_capacity(top_k);
            for h in taken {
                let s = params.scale_fn.apply(f64::from(h.score));
                if h.positive {
                    pos_s.push(s)
                } else {
                    neg_s.push(s)
                }
            }
            if pos_s.is_empty() {
                pos_s.push(ph.first().map_or(0.0, |h| f64::from(h.score)));
            }
            if neg_s.is_empty() {
                neg_s.push(nh.first().map_or(0.0, |h| f64::from(h.score)));
            }
            let Contrastive {
                positive_term: pos_term,
                negative_term: neg_term,
                log_ratio_unclipped: log_ratio,
            } = contrastive_components(&pos_s, &neg_s);
            let raw = if log_ratio > 0.0 { log_ratio } else { 0.0 };
            let score = if raw < params.min_score_to_consider {
                0.0
            } else {
                raw
            };
            let explanation = params.explain.then(|| Explanation {
                text: text.clone(),
                topk_positive: pos_s.clone(),
                topk_negative: neg_s.clone(),
                contrastive: Contrastive {
                    positive_term: pos_term,
                    negative_term: neg_term,
                    log_ratio_unclipped: log_ratio,
                },
                neighbors: taken
                    .iter()
                    .take(params.neighbors_limit)
                    .map(|h| Neighbor {
                        sign: if h.positive { "+" } else { "-" },
                        raw_score: f64::from(h.score),
                        scaled_score: params.scale_fn.apply(f64::from(h.score)),
                        neighbor: self.neighbor_text(h),
                        corpus_id: h.row,
                    })
                    .collect(),
            });
            out.push(ObservationScore {
                raw_score: raw,
                score,
                explanation,
            });
        }
        Ok(out)
    }

    /// Score one group and aggregate it, reproducing the reference's result (duplicate texts
    /// collapse to their last occurrence, in first-appearance order).
    pub fn score_group(
        &self,
        texts: &[String],
        embeddings: &Matrix,
        params: &ScoreParams,
    ) -> Result<GroupResult, SentinelError> {
        let obs = self.score_observations(texts, embeddings, params)?;
        let mut order: Vec<&str> = Vec::new();
        let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, t) in texts.iter().enumerate() {
            if last.insert(t.as_str(), i).is_none() {
                order.push(t.as_str());
            }
        }
        let observation_scores: Vec<(String, f64)> = order
            .iter()
            .map(|t| (t.to_string(), obs[last[t]].score))
            .collect();
        let values: Vec<f64> = observation_scores.iter().map(|(_, s)| *s).collect();
        let affinity = if values.is_empty() {
            0.0
        } else {
            params.aggregator.apply(&values)
        };
        let explanations = params.explain.then(|| {
            order
                .iter()
                .filter_map(|t| obs[last[t]].explanation.clone())
                .collect()
        });
        Ok(GroupResult {
            affinity,
            aggregation_stats: AggregationStats {
                num_texts: texts.len(),
                num_positive_scores: values.iter().filter(|v| **v > 0.0).count(),
                top_k_per_observation: params.top_k,
                min_score_to_consider: params.min_score_to_consider,
            },
            per_observation: obs.iter().map(|o| o.score).collect(),
            observation_scores,
            aggregation_name: params.aggregator.name(),
            explanations,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::index::IndexConfig;

    fn index() -> SentinelIndex {
        let pos = Matrix::from_rows(&[vec![1.0, 0.0, 0.0], vec![0.8, 0.6, 0.0]]).unwrap();
        let neg = Matrix::from_rows(&[
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
            vec![0.0, 0.6, 0.8],
        ])
        .unwrap();
        SentinelIndex::new(pos, neg, None, None, IndexConfig::default()).unwrap()
    }

    #[test]
    fn a_huge_top_k_scores_as_the_whole_index_without_allocating_it() {
        let idx = index();
        let scorer = Scorer::new(&idx);
        let q = Matrix::from_rows(&[vec![0.9, 0.1, 0.2]]).unwrap();
        let texts = vec!["x".to_string()];
        let score = |k: usize| {
            let p = ScoreParams {
                top_k: k,
                ..ScoreParams::default()
            };
            scorer.score_observations(&texts, &q, &p).unwrap()[0].score
        };
        // Five rows in all: any top_k from 5 up takes every neighbour.
        let whole = score(5);
        for k in [6, 1_000_000_000, usize::MAX] {
            assert_eq!(score(k).to_bits(), whole.to_bits(), "top_k {k}");
        }
        assert_ne!(score(1).to_bits(), whole.to_bits());
    }

    #[test]
    fn nan_observation_embeddings_are_refused_not_scored_zero() {
        let idx = index();
        let scorer = Scorer::new(&idx);
        let q = Matrix::from_rows(&[vec![0.9, f32::NAN, 0.2]]).unwrap();
        let err = scorer
            .score_observations(&["x".to_string()], &q, &ScoreParams::default())
            .unwrap_err();
        assert!(err.to_string().contains("not a finite number"), "{err}");
    }
}
