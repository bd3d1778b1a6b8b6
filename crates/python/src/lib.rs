//! The native half of the Python package: thin PyO3 wrappers over `vigil-sentinel` (the
//! encoder, the index, the scorer and the tuning harness) and, in `pipeline.rs`, over the
//! pipeline (`vigil.generate`, `run`, `score`, `sql`). The reference library's API
//! (`vigil_sentinel.SentinelLocalIndex` and friends) is written in Python on top of this module
//! (`python/vigil_sentinel/`); nothing here re-implements a stage. Long work runs with the GIL
//! released, and every error is raised as one of the classes of `vigil_sentinel.errors`, chosen
//! by whose fault it is.

mod pipeline;

// Present only to align the wheel's dependency features with the workspace build (see the
// `workspace-features` feature in Cargo.toml); nothing uses them.
#[cfg(feature = "workspace-features")]
use {hyper as _, hyper_util as _, rustix as _, subtle as _, tokio as _, tower as _};

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use numpy::ndarray::Array2;
use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArray2, PyArrayLike1, PyArrayLike2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use vigil_sentinel::encoder::MODEL_HELP;
use vigil_sentinel::harness::{self, GroupScores};
use vigil_sentinel::{
    Aggregator, Encoder as _, IndexConfig, Matrix, MiniLmEncoder, Precision, S3Credentials,
    ScaleFn, ScoreParams, Scorer, SentinelError, SentinelIndex,
};

/// Raise `class` (a name in `vigil_sentinel.errors`) with `message`.
pub(crate) fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let found = py
        .import("vigil_sentinel.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match found {
        Ok(ty) => PyErr::from_type(ty, message),
        Err(e) => e,
    }
}

/// A library error as the Python exception of its kind: bad arguments and bad files are
/// `ValueError`s, missing models and failed I/O are `OSError`s, bugs are `RuntimeError`s.
fn py_err(py: Python<'_>, e: SentinelError) -> PyErr {
    let class = match &e {
        SentinelError::BadInput(_) => "InvalidInputError",
        SentinelError::Corrupt { .. } => "CorruptIndexError",
        SentinelError::Model { .. } => "ModelNotFoundError",
        SentinelError::Io { .. } | SentinelError::Storage(_) => "StorageError",
        SentinelError::Internal(_) => "InternalError",
    };
    raise(py, class, e.to_string())
}

fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "InvalidInputError", message.into())
}

/// A 2-D float array (any float dtype, any layout) as a matrix; one copy.
fn matrix(py: Python<'_>, a: &PyArrayLike2<'_, f32, AllowTypeChange>) -> PyResult<Matrix> {
    let view = a.as_array();
    let (rows, dim) = view.dim();
    let data: Vec<f32> = match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    };
    if data.iter().any(|v| !v.is_finite()) {
        return Err(invalid(
            py,
            "an embedding holds a value that is not a finite number (NaN or infinite)",
        ));
    }
    Ok(Matrix { data, rows, dim })
}

fn to_numpy<'py>(py: Python<'py>, m: Matrix) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let a = Array2::from_shape_vec((m.rows, m.dim), m.data)
        .map_err(|e| raise(py, "InternalError", e.to_string()))?;
    Ok(a.into_pyarray(py))
}

fn credentials(
    py: Python<'_>,
    key: Option<String>,
    secret: Option<String>,
) -> PyResult<Option<S3Credentials>> {
    match (key, secret) {
        (None, None) => Ok(None),
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(S3Credentials {
            access_key_id,
            secret_access_key,
        })),
        _ => Err(invalid(
            py,
            "give both aws_access_key_id and aws_secret_access_key, or neither (the AWS \
             environment is used then)",
        )),
    }
}

