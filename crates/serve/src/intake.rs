//! Durable intake: a SQLite write-ahead log with group commit, flushed into the Parquet
//! dataset exactly once.
//!
//! One writer thread owns `DATA/intake.db`. Requests send it their accepted and rejected
//! events; it takes every request waiting (up to `group_commit_events` events), writes them
//! in one transaction and commits (WAL mode, `synchronous = FULL`: the commit is on disk when
//! it returns), then answers each request. An event is acknowledged only after that commit.
//! Duplicates are found against the fingerprints of every stored and logged event, so a
//! retried request never counts twice.
//!
//! Every `flush_interval_secs` (or `flush_events` events) the writer moves the logged events
//! into a Parquet part and the rejected ones into the quarantine, through the dataset's own
//! commit (`Dataset::commit_ingest`), whose `ingest_log.jsonl` line records the last log
//! sequence number it holds. Only then are the rows deleted from the log. A crash between
//! the two is resolved at the next start: rows the ingest log already names are deleted,
//! never flushed twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tokio::sync::oneshot;
use vigil_config::ServeConfig;
use vigil_events::Dataset;
use vigil_events::dataset::{KeySet, event_key};
use vigil_events::validate::EventBatchBuilder;

use crate::ServeError;
use crate::event::Event;

/// A refused event, kept for the quarantine.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Where it came from (`vigil serve <request id>`).
    pub source: String,
    /// Its position in the request, from 1.
    pub line: u64,
    /// The validator's reason.
    pub reason: String,
    /// The raw text, escaped as the quarantine keeps it.
    pub raw: String,
}

/// A write request waiting in a group: its events, rejections, and whom to answer.
type Waiting = (
    Vec<Event>,
    Vec<Rejected>,
    oneshot::Sender<Result<Stored, String>>,
);

/// What the log did with each event of a request: `true` = newly stored, `false` = a
/// duplicate of a stored event.
pub type Stored = Vec<bool>;

enum Job {
    Write {
        events: Vec<Event>,
        rejected: Vec<Rejected>,
        reply: oneshot::Sender<Result<Stored, String>>,
    },
    Flush(oneshot::Sender<Result<usize, String>>),
}

/// The handle requests use to reach the writer thread.
#[derive(Clone)]
pub struct Intake {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("depth", &self.depth.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a write was not done.
#[derive(Debug)]
pub enum WriteError {
    /// Too many requests are waiting: answer 503 with Retry-After.
    Saturated,
    /// The writer failed (disk full, I/O error): the events are not durable.
    Failed(String),
}

impl Intake {
    /// Log `events` (and `rejected`) durably; resolves once committed.
    pub async fn write(
        &self,
        events: Vec<Event>,
        rejected: Vec<Rejected>,
    ) -> Result<Stored, WriteError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job::Write {
            events,
            rejected,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(WriteError::Saturated),
            Err(TrySendError::Disconnected(_)) => {
                return Err(WriteError::Failed("the intake writer has stopped".into()));
            }
        }
        self.depth.fetch_add(1, Ordering::Relaxed);
        let r = rx.await;
        match r {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(e)) => Err(WriteError::Failed(e)),
            Err(_) => Err(WriteError::Failed("the intake writer has stopped".into())),
        }
    }

    /// Move everything logged into the dataset now; returns the events moved.
    pub async fn flush(&self) -> Result<usize, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job::Flush(reply)).map_err(|e| match e {
            TrySendError::Full(_) => {
                "the intake log is saturated; retry the flush later".to_string()
            }
            TrySendError::Disconnected(_) => "the intake writer has stopped".to_string(),
        })?;
        rx.await
            .map_err(|_| "the intake writer has stopped".to_string())?
    }

    /// Requests waiting for the writer.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// False once the writer thread has stopped.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

/// The log file of a data directory.
pub fn log_path(data: &Path) -> PathBuf {
    data.join("intake.db")
}

