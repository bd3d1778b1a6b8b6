//! The event dataset on disk: a directory of Parquet parts plus the quarantine file.
//!
//! Layout of a data directory (default `./vigil-data`):
//! - `events/part-*.parquet` — accepted events, one part per ingest, written to a temporary
//!   name and renamed into place only when complete, so a crash never leaves a half part;
//! - `quarantine.jsonl` — one JSON object per refused row (`source`, `line`, `reason`, `raw`);
//! - `ingest_log.jsonl` — one JSON object per ingest (the [`IngestSummary`](crate::IngestSummary));
//! - `.lock` — the writer lock ([`Dataset::lock`]): one writer at a time.

use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression as PqCompression;
use parquet::file::properties::WriterProperties;

use crate::EventsError;
use crate::schema::event_schema;

/// A data directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
}

/// A 128-bit fingerprint of an event id: the dedup key, kept instead of the id text so that
/// the set of known ids for 10M events stays around 300 MB. Two independent 64-bit
/// multiply-mix hashes (a collision needs both to collide: ~1e-20 at 10M ids).
pub fn event_key(event_id: &str) -> u128 {
    fn mix(bytes: &[u8], seed: u64) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
        }
        // Final avalanche (splitmix64).
        h ^= h >> 30;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 31)
    }
    let b = event_id.as_bytes();
    (u128::from(mix(b, 0x243F_6A88_85A3_08D3)) << 64) | u128::from(mix(b, 0x1319_8A2E_0370_7344))
}

/// The set of stored event keys. Keys are already well-mixed hashes, so the set hashes them
/// by taking their low 64 bits instead of running SipHash again.
pub type KeySet = HashSet<u128, BuildHasherDefault<KeyHasher>>;

/// Hasher for [`KeySet`]: the low 64 bits of the key.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EventsError + '_ {
    move |source| EventsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Dataset {
    /// Open a data directory, creating it when absent.
    pub fn open(root: &Path) -> Result<Self, EventsError> {
        let ds = Self {
            root: root.to_path_buf(),
        };
        std::fs::create_dir_all(ds.events_dir()).map_err(io_err(root))?;
        Ok(ds)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the Parquet parts live.
    pub fn events_dir(&self) -> PathBuf {
        self.root.join("events")
    }

    /// The quarantine file.
    pub fn quarantine_path(&self) -> PathBuf {
        self.root.join("quarantine.jsonl")
    }

    /// The ingest log.
    pub fn ingest_log_path(&self) -> PathBuf {
        self.root.join("ingest_log.jsonl")
    }

    /// Committed parts, in name (= ingest) order.
    pub fn parts(&self) -> Result<Vec<PathBuf>, EventsError> {
        let dir = self.events_dir();
        let mut parts = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let p = entry.map_err(io_err(&dir))?.path();
            if p.extension().is_some_and(|e| e == "parquet") {
                parts.push(p);
            }
        }
        parts.sort();
        Ok(parts)
    }

    /// Keys of every event already stored, reading only the `event_id` column.
    pub fn known_event_keys(&self) -> Result<KeySet, EventsError> {
        let mut keys = KeySet::default();
        for part in self.parts()? {
            let file = File::open(&part).map_err(io_err(&part))?;
            let pq = |e: parquet::errors::ParquetError| EventsError::Corrupt {
                path: part.clone(),
                message: e.to_string(),
            };
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
            let mask = ProjectionMask::columns(builder.parquet_schema(), ["event_id"]);
            for batch in builder.with_projection(mask).build().map_err(pq)? {
                let batch = batch.map_err(|e| EventsError::Corrupt {
                    path: part.clone(),
                    message: e.to_string(),
                })?;
                let ids = batch.column(0).as_string::<i32>();
                keys.reserve(ids.len());
                for i in 0..ids.len() {
                    keys.insert(event_key(ids.value(i)));
                }
            }
        }
        Ok(keys)
    }

    /// Start a new part; rows become visible only after [`PartWriter::commit`].
    pub fn new_part(&self) -> Result<PartWriter, EventsError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        let name = format!("part-{stamp:020}-{}", std::process::id());
        let final_path = self.events_dir().join(format!("{name}.parquet"));
        let tmp_path = self.events_dir().join(format!(".{name}.parquet.tmp"));
        let file = File::create(&tmp_path).map_err(io_err(&tmp_path))?;
        // event_id and ts are (nearly) unique per row: a dictionary never pays for itself
        // there, yet the writer would hash every value until its dictionary page overflows.
        let props = WriterProperties::builder()
            .set_compression(PqCompression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 20))
            .set_column_dictionary_enabled("event_id".into(), false)
            .set_column_dictionary_enabled("ts".into(), false)
            .build();
        let writer = ArrowWriter::try_new(file, event_schema(), Some(props)).map_err(|e| {
            EventsError::Io {
                path: tmp_path.clone(),
                source: std::io::Error::other(e),
            }
        })?;
        Ok(PartWriter {
            writer: Some(writer),
            tmp_path,
            final_path,
            rows: 0,
        })
    }
}