/// Aggregator by the reference's function name, with its one optional parameter
/// (`min_size_of_scores`, `k`, `q` or `temperature`).
fn aggregator(py: Python<'_>, name: &str, param: Option<f64>) -> PyResult<Aggregator> {
    let a: Aggregator = name.parse().map_err(|e: String| invalid(py, e))?;
    let Some(p) = param else { return Ok(a) };
    if !p.is_finite() {
        return Err(invalid(
            py,
            format!("{name}: the parameter must be finite, got {p}"),
        ));
    }
    let count = |what: &str| -> PyResult<usize> {
        if p < 0.0 || p.fract() != 0.0 {
            Err(invalid(
                py,
                format!("{name}: {what} must be a whole number >= 0, got {p}"),
            ))
        } else {
            Ok(p as usize)
        }
    };
    Ok(match a {
        Aggregator::Skewness { .. } => Aggregator::Skewness {
            min_size: count("min_size_of_scores")?,
        },
        Aggregator::TopKMean { .. } => Aggregator::TopKMean { k: count("k")? },
        Aggregator::PercentileScore { .. } => {
            if !(0.0..=100.0).contains(&p) {
                return Err(invalid(
                    py,
                    format!("{name}: q must be in [0, 100], got {p}"),
                ));
            }
            Aggregator::PercentileScore { q: p }
        }
        Aggregator::SoftmaxWeightedMean { .. } => {
            Aggregator::SoftmaxWeightedMean { temperature: p }
        }
        other => other,
    })
}

/// The native MiniLM sentence encoder (all-MiniLM-L6-v2 run in Rust).
#[pyclass(frozen, module = "vigil_sentinel._native")]
struct Encoder {
    inner: Arc<MiniLmEncoder>,
    model_dir: PathBuf,
}

#[pymethods]
impl Encoder {
    /// Load the model from `model` (a directory) or `$VIGIL_MODEL`; `precision` is `f32`
    /// (exact), `int16` (near-lossless, faster) or `int8` (fastest, lossy).
    #[new]
    #[pyo3(signature = (model = None, precision = "f32"))]
    fn new(py: Python<'_>, model: Option<PathBuf>, precision: &str) -> PyResult<Self> {
        let dir = match model.or_else(|| std::env::var_os("VIGIL_MODEL").map(PathBuf::from)) {
            Some(d) => d,
            None => {
                return Err(raise(
                    py,
                    "ModelNotFoundError",
                    format!("no encoder model given and VIGIL_MODEL is not set; {MODEL_HELP}"),
                ));
            }
        };
        let precision: Precision = precision.parse().map_err(|e: String| invalid(py, e))?;
        let loaded = py.detach(|| MiniLmEncoder::load_with_precision(&dir, precision));
        let inner = loaded.map_err(|e| py_err(py, e))?;
        Ok(Self {
            inner: Arc::new(inner),
            model_dir: dir,
        })
    }

    /// The name written into an index's config.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// `f32`, `int16` or `int8`.
    #[getter]
    fn precision(&self) -> String {
        self.inner.precision().to_string()
    }

    /// The model directory.
    #[getter]
    fn model_dir(&self) -> PathBuf {
        self.model_dir.clone()
    }

    /// Unit-length embeddings, one row per text, as a float32 array `[len(texts), dim]`.
    /// `progress(done, total)` is called after each batch; Ctrl-C stops between batches.
    #[pyo3(signature = (texts, batch_size = 256, progress = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_size: usize,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let batch = batch_size.max(1);
        let dim = self.inner.dim();
        let mut data: Vec<f32> = Vec::with_capacity(texts.len() * dim);
        let mut done = 0usize;
        for chunk in texts.chunks(batch) {
            let enc = Arc::clone(&self.inner);
            let m = py.detach(|| enc.encode(chunk)).map_err(|e| py_err(py, e))?;
            data.extend_from_slice(&m.data);
            done += chunk.len();
            if let Some(p) = &progress {
                p.call1((done, texts.len()))?;
            }
            py.check_signals()?;
        }
        to_numpy(
            py,
            Matrix {
                data,
                rows: texts.len(),
                dim,
            },
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Encoder(model={:?}, precision={:?})",
            self.model_dir.display().to_string(),
            self.inner.precision().to_string()
        )
    }
}