/// Open the log, settle it against the dataset, and return it with the events it still
/// holds (logged but not yet in the dataset), in log order.
pub(crate) fn open(data: &Path) -> Result<(Log, Vec<Event>), ServeError> {
    let ds = Dataset::open(data).map_err(ServeError::Events)?;
    let path = log_path(data);
    let conn = Connection::open(&path).map_err(|e| ServeError::store(&path, e))?;
    let sql = |e| ServeError::store(&path, e);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS pending (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             event_id TEXT NOT NULL UNIQUE, ts INTEGER NOT NULL, user_id TEXT NOT NULL,
             ip TEXT NOT NULL, device_id TEXT NOT NULL, payment_id TEXT, surface TEXT NOT NULL,
             product TEXT NOT NULL, event_type TEXT NOT NULL, prompt TEXT NOT NULL,
             tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
             latency_ms INTEGER NOT NULL, blocked INTEGER NOT NULL, warned INTEGER NOT NULL,
             is_abuse_gt INTEGER);
         CREATE TABLE IF NOT EXISTS rejected (
             seq INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL,
             line INTEGER NOT NULL, reason TEXT NOT NULL, raw TEXT NOT NULL);",
    )
    .map_err(sql)?;
    let id: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |r| {
            r.get(0)
        })
        .ok();
    let log_id = match id {
        Some(id) => id,
        None => {
            let id = crate::tokens::random_hex(16);
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('log_id', ?1)",
                params![id],
            )
            .map_err(sql)?;
            id
        }
    };
    let log = Log {
        conn,
        path,
        ds,
        log_id,
        parts_seen: Vec::new(),
        others: KeySet::default(),
    };
    log.settle()?;
    let pending = log.pending_events(i64::MAX)?;
    Ok((log, pending.1))
}

/// The writer's side: the SQLite log and the dataset it flushes into.
pub(crate) struct Log {
    conn: Connection,
    path: PathBuf,
    ds: Dataset,
    log_id: String,
    /// Dataset parts already folded into the known event keys.
    parts_seen: Vec<PathBuf>,
    /// Keys of the events other writers (`vigil ingest`) stored since the start: a logged
    /// event among them is not stored again, whenever it was logged.
    others: KeySet,
}

/// The sequence numbers an ingest-log line of this log says were flushed.
#[derive(Debug, Default, serde::Deserialize)]
struct FlushLine {
    #[serde(default)]
    serve_log: String,
    #[serde(default)]
    events_through: i64,
    #[serde(default)]
    rejected_through: i64,
}

