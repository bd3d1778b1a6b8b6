//! Rare-harm affinity in the live service: each chat message is scored once against the
//! configured Sentinel index through `vigil_sentinel::MessageScorer` (the index's calibrated
//! scorer when it has one, else the reference's contrastive score: `vigil sentinel score`'s
//! code either way), and a user's affinity is that scorer's aggregator over their last
//! `recent_messages` messages, recomputed from the cached per-message scores.
//!
//! Only texts not seen before are encoded; a bounded cache maps a text to its score (a
//! repeated "hi" or a copied spam line costs a hash lookup). Encoding runs on the blocking
//! pool, never on the request threads.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use vigil_sentinel::cascade::{Screen, StaticEmbeddings, cascade_scores};
use vigil_sentinel::{
    CalibratedScorer, Encoder, MessageScorer, MiniLmEncoder, ScorerKind, SentinelIndex,
};

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
    messages: MessageScorer,
    encoder: MiniLmEncoder,
    cache: Mutex<Cache>,
    /// One encoding at a time: the encoder already uses every core, and concurrent calls
    /// only thrash the caches.
    encoding: Mutex<()>,
    capacity: usize,
    location: String,
    version: String,
    /// The cascade's first stage with the cut of the bundle the service started with (a
    /// bundle trained through the cascade): a text scores exactly as in its training run.
    screen: Option<Screen>,
    /// Scores kept across restarts ([`SCORE_STORE`]).
    known: Mutex<Known>,
    /// SHA-256 of the model's weights file (part of the store's tag).
    model_digest: String,
    /// The index's fingerprint.
    fingerprint: String,
}

/// Texts per exact-encoder call inside the cascade.
const CHUNK: usize = 256;

/// The scores kept across restarts, in the data directory: `(key of the text, score)` for
/// every text scored, no text. Tagged with what produced them (Vigil's version, the model's
/// bytes, the index and the cut); a file with another tag is ignored.
pub const SCORE_STORE: &str = "sentinel_scores.bin";
const STORE_MAGIC: &[u8; 8] = b"VGLSCOR1";
/// Most scores kept (16 bytes each).
const STORE_MAX: usize = 10_000_000;

/// A text's key in the score store: the first 8 bytes of its SHA-256 (stable across builds).
fn stable_key(text: &str) -> u64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    u64::from_le_bytes(k)
}