/// A Sentinel index (positive and negative example embeddings, optional texts) with its
/// scorer, built once on first use.
#[pyclass(frozen, module = "vigil_sentinel._native")]
struct Index {
    inner: Arc<SentinelIndex>,
    scorer: OnceLock<Arc<Scorer>>,
}

impl Index {
    fn wrap(inner: SentinelIndex) -> Self {
        Self {
            inner: Arc::new(inner),
            scorer: OnceLock::new(),
        }
    }

    fn scorer(&self) -> Arc<Scorer> {
        Arc::clone(
            self.scorer
                .get_or_init(|| Arc::new(Scorer::new(&self.inner))),
        )
    }
}

#[pymethods]
impl Index {
    /// An index from embedding arrays (`[rows, dim]` each) and optional texts aligned with
    /// them. `encoding_kwargs` is the JSON text the reference stores; `model_card` JSON text.
    #[new]
    #[pyo3(signature = (positive, negative, positive_corpus = None, negative_corpus = None,
        encoder_model_name_or_path = None, encoding_kwargs = None, model_card = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        positive: PyArrayLike2<'_, f32, AllowTypeChange>,
        negative: PyArrayLike2<'_, f32, AllowTypeChange>,
        positive_corpus: Option<Vec<String>>,
        negative_corpus: Option<Vec<String>>,
        encoder_model_name_or_path: Option<String>,
        encoding_kwargs: Option<String>,
        model_card: Option<String>,
    ) -> PyResult<Self> {
        let mut config = IndexConfig::default();
        if let Some(n) = encoder_model_name_or_path {
            config.encoder_model_name_or_path = n;
        }
        if let Some(k) = encoding_kwargs {
            config.encoding_kwargs = k;
        }
        config.model_card = match model_card {
            Some(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| invalid(py, format!("model_card is not JSON: {e}")))?,
            ),
            None => None,
        };
        let (p, n) = (matrix(py, &positive)?, matrix(py, &negative)?);
        let idx = SentinelIndex::new(p, n, positive_corpus, negative_corpus, config)
            .map_err(|e| py_err(py, e))?;
        Ok(Self::wrap(idx))
    }

    /// Load from a directory or `s3://bucket/prefix`, keeping `floor(n_pos * ratio)` random
    /// negatives (`None`: all).
    #[staticmethod]
    #[pyo3(signature = (path, negative_to_positive_ratio = Some(5.0), seed = None,
        aws_access_key_id = None, aws_secret_access_key = None))]
    fn load(
        py: Python<'_>,
        path: String,
        negative_to_positive_ratio: Option<f64>,
        seed: Option<u64>,
        aws_access_key_id: Option<String>,
        aws_secret_access_key: Option<String>,
    ) -> PyResult<Self> {
        let creds = credentials(py, aws_access_key_id, aws_secret_access_key)?;
        let loaded = py.detach(|| {
            SentinelIndex::load_from_with(&path, negative_to_positive_ratio, seed, creds.as_ref())
        });
        Ok(Self::wrap(loaded.map_err(|e| py_err(py, e))?))
    }

    /// Save the three reference files to a directory or `s3://bucket/prefix`, recording
    /// `encoder_model_name_or_path` (kept unchanged when `None`).
    #[pyo3(signature = (path, encoder_model_name_or_path = None, aws_access_key_id = None,
        aws_secret_access_key = None))]
    fn save(
        &self,
        py: Python<'_>,
        path: String,
        encoder_model_name_or_path: Option<String>,
        aws_access_key_id: Option<String>,
        aws_secret_access_key: Option<String>,
    ) -> PyResult<()> {
        let creds = credentials(py, aws_access_key_id, aws_secret_access_key)?;
        let inner = Arc::clone(&self.inner);
        let saved = py.detach(|| match encoder_model_name_or_path {
            Some(name) if name != inner.config.encoder_model_name_or_path => {
                let mut renamed = (*inner).clone();
                renamed.config.encoder_model_name_or_path = name;
                renamed.save_to_with(&path, creds.as_ref())
            }
            _ => inner.save_to_with(&path, creds.as_ref()),
        });
        saved.map_err(|e| py_err(py, e))
    }

    /// Encode example texts into a new index (surplus negatives beyond
    /// `max(1, floor(n_pos * ratio))` dropped before encoding).
    #[staticmethod]
    #[pyo3(signature = (encoder, positives, negatives, neg_to_pos_ratio = None, seed = None,
        progress = None))]
    fn from_texts(
        py: Python<'_>,
        encoder: &Encoder,
        positives: Vec<String>,
        negatives: Vec<String>,
        neg_to_pos_ratio: Option<f64>,
        seed: Option<u64>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let enc = Arc::clone(&encoder.inner);
        // `progress(done, total)` after each encoded batch, called with the GIL re-taken.
        let report = |done: usize, total: usize| {
            if let Some(cb) = &progress {
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (done, total)) {
                        e.write_unraisable(py, None);
                    }
                });
            }
        };
        let built = py.detach(|| {
            SentinelIndex::from_texts(
                enc.as_ref(),
                positives,
                negatives,
                neg_to_pos_ratio,
                seed,
                &report,
            )
        });
        Ok(Self::wrap(built.map_err(|e| py_err(py, e))?))
    }

    /// A smaller copy (see the reference's `subsample`); this index is unchanged.
    #[pyo3(signature = (n_positive = None, neg_to_pos_ratio = None, seed = None))]
    fn subsample(
        &self,
        py: Python<'_>,
        n_positive: Option<i64>,
        neg_to_pos_ratio: Option<f64>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let n_positive = match n_positive {
            Some(n) if n <= 0 => {
                return Err(invalid(py, format!("n_positive must be positive, got {n}")));
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let sub = self
            .inner
            .subsample(n_positive, neg_to_pos_ratio, seed)
            .map_err(|e| py_err(py, e))?;
        Ok(Self::wrap(sub))
    }

    /// Positive embeddings (a float32 copy).
    #[getter]
    fn positive_embeddings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        to_numpy(py, self.inner.positive.clone())
    }

    /// Negative embeddings (a float32 copy).
    #[getter]
    fn negative_embeddings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        to_numpy(py, self.inner.negative.clone())
    }

    /// Texts of the positive rows, if known.
    #[getter]
    fn positive_corpus(&self) -> Option<Vec<String>> {
        self.inner.positive_corpus.clone()
    }

    /// Texts of the negative rows, if known.
    #[getter]
    fn negative_corpus(&self) -> Option<Vec<String>> {
        self.inner.negative_corpus.clone()
    }

    /// The encoder recorded in the config.
    #[getter]
    fn encoder_model_name_or_path(&self) -> String {
        self.inner.config.encoder_model_name_or_path.clone()
    }

    /// The encoding options as the JSON text the reference stores.
    #[getter]
    fn encoding_kwargs(&self) -> String {
        self.inner.config.encoding_kwargs.clone()
    }

    /// The model card as JSON text, or `None`.
    #[getter]
    fn model_card(&self) -> Option<String> {
        self.inner.config.model_card.as_ref().map(|v| v.to_string())
    }

    /// Embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn __len__(&self) -> usize {
        self.inner.positive.rows + self.inner.negative.rows
    }

    /// Score one group given its texts and their embeddings (`embeddings[i]` is `texts[i]`).
    /// Returns `(affinity, observation_scores [(text, score)], per_observation [score],
    /// aggregation_name, aggregation_stats dict, explanations {text: dict} or None)`; with
    /// `include_neighbors` false each explanation's `neighbors` is `None`.
    #[pyo3(signature = (texts, embeddings, top_k = 5, min_score_to_consider = 0.1,
        prevent_exact_match = false, aggregator = "skewness", aggregator_param = None,
        scale = "identity", explain = true, neighbors_limit = 5, include_neighbors = true))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn score_group<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        embeddings: PyArrayLike2<'py, f32, AllowTypeChange>,
        top_k: i64,
        min_score_to_consider: f64,
        prevent_exact_match: bool,
        aggregator: &str,
        aggregator_param: Option<f64>,
        scale: &str,
        explain: bool,
        neighbors_limit: i64,
        include_neighbors: bool,
    ) -> PyResult<(
        f64,
        Vec<(String, f64)>,
        Vec<f64>,
        &'static str,
        Bound<'py, PyDict>,
        Option<Bound<'py, PyDict>>,
    )> {
        if top_k <= 0 {
            return Err(invalid(
                py,
                format!("top_k must be at least 1, got {top_k}"),
            ));
        }
        let scale_fn = match scale {
            "identity" => ScaleFn::Identity,
            "e5" => ScaleFn::E5,
            other => {
                return Err(invalid(
                    py,
                    format!("scale must be \"identity\" or \"e5\", got {other:?}"),
                ));
            }
        };
        let params = ScoreParams {
            top_k: usize::try_from(top_k).unwrap_or(usize::MAX),
            min_score_to_consider,
            prevent_exact_match,
            scale_fn,
            aggregator: self::aggregator(py, aggregator, aggregator_param)?,
            explain,
            neighbors_limit: if include_neighbors {
                usize::try_from(neighbors_limit.max(0)).unwrap_or(0)
            } else {
                0
            },
        };
        let mut emb = matrix(py, &embeddings)?;
        if texts.is_empty() && emb.rows == 0 {
            emb.dim = self.inner.dim();
        }
        if emb.rows != texts.len() {
            return Err(invalid(
                py,
                format!(
                    "sample_embeddings has {} rows but there are {} texts",
                    emb.rows,
                    texts.len()
                ),
            ));
        }
        if emb.dim != self.inner.dim() {
            return Err(invalid(
                py,
                format!(
                    "sample_embeddings have {} dimensions but the index has {}",
                    emb.dim,
                    self.inner.dim()
                ),
            ));
        }
        let scorer = self.scorer();
        let result = py.detach(|| scorer.score_group(&texts, &emb, &params));
        let r = result.map_err(|e| py_err(py, e))?;
        let stats = PyDict::new(py);
        stats.set_item("num_texts", r.aggregation_stats.num_texts)?;
        stats.set_item(
            "num_positive_scores",
            r.aggregation_stats.num_positive_scores,
        )?;
        stats.set_item(
            "top_k_per_observation",
            r.aggregation_stats.top_k_per_observation,
        )?;
        stats.set_item(
            "min_score_to_consider",
            r.aggregation_stats.min_score_to_consider,
        )?;
        let explanations = match r.explanations {
            Some(list) => Some(explanations_dict(py, list, include_neighbors)?),
            None => None,
        };
        Ok((
            r.affinity,
            r.observation_scores,
            r.per_observation,
            r.aggregation_name,
            stats,
            explanations,
        ))
    }

    /// Raw scores (before any `min_score` cut) of each group's distinct observations, in order
    /// of first appearance; `embeddings[g]` holds group `g`'s rows in observation order.
    #[pyo3(signature = (observations, embeddings, top_k = 5))]
    fn score_groups<'py>(
        &self,
        py: Python<'py>,
        observations: Vec<Vec<String>>,
        embeddings: Vec<PyArrayLike2<'py, f32, AllowTypeChange>>,
        top_k: i64,
    ) -> PyResult<Vec<Bound<'py, PyArray1<f64>>>> {
        if top_k <= 0 {
            return Err(invalid(
                py,
                format!("top_k must be at least 1, got {top_k}"),
            ));
        }
        if observations.len() != embeddings.len() {
            return Err(invalid(
                py,
                format!(
                    "{} groups but {} embedding arrays",
                    observations.len(),
                    embeddings.len()
                ),
            ));
        }
        let mut groups = Vec::with_capacity(observations.len());
        let mut mats = Vec::with_capacity(observations.len());
        for (i, (obs, e)) in observations.into_iter().zip(&embeddings).enumerate() {
            let mut m = matrix(py, e)?;
            if obs.is_empty() && m.rows == 0 {
                m.dim = self.inner.dim();
            }
            if m.rows != obs.len() || m.dim != self.inner.dim() {
                return Err(invalid(
                    py,
                    format!(
                        "group {i}: embeddings are [{}, {}] but there are {} observations and \
                         the index has {} dimensions",
                        m.rows,
                        m.dim,
                        obs.len(),
                        self.inner.dim()
                    ),
                ));
            }
            groups.push(harness::LabeledGroup {
                name: i.to_string(),
                label: 0,
                observations: obs,
            });
            mats.push(m);
        }
        let encoded = harness::EncodedGroups {
            groups,
            embeddings: mats,
        };
        let inner = Arc::clone(&self.inner);
        let scored = py.detach(|| {
            harness::score_groups(&inner, &encoded, usize::try_from(top_k).unwrap_or(1))
        });
        let scored = scored.map_err(|e| py_err(py, e))?;
        Ok(scored
            .into_iter()
            .map(|g| PyArray1::from_vec(py, g.observation_scores))
            .collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "Index(positives={}, negatives={}, dim={}, encoder={:?})",
            self.inner.positive.rows,
            self.inner.negative.rows,
            self.inner.dim(),
            self.inner.config.encoder_model_name_or_path
        )
    }
}

