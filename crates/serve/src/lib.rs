//! `vigil serve`: the live detection service.
//!
//! Events come in over HTTP, pass the same validator as `vigil ingest`, are made durable in
//! a group-committed SQLite log ([`intake`]) and moved from there into the same Parquet
//! dataset `vigil run` and `vigil score` read. Each accepted event updates its user's state
//! ([`state`]) and the user-day is scored with the model bundle's own batch code
//! ([`scoring`]). Automated actions pass the safety caps ([`actions`]) and go out, with
//! cap alerts, as signed webhooks ([`webhook`]). Tokens with scopes guard every endpoint
//! but health ([`tokens`]).

pub mod actions;
pub mod bench;
pub mod cases;
mod console_view;
pub mod event;
mod http;
pub mod intake;
pub mod monitor;
pub mod rare;
pub mod scoring;
pub mod state;
pub mod tokens;
pub mod webhook;

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
    /// The review store.
    #[error(transparent)]
    Review(#[from] vigil_review::ReviewError),
    /// The reviewer console.
    #[error(transparent)]
    Console(#[from] vigil_console::ConsoleError),
    /// The Sentinel index or encoder.
    #[error(transparent)]
    Sentinel(Box<vigil_sentinel::SentinelError>),
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
            ServeError::Review(e) => e.kind(),
            ServeError::Console(e) => e.kind(),
            ServeError::Sentinel(e) => e.kind(),
            ServeError::Internal(_) => ErrorKind::Bug,
        }
    }
}

/// Events held while the state is rebuilt before their chat messages are scored together.
const REBUILD_EVENTS: usize = 200_000;

