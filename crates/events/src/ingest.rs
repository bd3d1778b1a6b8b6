//! Ingestion: one input file -> validated events appended to the dataset, bad rows to
//! quarantine, duplicates (by `event_id`) skipped and counted.
//!
//! Parsing and validation run on the calling thread while a second thread drops duplicate
//! event ids and encodes Parquet, so the two halves of the work overlap on a 2-core machine.
//! The parsing side computes each row's event key while the id's bytes are in its cache and
//! sends the keys with the batch; the writer only inserts them into the key set (reading
//! every id again on its own core missed the cache, and at 10M events made the writer the
//! slower half). Memory is
//! bounded by a couple of batches plus the set of known event keys (16 bytes per stored
//! event).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use arrow::array::BooleanArray;
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::EventsError;
use crate::dataset::{Dataset, KeySet, PartWriter, WriteLock, event_key};
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
    /// Physical lines of a CSV or JSONL input (header and blank lines included), rows of a
    /// Parquet one. Every line is accounted for: the header, a blank line, or (part of) a row
    /// that was accepted, quarantined or skipped as a duplicate.
    pub lines: u64,
    /// Empty lines skipped.
    pub blank_lines: u64,
    /// Data rows seen (header and blank lines excluded).
    pub rows_read: u64,
    /// Rows stored.
    pub accepted: u64,
    /// Rows sent to quarantine.
    pub quarantined: u64,
    /// Of those, rows already in the quarantine from an earlier ingest of the same file
    /// (same source, line and content): not written there twice.
    pub quarantine_known: u64,
    /// Rows skipped because their `event_id` was already stored (or seen earlier in the file).
    pub duplicates: u64,
    /// The Parquet part written, if any row was accepted.
    pub part: Option<String>,
    /// Wall time in seconds.
    pub seconds: f64,
}

struct Sink {
    builder: EventBatchBuilder,
    batch_rows: usize,
    tx: Option<SyncSender<(RecordBatch, Vec<u128>)>>,
    /// The event keys of the rows in `builder`, computed here while each id is in cache (on
    /// the writer's core the first read of every id missed it).
    keys: Vec<u128>,
    quarantine: BufWriter<File>,
    quarantine_path: PathBuf,
    source: String,
    strict: bool,
    rows_read: u64,
    accepted: u64,
    quarantined: u64,
    quarantine_known: u64,
    /// Keys ([`quarantine_key`]) of the entries already in the quarantine, read at the first
    /// bad row.
    known_bad: Option<KeySet>,
    /// The dataset's quarantine file.
    stored_quarantine: PathBuf,
}

/// The identity of a quarantine entry: re-ingesting a file finds its bad rows already there.
fn quarantine_key(source: &str, line: u64, raw: &str) -> u128 {
    event_key(&format!("{source}\u{0}{line}\u{0}{raw}"))
}

/// Keys of the entries of the quarantine file at `path` (none when it does not exist).
fn read_quarantine_keys(path: &Path) -> Result<KeySet, EventsError> {
    use std::io::BufRead;
    let mut keys = KeySet::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(source) => {
            return Err(EventsError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| EventsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        if let (Some(s), Some(l), Some(r)) =
            (v["source"].as_str(), v["line"].as_u64(), v["raw"].as_str())
        {
            keys.insert(quarantine_key(s, l, r));
        }
    }
    Ok(keys)
}

impl Sink {
    fn flush_batch(&mut self) -> Result<(), EventsError> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.finish().map_err(EventsError::Arrow)?;
        let keys = std::mem::replace(&mut self.keys, Vec::with_capacity(self.batch_rows));
        let sent = self.tx.as_ref().map(|tx| tx.send((batch, keys)));
        match sent {
            Some(Ok(())) => Ok(()),
            // The writer thread stopped: its own error is reported when it is joined.
            _ => Err(EventsError::WriterStopped),
        }
    }
}