/// Explanations as the reference returns them: text -> `{topk_positive, topk_negative,
/// contrastive: {positive_term, negative_term, log_ratio_unclipped}, neighbors}` (built here
/// rather than through JSON: a group's explanations are thousands of small objects).
fn explanations_dict(
    py: Python<'_>,
    list: Vec<vigil_sentinel::score::Explanation>,
    include_neighbors: bool,
) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for e in list {
        let d = PyDict::new(py);
        d.set_item("topk_positive", e.topk_positive)?;
        d.set_item("topk_negative", e.topk_negative)?;
        let c = PyDict::new(py);
        c.set_item("positive_term", e.contrastive.positive_term)?;
        c.set_item("negative_term", e.contrastive.negative_term)?;
        c.set_item("log_ratio_unclipped", e.contrastive.log_ratio_unclipped)?;
        d.set_item("contrastive", c)?;
        if include_neighbors {
            let mut ns = Vec::with_capacity(e.neighbors.len());
            for n in e.neighbors {
                let nd = PyDict::new(py);
                nd.set_item("sign", n.sign)?;
                nd.set_item("raw_score", n.raw_score)?;
                nd.set_item("scaled_score", n.scaled_score)?;
                match n.neighbor {
                    serde_json::Value::String(t) => nd.set_item("neighbor", t)?,
                    other => nd.set_item("neighbor", other.as_u64())?,
                }
                nd.set_item("corpus_id", n.corpus_id)?;
                ns.push(nd);
            }
            d.set_item("neighbors", ns)?;
        } else {
            d.set_item("neighbors", py.None())?;
        }
        out.set_item(e.text, d)?;
    }
    Ok(out)
}

