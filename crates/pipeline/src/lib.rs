//! Vigil pipeline: runs the stages in data-flow order and records what it did.
//!
//! ingest -> core tables (SQL) -> monitoring metrics and alerts -> user-day features -> PSI
//! drift -> detection -> review queue -> automation (dedup, clustering, entity resolution)
//! -> enforcement -> incidents -> report -> `run.json`. Each stage reads and writes Arrow
//! record batches through the warehouse; files are written only at the edges, each
//! atomically.

pub mod bundle;
mod protect;
mod summary;
mod tables;

pub use bundle::{BundleError, ModelBundle, apply_batch};
pub use protect::{CompiledPolicy, RARE_HARM_FEATURES, RareHarmInfo, suggest_actions};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use vigil_config::Config;
use vigil_events::{Dataset, EventsError, IngestOptions, IngestSummary, ingest_file};
use vigil_monitor::MonitorError;
use vigil_warehouse::{Table, Warehouse, WarehouseError, write_csv, write_parquet, write_sqlite};

/// Errors of a run, by stage.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Environment: the output directory holds a run that did not finish (killed, or
    /// still running): its tables may mix two runs.
    #[error(
        "{out} holds a run that did not finish ({detail}): its outputs may mix two runs; run `vigil run --out {out}` again (or wait for the running one)"
    )]
    Incomplete {
        /// The output directory.
        out: String,
        /// What the marker says (who started it, when).
        detail: String,
    },
    /// Reading or storing events failed.
    #[error(transparent)]
    Events(#[from] EventsError),
    /// A SQL stage failed.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Monitoring failed.
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    /// Detection failed.
    #[error(transparent)]
    Detect(#[from] vigil_detect::DetectError),
    /// The review store failed.
    #[error(transparent)]
    Review(#[from] vigil_review::ReviewError),
    /// User: the ground-truth file is unreadable.
    #[error("ground truth {path}: {message}")]
    GroundTruth {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// User: a setting names something that does not exist.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// User: the enforcement policy's rules do not run over the queue's columns.
    #[error("enforcement rules: {source}")]
    EnforcementRules {
        /// The SQL error.
        source: WarehouseError,
    },
    /// A model bundle could not be used or written.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The rare-harm stage's index or encoder (kind from the Sentinel error).
    #[error("rare-harm stage: {0}")]
    Sentinel(Box<vigil_sentinel::SentinelError>),
    /// Internal: a bug (an Arrow table could not be assembled).
    #[error("internal error: {0}")]
    Internal(String),
    /// Environment (or a wrong path): an output directory could not be read.
    #[error("cannot read output directory {path}: {source}")]
    ReadOutputs {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Environment: an output could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The output.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where detection's models come from.
#[derive(Debug, Clone, Default)]
pub enum Models {
    /// Fit them on this run's data and save the bundle to `OUT/model` (`vigil run`).
    #[default]
    Fit,
    /// Apply a saved bundle without refitting (`vigil score`). Its detection, review and
    /// enforcement settings replace the configuration's.
    Apply {
        /// The loaded bundle.
        bundle: Box<ModelBundle>,
        /// Where it was loaded from.
        dir: PathBuf,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Fit the models, or apply a saved bundle.
    pub models: Models,
    /// Event files to ingest first (may be empty to rerun on stored data).
    pub inputs: Vec<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
    /// Data directory; default `OUT/data`.
    pub data: Option<PathBuf>,
    /// Settings.
    pub config: Config,
    /// Format override and strictness for ingestion.
    pub ingest: IngestOptions,
    /// Optional `ground_truth.csv` (user_id,is_abuser,actor_id) to score entity resolution.
    pub ground_truth: Option<PathBuf>,
    /// The instant an incident is dated (microseconds since the epoch); default: the last
    /// event's timestamp, so reruns on the same data are byte-identical.
    pub as_of_micros: Option<i64>,
    /// The sentence-transformers model the rare-harm stage encodes with (used only when
    /// `[sentinel] index` is set, or the applied bundle was trained with the stage).
    pub sentinel_model: PathBuf,
}

/// Progress events for the caller to display.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// A stage starts.
    StageStart(&'a str),
    /// An input is being ingested: bytes read so far and the file's size.
    IngestBytes {
        /// The file.
        path: &'a Path,
        /// Bytes (or Parquet rows) read.
        done: u64,
        /// File size in bytes.
        total: u64,
    },
    /// The rare-harm stage has scored `done` of `total` distinct message texts.
    Messages {
        /// Texts scored.
        done: usize,
        /// Distinct texts to score.
        total: usize,
    },
    /// A stage ended after `seconds`.
    StageEnd(&'a str, f64),
}

/// The run manifest written to `run.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunManifest {
    /// Vigil's version.
    pub vigil_version: String,
    /// `run` (models fitted, bundle written to `model/`) or `score` (a saved bundle applied).
    pub command: String,
    /// The model bundle written (`run`) or applied (`score`).
    pub model_bundle: String,
    /// The configuration profile.
    pub profile: String,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// The data directory used.
    pub data_dir: String,
    /// One summary per ingested input.
    pub inputs: Vec<IngestSummary>,
    /// Rows quarantined by this run's ingests.
    pub quarantined_rows: u64,
    /// Events in the dataset at the time the tables were built.
    pub events_in_dataset: usize,
    /// Rows of each output table.
    pub row_counts: BTreeMap<String, usize>,
    /// Seconds per stage, in run order. The big table files are written by a background
    /// thread while later stages run: `finish_writes` is the wait for it at the end, and
    /// the last entry, `background_writes`, the seconds that thread was busy (overlapping
    /// the stages before it).
    pub stage_seconds: Vec<(String, f64)>,
    /// Files written, relative to the output directory.
    pub outputs: Vec<String>,
    /// Number of alerts raised.
    pub alerts: usize,
    /// Features whose PSI is over the flag threshold.
    pub drifted_features: Vec<String>,
    /// The model behind `risk_score`.
    pub risk_model: String,
    /// Test-split evaluation of every model.
    pub model_eval: Vec<vigil_detect::ModelEval>,
    /// Cases in the review queue.
    pub queue_size: usize,
    /// Entity-resolution quality per mode (only with ground truth).
    pub er_quality: Vec<(String, vigil_automate::er::ErQuality)>,
    /// Incidents opened.
    pub incidents: usize,
    /// The report page.
    pub report: String,
    /// The rare-harm stage, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rare_harm: Option<protect::RareHarmInfo>,
}

struct Stages<'a> {
    seconds: Vec<(String, f64)>,
    progress: &'a dyn Fn(Progress<'_>),
}

impl Stages<'_> {
    fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Result<T, PipelineError>,
    ) -> Result<T, PipelineError> {
        (self.progress)(Progress::StageStart(name));
        let t = Instant::now();
        let r = f()?;
        let s = t.elapsed().as_secs_f64();
        (self.progress)(Progress::StageEnd(name, s));
        self.seconds.push((name.to_string(), s));
        Ok(r)
    }
}

/// Writes tables into the output directory and remembers what it wrote.
struct Outputs {
    dir: PathBuf,
    written: Vec<String>,
    rows: BTreeMap<String, usize>,
    background: Background,
}

/// A file-writing job run off the stage thread.
type Job = Box<dyn FnOnce() -> Result<(), PipelineError> + Send>;

/// The big table files (CSV, Parquet, SQLite) are written on one background thread while
/// the later stages compute: each writer is single-threaded, and the stages after them
/// leave part of a core idle. Jobs run in the order given; the first error is kept and
/// reported by [`Background::finish`], and later jobs are skipped.
struct Background {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    handle: Option<std::thread::JoinHandle<(f64, Result<(), PipelineError>)>>,
    /// Set by the writer when a job fails, so the stages stop at their next write instead
    /// of computing outputs that will not be written.
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Background {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = failed.clone();
        let handle = std::thread::Builder::new()
            .name("vigil-writer".into())
            .spawn(move || {
                let (mut busy, mut result) = (0.0, Ok(()));
                for job in rx {
                    if result.is_ok() {
                        let t = Instant::now();
                        result = job();
                        busy += t.elapsed().as_secs_f64();
                        if result.is_err() {
                            flag.store(true, std::sync::atomic::Ordering::Release);
                        }
                    }
                }
                (busy, result)
            })
            .ok();
        Self {
            tx: handle.as_ref().map(|_| tx),
            handle,
            failed,
        }
    }

    /// Queue `job`, or run it here when no writer thread could be started. An earlier
    /// job's failure is returned here, stopping the run at its next write.
    fn submit(&mut self, job: Job) -> Result<(), PipelineError> {
        if self.failed.load(std::sync::atomic::Ordering::Acquire) {
            self.finish()?;
        }
        match &self.tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => Ok(()),
                Err(std::sync::mpsc::SendError(job)) => job(),
            },
            None => job(),
        }
    }

    /// Wait for every queued job; the seconds the writer was busy, or the first error.
    fn finish(&mut self) -> Result<f64, PipelineError> {
        self.tx = None;
        match self.handle.take().map(std::thread::JoinHandle::join) {
            None => Ok(0.0),
            Some(Ok((busy, result))) => result.map(|()| busy),
            Some(Err(_)) => Err(PipelineError::Internal(
                "the background file writer panicked".into(),
            )),
        }
    }
}

