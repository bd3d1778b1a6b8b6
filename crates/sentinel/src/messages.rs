//! One way to score messages and windows of messages with an index, whichever scorer it
//! carries: the live service's per-user windows and the pipeline's rare-harm stage both go
//! through [`MessageScorer`], so a user-day scores the same in batch and live.

use std::collections::HashMap;

use crate::calibrated::{CalibratedScorer, GroupAggregator};
use crate::score::{ScoreParams, Scorer};
use crate::{Matrix, SentinelError, SentinelIndex};

/// A message text's 64-bit key: which texts [`MessageScorer::set_affinity`] counts as the
/// same (SipHash with fixed keys: stable within a build, never stored).
pub fn text_key(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Which scorer a [`MessageScorer`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorerKind {
    /// The reference library's contrastive score per message, its `skewness` over a window's
    /// distinct texts.
    Reference,
    /// The calibrated probability per message, its default aggregator over the window.
    Calibrated,
}

impl ScorerKind {
    /// `reference` or `calibrated`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reference => "reference",
            Self::Calibrated => "calibrated",
        }
    }
}

/// Scores messages with an index: the calibrated scorer when the index has one, else the
/// reference scoring with its defaults.
pub struct MessageScorer {
    scorer: Scorer,
    params: ScoreParams,
    calibrated: Option<(CalibratedScorer, GroupAggregator)>,
}