/// One aggregator (by the reference's function name, with its optional parameter) applied
/// to a score array.
#[pyfunction]
#[pyo3(signature = (name, scores, param = None))]
fn aggregate(
    py: Python<'_>,
    name: &str,
    scores: PyArrayLike1<'_, f64, AllowTypeChange>,
    param: Option<f64>,
) -> PyResult<f64> {
    let a = aggregator(py, name, param)?;
    let view = scores.as_array();
    let v: Vec<f64> = view.iter().copied().collect();
    Ok(a.apply(&v))
}

/// `(positive_term, negative_term, log_ratio_unclipped)` of two similarity lists (each side
/// `mean(exp(s))`); an empty side is an error.
#[pyfunction]
fn contrastive_components(
    py: Python<'_>,
    positive: Vec<f64>,
    negative: Vec<f64>,
) -> PyResult<(f64, f64, f64)> {
    if positive.is_empty() || negative.is_empty() {
        return Err(invalid(
            py,
            "contrastive components need at least one positive and one negative similarity",
        ));
    }
    let c = vigil_sentinel::score::contrastive_components(&positive, &negative);
    Ok((c.positive_term, c.negative_term, c.log_ratio_unclipped))
}

/// The harness row (JSON) of one aggregator over scored groups: `scores[g]` are group `g`'s
/// raw scores, `labels[g]` its label (1 = harmful).
#[pyfunction]
#[pyo3(signature = (scores, labels, aggregator, aggregator_param = None, name = None,
    min_score_to_consider = 0.1, top_n = None, decision_threshold = None))]
