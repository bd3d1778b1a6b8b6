//! Contrastive scoring of observations against an index, and group affinity.
//!
//! For each observation: cosine similarity to every positive and negative row (one matrix
//! product per group), the best `top_k` of each side, a merged walk that keeps the overall best
//! `top_k` (optionally skipping an exact match at position 0), and the log-ratio of the mean
//! exponentiated similarities. A group's affinity aggregates its distinct texts' scores.

use serde::Serialize;

use crate::SentinelError;
use crate::aggregate::Aggregator;
use crate::index::{Matrix, SentinelIndex};

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

/// Scores observations against an index.
#[derive(Debug, Clone)]
pub struct Scorer<'a> {
    index: &'a SentinelIndex,
    pos: Matrix,
    neg: Matrix,
    pos_search: Option<SearchSide>,
    neg_search: Option<SearchSide>,
}

#[derive(Clone, Copy)]
struct Hit {
    score: f32,
    row: usize,
    positive: bool,
}

/// The `k` best (score, row) of one similarity row, best first; ties by row id.
fn top_hits(sims: &[f32], k: usize, positive: bool, out: &mut Vec<Hit>) {
    out.clear();
    let k = k.min(sims.len());
    if k == 0 {
        return;
    }
    let better = |a: &Hit, b: &Hit| a.score > b.score || (a.score == b.score && a.row < b.row);
    // Insertion into a small sorted buffer: k is tiny next to the row count, and this avoids
    // sorting whole rows.
    for (row, &score) in sims.iter().enumerate() {
        let h = Hit {
            score,
            row,
            positive,
        };
        if out.len() == k {
            if let Some(last) = out.last()
                && !better(&h, last)
            {
                continue;
            }
            out.pop();
        }
        let pos = out.iter().position(|x| better(&h, x)).unwrap_or(out.len());
        out.insert(pos, h);
    }
}

/// An index side prepared for search: its rows transposed into a `[dim, rows]` tensor, so
/// a group's similarities are one blocked matrix multiply (`[n, dim] x [dim, rows]`).
#[derive(Debug, Clone)]
struct SearchSide {
    t: candle_core::Tensor,
    rows: usize,
}

fn mm_err(e: candle_core::Error) -> SentinelError {
    SentinelError::Internal(format!("similarity search: {e}"))
}

impl SearchSide {
    fn new(m: &Matrix) -> Result<Self, SentinelError> {
        let t =
            candle_core::Tensor::from_slice(&m.data, (m.rows, m.dim), &candle_core::Device::Cpu)
                .and_then(|t| t.t())
                .and_then(|t| t.contiguous())
                .map_err(mm_err)?;
        Ok(Self { t, rows: m.rows })
    }

    /// `q · rowsᵀ` for every query row, row-major (`q.rows x self.rows`).
    fn similarities(&self, q: &Matrix) -> Result<Vec<f32>, SentinelError> {
        if self.rows == 0 || q.rows == 0 {
            return Ok(vec![0.0; q.rows * self.rows]);
        }
        candle_core::Tensor::from_slice(&q.data, (q.rows, q.dim), &candle_core::Device::Cpu)
            .and_then(|t| t.matmul(&self.t))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(mm_err)
    }
}

impl<'a> Scorer<'a> {
    /// A scorer over `index` (its rows re-normalised once, as the reference does per call).
    pub fn new(index: &'a SentinelIndex) -> Self {
        let mut pos = index.positive.clone();
        let mut neg = index.negative.clone();
        pos.normalize_rows();
        neg.normalize_rows();
        // Preparing the search cannot fail for well-formed matrices; if it ever does, the
        // error surfaces on the first score call.
        let pos_search = SearchSide::new(&pos).ok();
        let neg_search = SearchSide::new(&neg).ok();
        Self {
            index,
            pos,
            neg,
            pos_search,
            neg_search,
        }
    }

    fn neighbor_text(&self, hit: &Hit) -> serde_json::Value {
        let corpus = if hit.positive {
            &self.index.positive_corpus
        } else {
            &self.index.negative_corpus
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
        let mut q = embeddings.clone();
        q.normalize_rows();
        fn side(s: &Option<SearchSide>) -> Result<&SearchSide, SentinelError> {
            s.as_ref().ok_or_else(|| {
                SentinelError::Internal("the index could not be prepared for search".into())
            })
        }
        let ps = side(&self.pos_search)?.similarities(&q)?;
        let ns = side(&self.neg_search)?.similarities(&q)?;
        let extra = usize::from(params.prevent_exact_match);
        let (mut ph, mut nh) = (Vec::new(), Vec::new());
        let mut merged: Vec<Hit> = Vec::new();
        let mut out = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            top_hits(
                &ps[i * self.pos.rows..(i + 1) * self.pos.rows],
                params.top_k + extra,
                true,
                &mut ph,
            );
            top_hits(
                &ns[i * self.neg.rows..(i + 1) * self.neg.rows],
                params.top_k + extra,
                false,
                &mut nh,
            );
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
            let taken = &merged[skip.min(merged.len())..(skip + params.top_k).min(merged.len())];
            let mut pos_s: Vec<f64> = Vec::with_capacity(params.top_k);
            let mut neg_s: Vec<f64> = Vec::with_capacity(params.top_k);
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
            let mean_exp = |v: &[f64]| v.iter().map(|s| s.exp()).sum::<f64>() / v.len() as f64;
            let pos_term = mean_exp(&pos_s);
            let neg_term = mean_exp(&neg_s);
            let log_ratio = (pos_term / neg_term).ln();
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