impl RowSink for Sink {
    fn good(&mut self, row: &ValidRow<'_>) -> Result<(), EventsError> {
        self.rows_read += 1;
        self.keys.push(event_key(row.event_id));
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
        if self.known_bad.is_none() {
            self.known_bad = Some(read_quarantine_keys(&self.stored_quarantine)?);
        }
        let key = quarantine_key(&self.source, line, &raw);
        if self.known_bad.as_ref().is_some_and(|k| k.contains(&key)) {
            self.quarantine_known += 1;
            return Ok(());
        }
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

/// The rows of `batch` whose event key (`keys`, one per row: [`event_key`] of its
/// `event_id`) is new to `known` (which gains them), in order, and how many were dropped as
/// duplicates. A batch without duplicates is passed through as is.
fn drop_duplicates(
    known: &mut KeySet,
    batch: RecordBatch,
    keys: &[u128],
) -> Result<(RecordBatch, u64), EventsError> {
    if keys.len() != batch.num_rows() {
        return Err(EventsError::Arrow(
            arrow::error::ArrowError::InvalidArgumentError(format!(
                "{} event keys for a batch of {} rows",
                keys.len(),
                batch.num_rows()
            )),
        ));
    }
    let keep: Vec<bool> = keys.iter().map(|&k| known.insert(k)).collect();
    let dropped = keep.iter().filter(|k| !**k).count() as u64;
    if dropped == 0 {
        return Ok((batch, 0));
    }
    let kept = arrow::compute::filter_record_batch(&batch, &BooleanArray::from(keep))
        .map_err(EventsError::Arrow)?;
    Ok((kept, dropped))
}

/// Vigil writes only plain files in its own directories: a symbolic link there (planted to
/// make an append land elsewhere) is refused.
fn refuse_symlink(path: &Path) -> Result<(), EventsError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(EventsError::BadInput {
            path: path.to_path_buf(),
            message: "is a symbolic link; Vigil does not follow links for the files it \
                      writes in its data directory (replace it with a plain file)"
                .into(),
        });
    }
    Ok(())
}

