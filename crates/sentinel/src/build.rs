//! Building an index from example texts: the one place where the index meets the encoder
//! (only with the `encoder` feature; the index itself never depends on it).

use crate::encoder::Encoder;
use crate::index::{IndexConfig, choose_rows};
use crate::{Matrix, SentinelError, SentinelIndex};

impl SentinelIndex {
    /// Encode positive and negative example texts into a new index. With a ratio, surplus
    /// negatives (beyond `max(1, floor(n_pos * ratio))`, chosen at random with `seed`) are
    /// dropped before encoding.
    pub fn from_texts(
        encoder: &dyn Encoder,
        positives: Vec<String>,
        negatives: Vec<String>,
        neg_to_pos_ratio: Option<f64>,
        seed: Option<u64>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, SentinelError> {
        if positives.is_empty() || negatives.is_empty() {
            return Err(SentinelError::BadInput(
                "building an index needs at least one positive and one negative example".into(),
            ));
        }
        let mut negatives = negatives;
        if let Some(r) = neg_to_pos_ratio {
            if !(r > 0.0 && r.is_finite()) {
                return Err(SentinelError::BadInput(format!(
                    "neg_to_pos_ratio must be positive, got {r}"
                )));
            }
            let keep = ((positives.len() as f64 * r).floor() as usize).max(1);
            if keep < negatives.len() {
                let rows = choose_rows(negatives.len(), keep, seed.unwrap_or_else(rand::random));
                negatives = rows.iter().map(|&i| negatives[i].clone()).collect();
            }
        }
        let total = positives.len() + negatives.len();
        let encode = |texts: &[String], done: usize| -> Result<Matrix, SentinelError> {
            let mut rows = Vec::with_capacity(texts.len());
            for (i, chunk) in texts.chunks(256).enumerate() {
                let m = encoder.encode(chunk)?;
                rows.extend((0..m.rows).map(|r| m.row(r).to_vec()));
                progress(done + (i * 256 + chunk.len()), total);
            }
            Matrix::from_rows(&rows)
        };
        let positive = encode(&positives, 0)?;
        let negative = encode(&negatives, positives.len())?;
        let config = IndexConfig {
            encoder_model_name_or_path: encoder.name().to_string(),
            ..IndexConfig::default()
        };
        Self::new(positive, negative, Some(positives), Some(negatives), config)
    }
}
