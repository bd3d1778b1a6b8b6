//! Rare-harm affinity in the live service: each chat message is scored once against the
//! configured Sentinel index (the reference's contrastive score, `vigil sentinel score`'s
//! code), and a user's affinity is the index's aggregator over the distinct texts of their
//! last `recent_messages` messages, recomputed from the cached per-message scores.
//!
//! Only texts not seen before are encoded; a bounded cache maps a text to its score (a
//! repeated "hi" or a copied spam line costs a hash lookup). Encoding runs on the blocking
//! pool, never on the request threads.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use vigil_sentinel::{Encoder, MiniLmEncoder, ScoreParams, Scorer, SentinelIndex};

use crate::ServeError;

/// Where the index and the encoder come from.
#[derive(Debug, Clone)]
pub struct RareHarmOptions {
    /// A local directory or `s3://bucket/prefix`.
    pub index: String,
    /// The sentence-transformers model directory.
    pub model: std::path::PathBuf,
    /// Distinct texts whose scores are kept.
    pub cache_texts: usize,
}

#[derive(Debug, Default)]
struct Cache {
    scores: HashMap<String, f64>,
    order: VecDeque<String>,
    hits: u64,
    misses: u64,
}

/// The loaded index, encoder and score cache.
pub struct RareHarm {
    scorer: Scorer<'static>,
    encoder: MiniLmEncoder,
    params: ScoreParams,
    cache: Mutex<Cache>,
    /// One encoding at a time: the encoder already uses every core, and concurrent calls
    /// only thrash the caches.
    encoding: Mutex<()>,
    capacity: usize,
    location: String,
    version: String,
}

impl std::fmt::Debug for RareHarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RareHarm")
            .field("index", &self.location)
            .finish_non_exhaustive()
    }
}

fn sentinel(e: vigil_sentinel::SentinelError) -> ServeError {
    ServeError::Sentinel(Box::new(e))
}

impl RareHarm {
    /// Load the index and the encoder (the index lives as long as the process: it is not
    /// swapped by a reload).
    pub fn load(opts: &RareHarmOptions) -> Result<Self, ServeError> {
        if !opts.model.join("model.safetensors").exists() {
            return Err(ServeError::Usage(format!(
                "--sentinel-index needs the encoder: no model at {}; {}",
                opts.model.display(),
                vigil_sentinel::encoder::MODEL_HELP
            )));
        }
        let index = SentinelIndex::load_from(&opts.index, None, None).map_err(sentinel)?;
        let encoder = MiniLmEncoder::load(&opts.model).map_err(sentinel)?;
        if encoder.dim() != index.dim() {
            return Err(ServeError::Usage(format!(
                "the Sentinel index {} has {}-dimensional embeddings but the model at {} \
                 produces {}",
                opts.index,
                index.dim(),
                opts.model.display(),
                encoder.dim()
            )));
        }
        let version = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for side in [&index.positive, &index.negative] {
                h.update((side.rows as u64).to_le_bytes());
                for v in &side.data {
                    h.update(v.to_le_bytes());
                }
            }
            h.finalize()
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let index: &'static SentinelIndex = Box::leak(Box::new(index));
        Ok(Self {
            scorer: Scorer::new(index),
            encoder,
            params: ScoreParams {
                explain: false,
                ..ScoreParams::default()
            },
            cache: Mutex::new(Cache::default()),
            encoding: Mutex::new(()),
            capacity: opts.cache_texts.max(1),
            location: opts.index.clone(),
            version,
        })
    }