#[allow(clippy::too_many_arguments)]
fn evaluate_groups(
    py: Python<'_>,
    scores: Vec<PyArrayLike1<'_, f64, AllowTypeChange>>,
    labels: Vec<i64>,
    aggregator: &str,
    aggregator_param: Option<f64>,
    name: Option<String>,
    min_score_to_consider: f64,
    top_n: Option<i64>,
    decision_threshold: Option<f64>,
) -> PyResult<String> {
    if scores.len() != labels.len() {
        return Err(invalid(
            py,
            format!("{} score arrays but {} labels", scores.len(), labels.len()),
        ));
    }
    let a = self::aggregator(py, aggregator, aggregator_param)?;
    let groups: Vec<GroupScores> = scores
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, (s, &l))| GroupScores {
            name: i.to_string(),
            label: u8::from(l == 1),
            observation_scores: s.as_array().iter().copied().collect(),
        })
        .collect();
    let row = harness::evaluate_groups(
        &groups,
        a,
        name.as_deref(),
        min_score_to_consider,
        top_n,
        decision_threshold,
    );
    serde_json::to_string(&row).map_err(|e| raise(py, "InternalError", e.to_string()))
}

/// The harness row (JSON) of precomputed group affinities (for an aggregator written in
/// Python): `labels[g]` 1 = harmful.
#[pyfunction]
#[pyo3(signature = (affinities, labels, name, min_score_to_consider = 0.1, top_n = None,
    decision_threshold = None))]