/// The exclusive writer lock of a data directory: an OS lock (`flock`) on `DIR/.lock`, so
/// two ingests (an overlapping cron job, `vigil run` beside `vigil ingest`) never read the
/// same stored ids and store the same events twice. Released when dropped or when the
/// process dies, however it dies.
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
    root: PathBuf,
}

impl WriteLock {
    /// The data directory this lock holds.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Dataset {
    /// Take the writer lock, waiting (with a warning naming the holder) while another
    /// process holds it. Under the lock, temporary files of writers that died are removed.
    pub fn lock(&self) -> Result<WriteLock, EventsError> {
        let path = self.root.join(".lock");
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(EventsError::BadInput {
                path,
                message: "is a symbolic link; Vigil does not follow links for the files it \
                          writes in its data directory"
                    .into(),
            });
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                tracing::warn!(
                    "{} is being written by another process ({}); waiting for it to finish",
                    self.root.display(),
                    holder.trim()
                );
                file.lock().map_err(io_err(&path))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        // Who holds it, for the message a waiting writer prints.
        use std::io::Write as _;
        let _ = file.set_len(0).and_then(|()| {
            write!(file, "pid {}", std::process::id())?;
            file.flush()
        });
        self.remove_stale_temporaries()?;
        Ok(WriteLock {
            _file: file,
            root: self.root.clone(),
        })
    }

    /// Remove the temporary part and quarantine files a killed or failed writer left (only
    /// called under the writer lock, so no live writer owns them).
    fn remove_stale_temporaries(&self) -> Result<(), EventsError> {
        for dir in [self.root.clone(), self.events_dir()] {
            let entries = std::fs::read_dir(&dir).map_err(io_err(&dir))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let stale = (name.starts_with(".part-") && name.ends_with(".parquet.tmp"))
                    || (name.starts_with(".quarantine-") && name.ends_with(".jsonl.tmp"));
                if stale {
                    tracing::info!("removing {} left by an earlier writer", name);
                    let p = entry.path();
                    std::fs::remove_file(&p).map_err(io_err(&p))?;
                }
            }
        }
        Ok(())
    }
}

/// A part being written. Dropped without commit, it deletes its temporary file.
#[derive(Debug)]
pub struct PartWriter {
    writer: Option<ArrowWriter<File>>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    rows: u64,
}

impl PartWriter {
    /// Append one batch of validated events.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), EventsError> {
        let path = self.tmp_path.clone();
        if let Some(w) = self.writer.as_mut() {
            w.write(batch).map_err(|e| EventsError::Io {
                path,
                source: std::io::Error::other(e),
            })?;
            self.rows += batch.num_rows() as u64;
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Finish the file, flush it to disk and move it into place. A part with no rows is
    /// discarded and `None` returned.
    pub fn commit(mut self) -> Result<Option<PathBuf>, EventsError> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        let tmp = self.tmp_path.clone();
        let file = writer.into_inner().map_err(|e| EventsError::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e),
        })?;
        if self.rows == 0 {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            return Ok(None);
        }
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &self.final_path).map_err(io_err(&tmp))?;
        Ok(Some(self.final_path.clone()))
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