impl Drop for Background {
    /// A run that stops early still lets queued files finish (each lands atomically).
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// CSV and Parquet twins written at the same time (each writer is single-threaded).
fn write_twins(t: &Table, dir: &Path) -> Result<(), PipelineError> {
    let csv = dir.join(format!("{}.csv", t.name));
    let pq = dir.join(format!("{}.parquet", t.name));
    let (csv_done, pq_done) = std::thread::scope(|s| {
        let pq_thread = s.spawn(|| write_parquet(t, &pq));
        let csv_done = write_csv(t, &csv);
        (csv_done, pq_thread.join())
    });
    csv_done?;
    pq_done.map_err(|_| {
        PipelineError::Internal(format!("the Parquet writer for {} panicked", t.name))
    })??;
    Ok(())
}

impl Outputs {
    /// Write what a stage produced, in its order.
    fn write(&mut self, w: protect::Written) -> Result<(), PipelineError> {
        for o in w.0 {
            match o {
                protect::Output::Csv(t) => self.csv(&t)?,
                protect::Output::CsvAndParquet(t) => self.csv_and_parquet(&t)?,
                protect::Output::Text { name, content } => self.text(&name, &content)?,
            }
        }
        Ok(())
    }
    fn csv(&mut self, t: &Table) -> Result<(), PipelineError> {
        let name = format!("{}.csv", t.name);
        write_csv(t, &self.dir.join(&name))?;
        self.written.push(name);
        self.rows.insert(t.name.clone(), t.num_rows());
        Ok(())
    }
    fn text(&mut self, name: &str, content: &str) -> Result<(), PipelineError> {
        vigil_core::write_atomic(&self.dir.join(name), content.as_bytes())
            .map_err(|(path, source)| PipelineError::Io { path, source })?;
        self.written.push(name.to_string());
        Ok(())
    }
    /// CSV and Parquet twins of `t`, written in the background (the table's batches are
    /// shared, not copied).
    fn csv_and_parquet(&mut self, t: &Table) -> Result<(), PipelineError> {
        let (table, dir) = (t.clone(), self.dir.clone());
        self.background
            .submit(Box::new(move || write_twins(&table, &dir)))?;
        self.written.push(format!("{}.csv", t.name));
        self.written.push(format!("{}.parquet", t.name));
        self.rows.insert(t.name.clone(), t.num_rows());
        Ok(())
    }
    /// The SQLite twin of `tables` (`name` in the output directory), in the background.
    fn sqlite(&mut self, tables: &[Table], name: &str) -> Result<(), PipelineError> {
        let (tables, path) = (tables.to_vec(), self.dir.join(name));
        self.background.submit(Box::new(move || {
            let refs: Vec<&Table> = tables.iter().collect();
            Ok(write_sqlite(&refs, &path)?)
        }))?;
        self.written.push(name.to_string());
        Ok(())
    }
}

/// Refuse, before anything runs, a rule text that is not one SQL expression (each names its
/// key): alert `when`/`details`, enforcement `when`.
fn check_rule_texts(cfg: &Config) -> Result<(), PipelineError> {
    let check = |key: String, text: &str| {
        vigil_warehouse::parse_expression(text)
            .map(|_| ())
            .map_err(|e| PipelineError::Config(format!("{key} is not one SQL expression: {e}")))
    };
    for a in &cfg.monitoring.alerts {
        check(format!("monitoring.alerts `{}`: `when`", a.name), &a.when)?;
        check(
            format!("monitoring.alerts `{}`: `details`", a.name),
            &a.details,
        )?;
    }
    for (i, r) in cfg.enforcement.rules.iter().enumerate() {
        check(
            format!("enforcement.rules[{i}] (action {}): `when`", r.action),
            &r.when,
        )?;
    }
    Ok(())
}

/// Run every stage built so far. `progress` receives stage and ingest progress.
pub fn run(
    opts: &RunOptions,
    progress: &dyn Fn(Progress<'_>),
) -> Result<RunManifest, PipelineError> {
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    check_rule_texts(&opts.config)?;
    // A bundle needing features the built-in tables do not compute is refused before
    // anything is written (with custom `[sql] dir` tables, once they are built).
    if let Models::Apply { bundle, dir } = &opts.models
        && opts.config.sql.dir.is_none()
    {
        let rare =
            bundle.manifest.config.sentinel.index.is_some() || opts.config.sentinel.index.is_some();
        let known: Vec<String> = vigil_config::USER_DAY_FEATURES
            .iter()
            .chain(vigil_config::USER_CONTEXT_FEATURES.iter())
            .chain(protect::RARE_HARM_FEATURES.iter().filter(|_| rare))
            .map(|s| s.to_string())
            .collect();
        bundle::check_features(bundle, dir, &known)?;
    }
    let rare_stage = opts.config.sentinel.index.is_some()
        || matches!(&opts.models, Models::Apply { bundle, .. }
            if bundle.manifest.config.sentinel.index.is_some());
    if rare_stage {
        protect::check_encoder(&opts.sentinel_model)?;
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PipelineError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    // From here until `run.json` is written the directory is marked unfinished, and the old
    // manifest is gone: a killed run never leaves new tables beside an old `run.json`.
    let marker = opts.out.join(INCOMPLETE_MARKER);
    std::fs::write(
        &marker,
        format!(
            "vigil {} started at {started_at} by pid {}\n",
            if matches!(opts.models, Models::Apply { .. }) {
                "score"
            } else {
                "run"
            },
            std::process::id()
        ),
    )
    .map_err(io(&marker))?;
    match std::fs::remove_file(opts.out.join("run.json")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(&opts.out.join("run.json"))(e));
        }
        _ => {}
    }
    let data_dir = opts.data.clone().unwrap_or_else(|| opts.out.join("data"));
    // Applying a bundle: its frozen stages (features and models, review flags and priority,
    // the enforcement policy) replace the configuration's.
    let applied_cfg;
    let cfg = match &opts.models {
        Models::Apply { bundle, .. } => {
            let mut c = opts.config.clone();
            c.detection = bundle.manifest.config.detection.clone();
            c.review = bundle.manifest.review.clone();
            c.enforcement = bundle.manifest.enforcement.clone();
            // A bundle trained with the rare-harm stage needs its features computed as in
            // training: its window, review threshold and index (a run may name the same
            // index elsewhere; another one is refused by fingerprint).
            if c.sentinel.index.is_none() || bundle.manifest.learns_rare_harm() {
                let index = c
                    .sentinel
                    .index
                    .clone()
                    .or_else(|| bundle.manifest.config.sentinel.index.clone());
                c.sentinel = bundle.manifest.config.sentinel.clone();
                c.sentinel.index = index;
            }
            applied_cfg = c;
            &applied_cfg
        }
        Models::Fit
            if opts.config.sentinel.index.is_some() && opts.config.sentinel.model_features =>
        {
            // Both models learn from the rare-harm features too, and with `review_at` a
            // rule put first escalates the user-days the signal queued.
            let mut c = opts.config.clone();
            for f in protect::RARE_HARM_FEATURES {
                for list in [&mut c.detection.gbt_features, &mut c.detection.features] {
                    if !list.iter().any(|g| g == f) {
                        list.push(f.to_string());
                    }
                }
            }
            if c.sentinel.review_at.is_some()
                && !c
                    .enforcement
                    .rules
                    .iter()
                    .any(|r| r.reason == "rare_harm_affinity")
            {
                c.enforcement.rules.insert(
                    0,
                    vigil_config::EnforcementRule {
                        action: "escalate".into(),
                        reason: "rare_harm_affinity".into(),
                        when: "flag_rare_harm = 1".into(),
                    },
                );
            }
            applied_cfg = c;
            &applied_cfg
        }
        Models::Fit => &opts.config,
    };
    let mut stages = Stages {
        seconds: Vec::new(),
        progress,
    };
    let mut out = Outputs {
        dir: opts.out.clone(),
        written: Vec::new(),
        rows: BTreeMap::new(),
        background: Background::start(),
    };

    let inputs = stages.run("ingest", || {
        let ds = Dataset::open(&data_dir)?;
        let mut summaries = Vec::new();
        if opts.inputs.is_empty() {
            // Nothing to ingest: do not read every stored event id just to compare with none.
            return Ok(summaries);
        }
        let lock = ds.lock()?;
        let mut known = ds.known_event_keys()?;
        for path in &opts.inputs {
            let total = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let tick = |done: u64| progress(Progress::IngestBytes { path, done, total });
            summaries.push(ingest_file(
                &ds,
                &lock,
                &mut known,
                path,
                &opts.ingest,
                &tick,
            )?);
        }
        Ok(summaries)
    })?;

    let mut wh = Warehouse::open(&data_dir, cfg.sql.dir.as_deref())?;
    wh.set_user_timeout(cfg.sql.statement_timeout());
    let events_in_dataset = wh
        .query("count", "SELECT COUNT(*) AS n FROM events")
        .ok()
        .and_then(|t| vigil_warehouse::column_f64(&t, "n").ok())
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0) as usize;

