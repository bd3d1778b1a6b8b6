//! `vigil serve`: the live detection service.
//!
//! Events come in over HTTP, pass the same validator as `vigil ingest`, are made durable in
//! a group-committed SQLite log ([`intake`]) and moved from there into the same Parquet
//! dataset `vigil run` and `vigil score` read. Each accepted event updates its user's state
//! ([`state`]) and the user-day is scored with the model bundle's own batch code
//! ([`scoring`]). Tokens with scopes guard every endpoint but health ([`tokens`]).

pub mod bench;
pub mod event;
mod http;
pub mod intake;
pub mod scoring;
pub mod state;
pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vigil_config::Config;
use vigil_core::{Classify, ErrorKind};

pub use tokens::{Scope, TokenInfo, TokenStore};

/// Errors of the service, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// User: a bad flag or setting.
    #[error("{0}")]
    Usage(String),
    /// Environment: a file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Environment: the SQLite store (log or tokens) failed.
    #[error("{path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// Data: a stored file is damaged.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The dataset.
    #[error(transparent)]
    Events(#[from] vigil_events::EventsError),
    /// The model bundle.
    #[error(transparent)]
    Bundle(#[from] vigil_pipeline::BundleError),
    /// A pipeline stage (scoring, the enforcement policy).
    #[error(transparent)]
    Pipeline(#[from] vigil_pipeline::PipelineError),
    /// Configuration.
    #[error(transparent)]
    Config(#[from] vigil_config::ConfigError),
    /// Environment: the listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn store(path: &Path, source: rusqlite::Error) -> Self {
        Self::Store {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Classify for ServeError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServeError::Usage(_) => ErrorKind::Usage,
            ServeError::Io { .. } | ServeError::Store { .. } | ServeError::Listen { .. } => {
                ErrorKind::Environment
            }
            ServeError::Corrupt { .. } => ErrorKind::BadData,
            ServeError::Events(e) => e.kind(),
            ServeError::Bundle(e) => e.kind(),
            ServeError::Pipeline(e) => e.kind(),
            ServeError::Config(e) => e.kind(),
            ServeError::Internal(_) => ErrorKind::Bug,
        }
    }
}

/// How to run the service.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The service's home: dataset, log, tokens.
    pub data: PathBuf,
    /// The model bundle (`None`: the newest under `data`).
    pub model: Option<PathBuf>,
    /// The configuration.
    pub config: Config,
    /// Where to listen.
    pub listen: SocketAddr,
}

/// The newest bundle under a data directory: `DATA/model` or `DATA/models/*`.
pub fn find_bundle(data: &Path) -> Result<PathBuf, ServeError> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let mut consider = |dir: PathBuf| {
        if let Ok(m) = std::fs::metadata(dir.join("manifest.json")) {
            found.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), dir));
        }
    };
    consider(data.join("model"));
    if let Ok(rd) = std::fs::read_dir(data.join("models")) {
        for e in rd.flatten() {
            consider(e.path());
        }
    }
    found.sort();
    found.pop().map(|f| f.1).ok_or_else(|| {
        ServeError::Usage(format!(
            "no model bundle under {} (looked for model/ and models/*/); pass --model OUT/model \
             from a `vigil run --out OUT`",
            data.display()
        ))
    })
}

/// The running service's shared parts.
#[derive(Debug)]
pub(crate) struct Service {
    pub cfg: Config,
    pub validator: vigil_events::Validator,
    pub state: state::State,
    pub scorer: scoring::Scorer,
    pub intake: intake::Intake,
    pub auth: tokens::Authenticator,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The Prometheus recorder, installed once per process.
fn metrics_handle() -> Result<metrics_exporter_prometheus::PrometheusHandle, ServeError> {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ])
        .map_err(|e| ServeError::Internal(format!("metrics buckets: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    // A second service in the same process reuses the first recorder.
    let _ = metrics::set_global_recorder(recorder);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Run the service until SIGTERM or Ctrl-C; `on_ready` is called with the bound address
/// once the state is rebuilt and requests are scored.
pub async fn serve(
    opts: ServeOptions,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    serve_until(opts, on_ready, shutdown_signal())
        .await
        .map(|_| ())
}

/// [`serve`] until `shutdown` resolves; returns the users held in state at the end.
pub async fn serve_until(
    opts: ServeOptions,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<usize, ServeError> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&opts.data).map_err(|e| ServeError::io(&opts.data, e))?;
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => find_bundle(&opts.data)?,
    };
    let scorer = scoring::Scorer::load(&model)?;
    let auth = tokens::Authenticator::new(TokenStore::open(&opts.data)?)?;
    if auth.count() == 0 {
        tracing::warn!(
            "no API tokens yet: every request but /healthz and /readyz will get 401; create one \
             with `vigil token create --data {} --scope ingest`",
            opts.data.display()
        );
    }
    let data = opts.data.clone();
    let mut serve_cfg = opts.config.serve.clone();
    serve_cfg.recent_messages = serve_cfg
        .recent_messages
        .max(scorer.bundle().manifest.review.recent_prompts);
    let (log, pending) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || intake::open(&data)
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))??;
    let state = state::State::new(&serve_cfg);
    // Rebuild the state from what is stored: the dataset, then the log.
    let (state, log, replayed) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || -> Result<_, ServeError> {
            let ds = vigil_events::Dataset::open(&data)?;
            let mut n = 0u64;
            ds.for_each_batch(&mut |b| {
                let events = event::events_of(b).map_err(vigil_events::EventsError::Internal)?;
                for e in &events {
                    state.apply(e);
                }
                n += events.len() as u64;
                Ok(())
            })?;
            for e in &pending {
                state.apply(e);
            }
            n += pending.len() as u64;
            Ok((state, log, n))
        }
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))??;
    let (intake, writer) = intake::start(log, &serve_cfg)?;
    let mut cfg = opts.config.clone();
    cfg.serve = serve_cfg;
    let validator = vigil_events::Validator {
        max_field_bytes: cfg.ingest.max_field_bytes,
        max_field_lines: cfg.ingest.max_field_lines,
        assume_utc: cfg.ingest.assume_utc_for_naive_timestamps,
    };
    let svc = Arc::new(Service {
        cfg,
        validator,
        state,
        scorer,
        intake,
        auth,
        metrics: metrics_handle()?,
    });
    metrics::gauge!("vigil_model_info", "version" => svc.scorer.version().to_string()).set(1.0);
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: opts.listen,
        source,
    })?;
    tracing::info!(
        %addr,
        model = %model.display(),
        version = svc.scorer.version(),
        users = svc.state.users(),
        events = replayed,
        "ready in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let background = tokio::spawn(http::housekeeping(svc.clone()));
    on_ready(addr);
    let app = http::router(svc.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Listen {
            addr: opts.listen,
            source,
        })?;
    tracing::info!("stopping: flushing the log into the dataset");
    background.abort();
    let _ = background.await;
    let users = svc.state.users();
    // The last handle goes with the service; the writer then flushes and stops.
    drop(svc);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|_| ServeError::Internal("the intake writer panicked".into()))?;
    tracing::info!("stopped");
    Ok(users)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received: no new connections; finishing requests");
}
