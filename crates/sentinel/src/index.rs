//! The Sentinel index: positive and negative example embeddings plus their texts, stored in
//! the reference library's on-disk format (three files in one directory).
//!
//! - `sentinel_local_index_config.json`: `encoder_model_name_or_path`, `encoding_kwargs` (a JSON
//!   string holding a JSON object), `model_card` (object or null);
//! - `embeddings.safetensors`: f32 `positive_embeddings` and `negative_embeddings`, `[rows, dim]`;
//! - `corpus.json`: `{"positive_corpus": [...] | null, "negative_corpus": [...] | null}`.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::SentinelError;
pub use crate::matrix::Matrix;

/// File names inside an index directory.
pub const CONFIG_FILE: &str = "sentinel_local_index_config.json";
/// Embeddings file.
pub const EMBEDDINGS_FILE: &str = "embeddings.safetensors";
/// Corpus file.
pub const CORPUS_FILE: &str = "corpus.json";

/// The JSON config of an index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexConfig {
    /// The encoder the embeddings came from.
    pub encoder_model_name_or_path: String,
    /// Encoding options as a JSON text (the reference stores a string, not an object).
    pub encoding_kwargs: String,
    /// Free-form description.
    pub model_card: Option<serde_json::Value>,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            encoder_model_name_or_path: "sentence-transformers/all-MiniLM-L6-v2".into(),
            encoding_kwargs: "{\"normalize_embeddings\": true}".into(),
            model_card: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Corpus {
    positive_corpus: Option<Vec<String>>,
    negative_corpus: Option<Vec<String>>,
}

/// Positive and negative examples of the rare class.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelIndex {
    /// Positive (rare-class) embeddings.
    pub positive: Matrix,
    /// Negative (ordinary) embeddings.
    pub negative: Matrix,
    /// Texts of the positive rows, if known.
    pub positive_corpus: Option<Vec<String>>,
    /// Texts of the negative rows, if known.
    pub negative_corpus: Option<Vec<String>>,
    /// Encoder and description.
    pub config: IndexConfig,
}

pub use crate::torch_rng::choose_rows;
use crate::torch_rng::split_seeds;

fn file_err(path: &Path, message: impl std::fmt::Display) -> SentinelError {
    SentinelError::Corrupt {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_matrix(st: &SafeTensors<'_>, name: &str, path: &Path) -> Result<Matrix, SentinelError> {
    let t = st
        .tensor(name)
        .map_err(|e| file_err(path, format!("tensor `{name}`: {e}")))?;
    if t.dtype() != Dtype::F32 {
        return Err(file_err(
            path,
            format!("tensor `{name}` is {:?}, expected F32", t.dtype()),
        ));
    }
    let shape = t.shape();
    if shape.len() != 2 {
        return Err(file_err(
            path,
            format!("tensor `{name}` has shape {shape:?}, expected [rows, dim]"),
        ));
    }
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if shape[1] == 0 {
        return Err(file_err(
            path,
            format!("tensor `{name}` has 0-dimension embeddings"),
        ));
    }
    if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
        return Err(file_err(
            path,
            format!(
                "tensor `{name}` row {} holds a value that is not a finite number (NaN or \
                 infinite): a corrupted index would score everything 0",
                bad / shape[1]
            ),
        ));
    }
    if shape[0] == 0 {
        return Err(file_err(
            path,
            format!("tensor `{name}` has no rows: an index needs examples of both classes"),
        ));
    }
    Ok(Matrix {
        data,
        rows: shape[0],
        dim: shape[1],
    })
}

/// Read every named f32 matrix of a safetensors file (e.g. precomputed observation
/// embeddings, one tensor per group).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Matrix)>, SentinelError> {
    let bytes = std::fs::read(path).map_err(|e| SentinelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, e))?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| read_matrix(&st, &n, path).map(|m| (n, m)))
        .collect()
}

