//! Ingestion: one input file -> validated events appended to the dataset, bad rows to
//! quarantine, duplicates (by `event_id`) skipped and counted.
//!
//! Parsing and validation run on the calling thread while a second thread encodes Parquet, so
//! the two halves of the work overlap on a 2-core machine. Memory is bounded by a couple of
//! batches plus the set of known event keys (16 bytes per stored event).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::EventsError;
use crate::dataset::{Dataset, KeySet, PartWriter, event_key};
use crate::reader::{Compression, Format, RowSink, detect_format, read_rows};
use crate::validate::{EventBatchBuilder, ValidRow, Validator};

/// How to ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Force a format instead of reading it from the extension.
    pub format: Option<Format>,
    /// Fail on the first bad row instead of quarantining it (nothing is then stored).
    pub strict: bool,
    /// Field limits and timestamp policy.
    pub validator: Validator,
    /// Rows per Arrow batch.
    pub batch_rows: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            format: None,
            strict: false,
            validator: Validator::default(),
            batch_rows: 64 * 1024,
        }
    }
}

/// What one ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestSummary {
    /// The input file.
    pub source: String,
    /// Its format.
    pub format: Format,
    /// Its outer compression.
    pub compression: Compression,
    /// Data rows seen (header and blank lines excluded).
    pub rows_read: u64,
    /// Rows stored.
    pub accepted: u64,
    /// Rows sent to quarantine.
    pub quarantined: u64,
    /// Rows skipped because their `event_id` was already stored (or seen earlier in the file).
    pub duplicates: u64,
    /// The Parquet part written, if any row was accepted.
    pub part: Option<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

struct Sink<'a> {
    known: &'a mut KeySet,
    builder: EventBatchBuilder,
    batch_rows: usize,
    tx: Option<SyncSender<RecordBatch>>,
    quarantine: BufWriter<File>,
    quarantine_path: PathBuf,
    source: String,
    strict: bool,
    rows_read: u64,
    accepted: u64,
    quarantined: u64,
    duplicates: u64,
}

impl Sink<'_> {
    fn flush_batch(&mut self) -> Result<(), EventsError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.finish().map_err(EventsError::Arrow)?;
        let sent = self.tx.as_ref().map(|tx| tx.send(batch));
        match sent {
            Some(Ok(())) => Ok(()),
            // The writer thread stopped: its own error is reported when it is joined.
            _ => Err(EventsError::WriterStopped),
        }
    }
}

impl RowSink for Sink<'_> {
    fn good(&mut self, row: &ValidRow<'_>) -> Result<(), EventsError> {
        self.rows_read += 1;
        if !self.known.insert(event_key(row.event_id)) {
            self.duplicates += 1;
            return Ok(());
        }
        self.builder.append(row);
        self.accepted += 1;
        if self.builder.len() >= self.batch_rows {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn bad(&mut self, line: u64, reason: String, raw: String) -> Result<(), EventsError> {
        self.rows_read += 1;
        if self.strict {
            return Err(EventsError::BadRow {
                source_file: self.source.clone(),
                line,
                reason,
            });
        }
        self.quarantined += 1;
        let record = serde_json::json!({
            "source": self.source,
            "line": line,
            "reason": reason,
            "raw": raw,
        });
        let path = self.quarantine_path.clone();
        writeln!(self.quarantine, "{record}").map_err(|source| EventsError::Io { path, source })
    }
}

fn append_file(from: &Path, to: &Path) -> Result<(), EventsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EventsError::Io { path, source }
    };
    let mut src = File::open(from).map_err(io(from))?;
    let mut dst = OpenOptions::new()
        .create(true)
        .append(true)
        .open(to)
        .map_err(io(to))?;
    std::io::copy(&mut src, &mut dst).map_err(io(to))?;
    dst.sync_all().map_err(io(to))?;
    Ok(())
}

/// Ingest one file into the dataset. `known` holds the keys of events already stored (see
/// [`Dataset::known_event_keys`]) and gains the keys of the events stored now.
pub fn ingest_file(
    ds: &Dataset,
    known: &mut KeySet,
    path: &Path,
    opts: &IngestOptions,
    progress: &dyn Fn(u64),
) -> Result<IngestSummary, EventsError> {
    let start = Instant::now();
    let (format, compression) = detect_format(path, opts.format)?;
    if !path.exists() {
        return Err(EventsError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let source = path.display().to_string();
    // Pre-size the key set from the file size (~100 bytes a row) to avoid rehashing 10M keys.
    let expected_rows = std::fs::metadata(path).map_or(0, |m| m.len() / 100) as usize;
    known.reserve(expected_rows.min(200_000_000));
    let q_tmp = ds
        .root()
        .join(format!(".quarantine-{}.jsonl.tmp", std::process::id()));
    let q_file = File::create(&q_tmp).map_err(|source| EventsError::Io {
        path: q_tmp.clone(),
        source,
    })?;
    let part = ds.new_part()?;
    let (tx, rx) = sync_channel::<RecordBatch>(2);
    let mut sink = Sink {
        known,
        builder: EventBatchBuilder::with_capacity(opts.batch_rows.min(1 << 20)),
        batch_rows: opts.batch_rows.max(1),
        tx: Some(tx),
        quarantine: BufWriter::new(q_file),
        quarantine_path: q_tmp.clone(),
        source: source.clone(),
        strict: opts.strict,
        rows_read: 0,
        accepted: 0,
        quarantined: 0,
        duplicates: 0,
    };
    let (read_result, write_result) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<PartWriter, EventsError> {
            let mut part = part;
            for batch in rx {
                part.write(&batch)?;
            }
            Ok(part)
        });
        let mut r = read_rows(
            path,
            format,
            compression,
            &opts.validator,
            &mut sink,
            progress,
        );
        if r.is_ok() {
            r = sink.flush_batch();
        }
        sink.tx = None;
        let w = writer.join().unwrap_or(Err(EventsError::WriterStopped));
        (r, w)
    });
    let cleanup = || {
        let _ = std::fs::remove_file(&q_tmp);
    };
    let part = match (read_result, write_result) {
        (Ok(()), Ok(part)) => part,
        (Err(EventsError::WriterStopped), Err(e)) | (Err(e), _) | (Ok(()), Err(e)) => {
            cleanup();
            return Err(e);
        }
    };
    let Sink {
        quarantine,
        rows_read,
        accepted,
        quarantined,
        duplicates,
        ..
    } = sink;
    quarantine
        .into_inner()
        .map_err(|e| EventsError::Io {
            path: q_tmp.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(|source| EventsError::Io {
            path: q_tmp.clone(),
            source,
        })?;
    let committed = match part.commit() {
        Ok(p) => p,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    if quarantined > 0 {
        append_file(&q_tmp, &ds.quarantine_path())?;
    }
    cleanup();
    let summary = IngestSummary {
        source,
        format,
        compression,
        rows_read,
        accepted,
        quarantined,
        duplicates,
        part: committed.map(|p| p.display().to_string()),
        seconds: start.elapsed().as_secs_f64(),
    };
    let log = ds.ingest_log_path();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|source| EventsError::Io {
            path: log.clone(),
            source,
        })?;
    let line = serde_json::to_string(&summary).unwrap_or_default();
    writeln!(f, "{line}").map_err(|source| EventsError::Io { path: log, source })?;
    Ok(summary)
}