    let core = stages.run("core_tables", || {
        // core_users and core_day_metrics read core_user_day and user_keys (the distinct
        // identifier combinations, also used by detection) instead of rescanning the events.
        let user_day = wh.build("core_user_day")?;
        // Sorted by (day, user_id) as its SQL orders it: user_day_features, which keeps that
        // order, then needs no sort of its own.
        if !wh.register_sorted(&user_day, &["day", "user_id"])? {
            tracing::debug!("core_user_day is not sorted by (day, user_id)");
        }
        wh.build("user_keys")?;
        let users = wh.build("core_users")?;
        let day = wh.build("core_day_metrics")?;
        Ok([users, user_day, day])
    })?;

    stages.run("write_core_tables", || {
        for t in &core {
            out.csv_and_parquet(t)?;
        }
        out.sqlite(&core, "sqlite.db")
    })?;

    let (alerts, metrics) = stages.run("monitoring", || {
        let metrics = wh.build("monitoring_metrics")?;
        out.csv(&metrics)?;
        let alerts = vigil_monitor::evaluate_alerts(
            &wh,
            &metrics,
            &cfg.monitoring.alerts,
            &cfg.monitoring.robust_z,
        )?;
        let table = vigil_monitor::alerts_table(&alerts);
        out.csv(&table)?;
        Ok((alerts, metrics))
    })?;