fn evaluate_affinities(
    py: Python<'_>,
    affinities: Vec<f64>,
    labels: Vec<i64>,
    name: &str,
    min_score_to_consider: f64,
    top_n: Option<i64>,
    decision_threshold: Option<f64>,
) -> PyResult<String> {
    if affinities.len() != labels.len() {
        return Err(invalid(
            py,
            format!(
                "{} affinities but {} labels",
                affinities.len(),
                labels.len()
            ),
        ));
    }
    let y: Vec<bool> = labels.iter().map(|&l| l == 1).collect();
    let row = harness::evaluate_affinities(
        &affinities,
        &y,
        name,
        min_score_to_consider,
        top_n,
        decision_threshold,
    );
    serde_json::to_string(&row).map_err(|e| raise(py, "InternalError", e.to_string()))
}

/// Send Vigil's log lines (`warn` by default: quarantined rows, refused inputs, the
/// fast-mode kernel) to stderr, filtered by `level` (`error`, `warn`, `info`, `debug`, or
/// an `EnvFilter` directive; `RUST_LOG` overrides it). Returns false when a logger was
/// already installed (the first one stays).
#[pyfunction]
#[pyo3(signature = (level = "warn"))]
fn log_to_stderr(py: Python<'_>, level: &str) -> PyResult<bool> {
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => tracing_subscriber::EnvFilter::try_new(level)
            .map_err(|e| invalid(py, format!("log level {level:?}: {e}")))?,
    };
    Ok(tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init()
        .is_ok())
}

/// `vigil_sentinel._native`: the Rust half of the package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Encoder>()?;
    m.add_class::<Index>()?;
    m.add_function(wrap_pyfunction!(aggregate, m)?)?;
    m.add_function(wrap_pyfunction!(log_to_stderr, m)?)?;
    m.add_function(wrap_pyfunction!(contrastive_components, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_groups, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_affinities, m)?)?;
    m.add_class::<pipeline::Table>()?;
    m.add_function(wrap_pyfunction!(pipeline::generate, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::run, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::sql, m)?)?;
    m.add("MODEL_HELP", MODEL_HELP)?;
    m.add("FAST_KERNEL", vigil_sentinel::quant::kernel_name())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