    /// The index's location.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// SHA-256 (first 8 bytes, hex) of the index's embeddings: the version answers carry.
    pub fn version(&self) -> &str {
        &self.version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Each text's score, encoding (in one batch) only the texts not in the cache.
    pub fn message_scores(&self, texts: &[&str]) -> Result<Vec<f64>, ServeError> {
        let mut missing: Vec<String> = Vec::new();
        {
            let mut c = self.lock();
            for t in texts {
                if c.scores.contains_key(*t) {
                    c.hits += 1;
                } else if !missing.iter().any(|m| m == t) {
                    missing.push((*t).to_string());
                }
            }
        }
        if !missing.is_empty() {
            let one = self
                .encoding
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Another request may have scored some of them while this one waited.
            {
                let c = self.lock();
                missing.retain(|t| !c.scores.contains_key(t));
            }
            let obs = if missing.is_empty() {
                Vec::new()
            } else {
                let emb = self.encoder.encode(&missing).map_err(sentinel)?;
                self.scorer
                    .score_observations(&missing, &emb, &self.params)
                    .map_err(sentinel)?
            };
            drop(one);
            let mut c = self.lock();
            c.misses += missing.len() as u64;
            for (t, o) in missing.into_iter().zip(obs) {
                if c.scores.insert(t.clone(), o.score).is_none() {
                    c.order.push_back(t);
                }
            }
            while c.order.len() > self.capacity {
                if let Some(old) = c.order.pop_front() {
                    c.scores.remove(&old);
                }
            }
            metrics::gauge!("vigil_sentinel_cache_texts").set(c.order.len() as f64);
        }
        let c = self.lock();
        metrics::gauge!("vigil_sentinel_cache_hits").set(c.hits as f64);
        metrics::gauge!("vigil_sentinel_encoded_texts").set(c.misses as f64);
        // A text evicted between the two locks (a very small cache) is scored again.
        let mut out = Vec::with_capacity(texts.len());
        let mut again = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            match c.scores.get(*t) {
                Some(s) => out.push(*s),
                None => {
                    out.push(0.0);
                    again.push(i);
                }
            }
        }
        drop(c);
        if !again.is_empty() {
            let texts_again: Vec<String> = again.iter().map(|&i| texts[i].to_string()).collect();
            let emb = self.encoder.encode(&texts_again).map_err(sentinel)?;
            let obs = self
                .scorer
                .score_observations(&texts_again, &emb, &self.params)
                .map_err(sentinel)?;
            for (&i, o) in again.iter().zip(obs) {
                out[i] = o.score;
            }
        }
        Ok(out)
    }

    /// The harmful index examples nearest to each text (up to `limit`, most similar
    /// first, with their cosine similarity), from the merged neighbours its score used.
    /// The texts are encoded again (only scores are cached): for the case page and the
    /// user API, never the event path.
    pub fn nearest_harmful(
        &self,
        texts: &[String],
        limit: usize,
    ) -> Result<Vec<Vec<(String, f64)>>, ServeError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let one = self
            .encoding
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let emb = self.encoder.encode(texts).map_err(sentinel)?;
        drop(one);
        let mut params = self.params;
        params.explain = true;
        params.neighbors_limit = params.top_k.saturating_mul(2);
        let obs = self
            .scorer
            .score_observations(texts, &emb, &params)
            .map_err(sentinel)?;
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

    /// The affinity of a window of messages (oldest first): the aggregator over the
    /// distinct texts' scores, as `vigil sentinel score` computes a group's. An empty
    /// window has affinity 0.
    pub fn affinity(&self, window: &[&str], scores: &[f64]) -> f64 {
        let mut order: Vec<&str> = Vec::new();
        let mut last: HashMap<&str, f64> = HashMap::new();
        for (t, s) in window.iter().zip(scores) {
            if last.insert(t, *s).is_none() {
                order.push(t);
            }
        }
        let values: Vec<f64> = order.iter().map(|t| last[t]).collect();
        if values.is_empty() {
            0.0
        } else {
            self.params.aggregator.apply(&values)
        }
    }
}

/// A user's message window: the last `n` chat prompts across the retained days, oldest
/// first.
pub fn window(prompts: &[Vec<String>], n: usize) -> Vec<&str> {
    let all: Vec<&str> = prompts.iter().flatten().map(String::as_str).collect();
    let from = all.len().saturating_sub(n);
    all[from..].to_vec()
}
