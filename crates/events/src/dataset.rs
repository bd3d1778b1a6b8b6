//! The event dataset on disk: a directory of Parquet parts plus the quarantine file.
//!
//! Layout of a data directory (default `./vigil-data`):
//! - `events/part-*.parquet` — accepted events, one part per ingest, written to a temporary
//!   name and renamed into place only when complete, so a crash never leaves a half part;
//! - `quarantine.jsonl` — one JSON object per refused row (`source`, `line`, `reason`, `raw`);
//! - `ingest_log.jsonl` — one JSON object per ingest (the [`IngestSummary`](crate::IngestSummary));
//! - `.lock` — the writer lock ([`Dataset::lock`]): one writer at a time;
//! - `.commit.json` — present only while an ingest commits ([`Dataset::commit_ingest`]): the
//!   journal that makes an ingest's part, quarantine entries and log line visible together.

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
        self.add_event_keys(&self.parts()?, &mut keys)?;
        Ok(keys)
    }

    /// Add the keys of the events of `parts` (paths from [`Dataset::parts`]) to `keys`.
    pub fn add_event_keys(&self, parts: &[PathBuf], keys: &mut KeySet) -> Result<(), EventsError> {
        for part in parts {
            scan_part(part, Some(&["event_id"]), &mut |batch| {
                let ids = batch.column(0).as_string::<i32>();
                keys.reserve(ids.len());
                for i in 0..ids.len() {
                    keys.insert(event_key(ids.value(i)));
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Every stored event, part by part in name (so commit) order, batch by batch, with the
    /// full event schema.
    pub fn for_each_batch(
        &self,
        f: &mut dyn FnMut(&RecordBatch) -> Result<(), EventsError>,
    ) -> Result<(), EventsError> {
        for part in self.parts()? {
            scan_part(&part, None, f)?;
        }
        Ok(())
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

/// Read one part's batches (`columns` only, when given).
fn scan_part(
    part: &Path,
    columns: Option<&[&str]>,
    f: &mut dyn FnMut(&RecordBatch) -> Result<(), EventsError>,
) -> Result<(), EventsError> {
    let file = File::open(part).map_err(io_err(part))?;
    let pq = |e: parquet::errors::ParquetError| EventsError::Corrupt {
        path: part.to_path_buf(),
        message: e.to_string(),
    };
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?;
    if let Some(cols) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), cols.iter().copied());
        builder = builder.with_projection(mask);
    }
    for batch in builder.build().map_err(pq)? {
        let batch = batch.map_err(|e| EventsError::Corrupt {
            path: part.to_path_buf(),
            message: e.to_string(),
        })?;
        f(&batch)?;
    }
    Ok(())
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
        // A commit interrupted by a crash is finished first: its temporaries are not stale.
        self.recover()?;
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
                    || (name.starts_with(".quarantine-") && name.ends_with(".jsonl.tmp"))
                    || name == ".commit.json.tmp";
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

    /// Finish the file and flush it to disk, still under its temporary name; it is moved into
    /// place by [`Dataset::commit_ingest`]. A part with no rows is discarded and `None`
    /// returned.
    pub fn finish(mut self) -> Result<Option<FinishedPart>, EventsError> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        let tmp = self.tmp_path.clone();
        let done = writer
            .into_inner()
            .map_err(|e| EventsError::Io {
                path: tmp.clone(),
                source: std::io::Error::other(e),
            })
            .and_then(|file| {
                if self.rows == 0 {
                    return Ok(false);
                }
                file.sync_all().map_err(io_err(&tmp))?;
                Ok(true)
            });
        match done {
            Ok(true) => Ok(Some(FinishedPart {
                tmp_path: tmp,
                final_path: self.final_path.clone(),
                committed: false,
            })),
            Ok(false) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(None)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// A complete part on disk under its temporary name. Dropped uncommitted, it is deleted.
#[derive(Debug)]
pub struct FinishedPart {
    tmp_path: PathBuf,
    final_path: PathBuf,
    committed: bool,
}

impl FinishedPart {
    /// Where the part goes when committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }
}

impl Drop for FinishedPart {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// What one ingest makes visible, written down before any of it is: a writer that dies
/// after the journal is complete has its commit finished by the next one (roll forward); one
/// that dies before leaves nothing visible.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// The part's temporary and final file names in `events/`.
    part: Option<(String, String)>,
    /// The temporary file, in the data directory, holding the new quarantine entries.
    quarantine: Option<String>,
    /// Lengths of `quarantine.jsonl` and `ingest_log.jsonl` before this commit: each is cut
    /// back to it before its new entries are appended, so finishing twice appends once.
    quarantine_len: u64,
    log_len: u64,
    /// The ingest log line (without its newline).
    log_line: String,
}

fn file_len(path: &Path) -> Result<u64, EventsError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(EventsError::BadInput {
            path: path.to_path_buf(),
            message: "is a symbolic link; Vigil does not follow links for the files it \
                      writes in its data directory (replace it with a plain file)"
                .into(),
        }),
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `content` at offset `at` of `path`, cutting off whatever followed, and syncs it.
fn write_at(path: &Path, at: u64, content: &mut dyn std::io::Read) -> Result<(), EventsError> {
    use std::io::{Seek, SeekFrom};
    let len = file_len(path)?;
    if len < at {
        return Err(EventsError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "is {len} bytes, shorter than the {at} it had when the ingest being committed began: it was truncated by something other than Vigil"
            ),
        });
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(at).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(at)).map_err(io_err(path))?;
    std::io::copy(content, &mut f).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Cuts `path` back to `len` bytes if it is longer.
fn cut_back(path: &Path, len: u64) -> Result<(), EventsError> {
    if file_len(path)? > len {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(len).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), EventsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Dataset {
    fn journal_path(&self) -> PathBuf {
        self.root.join(".commit.json")
    }

    /// Make one ingest visible at once: its part (if any rows were accepted), its quarantine
    /// entries (the file `quarantine_tmp`, if any) and its log line. On an error nothing of
    /// it stays visible; a crash part-way is finished by the next writer. Returns the part's
    /// final path.
    pub fn commit_ingest(
        &self,
        lock: &WriteLock,
        part: Option<FinishedPart>,
        quarantine_tmp: Option<&Path>,
        log_line: &str,
    ) -> Result<Option<PathBuf>, EventsError> {
        if lock.root() != self.root() {
            return Err(EventsError::Internal(format!(
                "commit into {} under the lock of {}",
                self.root.display(),
                lock.root().display()
            )));
        }
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let journal = Journal {
            part: part
                .as_ref()
                .and_then(|p| Some((name(&p.tmp_path)?, name(&p.final_path)?))),
            quarantine: quarantine_tmp.and_then(name),
            quarantine_len: file_len(&self.quarantine_path())?,
            log_len: file_len(&self.ingest_log_path())?,
            log_line: log_line.to_string(),
        };
        let final_path = part.as_ref().map(|p| p.final_path.clone());
        // The journal itself appears whole or not at all.
        let path = self.journal_path();
        let text = serde_json::to_vec(&journal)
            .map_err(|e| EventsError::Internal(format!("cannot encode the commit journal: {e}")))?;
        if let Err((p, source)) = vigil_core::write_atomic(&path, &text) {
            let _ = std::fs::remove_file(&path);
            return Err(EventsError::Io { path: p, source });
        }
        // From here the commit belongs to the journal: the part's file is not deleted on drop.
        if let Some(mut p) = part {
            p.committed = true;
        }
        match self.apply(&journal) {
            Ok(()) => {
                self.end_commit(&journal)?;
                Ok(final_path)
            }
            Err(e) => {
                // Undo what was applied; if that fails too the journal stays, and the next
                // writer finishes the commit instead.
                if self.roll_back(&journal).is_ok() {
                    let _ = self.end_commit(&journal);
                }
                Err(e)
            }
        }
    }

    /// Apply a journal; safe to repeat.
    fn apply(&self, j: &Journal) -> Result<(), EventsError> {
        if let Some((tmp, fin)) = &j.part {
            let (tmp, fin) = (self.events_dir().join(tmp), self.events_dir().join(fin));
            if tmp.exists() {
                std::fs::rename(&tmp, &fin).map_err(io_err(&tmp))?;
            } else if !fin.exists() {
                return Err(EventsError::Corrupt {
                    path: self.journal_path(),
                    message: format!(
                        "names the part {} but neither it nor its temporary file exists",
                        fin.display()
                    ),
                });
            }
            sync_dir(&self.events_dir())?;
        }
        if let Some(q) = &j.quarantine {
            let q = self.root.join(q);
            let mut f = File::open(&q).map_err(io_err(&q))?;
            write_at(&self.quarantine_path(), j.quarantine_len, &mut f)?;
        }
        let line = format!("{}\n", j.log_line);
        write_at(&self.ingest_log_path(), j.log_len, &mut line.as_bytes())
    }

    /// Undo a journal that was partly applied.
    fn roll_back(&self, j: &Journal) -> Result<(), EventsError> {
        if let Some((tmp, fin)) = &j.part {
            let fin = self.events_dir().join(fin);
            if fin.exists() {
                std::fs::remove_file(&fin).map_err(io_err(&fin))?;
            }
            let _ = std::fs::remove_file(self.events_dir().join(tmp));
        }
        cut_back(&self.quarantine_path(), j.quarantine_len)?;
        cut_back(&self.ingest_log_path(), j.log_len)
    }

    fn end_commit(&self, j: &Journal) -> Result<(), EventsError> {
        let path = self.journal_path();
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        sync_dir(&self.root)?;
        if let Some(q) = &j.quarantine {
            let _ = std::fs::remove_file(self.root.join(q));
        }
        Ok(())
    }

    /// Finish the commit of a writer that died part-way (only under the writer lock).
    fn recover(&self) -> Result<(), EventsError> {
        let path = self.journal_path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let j: Journal = serde_json::from_slice(&text).map_err(|e| EventsError::Corrupt {
            path: path.clone(),
            message: format!(
                "unreadable commit journal ({e}); it is written whole or not at all, so \
                 something else changed it"
            ),
        })?;
        tracing::warn!(
            "{}: finishing an ingest that was interrupted while committing",
            self.root.display()
        );
        self.apply(&j)?;
        self.end_commit(&j)
    }

    /// Readers of the data directory `root` call this before reading: an ingest interrupted
    /// while committing is finished first (under the writer lock), so a reader never sees
    /// part of one. Creates nothing when there is nothing to finish.
    pub fn settle(root: &Path) -> Result<(), EventsError> {
        let ds = Self {
            root: root.to_path_buf(),
        };
        if ds.journal_path().exists() {
            drop(ds.lock()?);
        }
        Ok(())
    }
}

impl Drop for PartWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A writer killed while appending its quarantine entries left the file ending
    /// mid-record; the next writer finishes that commit from the journal: the half record is
    /// cut off, the entries and the log line are written once.
    #[test]
    fn an_ingest_killed_mid_commit_is_finished_by_the_next_writer_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        std::fs::write(ds.quarantine_path(), "{\"old\":1}\n").unwrap();
        let journal = Journal {
            part: None,
            quarantine: Some(".quarantine-1.jsonl.tmp".into()),
            quarantine_len: 10,
            log_len: 0,
            log_line: "{\"log\":1}".into(),
        };
        std::fs::write(
            dir.path().join(".quarantine-1.jsonl.tmp"),
            "{\"new\":1}\n{\"new\":2}\n",
        )
        .unwrap();
        std::fs::write(ds.journal_path(), serde_json::to_vec(&journal).unwrap()).unwrap();
        // The crash: half of the first new record already appended.
        let mut q = std::fs::OpenOptions::new()
            .append(true)
            .open(ds.quarantine_path())
            .unwrap();
        std::io::Write::write_all(&mut q, b"{\"ne").unwrap();
        drop(q);
        // A reader finishes it too (under the lock), as a writer does.
        Dataset::settle(dir.path()).unwrap();
        let expect = "{\"old\":1}\n{\"new\":1}\n{\"new\":2}\n";
        assert_eq!(
            std::fs::read_to_string(ds.quarantine_path()).unwrap(),
            expect
        );
        assert_eq!(
            std::fs::read_to_string(ds.ingest_log_path()).unwrap(),
            "{\"log\":1}\n"
        );
        assert!(!ds.journal_path().exists());
        assert!(!dir.path().join(".quarantine-1.jsonl.tmp").exists());
        // Nothing more to finish: taking the lock again changes nothing.
        drop(ds.lock().unwrap());
        assert_eq!(
            std::fs::read_to_string(ds.quarantine_path()).unwrap(),
            expect
        );
    }

    #[test]
    fn a_commit_journal_naming_a_vanished_part_is_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        let journal = Journal {
            part: Some((".part-1-1.parquet.tmp".into(), "part-1-1.parquet".into())),
            quarantine: None,
            quarantine_len: 0,
            log_len: 0,
            log_line: "{}".into(),
        };
        std::fs::write(ds.journal_path(), serde_json::to_vec(&journal).unwrap()).unwrap();
        let err = ds.lock().unwrap_err().to_string();
        assert!(
            err.contains("neither it nor its temporary file exists"),
            "{err}"
        );
        assert!(ds.journal_path().exists(), "the evidence stays");
    }
}