impl Log {
    fn sql(&self) -> impl Fn(rusqlite::Error) -> ServeError + '_ {
        |e| ServeError::store(&self.path, e)
    }

    /// Delete the rows an earlier run flushed into the dataset but did not get to delete.
    fn settle(&self) -> Result<(), ServeError> {
        Dataset::settle(self.ds.root()).map_err(ServeError::Events)?;
        let log = self.ds.ingest_log_path();
        let text = match std::fs::read_to_string(&log) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ServeError::io(&log, e)),
        };
        let (mut ev, mut rej) = (0, 0);
        for line in text.lines() {
            if let Ok(f) = serde_json::from_str::<FlushLine>(line)
                && f.serve_log == self.log_id
            {
                ev = ev.max(f.events_through);
                rej = rej.max(f.rejected_through);
            }
        }
        self.forget(ev, rej)
    }

    fn forget(&self, events_through: i64, rejected_through: i64) -> Result<(), ServeError> {
        self.conn
            .execute(
                "DELETE FROM pending WHERE seq <= ?1",
                params![events_through],
            )
            .map_err(self.sql())?;
        self.conn
            .execute(
                "DELETE FROM rejected WHERE seq <= ?1",
                params![rejected_through],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Logged events up to `through` (a sequence number), in log order, with the last
    /// sequence number read.
    fn pending_events(&self, through: i64) -> Result<(i64, Vec<Event>), ServeError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, event_id, ts, user_id, ip, device_id, payment_id, surface, product,
                        event_type, prompt, tokens_in, tokens_out, latency_ms, blocked, warned,
                        is_abuse_gt
                 FROM pending WHERE seq <= ?1 ORDER BY seq",
            )
            .map_err(self.sql())?;
        let mut last = 0;
        let rows = stmt
            .query_map(params![through], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Event {
                        event_id: r.get(1)?,
                        ts: r.get(2)?,
                        user_id: r.get(3)?,
                        ip: r.get(4)?,
                        device_id: r.get(5)?,
                        payment_id: r.get(6)?,
                        surface: r.get(7)?,
                        product: r.get(8)?,
                        event_type: r.get(9)?,
                        prompt: r.get(10)?,
                        tokens_in: r.get(11)?,
                        tokens_out: r.get(12)?,
                        latency_ms: r.get(13)?,
                        blocked: r.get(14)?,
                        warned: r.get(15)?,
                        is_abuse_gt: r.get(16)?,
                    },
                ))
            })
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, e) = row.map_err(self.sql())?;
            last = seq;
            out.push(e);
        }
        Ok((last, out))
    }

    /// Fingerprints of every event stored in the dataset or waiting in the log.
    fn known_keys(&mut self) -> Result<KeySet, ServeError> {
        let mut keys = KeySet::default();
        let parts = self.ds.parts().map_err(ServeError::Events)?;
        self.ds
            .add_event_keys(&parts, &mut keys)
            .map_err(ServeError::Events)?;
        self.parts_seen = parts;
        let mut stmt = self
            .conn
            .prepare("SELECT event_id FROM pending")
            .map_err(self.sql())?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.sql())?;
        for id in ids {
            keys.insert(event_key(&id.map_err(self.sql())?));
        }
        Ok(keys)
    }

    /// One group commit: every event new to `known` is logged, every rejection kept.
    fn write_group(
        &mut self,
        known: &mut KeySet,
        group: &[(&[Event], &[Rejected])],
    ) -> Result<Vec<Stored>, String> {
        let mut added: Vec<u128> = Vec::new();
        let result = (|| -> Result<Vec<Stored>, rusqlite::Error> {
            let tx = self.conn.transaction()?;
            let mut out = Vec::with_capacity(group.len());
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO pending (event_id, ts, user_id, ip, device_id, payment_id,
                         surface, product, event_type, prompt, tokens_in, tokens_out,
                         latency_ms, blocked, warned, is_abuse_gt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )?;
                let mut rej = tx.prepare_cached(
                    "INSERT INTO rejected (source, line, reason, raw) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (events, rejected) in group {
                    let mut stored = Vec::with_capacity(events.len());
                    for e in *events {
                        let k = event_key(&e.event_id);
                        if !known.insert(k) {
                            stored.push(false);
                            continue;
                        }
                        added.push(k);
                        ins.execute(params![
                            e.event_id,
                            e.ts,
                            e.user_id,
                            e.ip,
                            e.device_id,
                            e.payment_id,
                            e.surface,
                            e.product,
                            e.event_type,
                            e.prompt,
                            e.tokens_in,
                            e.tokens_out,
                            e.latency_ms,
                            e.blocked,
                            e.warned,
                            e.is_abuse_gt,
                        ])?;
                        stored.push(true);
                    }
                    for r in *rejected {
                        rej.execute(params![r.source, r.line as i64, r.reason, r.raw])?;
                    }
                    out.push(stored);
                }
            }
            tx.commit()?;
            Ok(out)
        })();
        result.map_err(|e| {
            for k in added {
                known.remove(&k);
            }
            tracing::error!("intake log commit failed: {e}");
            format!("the events could not be made durable: {e}")
        })
    }

    fn pending_count(&self) -> Result<usize, ServeError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM pending", [], |r| r.get::<_, i64>(0))
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(self.sql())
    }

    /// A second handle on the same log and dataset (its own SQLite connection), for the
    /// flusher thread: WAL lets it read while the writer commits.
    fn reopen(&self) -> Result<Log, ServeError> {
        let conn = Connection::open(&self.path).map_err(self.sql())?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(self.sql())?;
        Ok(Log {
            conn,
            path: self.path.clone(),
            ds: Dataset::open(self.ds.root()).map_err(ServeError::Events)?,
            log_id: self.log_id.clone(),
            parts_seen: self.parts_seen.clone(),
            others: KeySet::default(),
        })
    }

    /// Move every logged event into a dataset part and every rejection into the quarantine,
    /// in one dataset commit. The log rows are not deleted here: the writer deletes them
    /// (`forget`) with what [`Flushed`] names, after this returns.
    fn flush_out(&mut self) -> Result<Flushed, ServeError> {
        let (ev_through, events) = self.pending_events(i64::MAX)?;
        let rejected: Vec<(i64, String, i64, String, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, source, line, reason, raw FROM rejected ORDER BY seq")
                .map_err(self.sql())?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(self.sql())?;
            rows.collect::<Result<_, _>>().map_err(self.sql())?
        };
        if events.is_empty() && rejected.is_empty() {
            return Ok(Flushed::default());
        }
        let lock = self.ds.lock().map_err(ServeError::Events)?;
        // Parts another writer (`vigil ingest`) committed since we last looked: an event that
        // is already there is not stored again.
        let parts = self.ds.parts().map_err(ServeError::Events)?;
        let new_parts: Vec<PathBuf> = parts
            .iter()
            .filter(|p| !self.parts_seen.contains(p))
            .cloned()
            .collect();
        let mut theirs = KeySet::default();
        self.ds
            .add_event_keys(&new_parts, &mut theirs)
            .map_err(ServeError::Events)?;
        self.others.extend(theirs.iter().copied());
        let mut part = self.ds.new_part().map_err(ServeError::Events)?;
        let mut builder = EventBatchBuilder::with_capacity(events.len().min(65_536));
        let mut stored = 0usize;
        for e in &events {
            if self.others.contains(&event_key(&e.event_id)) {
                continue;
            }
            builder.append(&e.as_row());
            stored += 1;
            if builder.len() >= 65_536 {
                let b = builder
                    .finish()
                    .map_err(|e| ServeError::Internal(e.to_string()))?;
                part.write(&b).map_err(ServeError::Events)?;
            }
        }
        if !builder.is_empty() {
            let b = builder
                .finish()
                .map_err(|e| ServeError::Internal(e.to_string()))?;
            part.write(&b).map_err(ServeError::Events)?;
        }
        let finished = part.finish().map_err(ServeError::Events)?;
        let rej_through = rejected.last().map_or(0, |r| r.0);
        let quarantine = if rejected.is_empty() {
            None
        } else {
            let tmp = self.ds.root().join(format!(
                ".quarantine-serve-{}.jsonl.tmp",
                std::process::id()
            ));
            let mut text = String::new();
            for (_, source, line, reason, raw) in &rejected {
                text.push_str(
                    &serde_json::json!({"source": source, "line": line, "reason": reason, "raw": raw})
                        .to_string(),
                );
                text.push('\n');
            }
            vigil_core::write_atomic(&tmp, text.as_bytes())
                .map_err(|(p, e)| ServeError::io(&p, e))?;
            Some(tmp)
        };
        let line = serde_json::json!({
            "source": "vigil serve",
            "serve_log": self.log_id,
            "events_through": ev_through,
            "rejected_through": rej_through,
            "rows_read": events.len() + rejected.len(),
            "accepted": stored,
            "duplicates": events.len() - stored,
            "quarantined": rejected.len(),
            "finished_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let committed =
            self.ds
                .commit_ingest(&lock, finished, quarantine.as_deref(), &line.to_string());
        if let Some(q) = &quarantine {
            let _ = std::fs::remove_file(q);
        }
        committed.map_err(ServeError::Events)?;
        drop(lock);
        let mut seen = parts;
        seen.extend(self.ds.parts().map_err(ServeError::Events)?);
        seen.sort();
        seen.dedup();
        self.parts_seen = seen;
        Ok(Flushed {
            events_through: ev_through,
            rejected_through: rej_through,
            theirs,
            stored,
        })
    }
}

/// What a flush moved: the log rows to delete, and the keys of events another writer had
/// stored meanwhile (so the writer's dedup knows them).
#[derive(Default)]
struct Flushed {
    events_through: i64,
    rejected_through: i64,
    theirs: KeySet,
    stored: usize,
}

/// Start the writer thread; it runs until every [`Intake`] handle is dropped, then flushes
/// what is logged and stops.
pub(crate) fn start(
    mut log: Log,
    cfg: &ServeConfig,
) -> Result<(Intake, std::thread::JoinHandle<()>), ServeError> {
    let mut known = log.known_keys()?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(cfg.intake_queue);
    let depth = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicBool::new(true));
    let intake = Intake {
        tx,
        depth: depth.clone(),
        alive: alive.clone(),
    };
    let (max_group, interval, flush_at) = (
        cfg.group_commit_events,
        Duration::from_secs(cfg.flush_interval_secs),
        cfg.flush_events,
    );
    let handle = std::thread::Builder::new()
        .name("vigil-intake".into())
        .spawn(move || {
            writer_loop(
                &mut log, &mut known, &rx, &depth, max_group, interval, flush_at,
            );
            alive.store(false, Ordering::Relaxed);
        })
        .map_err(|e| ServeError::Internal(format!("cannot start the intake writer: {e}")))?;
    Ok((intake, handle))
}