impl SentinelIndex {
    /// An index from embeddings and optional texts. Refuses empty sides and mismatched
    /// dimensions or corpus lengths.
    pub fn new(
        positive: Matrix,
        negative: Matrix,
        positive_corpus: Option<Vec<String>>,
        negative_corpus: Option<Vec<String>>,
        config: IndexConfig,
    ) -> Result<Self, SentinelError> {
        if positive.rows == 0 || negative.rows == 0 {
            return Err(SentinelError::BadInput(
                "an index needs at least one positive and one negative example".into(),
            ));
        }
        if positive.dim != negative.dim {
            return Err(SentinelError::BadInput(format!(
                "positive embeddings have {} dimensions but negative ones {}",
                positive.dim, negative.dim
            )));
        }
        if positive.dim == 0 {
            return Err(SentinelError::BadInput(
                "embeddings with 0 dimensions cannot be searched".into(),
            ));
        }
        if positive
            .data
            .iter()
            .chain(&negative.data)
            .any(|v| !v.is_finite())
        {
            return Err(SentinelError::BadInput(
                "an embedding holds a value that is not a finite number (NaN or infinite)".into(),
            ));
        }
        let idx = Self {
            positive,
            negative,
            positive_corpus,
            negative_corpus,
            config,
        };
        idx.check_corpus()?;
        Ok(idx)
    }

    fn check_corpus(&self) -> Result<(), SentinelError> {
        for (side, corpus, rows) in [
            ("positive", &self.positive_corpus, self.positive.rows),
            ("negative", &self.negative_corpus, self.negative.rows),
        ] {
            if let Some(c) = corpus
                && c.len() != rows
            {
                return Err(SentinelError::BadInput(format!(
                    "the {side} corpus has {} texts but there are {rows} {side} embeddings",
                    c.len()
                )));
            }
        }
        Ok(())
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.positive.dim
    }