    let rare_index = cfg.sentinel.index.clone();
    let features = stages.run("features", || {
        let f = wh.build("user_day_features")?;
        if rare_index.is_none() {
            out.csv_and_parquet(&f)?;
        }
        Ok(f)
    })?;
    let (features, rare_harm) = match &rare_index {
        None => (features, None),
        Some(index) => stages.run("rare_harm", || {
            let mut w = protect::Written::default();
            let tick = |done: usize, total: usize| {
                progress(Progress::Messages { done, total });
            };
            // Applying a bundle that learned the features: its scoring (cut or exact) and
            // its index's fingerprint.
            let trained = match &opts.models {
                Models::Apply { bundle, .. } if bundle.manifest.learns_rare_harm() => {
                    bundle.manifest.rare_harm.as_ref()
                }
                _ => None,
            };
            let source = protect::RareHarmSource {
                index,
                model: &opts.sentinel_model,
                trained,
            };
            let (f, info) = protect::rare_harm(&wh, &features, cfg, &source, &tick, &mut w)?;
            w.csv_and_parquet(&f)?;
            out.write(w)?;
            Ok((f, Some(info)))
        })?,
    };

    let drift = stages.run("drift", || {
        let d = vigil_monitor::compute_drift(&features, &cfg.drift)?;
        out.csv(&vigil_monitor::drift_to_table(&d))?;
        Ok(d)
    })?;