/// Every score the service has computed, by stable key, and where it is kept.
#[derive(Debug, Default)]
struct Known {
    scores: HashMap<u64, f64>,
    path: Option<std::path::PathBuf>,
    tag: String,
    /// New scores since the last save.
    dirty: bool,
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
    /// Load the index and the encoder (not swapped by a reload). With `cut` (from a bundle
    /// trained through the rare-harm cascade) messages are screened as the training run
    /// screened them; the static embeddings are distilled into the model directory when
    /// missing.
    pub fn load(opts: &RareHarmOptions, cut: Option<f64>) -> Result<Self, ServeError> {
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
        let version = index.fingerprint(None).map_err(sentinel)?;
        let calibrated = CalibratedScorer::load_from(&opts.index).map_err(sentinel)?;
        // The version names the scorer too: the same index scores differently with one.
        let version = match &calibrated {
            Some(_) => format!("{version}+calibrated"),
            None => version,
        };
        let screen = match (cut, &calibrated) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(ServeError::Usage(format!(
                    "the model bundle was trained through the rare-harm cascade, which needs a \
                     calibrated scorer beside the index; {} has none: serve with the index the \
                     bundle was trained with",
                    opts.index
                )));
            }
            (Some(cut), Some(c)) => {
                let statics = StaticEmbeddings::load_or_distill(&encoder, &opts.model, &|_, _| {})
                    .map_err(sentinel)?;
                let mut screen =
                    Screen::new(statics, &encoder, &index, c, 0.995, 0.0).map_err(sentinel)?;
                screen.cut = cut;
                Some(screen)
            }
        };
        let fingerprint = index.fingerprint(calibrated.as_ref()).map_err(sentinel)?;
        let messages = MessageScorer::new(&index, calibrated).map_err(sentinel)?;
        let weights = opts.model.join("model.safetensors");
        let model_digest = {
            use sha2::Digest;
            let bytes = std::fs::read(&weights).map_err(|e| ServeError::io(&weights, e))?;
            sha2::Sha256::digest(&bytes)
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        tracing::info!(
            "rare-harm scoring with the {} scorer ({} over each window)",
            messages.kind().name(),
            messages.aggregator_name()
        );
        Ok(Self {
            messages,
            encoder,
            cache: Mutex::new(Cache::default()),
            encoding: Mutex::new(()),
            capacity: opts.cache_texts.max(1),
            location: opts.index.clone(),
            version,
            screen,
            known: Mutex::new(Known::default()),
            model_digest,
            fingerprint,
        })
    }

    /// The index's fingerprint ([`SentinelIndex::fingerprint`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What the kept scores were produced with.
    fn store_tag(&self) -> String {
        format!(
            "vigil {} model {} index {} cut {}",
            env!("CARGO_PKG_VERSION"),
            self.model_digest,
            self.fingerprint,
            self.cut()
                .map_or_else(|| "none".into(), |c| format!("{:016x}", c.to_bits()))
        )
    }

    /// Keep scores in `data` across restarts: load the ones stored there when they were
    /// produced the same way (otherwise they are ignored and replaced at the next save).
    pub fn open_store(&self, data: &std::path::Path) {
        let path = data.join(SCORE_STORE);
        let tag = self.store_tag();
        let mut scores = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => match parse_store(&bytes, &tag) {
                Some(s) => {
                    tracing::info!("{} rare-harm scores from {}", s.len(), path.display());
                    scores = s;
                }
                None => tracing::info!(
                    "{} holds scores from another model, index, cut or version: not used",
                    path.display()
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot read {}: {e}; scoring from scratch", path.display()),
        }
        let mut k = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *k = Known {
            scores,
            path: Some(path),
            tag,
            dirty: false,
        };
    }

    /// Write the kept scores (atomically) when there are new ones.
    pub fn save_store(&self) -> Result<(), ServeError> {
        let (path, bytes) = {
            let mut k = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(path) = k.path.clone().filter(|_| k.dirty) else {
                return Ok(());
            };
            let mut bytes = Vec::with_capacity(44 + k.tag.len() + 16 * k.scores.len());
            bytes.extend_from_slice(STORE_MAGIC);
            bytes.extend_from_slice(&(k.tag.len() as u32).to_le_bytes());
            bytes.extend_from_slice(k.tag.as_bytes());
            for (key, score) in &k.scores {
                bytes.extend_from_slice(&key.to_le_bytes());
                bytes.extend_from_slice(&score.to_le_bytes());
            }
            // A damaged file is detected whole, not read as wrong scores.
            let sum = {
                use sha2::Digest;
                sha2::Sha256::digest(&bytes)
            };
            bytes.extend_from_slice(&sum);
            k.dirty = false;
            (path, bytes)
        };
        if let Err((p, e)) = vigil_core::write_atomic(&path, &bytes) {
            // Still to be written at the next save.
            self.known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .dirty = true;
            return Err(ServeError::io(&p, e));
        }
        tracing::info!("rare-harm scores kept in {}", path.display());
        Ok(())
    }

    /// The cascade cut messages are screened with (`None`: every text exactly).
    pub fn cut(&self) -> Option<f64> {
        self.screen.as_ref().map(|s| s.cut)
    }

    /// The window aggregator's name.
    pub fn aggregator_name(&self) -> &'static str {
        self.messages.aggregator_name()
    }

    /// The affinity of a set of `(text_key, score)` messages in any order, as the batch
    /// rare-harm stage computes a user-day's.
    pub fn set_affinity(&self, scored: &[(u64, f64)]) -> f64 {
        self.messages.set_affinity(scored)
    }

    /// Score texts not in the cache: from the kept scores when there, else through the
    /// cascade when the service has one, else exactly (and kept).
    fn score_fresh(&self, texts: &[String], keep: bool) -> Result<Vec<f64>, ServeError> {
        let keys: Vec<u64> = texts.iter().map(|t| stable_key(t)).collect();
        let mut out: Vec<Option<f64>> = {
            let k = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.iter().map(|key| k.scores.get(key).copied()).collect()
        };
        let todo: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        if !todo.is_empty() {
            let fresh_texts: Vec<String> = todo.iter().map(|&i| texts[i].clone()).collect();
            let fresh = self.encode_and_score(&fresh_texts)?;
            let mut k = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (&i, score) in todo.iter().zip(fresh) {
                out[i] = Some(score);
                if keep && k.path.is_some() && k.scores.len() < STORE_MAX {
                    k.scores.insert(keys[i], score);
                    k.dirty = true;
                }
            }
        }
        Ok(out.into_iter().map(|s| s.unwrap_or(0.0)).collect())
    }

    /// Score texts with the encoder: through the cascade when the service has one, else
    /// exactly.
    fn encode_and_score(&self, texts: &[String]) -> Result<Vec<f64>, ServeError> {
        match (&self.screen, self.messages.calibrated()) {
            (Some(screen), Some(c)) => {
                Ok(
                    cascade_scores(screen, &self.encoder, c, texts, 0, CHUNK, &|_, _| {})
                        .map_err(sentinel)?
                        .scores,
                )
            }
            _ => {
                let emb = self.encoder.encode(texts).map_err(sentinel)?;
                self.messages.scores(texts, &emb).map_err(sentinel)
            }
        }
    }

    /// The scorer in use.
    pub fn kind(&self) -> ScorerKind {
        self.messages.kind()
    }

    /// Whether a message's score is worth its nearest harmful examples.
    pub fn is_notable(&self, score: f64) -> bool {
        self.messages.is_notable(score)
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
    /// The score of each prompt (`None` stays `None`), in calls of at most half the cache so
    /// that a call's new texts are all still cached at its end; with `keep` as in
    /// [`Self::message_scores`].
    pub fn prompt_scores(
        &self,
        prompts: &[Option<&str>],
        keep: bool,
    ) -> Result<Vec<Option<f64>>, ServeError> {
        let at: Vec<usize> = (0..prompts.len())
            .filter(|&i| prompts[i].is_some())
            .collect();
        let texts: Vec<&str> = prompts.iter().flatten().copied().collect();
        let mut scores = Vec::with_capacity(texts.len());
        for part in texts.chunks((self.capacity / 2).max(1)) {
            scores.extend(self.message_scores(part, keep)?);
        }
        let mut out = vec![None; prompts.len()];
        for (i, s) in at.into_iter().zip(scores) {
            out[i] = Some(s);
        }
        Ok(out)
    }

    /// With `keep`, newly computed scores also go to the kept scores (messages the service
    /// stored; not what-if texts, which a client may send at will).
    pub fn message_scores(&self, texts: &[&str], keep: bool) -> Result<Vec<f64>, ServeError> {
        let mut missing: Vec<String> = Vec::new();
        {
            // A set, not a scan of `missing`: a state rebuild passes whole dataset batches.
            let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
            let mut c = self.lock();
            for t in texts {
                if c.scores.contains_key(*t) {
                    c.hits += 1;
                } else if seen.insert(t) {
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
                self.score_fresh(&missing, keep)?
            };
            drop(one);
            let mut c = self.lock();
            c.misses += missing.len() as u64;
            for (t, score) in missing.into_iter().zip(obs) {
                if c.scores.insert(t.clone(), score).is_none() {
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
            let scores = self.score_fresh(&texts_again, keep)?;
            for (&i, score) in again.iter().zip(scores) {
                out[i] = score;
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
        self.messages
            .nearest_harmful(texts, &emb, limit)
            .map_err(sentinel)
    }

    /// The affinity of a window of messages (oldest first) from their scores, as
    /// `vigil sentinel score` computes a group's with the same scorer. An empty window has
    /// affinity 0.
    pub fn affinity(&self, window: &[&str], scores: &[f64]) -> f64 {
        self.messages.affinity(window, scores)
    }
}

/// The scores of a store file whose tag is `tag`; `None` for another tag or a damaged file
/// (its trailing SHA-256 does not match, or a score is not finite).
fn parse_store(bytes: &[u8], tag: &str) -> Option<HashMap<u64, f64>> {
    let (content, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    {
        use sha2::Digest;
        if sha2::Sha256::digest(content).as_slice() != sum {
            return None;
        }
    }
    let rest = content.strip_prefix(STORE_MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let (stored_tag, rest) = (rest.get(..len)?, rest.get(len..)?);
    if stored_tag != tag.as_bytes() || !rest.len().is_multiple_of(16) {
        return None;
    }
    let mut scores = HashMap::with_capacity(rest.len() / 16);
    for entry in rest.chunks_exact(16) {
        let (key, score) = entry.split_at(8);
        let key = u64::from_le_bytes(key.try_into().ok()?);
        let score = f64::from_le_bytes(score.try_into().ok()?);
        if !score.is_finite() {
            return None;
        }
        scores.insert(key, score);
    }
    Some(scores)
}

/// An event's chat message, the text the service scores: `None` for other events and empty
/// prompts (as the batch stage's `chat_messages`).
pub fn chat_prompt(e: &crate::event::Event) -> Option<&str> {
    (e.event_type == "chat" && !e.prompt.is_empty()).then_some(e.prompt.as_str())
}

/// A user's message window: the last `n` chat prompts across the retained days, oldest
/// first.
pub fn window(prompts: &[Vec<String>], n: usize) -> Vec<&str> {
    let all: Vec<&str> = prompts.iter().flatten().map(String::as_str).collect();
    let from = all.len().saturating_sub(n);
    all[from..].to_vec()
}