    /// SHA-256 (first 8 bytes, hex) of both sides' embeddings and, with `calibrated`, of the
    /// calibrated scorer's files: which index and scorer these are, wherever they lie (what a
    /// model bundle records and the live service checks; refitting the scorer changes it).
    pub fn fingerprint(
        &self,
        calibrated: Option<&crate::CalibratedScorer>,
    ) -> Result<String, SentinelError> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for side in [&self.positive, &self.negative] {
            h.update((side.rows as u64).to_le_bytes());
            for v in &side.data {
                h.update(v.to_le_bytes());
            }
        }
        if let Some(c) = calibrated {
            for (name, bytes) in c.to_files()? {
                h.update(name.as_bytes());
                h.update((bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
        }
        Ok(h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Save to a local directory in the reference format. A corpus whose length differs from
    /// its embeddings is refused before anything is written.
    pub fn save(&self, dir: &Path) -> Result<(), SentinelError> {
        self.check_corpus()?;
        let io = |path: PathBuf| move |source| SentinelError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        for (name, bytes) in self.to_files()? {
            vigil_core::write_atomic(&dir.join(name), &bytes)
                .map_err(|(path, source)| SentinelError::Io { path, source })?;
        }
        Ok(())
    }

    /// The three files' names and bytes.
    pub fn to_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, SentinelError> {
        self.check_corpus()?;
        let to_bytes =
            |m: &Matrix| -> Vec<u8> { m.data.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let pos = to_bytes(&self.positive);
        let neg = to_bytes(&self.negative);
        fn view<'b>(m: &Matrix, b: &'b [u8]) -> Result<TensorView<'b>, SentinelError> {
            TensorView::new(Dtype::F32, vec![m.rows, m.dim], b)
                .map_err(|e| SentinelError::Internal(e.to_string()))
        }
        let tensors = vec![
            ("positive_embeddings", view(&self.positive, &pos)?),
            ("negative_embeddings", view(&self.negative, &neg)?),
        ];
        let st = safetensors::serialize(tensors, None)
            .map_err(|e| SentinelError::Internal(e.to_string()))?;
        let config =
            serde_json::to_vec(&self.config).map_err(|e| SentinelError::Internal(e.to_string()))?;
        let corpus = serde_json::to_vec(&Corpus {
            positive_corpus: self.positive_corpus.clone(),
            negative_corpus: self.negative_corpus.clone(),
        })
        .map_err(|e| SentinelError::Internal(e.to_string()))?;
        Ok(vec![
            (CONFIG_FILE, config),
            (EMBEDDINGS_FILE, st),
            (CORPUS_FILE, corpus),
        ])
    }

    /// Load from the three files' bytes (`corpus` may be absent). `negative_to_positive_ratio`
    /// keeps `floor(n_pos * ratio)` random negatives (in their original order); `None` keeps
    /// all; a value <= 0 or a count of 0 keeps all with a warning.
    pub fn from_files(
        config: &[u8],
        embeddings: &[u8],
        corpus: Option<&[u8]>,
        origin: &Path,
        negative_to_positive_ratio: Option<f64>,
        seed: Option<u64>,
    ) -> Result<Self, SentinelError> {
        let cfg_path = origin.join(CONFIG_FILE);
        let config: IndexConfig =
            serde_json::from_slice(config).map_err(|e| file_err(&cfg_path, e))?;
        let emb_path = origin.join(EMBEDDINGS_FILE);
        let st = SafeTensors::deserialize(embeddings).map_err(|e| file_err(&emb_path, e))?;
        let positive = read_matrix(&st, "positive_embeddings", &emb_path)?;
        let negative = read_matrix(&st, "negative_embeddings", &emb_path)?;
        if positive.dim != negative.dim {
            return Err(file_err(
                &emb_path,
                "positive and negative dimensions differ",
            ));
        }
        let (mut positive_corpus, mut negative_corpus) = (None, None);
        if let Some(bytes) = corpus {
            let c_path = origin.join(CORPUS_FILE);
            let c: Corpus = serde_json::from_slice(bytes).map_err(|e| file_err(&c_path, e))?;
            positive_corpus = c.positive_corpus;
            negative_corpus = c.negative_corpus;
            for (side, corpus, rows) in [
                ("positive", &mut positive_corpus, positive.rows),
                ("negative", &mut negative_corpus, negative.rows),
            ] {
                if corpus.as_ref().is_some_and(|c| c.len() != rows) {
                    // The specification: dropped with a warning on load (refused on save).
                    tracing::warn!(
                        "{}: the {side} corpus does not match its {rows} embeddings; explanations will show row ids",
                        c_path.display()
                    );
                    *corpus = None;
                }
            }
        }
        let mut idx = Self {
            positive,
            negative,
            positive_corpus,
            negative_corpus,
            config,
        };
        if let Some(ratio) = negative_to_positive_ratio {
            let keep = (idx.positive.rows as f64 * ratio).floor();
            if ratio <= 0.0 || !ratio.is_finite() || keep < 1.0 {
                tracing::warn!(
                    "negative_to_positive_ratio {ratio} keeps no negatives; keeping all"
                );
            } else if (keep as usize) < idx.negative.rows {
                let rows = choose_rows(
                    idx.negative.rows,
                    keep as usize,
                    seed.unwrap_or_else(rand::random),
                );
                idx.negative = idx.negative.select(&rows);
                idx.negative_corpus = idx
                    .negative_corpus
                    .map(|c| rows.iter().map(|&r| c[r].clone()).collect());
            }
        }
        Ok(idx)
    }

    /// Load from a local directory.
    pub fn load(
        dir: &Path,
        negative_to_positive_ratio: Option<f64>,
        seed: Option<u64>,
    ) -> Result<Self, SentinelError> {
        if !dir.join(CONFIG_FILE).is_file() {
            return Err(SentinelError::BadInput(format!(
                "no Sentinel index at {}: {CONFIG_FILE} is not there (build one with \
                 `vigil sentinel build`, or give an s3:// location)",
                dir.display()
            )));
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| SentinelError::Io { path, source })
        };
        let config = read(CONFIG_FILE)?;
        let embeddings = read(EMBEDDINGS_FILE)?;
        let corpus_path = dir.join(CORPUS_FILE);
        let corpus = if corpus_path.exists() {
            Some(read(CORPUS_FILE)?)
        } else {
            None
        };
        Self::from_files(
            &config,
            &embeddings,
            corpus.as_deref(),
            dir,
            negative_to_positive_ratio,
            seed,
        )
    }

    /// A new index keeping `n_positive` random positives (all when `None`) and
    /// `max(1, floor(kept * ratio))` random negatives (all when `None`). Rows keep their order
    /// and the corpus stays aligned; the original is not changed.
    pub fn subsample(
        &self,
        n_positive: Option<usize>,
        neg_to_pos_ratio: Option<f64>,
        seed: Option<u64>,
    ) -> Result<Self, SentinelError> {
        if n_positive == Some(0) {
            return Err(SentinelError::BadInput(
                "n_positive must be positive".into(),
            ));
        }
        if let Some(r) = neg_to_pos_ratio
            && !(r > 0.0 && r.is_finite())
        {
            return Err(SentinelError::BadInput(format!(
                "neg_to_pos_ratio must be positive, got {r}"
            )));
        }
        let (pos_seed, neg_seed) = split_seeds(seed.unwrap_or_else(rand::random));
        let mut out = self.clone();
        if let Some(n) = n_positive
            && n < self.positive.rows
        {
            let rows = choose_rows(self.positive.rows, n, pos_seed);
            out.positive = self.positive.select(&rows);
            out.positive_corpus = self
                .positive_corpus
                .as_ref()
                .map(|c| rows.iter().map(|&r| c[r].clone()).collect());
        }
        if let Some(r) = neg_to_pos_ratio {
            let keep = ((out.positive.rows as f64 * r).floor() as usize).max(1);
            if keep < self.negative.rows {
                let rows = choose_rows(self.negative.rows, keep, neg_seed);
                out.negative = self.negative.select(&rows);
                out.negative_corpus = self
                    .negative_corpus
                    .as_ref()
                    .map(|c| rows.iter().map(|&r| c[r].clone()).collect());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loading_a_directory_without_an_index_says_so_and_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = SentinelIndex::load(&dir.path().join("nowhere"), None, None).unwrap_err();
        assert!(matches!(err, SentinelError::BadInput(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("no Sentinel index at"), "{text}");
        assert!(text.contains("vigil sentinel build"), "{text}");
    }

    fn m(rows: &[&[f32]]) -> Matrix {
        Matrix::from_rows(&rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>()).unwrap()
    }

    fn index(pos: Matrix, neg: Matrix) -> SentinelIndex {
        SentinelIndex {
            positive: pos,
            negative: neg,
            positive_corpus: None,
            negative_corpus: None,
            config: IndexConfig::default(),
        }
    }

    /// The three files of `idx`, written without the checks of `new` (as a damaged or
    /// hand-made index would be), then loaded.
    fn reload(idx: &SentinelIndex, corpus: Option<&[u8]>) -> Result<SentinelIndex, SentinelError> {
        let files = idx.to_files().unwrap();
        SentinelIndex::from_files(
            &files[0].1,
            &files[1].1,
            corpus.or(Some(&files[2].1)),
            Path::new("idx"),
            None,
            None,
        )
    }

    #[test]
    fn an_index_with_nan_or_infinite_embeddings_is_refused_at_load() {
        for bad in [f32::NAN, f32::INFINITY] {
            let idx = index(m(&[&[1.0, 0.0]]), m(&[&[0.0, 1.0], &[bad, 0.5]]));
            let err = reload(&idx, None).unwrap_err().to_string();
            assert!(
                err.contains("not a finite number") && err.contains("row 1"),
                "{err}"
            );
            assert!(
                SentinelIndex::new(idx.positive, idx.negative, None, None, idx.config).is_err()
            );
        }
    }

    #[test]
    fn an_index_with_no_positive_rows_is_refused_at_load() {
        let idx = index(
            Matrix {
                data: vec![],
                rows: 0,
                dim: 2,
            },
            m(&[&[0.0, 1.0]]),
        );
        let err = reload(&idx, None).unwrap_err().to_string();
        assert!(
            err.contains("no rows") && err.contains("positive_embeddings"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_dimension_index_is_refused_instead_of_panicking() {
        let z = |rows| Matrix {
            data: vec![],
            rows,
            dim: 0,
        };
        let err = reload(&index(z(2), z(3)), None).unwrap_err().to_string();
        assert!(err.contains("0-dimension"), "{err}");
        assert!(SentinelIndex::new(z(1), z(1), None, None, IndexConfig::default()).is_err());
    }
}