    let ground_truth = opts
        .ground_truth
        .as_deref()
        .map(protect::read_ground_truth)
        .transpose()?;
    let with = match &opts.models {
        Models::Fit => protect::DetectWith::Fit,
        Models::Apply { bundle, dir } => protect::DetectWith::Apply(bundle, dir),
    };
    // Each stage hands its tables to a collector; only `out` writes them.
    let (scored, mut fitted) = stages.run("detection", || {
        let mut w = protect::Written::default();
        let r = protect::detection(&wh, &features, cfg, with, events_in_dataset, &mut w)?;
        out.write(w)?;
        Ok(r)
    })?;
    if let Some(b) = fitted.as_mut()
        && b.manifest.learns_rare_harm()
    {
        b.manifest.rare_harm = rare_harm.clone();
    }
    let queue = stages.run("review_queue", || {
        let mut w = protect::Written::default();
        let r = protect::review_queue(&wh, &scored, cfg, &mut w)?;
        out.write(w)?;
        Ok(r)
    })?;
    let automation = stages.run("automation", || {
        let mut w = protect::Written::default();
        let r = protect::automation(&wh, &scored, &queue, cfg, ground_truth.as_ref(), &mut w)?;
        out.write(w)?;
        Ok(r)
    })?;
    let actions = stages.run("enforcement", || {
        let mut w = protect::Written::default();
        let r = protect::enforcement(&scored, &queue, cfg, &mut w)?;
        out.write(w)?;
        Ok(r)
    })?;
    let text_signal = stages.run("text_signal", || {
        let mut w = protect::Written::default();
        let r = protect::text_signal(
            &wh,
            &scored,
            &queue,
            &actions.action,
            cfg,
            ground_truth.as_ref(),
            &mut w,
        )?;
        out.write(w)?;
        Ok(r)
    })?;
    let incident = stages.run("incidents", || {
        let mut w = protect::Written::default();
        let r = protect::incidents(&wh, &alerts, opts.as_of_micros, &mut w)?;
        out.write(w)?;
        Ok(r)
    })?;
    stages.run("review_store", || {
        let cases: Vec<vigil_review::Case> = queue
            .entries
            .iter()
            .enumerate()
            .map(|(k, e)| {
                let f = e.flags;
                let names: Vec<&str> = [
                    (f.ml, "ml"),
                    (f.heuristic, "heuristic"),
                    (f.uncertain, "uncertain"),
                    (f.rare_harm, "rare_harm"),
                ]
                .iter()
                .filter(|x| x.0)
                .map(|x| x.1)
                .collect();
                vigil_review::Case {
                    review_id: vigil_review::case_id(scored.user.get(e.row), scored.day.get(e.row)),
                    queue_pos: Some(k),
                    day: scored.day.get(e.row).to_string(),
                    user_id: scored.user.get(e.row).to_string(),
                    risk_score: scored.risk[e.row],
                    uncertainty: scored.uncertainty[e.row],
                    priority: e.priority,
                    recent_prompts: queue.recent_prompts[k].clone(),
                    suggested_action: actions.action[k].clone(),
                    suggested_reason: actions.reason[k].clone(),
                    flags: names.join(","),
                }
            })
            .collect();
        let mut store = vigil_review::ReviewStore::create(&opts.out.join("review.db"))?;
        store.upsert_cases(&cases)?;
        out.written.push("review.db".into());
        Ok(())
    })?;
    let day_metrics = &core[2];
    stages.run("report", || {
        let subtitle = {
            let days = vigil_warehouse::column_text(day_metrics, "day").unwrap_or_default();
            format!(
                "{} events, {} to {} (UTC); risk model {}; profile {}; Vigil {}",
                events_in_dataset,
                days.first().map_or("?", String::as_str),
                days.last().map_or("?", String::as_str),
                scored.model,
                format!("{:?}", cfg.profile).to_lowercase(),
                env!("CARGO_PKG_VERSION")
            )
        };
        let report = summary::build(&summary::SummaryInputs {
            wh: &wh,
            day_metrics,
            monitoring: &metrics,
            alerts: &alerts,
            drift: &drift,
            scored: &scored,
            queue: &queue,
            automation: &automation,
            actions: &actions,
            incidents: usize::from(incident.is_some()),
            rare_harm: rare_harm.as_ref(),
            ground_truth: ground_truth.as_ref(),
            text_signal: text_signal.as_ref(),
            subtitle,
        })?;
        let rows = &report.summary;
        out.csv(&tables::table(
            "executive_summary",
            vec![
                (
                    "Section",
                    tables::Col::Str(rows.iter().map(|r| r.section.clone()).collect()),
                ),
                (
                    "Metric",
                    tables::Col::Str(rows.iter().map(|r| r.metric.clone()).collect()),
                ),
                (
                    "Value",
                    tables::Col::Str(rows.iter().map(|r| r.value.clone()).collect()),
                ),
            ],
        )?)?;
        out.text("summary.md", &vigil_report::render_markdown(&report))?;
        out.text("summary.json", &vigil_report::render_json(&report))?;
        out.text("report.html", &vigil_report::render_html(&report))?;
        Ok(())
    })?;