fn writer_loop(
    log: &mut Log,
    known: &mut KeySet,
    rx: &Receiver<Job>,
    depth: &AtomicUsize,
    max_group: usize,
    interval: Duration,
    flush_at: usize,
) {
    // The flusher thread writes the Parquet part and commits it to the dataset (the slow
    // part) on its own connection while this thread goes on committing requests; this
    // thread then deletes the flushed rows.
    let (req_tx, req_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<Flushed, String>>();
    let flusher = match log.reopen() {
        Ok(mut flog) => std::thread::Builder::new()
            .name("vigil-flush".into())
            .spawn(move || {
                while req_rx.recv().is_ok() {
                    let r = flog.flush_out().map_err(|e| e.to_string());
                    if done_tx.send(r).is_err() {
                        break;
                    }
                }
            })
            .ok(),
        Err(e) => {
            tracing::error!("cannot open the flusher's log connection: {e}");
            None
        }
    };
    if flusher.is_none() {
        tracing::error!("no flusher thread: events stay in the log until the next start");
    }
    let mut last_flush = Instant::now();
    let mut logged = log.pending_count().unwrap_or(0);
    // Flush requests not yet covered by a flush, and those the running flush will answer.
    let mut asked: Vec<oneshot::Sender<Result<usize, String>>> = Vec::new();
    let mut answering: Vec<oneshot::Sender<Result<usize, String>>> = Vec::new();
    let mut running: Option<Instant> = None;
    let finish = |log: &mut Log,
                  known: &mut KeySet,
                  logged: &mut usize,
                  started: Instant,
                  r: Result<Flushed, String>|
     -> Result<usize, String> {
        let r = r.and_then(|f| {
            log.forget(f.events_through, f.rejected_through)
                .map_err(|e| e.to_string())?;
            for k in f.theirs {
                known.insert(k);
            }
            Ok(f.stored)
        });
        match &r {
            Ok(n) => {
                if *n > 0 {
                    tracing::info!(
                        events = n,
                        "flushed into the dataset in {:.3} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                metrics::counter!("vigil_flushed_events_total").increment(*n as u64);
            }
            Err(e) => {
                tracing::error!("flush into the dataset failed (events stay in the log): {e}");
                metrics::counter!("vigil_flush_failures_total").increment(1);
            }
        }
        *logged = log.pending_count().unwrap_or(*logged);
        r
    };
    loop {
        let mut wait = interval.saturating_sub(last_flush.elapsed());
        if running.is_some() {
            wait = wait.min(Duration::from_millis(20));
        }
        let first = match rx.recv_timeout(wait) {
            Ok(j) => Some(j),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut writes: Vec<Waiting> = Vec::new();
        let mut n = 0usize;
        let mut next = first;
        while let Some(job) = next.take() {
            match job {
                Job::Write {
                    events,
                    rejected,
                    reply,
                } => {
                    n += events.len() + rejected.len();
                    writes.push((events, rejected, reply));
                }
                Job::Flush(reply) => asked.push(reply),
            }
            if n < max_group {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            let group: Vec<(&[Event], &[Rejected])> = writes
                .iter()
                .map(|(e, r, _)| (e.as_slice(), r.as_slice()))
                .collect();
            let result = log.write_group(known, &group);
            metrics::histogram!("vigil_group_commit_events").record(n as f64);
            depth.fetch_sub(writes.len(), Ordering::Relaxed);
            match result {
                Ok(stored) => {
                    logged += stored.iter().flatten().filter(|s| **s).count();
                    for ((_, _, reply), s) in writes.into_iter().zip(stored) {
                        let _ = reply.send(Ok(s));
                    }
                }
                Err(e) => {
                    for (_, _, reply) in writes {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        metrics::gauge!("vigil_log_events").set(logged as f64);
        if let Some(started) = running
            && let Ok(r) = done_rx.try_recv()
        {
            let r = finish(log, known, &mut logged, started, r);
            running = None;
            last_flush = Instant::now();
            for reply in answering.drain(..) {
                let _ = reply.send(r.clone());
            }
        }
        if running.is_none()
            && flusher.is_some()
            && (!asked.is_empty() || logged >= flush_at || last_flush.elapsed() >= interval)
        {
            if req_tx.send(()).is_ok() {
                running = Some(Instant::now());
                answering.append(&mut asked);
            } else {
                last_flush = Instant::now();
            }
        }
    }
    // Stopping: the running flush, then one more for what came after it.
    if let Some(started) = running.take()
        && let Ok(r) = done_rx.recv()
    {
        let r = finish(log, known, &mut logged, started, r);
        for reply in answering.drain(..) {
            let _ = reply.send(r.clone());
        }
    }
    if flusher.is_some() && req_tx.send(()).is_ok() {
        let started = Instant::now();
        if let Ok(r) = done_rx.recv() {
            let r = finish(log, known, &mut logged, started, r);
            for reply in asked.drain(..) {
                let _ = reply.send(r.clone());
            }
        }
    }
    drop(req_tx);
    if let Some(t) = flusher
        && t.join().is_err()
    {
        tracing::error!("the flusher thread panicked");
    }
}