/// The rare-harm score of each event's chat message while the state is rebuilt (all `None`
/// without an index).
fn rebuild_scores(
    rare: Option<&rare::RareHarm>,
    events: &[event::Event],
) -> Result<Vec<Option<f64>>, ServeError> {
    match rare {
        None => Ok(vec![None; events.len()]),
        Some(r) => {
            let prompts: Vec<Option<&str>> = events.iter().map(rare::chat_prompt).collect();
            r.prompt_scores(&prompts, true)
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
    /// The file `config` was read from, re-read on reload (`None`: the defaults).
    pub config_path: Option<PathBuf>,
    /// The Sentinel index and encoder for rare-harm affinity (`None`: no affinity).
    pub rare_harm: Option<rare::RareHarmOptions>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The audit key the console's decisions are authenticated with (`None`: the default
    /// path, as `vigil review decide`).
    pub audit_key: Option<PathBuf>,
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

/// What a reload swaps at once: the bundle (model, flags, enforcement rules) and the
/// configuration's live settings, with the versions every decision records.
#[derive(Debug)]
pub(crate) struct Live {
    pub scorer: scoring::Scorer,
    pub cfg: Config,
    /// SHA-256 (first 8 bytes, hex) of the effective configuration.
    pub config_version: String,
}

/// The hash of a configuration as every decision records it.
fn config_version(cfg: &Config) -> String {
    use sha2::Digest;
    let text = serde_json::to_vec(cfg).unwrap_or_default();
    sha2::Sha256::digest(&text)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The running service's shared parts.
#[derive(Debug)]
pub(crate) struct Service {
    /// The configuration the service started with (intake, state and webhook settings,
    /// which a reload does not change).
    pub cfg: Config,
    pub validator: vigil_events::Validator,
    pub state: state::State,
    live: std::sync::RwLock<Arc<Live>>,
    pub intake: intake::Intake,
    pub auth: tokens::Authenticator,
    pub actions: actions::Actions,
    pub webhooks: webhook::Webhooks,
    pub cases: cases::Cases,
    pub rare: Option<Arc<rare::RareHarm>>,
    pub monitor: monitor::Monitor,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Where a reload reads from.
    model_arg: Option<PathBuf>,
    config_path: Option<PathBuf>,
    data: PathBuf,
    reloading: tokio::sync::Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// The bundle now in use.
    pub model: PathBuf,
    /// Its version hash (before, now).
    pub model_version: (String, String),
    /// The configuration's version hash (before, now).
    pub config_version: (String, String),
    /// Settings that changed in the file but take effect only at the next start.
    pub needs_restart: Vec<String>,
}

impl Service {
    /// The bundle and settings in force now (one request uses one snapshot throughout).
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-read the configuration file and the bundle and swap them in at once; on any
    /// error nothing changes and the old ones keep running.
    pub(crate) async fn reload(self: &Arc<Self>) -> Result<Reloaded, ServeError> {
        let _one = self.reloading.lock().await;
        let me = self.clone();
        let (live, model) = tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
            let cfg = match &me.config_path {
                Some(p) => Config::load(p)?,
                None => me.cfg.clone(),
            };
            let model = match &me.model_arg {
                Some(m) => m.clone(),
                None => find_bundle(&me.data)?,
            };
            let scorer = scoring::Scorer::load(&model, me.rare.as_ref())?;
            if let Some(w) = scorer.rare_window()
                && w > me.state.rare_window()
            {
                return Err(ServeError::Usage(format!(
                    "the model bundle {} needs {w} days of messages behind each day (its \
                     rare-harm window); the running service keeps {}: restart the service to \
                     serve it",
                    model.display(),
                    me.state.rare_window()
                )));
            }
            // The alert rules must run over the live metrics before they replace the old.
            monitor::evaluate(
                &me.state.day_totals(),
                &cfg.monitoring,
                &me.monitor.scratch(),
            )?;
            Ok((
                Live {
                    scorer,
                    config_version: config_version(&cfg),
                    cfg,
                },
                model,
            ))
        })
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))??;
        let mut needs_restart = Vec::new();
        let (old_s, new_s) = (&self.cfg.serve, &live.cfg.serve);
        for (key, changed) in [
            (
                "serve.max_body_bytes",
                old_s.max_body_bytes != new_s.max_body_bytes,
            ),
            (
                "serve.max_events_per_request",
                old_s.max_events_per_request != new_s.max_events_per_request,
            ),
            (
                "serve.group_commit_events",
                old_s.group_commit_events != new_s.group_commit_events,
            ),
            (
                "serve.intake_queue",
                old_s.intake_queue != new_s.intake_queue,
            ),
            (
                "serve.flush_interval_secs",
                old_s.flush_interval_secs != new_s.flush_interval_secs,
            ),
            (
                "serve.flush_events",
                old_s.flush_events != new_s.flush_events,
            ),
            ("serve.state_days", old_s.state_days != new_s.state_days),
            (
                "serve.idle_evict_days",
                old_s.idle_evict_days != new_s.idle_evict_days,
            ),
            ("serve.webhooks", old_s.webhooks != new_s.webhooks),
            (
                "serve.sentinel_cache_texts",
                old_s.sentinel_cache_texts != new_s.sentinel_cache_texts,
            ),
            (
                "serve.recent_messages",
                old_s.recent_messages != new_s.recent_messages,
            ),
            ("ingest", self.cfg.ingest != live.cfg.ingest),
            ("console", self.cfg.console != live.cfg.console),
        ] {
            if changed {
                needs_restart.push(key.to_string());
            }
        }
        let old = self.live();
        let report = Reloaded {
            model,
            model_version: (
                old.scorer.version().to_string(),
                live.scorer.version().to_string(),
            ),
            config_version: (old.config_version.clone(), live.config_version.clone()),
            needs_restart,
        };
        self.actions.set_limits(&live.cfg.serve);
        metrics::gauge!("vigil_model_info", "version" => old.scorer.version().to_string()).set(0.0);
        metrics::gauge!("vigil_model_info", "version" => live.scorer.version().to_string())
            .set(1.0);
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(live);
        Ok(report)
    }
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
    let bundle = vigil_pipeline::ModelBundle::load(&model).map_err(ServeError::Bundle)?;
    // A bundle trained through the rare-harm cascade fixes how messages are screened.
    let cut = scoring::Scorer::trained_cut(&bundle);
    let rare = match &opts.rare_harm {
        Some(r) => {
            let r = r.clone();
            let loaded = tokio::task::spawn_blocking(move || rare::RareHarm::load(&r, cut))
                .await
                .map_err(|e| ServeError::Internal(e.to_string()))??;
            tracing::info!(
                index = loaded.location(),
                version = loaded.version(),
                "Sentinel index loaded"
            );
            metrics::gauge!("vigil_sentinel_index_info", "version" => loaded.version().to_string())
                .set(1.0);
            loaded.open_store(&opts.data);
            Some(Arc::new(loaded))
        }
        None => None,
    };
    let scorer = scoring::Scorer::from_bundle(&model, bundle, rare.as_ref())?;
    tracing::info!(model = %model.display(), version = scorer.version(), "model bundle loaded");
    // The audit key is checked (or made) before the long state rebuild.
    let audit_key = match opts
        .audit_key
        .clone()
        .or_else(vigil_review::default_key_path)
    {
        Some(p) => vigil_review::AuditKey::load_or_create(&p)?,
        None => {
            return Err(ServeError::Usage(
                "no audit key path: set --audit-key or VIGIL_AUDIT_KEY (HOME is not set)".into(),
            ));
        }
    };
    // Hooks are checked (URL, secret in the environment) before the long state rebuild.
    let webhooks = webhook::Webhooks::start(&opts.config.serve.webhooks, &opts.data)?;
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
    let rare_window = scorer.rare_window();
    let (log, pending) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || intake::open(&data)
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))??;
    let mut state = state::State::new(&serve_cfg);
    if let Some(w) = rare_window {
        state = state.with_rare_window(w);
    }
    // Rebuild the state from what is stored: the dataset, then the log (each chat message
    // scored again when the service scores messages; repeated texts come from the cache).
    let rare_for_rebuild = rare.clone();
    let (state, log, replayed) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || -> Result<_, ServeError> {
            let ds = vigil_events::Dataset::open(&data)?;
            let rare = rare_for_rebuild.as_deref();
            // With an index the events wait in `held` until enough chat texts have gathered
            // to score them in one call (the cascade and the encoder work in large batches),
            // then are applied in their stored order.
            let mut held: Vec<event::Event> = Vec::new();
            let fold = |held: &mut Vec<event::Event>| -> Result<(), ServeError> {
                for (e, s) in held.iter().zip(rebuild_scores(rare, held)?) {
                    state.apply(e, s);
                }
                held.clear();
                Ok(())
            };
            let mut n = 0u64;
            let mut failed = None;
            ds.for_each_batch(&mut |b| {
                let events = event::events_of(b).map_err(vigil_events::EventsError::Internal)?;
                n += events.len() as u64;
                held.extend(events);
                let hold = if rare.is_some() { REBUILD_EVENTS } else { 1 };
                if held.len() >= hold
                    && let Err(err) = fold(&mut held)
                {
                    failed = Some(err);
                    return Err(vigil_events::EventsError::Internal(
                        "rare-harm scoring failed".into(),
                    ));
                }
                Ok(())
            })
            .map_err(|e| failed.take().unwrap_or(ServeError::from(e)))?;
            held.extend(pending.iter().cloned());
            fold(&mut held)?;
            // The next start finds these scores without the encoder (a cache: a failure to
            // write it costs only time at the next start).
            if let Some(r) = rare
                && let Err(e) = r.save_store()
            {
                tracing::warn!("rare-harm scores not kept: {e}");
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
    let (cases, case_writer) = cases::start(&data)?;
    let live = Live {
        scorer,
        config_version: config_version(&cfg),
        cfg: cfg.clone(),
    };
    let svc = Arc::new(Service {
        actions: actions::Actions::new(&cfg.serve),
        webhooks,
        cfg,
        validator,
        state,
        live: std::sync::RwLock::new(Arc::new(live)),
        intake,
        auth,
        cases,
        rare,
        monitor: monitor::Monitor::open(&data),
        metrics: metrics_handle()?,
        model_arg: opts.model.clone(),
        config_path: opts.config_path.clone(),
        data: data.clone(),
        reloading: tokio::sync::Mutex::new(()),
    });
    // Review cases and the safety caps' counters are derived from the stored events again.
    let derived = tokio::task::spawn_blocking({
        let svc = svc.clone();
        move || {
            // The alert rules must run (a bad one stops the start, naming it).
            monitor::evaluate(
                &svc.state.day_totals(),
                &svc.cfg.monitoring,
                &svc.monitor.scratch(),
            )?;
            http::derive_all(&svc)
        }
    })
    .await
    .map_err(|e| ServeError::Internal(e.to_string()))??;
    let version = svc.live().scorer.version().to_string();
    metrics::gauge!("vigil_model_info", "version" => version.clone()).set(1.0);
    // The console is ready before the address is announced (a SIGTERM right after the
    // announcement must find the shutdown handler already waiting).
    let console = Arc::new(vigil_console::Console::new(
        &data,
        &cases::store_path(&data),
        audit_key,
        svc.cfg.console.clone(),
        svc.cfg.automation.clone(),
        Some(Arc::new(console_view::View(svc.clone()))),
    )?);
    if console.accounts().count()? == 0 {
        tracing::warn!(
            "no console accounts yet: add one with `vigil user add NAME --data {} --role admin`",
            data.display()
        );
    }
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
        version = %version,
        users = svc.state.users(),
        events = replayed,
        user_days_scored = derived,
        "ready in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let background = tokio::spawn(http::housekeeping(svc.clone()));
    let hangups = tokio::spawn(reload_on_hangup(svc.clone()));
    let alerting = tokio::spawn(http::alerting(svc.clone()));
    on_ready(addr);
    let app = http::router(svc.clone()).merge(vigil_console::router(console));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Listen {
            addr: opts.listen,
            source,
        })?;
    tracing::info!("stopping: flushing the log into the dataset");
    background.abort();
    hangups.abort();
    alerting.abort();
    let _ = alerting.await;
    let _ = background.await;
    let _ = hangups.await;
    let users = svc.state.users();
    if let Some(r) = svc.rare.clone() {
        match tokio::task::spawn_blocking(move || r.save_store()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("rare-harm scores not kept: {e}"),
            Err(e) => tracing::warn!("rare-harm scores not kept: {e}"),
        }
    }
    svc.webhooks.shutdown().await;
    tokio::task::spawn_blocking(move || case_writer.stop())
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    // The last handle goes with the service; the writer then flushes and stops.
    drop(svc);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|_| ServeError::Internal("the intake writer panicked".into()))?;
    tracing::info!("stopped");
    Ok(users)
}

/// Reload the configuration and bundle on every SIGHUP (the reason is logged when refused).
async fn reload_on_hangup(svc: Arc<Service>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /v1/admin/reload");
            return;
        };
        while hup.recv().await.is_some() {
            http::log_reload(&svc.reload().await);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = svc;
    }
}

/// SIGTERM or Ctrl-C. The SIGTERM handler is installed when this is called, not when the
/// future is first polled: a SIGTERM right after "listening on" must not kill the process
/// before the server starts waiting for it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
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
}