    let bundle_dir = match &opts.models {
        Models::Fit => opts.out.join("model"),
        Models::Apply { dir, .. } => dir.clone(),
    };
    if let Some(bundle) = &fitted {
        stages.run("model_bundle", || {
            bundle.save(&bundle_dir)?;
            for f in ["manifest.json", "trees.json", "model_card.md"] {
                if bundle_dir.join(f).exists() {
                    out.written.push(format!("model/{f}"));
                }
            }
            Ok(())
        })?;
    }

    // The files queued for the background writer land before the manifest names them.
    let busy = stages.run("finish_writes", || out.background.finish())?;
    stages.seconds.push(("background_writes".into(), busy));

    let manifest = RunManifest {
        vigil_version: env!("CARGO_PKG_VERSION").to_string(),
        command: match opts.models {
            Models::Fit => "run",
            Models::Apply { .. } => "score",
        }
        .into(),
        model_bundle: bundle_dir.display().to_string(),
        profile: format!("{:?}", cfg.profile).to_lowercase(),
        started_at,
        data_dir: data_dir.display().to_string(),
        quarantined_rows: inputs.iter().map(|s| s.quarantined).sum(),
        inputs,
        events_in_dataset,
        row_counts: out.rows.clone(),
        stage_seconds: stages.seconds.clone(),
        outputs: {
            let mut w = out.written.clone();
            w.push("run.json".into());
            w
        },
        alerts: alerts.len(),
        drifted_features: drift
            .iter()
            .filter(|d| d.drift_flag == 1)
            .map(|d| d.feature.clone())
            .collect(),
        risk_model: scored.model.clone(),
        model_eval: scored
            .detection
            .as_ref()
            .map(|d| d.evals.clone())
            .unwrap_or_default(),
        queue_size: queue.entries.len(),
        er_quality: automation.quality.clone(),
        incidents: usize::from(incident.is_some()),
        rare_harm: rare_harm.clone(),
        report: opts.out.join("report.html").display().to_string(),
    };
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    vigil_core::write_atomic(&opts.out.join("run.json"), text.as_bytes())
        .map_err(|(path, source)| PipelineError::Io { path, source })?;
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    Ok(manifest)
}

