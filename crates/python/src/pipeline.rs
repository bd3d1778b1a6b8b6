//! The pipeline from Python (`vigil.generate`, `vigil.run`, `vigil.score`, `vigil.sql`):
//! the same library calls as the `vigil` binary, with the GIL released while they run and
//! tables handed to Python through the Arrow C stream interface.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::ffi_stream::FFI_ArrowArrayStream;
use arrow::record_batch::{RecordBatch, RecordBatchIterator};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};
use vigil_config::{Config, Profile};
use vigil_core::{Classify, ErrorKind};
use vigil_pipeline::{Models, Progress, RunOptions};

use crate::raise;

/// A pipeline error as the `vigil_sentinel.errors` class of its kind: the user's input or
/// data `InvalidInputError` (a `ValueError`), the environment `StorageError` (an `OSError`),
/// a bug `InternalError`.
fn kind_err(py: Python<'_>, e: &(impl Classify + std::fmt::Display)) -> PyErr {
    raise(py, class_of(e.kind()), e.to_string())
}

fn class_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Usage | ErrorKind::BadData => "InvalidInputError",
        ErrorKind::Environment => "StorageError",
        ErrorKind::Bug => "InternalError",
    }
}

/// A query result or output table: an Arrow schema and its record batches. Any Arrow
/// library reads it through `__arrow_c_stream__` (`pyarrow.table(t)`, polars, DuckDB)
/// without a copy.
#[pyclass(frozen, module = "vigil_sentinel._native")]
pub(crate) struct Table {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

#[pymethods]
impl Table {
    /// Rows in the table.
    #[getter]
    fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Column names, in order.
    #[getter]
    fn column_names(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// The Arrow PyCapsule stream protocol: a capsule holding an `ArrowArrayStream` over the
    /// batches (each consumer gets its own stream; the batches are shared, not copied).
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The schema is offered as is; a consumer that asked for another casts itself.
        let _ = requested_schema;
        let reader = RecordBatchIterator::new(
            self.batches.clone().into_iter().map(Ok),
            self.schema.clone(),
        );
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        const NAME: &CStr = c"arrow_array_stream";
        PyCapsule::new_with_value(py, stream, NAME)
    }

    fn __len__(&self) -> usize {
        self.num_rows()
    }

    fn __repr__(&self) -> String {
        format!(
            "vigil.Table({} rows: {})",
            self.num_rows(),
            self.column_names().join(", ")
        )
    }
}

fn config(py: Python<'_>, path: Option<&Path>, profile: Option<&str>) -> PyResult<Config> {
    let mut cfg = match path {
        Some(p) => Config::load(p).map_err(|e| kind_err(py, &e))?,
        None => Config::default(),
    };
    if let Some(name) = profile {
        let p: Profile = name.parse().map_err(|e| kind_err(py, &e))?;
        if path.is_none() {
            cfg = Config::for_profile(p);
        } else if cfg.profile != p {
            return Err(raise(
                py,
                "InvalidInputError",
                format!(
                    "profile {name:?} conflicts with the profile of the config file; change one \
                     of them"
                ),
            ));
        }
    }
    Ok(cfg)
}

/// Progress of a pipeline run for a Python callable `(event, name, done, total)`: events
/// `"start"` and `"end"` per stage (`done` is the stage's seconds at its end), `"ingest"`
/// (bytes) and `"messages"` (texts scored by the rare-harm stage).
fn report(callback: &Option<Py<PyAny>>, p: Progress<'_>) {
    let Some(cb) = callback else { return };
    let (event, name, done, total) = match p {
        Progress::StageStart(n) => ("start", n.to_string(), 0.0, 0.0),
        Progress::StageEnd(n, secs) => ("end", n.to_string(), secs, 0.0),
        Progress::IngestBytes { path, done, total } => (
            "ingest",
            path.display().to_string(),
            done as f64,
            total as f64,
        ),
        Progress::Messages { done, total } => (
            "messages",
            "rare_harm".to_string(),
            done as f64,
            total as f64,
        ),
    };
    Python::attach(|py| {
        if let Err(e) = cb.call1(py, (event, name, done, total)) {
            // A failing progress callback must not abort the run; Python shows the error.
            e.write_unraisable(py, None);
        }
    });
}

/// Generate synthetic telemetry into `out` (CSV, JSONL or Parquet by extension) and its
/// `ground_truth.csv`; returns the summary as a dict.
#[pyfunction]
#[pyo3(signature = (out, events = 50_000, users = None, days = 14, abuse_rate = 0.04, seed = 42,
    end = None, incident_day = None, drift = false, rings = 0, scenario = "notebook",
    text_pool = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn generate<'py>(
    py: Python<'py>,
    out: PathBuf,
    events: u64,
    users: Option<usize>,
    days: u32,
    abuse_rate: f64,
    seed: u64,
    end: Option<String>,
    incident_day: Option<u32>,
    drift: bool,
    rings: usize,
    scenario: &str,
    text_pool: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let end_micros = match &end {
        Some(s) => vigil_events::timestamp::parse_timestamp_micros(s, false).map_err(|_| {
            raise(
                py,
                "InvalidInputError",
                format!("end {s:?} is not an RFC 3339 timestamp with an offset (e.g. 2026-02-15T05:26:38Z)"),
            )
        })?,
        None => chrono_now_micros(),
    };
    let scenario = scenario
        .parse()
        .map_err(|e: String| raise(py, "InvalidInputError", e))?;
    let pool = match text_pool {
        Some(p) => {
            Some(vigil_events::generator::TextPool::from_jsonl(&p).map_err(|e| kind_err(py, &e))?)
        }
        None => None,
    };
    let cfg = vigil_events::GeneratorConfig {
        events,
        users: users.unwrap_or_else(|| vigil_events::GeneratorConfig::default_users(events)),
        days,
        abuse_rate,
        seed,
        end_micros,
        incident_day,
        drift,
        rings,
        scenario,
        pool,
    };
    let summary = py
        .detach(|| vigil_events::generate(&cfg, &out, &|_| {}))
        .map_err(|e| kind_err(py, &e))?;
    let d = PyDict::new(py);
    d.set_item("events", summary.events)?;
    d.set_item("users", summary.users)?;
    d.set_item("abusers", summary.abusers)?;
    d.set_item("ring_members", summary.ring_members)?;
    d.set_item("out", summary.out)?;
    d.set_item("ground_truth", summary.ground_truth)?;
    Ok(d)
}