impl std::fmt::Debug for MessageScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageScorer")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl MessageScorer {
    /// A scorer over `index`; with `calibrated`, its probabilities and default aggregator.
    pub fn new(
        index: &SentinelIndex,
        calibrated: Option<CalibratedScorer>,
    ) -> Result<Self, SentinelError> {
        let calibrated = match calibrated {
            Some(c) => {
                if c.manifest.dim != index.dim() {
                    return Err(SentinelError::BadInput(format!(
                        "the calibrated scorer is for {}-dimensional embeddings, the index has {}",
                        c.manifest.dim,
                        index.dim()
                    )));
                }
                let agg = c.default_aggregator()?;
                Some((c, agg))
            }
            None => None,
        };
        Ok(Self {
            scorer: Scorer::new(index),
            params: ScoreParams {
                explain: false,
                ..ScoreParams::default()
            },
            calibrated,
        })
    }

    /// The scorer in use.
    pub fn kind(&self) -> ScorerKind {
        if self.calibrated.is_some() {
            ScorerKind::Calibrated
        } else {
            ScorerKind::Reference
        }
    }

    /// The calibrated scorer, when the index has one.
    pub fn calibrated(&self) -> Option<&CalibratedScorer> {
        self.calibrated.as_ref().map(|(c, _)| c)
    }

    /// The window aggregator's name.
    pub fn aggregator_name(&self) -> &'static str {
        match &self.calibrated {
            Some((_, a)) => a.name(),
            None => self.params.aggregator.name(),
        }
    }

    /// Each message's score (`texts[i]` is row `i` of `embeddings`): a probability in [0, 1]
    /// with the calibrated scorer, the contrastive score with the reference one.
    pub fn scores(&self, texts: &[String], embeddings: &Matrix) -> Result<Vec<f64>, SentinelError> {
        match &self.calibrated {
            Some((c, _)) => c.probabilities(embeddings, texts),
            None => Ok(self
                .scorer
                .score_observations(texts, embeddings, &self.params)?
                .into_iter()
                .map(|o| o.score)
                .collect()),
        }
    }

    /// Whether a message's score makes it worth showing with its nearest harmful examples:
    /// above 0 for the reference score, at least one half for a calibrated probability.
    pub fn is_notable(&self, score: f64) -> bool {
        match self.calibrated {
            Some(_) => score >= 0.5,
            None => score > 0.0,
        }
    }

    /// The affinity of a set of scored messages, each `(text_key(text), score)`, in any
    /// order: the same aggregators as [`Self::affinity`] (the reference one over distinct
    /// texts), applied to the scores in one canonical order, so a user-day folded one message
    /// at a time in the live service equals the batch stage bit for bit. An empty set has
    /// affinity 0.
    pub fn set_affinity(&self, scored: &[(u64, f64)]) -> f64 {
        let mut v = scored.to_vec();
        if self.calibrated.is_none() {
            v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            v.dedup_by_key(|x| x.0);
        }
        v.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let values: Vec<f64> = v.into_iter().map(|x| x.1).collect();
        if values.is_empty() {
            return 0.0;
        }
        match &self.calibrated {
            Some((c, agg)) => c.aggregate(&values, *agg),
            None => self.params.aggregator.apply(&values),
        }
    }

    /// The affinity of a window of messages (oldest first) from their scores. The calibrated
    /// aggregator counts every message (a repeated harmful message is more evidence); the
    /// reference one aggregates the distinct texts' scores as the reference library does. An
    /// empty window has affinity 0.
    pub fn affinity(&self, window: &[&str], scores: &[f64]) -> f64 {
        if window.is_empty() {
            return 0.0;
        }
        match &self.calibrated {
            Some((c, agg)) => c.aggregate(scores, *agg),
            None => {
                let mut order: Vec<&str> = Vec::new();
                let mut last: HashMap<&str, f64> = HashMap::new();
                for (t, s) in window.iter().zip(scores) {
                    if last.insert(t, *s).is_none() {
                        order.push(t);
                    }
                }
                let values: Vec<f64> = order.iter().map(|t| last[t]).collect();
                self.params.aggregator.apply(&values)
            }
        }
    }

    /// The harmful index examples nearest to each message (up to `limit`, most similar first,
    /// with their cosine similarity), from the merged neighbours of the reference search.
    pub fn nearest_harmful(
        &self,
        texts: &[String],
        embeddings: &Matrix,
        limit: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, SentinelError> {
        let mut params = self.params;
        params.explain = true;
        params.neighbors_limit = params.top_k.saturating_mul(2);
        let obs = self.scorer.score_observations(texts, embeddings, &params)?;
        Ok(obs
            .into_iter()
            .map(|o| {
                o.explanation
                    .map(|e| {
                        e.neighbors
                            .into_iter()
                            .filter(|n| n.sign == "+")
                            .take(limit)
                            .map(|n| {
                                let text = match n.neighbor {
                                    serde_json::Value::String(t) => t,
                                    other => format!("example #{other}"),
                                };
                                (text, n.raw_score)
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::IndexConfig;

    #[test]
    fn a_repeated_message_counts_once_for_the_reference_and_each_time_for_the_calibrated_scorer() {
        let unit = |i: usize, lean: f32| -> Vec<f32> {
            let mut v: Vec<f32> = (0..4).map(|d| ((i * 7 + d * 3) % 5) as f32 * 0.1).collect();
            v[0] += lean;
            v
        };
        let mut pos =
            Matrix::from_rows(&(0..12).map(|i| unit(i, 1.0)).collect::<Vec<_>>()).unwrap();
        let mut neg =
            Matrix::from_rows(&(0..24).map(|i| unit(i, -1.0)).collect::<Vec<_>>()).unwrap();
        pos.normalize_rows();
        neg.normalize_rows();
        let index = SentinelIndex::new(pos, neg, None, None, IndexConfig::default()).unwrap();
        let texts: Vec<String> = vec!["a".into(), "a".into()];
        let emb = index.positive.select(&[0, 0]);

        let reference = MessageScorer::new(&index, None).unwrap();
        assert_eq!(reference.kind(), ScorerKind::Reference);
        let s = reference.scores(&texts, &emb).unwrap();
        assert_eq!(
            reference.affinity(&["a", "a"], &s),
            reference.affinity(&["a"], &s[..1])
        );
        assert_eq!(reference.affinity(&[], &[]), 0.0);

        let c = CalibratedScorer::fit(&index, 1).unwrap();
        let calibrated = MessageScorer::new(&index, Some(c)).unwrap();
        assert_eq!(calibrated.kind(), ScorerKind::Calibrated);
        assert_eq!(calibrated.aggregator_name(), "expected_count");
        let p = calibrated.scores(&texts, &emb).unwrap();
        assert!(p[0] > 0.5 && calibrated.is_notable(p[0]), "{p:?}");
        let once = calibrated.affinity(&["a"], &p[..1]);
        let twice = calibrated.affinity(&["a", "a"], &p);
        assert!((twice - 2.0 * once).abs() < 1e-12, "{once} {twice}");

        // The set form: the same counting, and no dependence on the order messages arrive.
        let (ka, kb) = (text_key("a"), text_key("b"));
        assert_ne!(ka, kb);
        assert_eq!(
            reference.set_affinity(&[(ka, s[0]), (ka, s[0])]),
            reference.set_affinity(&[(ka, s[0])])
        );
        assert!((calibrated.set_affinity(&[(ka, p[0]), (ka, p[0])]) - twice).abs() < 1e-12);
        assert_eq!(calibrated.set_affinity(&[]), 0.0);
        let many: Vec<(u64, f64)> = (0..40)
            .map(|i| {
                (
                    text_key(&i.to_string()),
                    0.1 / (1.0 + f64::from(i)) + 1e-3 * f64::from(i),
                )
            })
            .collect();
        let mut shuffled = many.clone();
        shuffled.reverse();
        shuffled.swap(3, 17);
        for m in [&reference, &calibrated] {
            assert_eq!(
                m.set_affinity(&many).to_bits(),
                m.set_affinity(&shuffled).to_bits()
            );
        }
    }
}