/// Ingest one file into the dataset. `lock` is the dataset's writer lock, held since `known`
/// was read: the keys of events already stored (see [`Dataset::known_event_keys`]), which
/// gain the keys of the events stored now.
pub fn ingest_file(
    ds: &Dataset,
    lock: &WriteLock,
    known: &mut KeySet,
    path: &Path,
    opts: &IngestOptions,
    progress: &dyn Fn(u64),
) -> Result<IngestSummary, EventsError> {
    let start = Instant::now();
    if lock.root() != ds.root() {
        return Err(EventsError::Internal(format!(
            "ingest into {} under the lock of {}",
            ds.root().display(),
            lock.root().display()
        )));
    }
    // Checked before anything is stored, so a refusal leaves the dataset as it was.
    refuse_symlink(&ds.quarantine_path())?;
    refuse_symlink(&ds.ingest_log_path())?;
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
    let (tx, rx) = sync_channel::<(RecordBatch, Vec<u128>)>(2);
    let mut sink = Sink {
        builder: EventBatchBuilder::with_capacity(opts.batch_rows.min(1 << 20)),
        batch_rows: opts.batch_rows.max(1),
        tx: Some(tx),
        keys: Vec::with_capacity(opts.batch_rows.min(1 << 20)),
        quarantine: BufWriter::new(q_file),
        quarantine_path: q_tmp.clone(),
        source: source.clone(),
        strict: opts.strict,
        rows_read: 0,
        accepted: 0,
        quarantined: 0,
        quarantine_known: 0,
        known_bad: None,
        stored_quarantine: ds.quarantine_path(),
    };
    let (read_result, write_result) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<(PartWriter, u64), EventsError> {
            let (mut part, mut duplicates) = (part, 0);
            for (batch, keys) in rx {
                let (batch, dropped) = drop_duplicates(known, batch, &keys)?;
                duplicates += dropped;
                if batch.num_rows() > 0 {
                    part.write(&batch)?;
                }
            }
            Ok((part, duplicates))
        });
        let mut r = read_rows(
            path,
            format,
            compression,
            &opts.validator,
            &mut sink,
            progress,
        );
        if let Ok(stats) = r {
            r = sink.flush_batch().map(|()| stats);
        }
        sink.tx = None;
        let w = writer.join().unwrap_or(Err(EventsError::WriterStopped));
        (r, w)
    });
    let cleanup = || {
        let _ = std::fs::remove_file(&q_tmp);
    };
    let (stats, (part, duplicates)) = match (read_result, write_result) {
        (Ok(stats), Ok(done)) => (stats, done),
        (Err(EventsError::WriterStopped), Err(e)) | (Err(e), _) | (Ok(_), Err(e)) => {
            cleanup();
            return Err(e);
        }
    };
    let Sink {
        quarantine,
        rows_read,
        accepted,
        quarantined,
        quarantine_known,
        ..
    } = sink;
    // The parser counted every valid row; the writer dropped the duplicates among them.
    let accepted = accepted.saturating_sub(duplicates);
    let flushed = quarantine
        .into_inner()
        .map_err(|e| EventsError::Io {
            path: q_tmp.clone(),
            source: e.into_error(),
        })
        .and_then(|f| {
            f.sync_all().map_err(|source| EventsError::Io {
                path: q_tmp.clone(),
                source,
            })
        });
    if let Err(e) = flushed {
        cleanup();
        return Err(e);
    }
    let finished = match part.finish() {
        Ok(p) => p,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    let mut summary = IngestSummary {
        source,
        format,
        compression,
        lines: stats.lines,
        blank_lines: stats.blank_lines,
        rows_read,
        accepted,
        quarantined,
        quarantine_known,
        duplicates,
        part: None,
        seconds: 0.0,
    };
    summary.part = finished
        .as_ref()
        .map(|p| p.final_path().display().to_string());
    summary.seconds = start.elapsed().as_secs_f64();
    let line = match serde_json::to_string(&summary) {
        Ok(l) => l,
        Err(e) => {
            cleanup();
            return Err(EventsError::Internal(format!(
                "cannot encode the ingest summary: {e}"
            )));
        }
    };
    // Events, quarantine entries and the log line become visible together, or not at all.
    let new_entries = quarantined > quarantine_known;
    let committed = ds.commit_ingest(
        lock,
        finished,
        new_entries.then_some(q_tmp.as_path()),
        &line,
    );
    cleanup();
    committed?;
    Ok(summary)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(ids: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("row", DataType::Int64, false),
        ]));
        let rows = Int64Array::from_iter_values(0..ids.len() as i64);
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(ids.to_vec())), Arc::new(rows)],
        )
        .unwrap()
    }

    fn drop(known: &mut KeySet, ids: &[&str]) -> (RecordBatch, u64) {
        let keys: Vec<u128> = ids.iter().map(|id| event_key(id)).collect();
        drop_duplicates(known, batch(ids), &keys).unwrap()
    }

    fn rows(b: &RecordBatch) -> Vec<i64> {
        b.column(1)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn the_writer_keeps_the_first_occurrence_of_each_event_id() {
        let mut known = KeySet::default();
        known.insert(event_key("stored"));
        // Within a batch, across batches, and against events already stored.
        let (kept, dropped) = drop(&mut known, &["a", "b", "a", "stored", "c"]);
        assert_eq!((rows(&kept), dropped), (vec![0, 1, 4], 2));
        let (kept, dropped) = drop(&mut known, &["c", "d", "b"]);
        assert_eq!((rows(&kept), dropped), (vec![1], 2));
        // A batch without duplicates passes through whole.
        let (kept, dropped) = drop(&mut known, &["e", "f"]);
        assert_eq!((rows(&kept), dropped), (vec![0, 1], 0));
        assert_eq!(known.len(), 7);
        // Keys that do not match the batch are an error, not a silent misalignment.
        assert!(drop_duplicates(&mut known, batch(&["g"]), &[]).is_err());
    }
}