fn chrono_now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Run every stage (`model=None`: fit the models, as `vigil run`) or apply a saved bundle
/// (`model=DIR`, as `vigil score`). Returns `run.json` as JSON text.
#[pyfunction]
#[pyo3(signature = (inputs, out, data = None, profile = None, config_path = None,
    ground_truth = None, sentinel_index = None, sentinel_model = None, model = None,
    format = None, strict = false, progress = None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    py: Python<'_>,
    inputs: Vec<PathBuf>,
    out: PathBuf,
    data: Option<PathBuf>,
    profile: Option<&str>,
    config_path: Option<PathBuf>,
    ground_truth: Option<PathBuf>,
    sentinel_index: Option<String>,
    sentinel_model: Option<PathBuf>,
    model: Option<PathBuf>,
    format: Option<&str>,
    strict: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let models = match &model {
        Some(dir) => {
            let bundle = vigil_pipeline::ModelBundle::load(dir).map_err(|e| kind_err(py, &e))?;
            Models::Apply {
                bundle: Box::new(bundle),
                dir: dir.clone(),
            }
        }
        None => Models::Fit,
    };
    if model.is_some() && inputs.is_empty() && data.is_none() {
        return Err(raise(
            py,
            "InvalidInputError",
            "nothing to score: give event files, or stored events with data=".into(),
        ));
    }
    let mut cfg = match (&models, &config_path, profile) {
        // Scoring keeps the bundle's own configuration unless told otherwise.
        (Models::Apply { bundle, .. }, None, None) => bundle.manifest.config.clone(),
        _ => config(py, config_path.as_deref(), profile)?,
    };
    if let Some(index) = sentinel_index {
        cfg.sentinel.index = Some(index);
    }
    let format = match format {
        Some(f) => Some(
            f.parse::<vigil_events::Format>()
                .map_err(|e| raise(py, "InvalidInputError", e.to_string()))?,
        ),
        None => None,
    };
    let opts = RunOptions {
        sentinel_model: sentinel_model
            .or_else(|| std::env::var_os("VIGIL_MODEL").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2")),
        models,
        inputs,
        out,
        data,
        ingest: vigil_pipeline::ingest_options(&cfg, format, strict),
        config: cfg,
        ground_truth,
        as_of_micros: None,
    };
    let manifest = py
        .detach(|| vigil_pipeline::run(&opts, &|p| report(&progress, p)))
        .map_err(|e| kind_err(py, &e))?;
    serde_json::to_string(&manifest).map_err(|e| raise(py, "InternalError", e.to_string()))
}

/// A read-only SQL query over a finished run's outputs (`out`) and stored events (`data`;
/// default `out/data`), as a [`Table`].
#[pyfunction]
#[pyo3(signature = (query, out = None, data = None, timeout = None))]
pub(crate) fn sql(
    py: Python<'_>,
    query: String,
    out: Option<PathBuf>,
    data: Option<PathBuf>,
    timeout: Option<f64>,
) -> PyResult<Table> {
    let data = data
        .or_else(|| out.as_ref().map(|o| o.join("data")))
        .unwrap_or_else(|| PathBuf::from("vigil-data"));
    let timeout = match timeout {
        Some(t) if t.is_finite() && t > 0.0 => Some(std::time::Duration::from_secs_f64(t)),
        Some(t) if t.is_nan() || t < 0.0 => {
            return Err(raise(
                py,
                "InvalidInputError",
                format!("timeout must be positive seconds, got {t}"),
            ));
        }
        _ => None,
    };
    // Errors leave the GIL-free closure as (kind, text); a failed user query is the user's
    // to fix, as `vigil sql` treats it (exit code 2).
    let result = py.detach(|| -> Result<_, (ErrorKind, String)> {
        let wh = vigil_pipeline::open_outputs(out.as_deref(), &data, timeout)
            .map_err(|e| (e.kind(), e.to_string()))?;
        wh.query_read_only("query", &query).map_err(|e| {
            // A missing table is answered with the ones there are.
            let hint = if e.to_string().contains("not found") {
                format!(" (tables available: {})", wh.table_names().join(", "))
            } else {
                String::new()
            };
            (ErrorKind::Usage, format!("{e}{hint}"))
        })
    });
    match result {
        Ok(t) => Ok(Table {
            schema: t.schema,
            batches: t.batches,
        }),
        Err((kind, message)) => Err(raise(py, class_of(kind), message)),
    }
}