/// Ingest options from the configuration's `[ingest]` limits, a forced format and
/// strictness (one mapping for every front end).
pub fn ingest_options(
    config: &Config,
    format: Option<vigil_events::Format>,
    strict: bool,
) -> IngestOptions {
    IngestOptions {
        format,
        strict,
        validator: vigil_events::Validator {
            max_field_bytes: config.ingest.max_field_bytes,
            max_field_lines: config.ingest.max_field_lines,
            assume_utc: config.ingest.assume_utc_for_naive_timestamps,
        },
        batch_rows: config.ingest.batch_rows,
    }
}

/// A read-only SQL session over stored events (`data`) and, with `out`, a finished run's
/// outputs: every Parquet output, then each CSV output without a Parquet twin (monitoring
/// metrics, alerts, drift, the review queue, ...), each under its file name. A run that did
/// not finish is refused; `timeout` bounds each user query.
pub fn open_outputs(
    out: Option<&Path>,
    data: &Path,
    timeout: Option<std::time::Duration>,
) -> Result<vigil_warehouse::Warehouse, PipelineError> {
    if let Some(out) = out {
        check_complete(out)?;
    }
    let mut wh = vigil_warehouse::Warehouse::open(data, None)?;
    wh.set_user_timeout(timeout);
    let Some(out) = out else { return Ok(wh) };
    let entries = std::fs::read_dir(out).map_err(|source| PipelineError::ReadOutputs {
        path: out.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for ext in ["parquet", "csv"] {
        for p in files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == ext))
        {
            let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if ext == "parquet" {
                wh.register_parquet_file(stem, p)?;
            } else if !p.with_extension("parquet").exists()
                && let Err(e) = wh.register_csv_file(stem, p)
            {
                tracing::warn!("{} is not queryable: {e}", p.display());
            }
        }
    }
    Ok(wh)
}

/// The file that marks an output directory whose run has not finished.
pub const INCOMPLETE_MARKER: &str = ".run-incomplete";

/// Readers of a run's outputs call this first: a directory whose run did not finish is
/// refused, naming who started it and when.
pub fn check_complete(out: &Path) -> Result<(), PipelineError> {
    match std::fs::read_to_string(out.join(INCOMPLETE_MARKER)) {
        Ok(detail) => Err(PipelineError::Incomplete {
            out: out.display().to_string(),
            detail: detail.trim().to_string(),
        }),
        Err(_) => Ok(()),
    }
}

impl vigil_core::Classify for PipelineError {
    fn kind(&self) -> vigil_core::ErrorKind {
        use vigil_core::ErrorKind as K;
        match self {
            PipelineError::Config(_) | PipelineError::EnforcementRules { .. } => K::Usage,
            PipelineError::Events(e) => e.kind(),
            PipelineError::Warehouse(e) => e.kind(),
            PipelineError::Monitor(e) => e.kind(),
            PipelineError::Detect(e) => e.kind(),
            PipelineError::Review(e) => e.kind(),
            PipelineError::Bundle(e) => e.kind(),
            PipelineError::Sentinel(e) => e.kind(),
            PipelineError::Incomplete { .. }
            | PipelineError::GroundTruth { .. }
            | PipelineError::Io { .. }
            | PipelineError::ReadOutputs { .. } => K::Environment,
            PipelineError::Internal(_) => K::Bug,
        }
    }
}
