//! Streaming readers for CSV, JSONL and Parquet event files (plain, `.gz` or `.zst`).
//!
//! Each reader walks its file once, hands every row to the [`Validator`], and reports good
//! rows and bad rows to a [`RowSink`]. Memory stays bounded by one row (CSV, JSONL) or one
//! Parquet batch, whatever the size of the file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::EventsError;
use crate::csvscan::{CsvRecord, CsvRecords, Limits};
use crate::schema::{COLUMNS, OPTIONAL_COLUMNS};
use crate::validate::{ValidRow, Validator, Value};

/// File format of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" | "json" => Ok(Self::Jsonl),
            "parquet" | "pq" => Ok(Self::Parquet),
            other => Err(format!(
                "unknown format `{other}` (expected csv, jsonl or parquet)"
            )),
        }
    }
}

/// Compression wrapped around an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain file.
    None,
    /// `.gz`
    Gzip,
    /// `.zst`
    Zstd,
}

/// Work out format and compression from the file name, unless a format is forced.
pub fn detect_format(
    path: &Path,
    forced: Option<Format>,
) -> Result<(Format, Compression), EventsError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s.to_string(), Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s.to_string(), Compression::Zstd)
    } else {
        (name.clone(), Compression::None)
    };
    let format = match forced {
        Some(f) => f,
        None => {
            let ext = stem.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
            ext.parse::<Format>().map_err(|_| EventsError::BadInput {
                path: path.to_path_buf(),
                message: format!(
                    "cannot tell the format from the extension `{ext}`; name the file .csv, .jsonl or .parquet (optionally .gz/.zst), or pass --format"
                ),
            })?
        }
    };
    if format == Format::Parquet && compression != Compression::None {
        return Err(EventsError::BadInput {
            path: path.to_path_buf(),
            message: "Parquet files compress internally; decompress the outer .gz/.zst first"
                .into(),
        });
    }
    Ok((format, compression))
}

/// Receives the outcome of every row.
pub trait RowSink {
    /// A row that passed validation.
    fn good(&mut self, row: &ValidRow<'_>) -> Result<(), EventsError>;
    /// A row that did not; `line` is 1-based (the CSV header is line 1).
    fn bad(&mut self, line: u64, reason: String, raw: String) -> Result<(), EventsError>;
}

/// Counts the bytes read from the underlying file, for progress reporting.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn open_decoded(
    path: &Path,
    compression: Compression,
    counter: Arc<AtomicU64>,
) -> Result<Box<dyn BufRead + Send>, EventsError> {
    let file = File::open(path).map_err(|source| EventsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let counted = CountingReader {
        inner: file,
        count: counter,
    };
    Ok(match compression {
        Compression::None => Box::new(BufReader::with_capacity(1 << 20, counted)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(BufReader::new(counted)),
        )),
        Compression::Zstd => {
            let dec =
                zstd::stream::read::Decoder::new(counted).map_err(|source| EventsError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            Box::new(BufReader::with_capacity(1 << 20, dec))
        }
    })
}

/// Map input column names onto the schema; error when a required column is absent.
fn map_columns(path: &Path, names: &[String]) -> Result<[Option<usize>; 16], EventsError> {
    let mut map = [None; 16];
    for (i, name) in names.iter().enumerate() {
        let name = name.trim().trim_start_matches('\u{feff}');
        match COLUMNS.iter().position(|c| *c == name) {
            Some(c) if map[c].is_none() => map[c] = Some(i),
            Some(_) => {
                return Err(EventsError::BadInput {
                    path: path.to_path_buf(),
                    message: format!("column {name:?} appears twice in the header"),
                });
            }
            // `{:?}`: a header of binary junk must not write control bytes to the terminal.
            None => tracing::warn!(
                file = %path.display(),
                "ignoring column {name:?}: not part of the event schema"
            ),
        }
    }
    let missing: Vec<&str> = (0..16)
        .filter(|c| map[*c].is_none() && !OPTIONAL_COLUMNS.contains(c))
        .map(|c| COLUMNS[c])
        .collect();
    if !missing.is_empty() {
        return Err(EventsError::BadInput {
            path: path.to_path_buf(),
            message: format!(
                "missing required column(s): {} (expected the 16-column event schema: {})",
                missing.join(", "),
                COLUMNS.join(", ")
            ),
        });
    }
    Ok(map)
}

/// Read every row of `path`, validating each and passing the outcome to `sink`.
/// `progress` is called now and then with the number of (compressed) bytes read so far.
pub fn read_rows(
    path: &Path,
    format: Format,
    compression: Compression,
    validator: &Validator,
    sink: &mut dyn RowSink,
    progress: &dyn Fn(u64),
) -> Result<ReadStats, EventsError> {
    let counter = Arc::new(AtomicU64::new(0));
    match format {
        Format::Csv => {
            let input = open_decoded(path, compression, counter.clone())?;
            read_csv(path, input, validator, sink, &|| {
                progress(counter.load(Ordering::Relaxed))
            })
        }
        Format::Jsonl => {
            let input = open_decoded(path, compression, counter.clone())?;
            read_jsonl(path, input, validator, sink, &|| {
                progress(counter.load(Ordering::Relaxed))
            })
        }
        Format::Parquet => read_parquet(path, validator, sink, progress),
    }
}

/// A read error of the decoded stream: a stream that stops decoding (a truncated .gz/.zst,
/// bytes that are not text) is the input's fault; other failures are the machine's.
fn read_error(path: &Path, what: &str, after_line: u64, source: std::io::Error) -> EventsError {
    use std::io::ErrorKind as K;
    match source.kind() {
        K::InvalidData | K::UnexpectedEof | K::InvalidInput => EventsError::BadInput {
            path: path.to_path_buf(),
            message: format!("{what} read error after line {after_line}: {source}"),
        },
        _ => EventsError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Text for the quarantine: valid UTF-8 as is, every other byte as `\xNN`, so the raw bytes
/// can be recovered and the quarantine stays valid JSON text.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// What a reader saw of its file, beyond the rows it passed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Physical lines of a CSV or JSONL file (the header and blank lines included); rows of a
    /// Parquet file.
    pub lines: u64,
    /// Empty lines skipped.
    pub blank_lines: u64,
}

fn read_csv(
    path: &Path,
    input: Box<dyn BufRead + Send>,
    validator: &Validator,
    sink: &mut dyn RowSink,
    tick: &dyn Fn(),
) -> Result<ReadStats, EventsError> {
    let limits = Limits {
        max_field_lines: validator.max_field_lines,
        max_field_bytes: validator.max_field_bytes,
        max_record_bytes: validator
            .max_field_bytes
            .saturating_mul(16)
            .saturating_add(4096),
    };
    let mut rdr = CsvRecords::new(input, limits);
    let mut header = CsvRecord::default();
    if !rdr
        .read(&mut header)
        .map_err(|e| read_error(path, "CSV", 0, e))?
    {
        return Err(EventsError::BadInput {
            path: path.to_path_buf(),
            message: "empty file: expected a header line with the 16-column event schema".into(),
        });
    }
    if let Some(e) = &header.error {
        return Err(EventsError::BadInput {
            path: path.to_path_buf(),
            message: format!("header line {}: {e}", header.line),
        });
    }
    let names: Vec<String> = (0..header.len())
        .filter_map(|i| header.get(i))
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    let map = map_columns(path, &names)?;
    let width = header.len();
    // CSV parsing runs on its own thread, handing chunks of records to this one for
    // validation; emptied chunks come back for reuse so records keep their allocations.
    const CHUNK: usize = 8192;
    std::thread::scope(|s| -> Result<ReadStats, EventsError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<CsvRecord>>(4);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<CsvRecord>>();
        let parser = s.spawn(move || -> Result<ReadStats, (u64, std::io::Error)> {
            loop {
                let mut chunk = back_rx.try_recv().unwrap_or_default();
                chunk.resize_with(CHUNK, CsvRecord::default);
                let mut n = 0;
                while n < CHUNK {
                    match rdr.read(&mut chunk[n]) {
                        Ok(true) => n += 1,
                        Ok(false) => break,
                        Err(e) => {
                            chunk.truncate(n);
                            let _ = tx.send(chunk);
                            return Err((rdr.lines(), e));
                        }
                    }
                }
                let done = n < CHUNK;
                chunk.truncate(n);
                if n > 0 && tx.send(chunk).is_err() {
                    break;
                }
                if done {
                    break;
                }
            }
            Ok(ReadStats {
                lines: rdr.lines(),
                blank_lines: rdr.blank_lines(),
            })
        });
        for chunk in rx {
            for rec in &chunk {
                check_csv_record(rec, width, &map, validator, sink)?;
            }
            tick();
            let _ = back_tx.send(chunk);
        }
        let stats = parser
            .join()
            .map_err(|_| EventsError::Internal("the CSV parser thread panicked".into()))?
            .map_err(|(line, e)| read_error(path, "CSV", line, e))?;
        tick();
        Ok(stats)
    })
}

fn check_csv_record(
    rec: &CsvRecord,
    width: usize,
    map: &[Option<usize>; 16],
    validator: &Validator,
    sink: &mut dyn RowSink,
) -> Result<(), EventsError> {
    let line = rec.line;
    if let Some(e) = &rec.error {
        return sink.bad(line, e.clone(), escape_bytes(&rec.raw()));
    }
    let fields_in = rec;
    if fields_in.len() != width {
        return sink.bad(
            line,
            format!("expected {width} fields, found {}", fields_in.len()),
            escape_bytes(&rec.raw()),
        );
    }
    let mut fields: [&str; 16] = [""; 16];
    // Fast path: validate the record's bytes once and slice the fields out of it. A field
    // boundary inside a character (or any invalid byte) falls through to the per-field check,
    // which names the field.
    let mut all_ok = false;
    if let Ok(whole) = std::str::from_utf8(fields_in.as_slice()) {
        all_ok = true;
        for (c, slot) in map.iter().enumerate() {
            if let Some(i) = slot {
                match fields_in.range(*i).and_then(|r| whole.get(r)) {
                    Some(f) => fields[c] = f,
                    None => {
                        all_ok = false;
                        break;
                    }
                }
            }
        }
    }
    for (c, slot) in map.iter().enumerate() {
        if all_ok {
            break;
        }
        if let Some(i) = slot {
            match std::str::from_utf8(fields_in.get(*i).unwrap_or_default()) {
                Ok(s) => fields[c] = s,
                Err(_) => {
                    return sink.bad(
                        line,
                        format!("field `{}` is not valid UTF-8", COLUMNS[c]),
                        escape_bytes(&rec.raw()),
                    );
                }
            }
        }
    }
    let outcome = validator.validate(|c| {
        if map[c].is_some() {
            Value::Str(fields[c])
        } else {
            Value::Missing
        }
    });
    match outcome {
        Ok(row) => sink.good(&row),
        Err(reason) => sink.bad(line, reason, escape_bytes(&rec.raw())),
    }
}

fn json_value(v: Option<&serde_json::Value>) -> Value<'_> {
    match v {
        None => Value::Missing,
        Some(serde_json::Value::Null) => Value::Null,
        Some(serde_json::Value::String(s)) => Value::Str(s),
        Some(serde_json::Value::Bool(b)) => Value::Bool(*b),
        Some(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        // Arrays and objects are never valid event fields; show them as text in the reason.
        Some(_) => Value::Float(f64::NAN),
    }
}

/// A JSON object whose keys must be unique: `{"event_id": "a", "event_id": "b"}` is
/// ambiguous, and keeping either value would be a silent guess.
struct UniqueObject(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut map = serde_json::Map::new();
                while let Some(k) = a.next_key::<String>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "key `{k}` appears twice in the object"
                        )));
                    }
                    let v: serde_json::Value = a.next_value()?;
                    map.insert(k, v);
                }
                Ok(UniqueObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

/// One JSON event object, parsed once: the JSONL reader and the live intake share it, so a
/// bad event gets the same reason text from both.
#[derive(Debug)]
pub struct JsonEvent(serde_json::Map<String, serde_json::Value>);

impl JsonEvent {
    /// Parse one event's JSON text; the error is the quarantine reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        // One parse on the common path: an object straight into a map that refuses repeated
        // keys; anything else is parsed only to say what it is.
        let parsed = if text.trim_start().starts_with('{') {
            serde_json::from_str::<UniqueObject>(text).map(|o| Some(o.0))
        } else {
            serde_json::from_str::<serde_json::Value>(text).map(|_| None)
        };
        match parsed {
            Ok(Some(o)) => Ok(Self(o)),
            Ok(None) => Err("not a JSON object".into()),
            Err(e) => Err(format!("invalid JSON: {e}")),
        }
    }

    /// The first key that is not an event column (ignored; worth a warning).
    pub fn unknown_key(&self) -> Option<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .find(|k| !COLUMNS.contains(k))
    }

    /// Validate the object as an event; the error is the quarantine reason.
    pub fn validate<'a>(&'a self, validator: &Validator) -> Result<ValidRow<'a>, String> {
        if let Some(c) = (0..16).find(|c| {
            matches!(
                self.0.get(COLUMNS[*c]),
                Some(serde_json::Value::Array(_) | serde_json::Value::Object(_))
            )
        }) {
            return Err(format!(
                "field `{}` must be a scalar, found a JSON array or object",
                COLUMNS[c]
            ));
        }
        validator.validate(|c| json_value(self.0.get(COLUMNS[c])))
    }
}

fn read_jsonl(
    path: &Path,
    mut input: Box<dyn BufRead + Send>,
    validator: &Validator,
    sink: &mut dyn RowSink,
    tick: &dyn Fn(),
) -> Result<ReadStats, EventsError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut stats = ReadStats::default();
    let mut warned_keys = false;
    loop {
        buf.clear();
        let read = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| read_error(path, "JSONL", stats.lines, e))?;
        if read == 0 {
            break;
        }
        stats.lines += 1;
        let line_no = stats.lines;
        if line_no.is_multiple_of(65_536) {
            tick();
        }
        let mut bytes = buf.as_slice();
        while let Some(b) = bytes
            .strip_suffix(b"\n")
            .or_else(|| bytes.strip_suffix(b"\r"))
        {
            bytes = b;
        }
        // A byte-order mark starts the file, not its first object (as for CSV).
        if line_no == 1
            && let Some(b) = bytes.strip_prefix("\u{feff}".as_bytes())
        {
            bytes = b;
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                sink.bad(
                    line_no,
                    format!(
                        "not valid UTF-8 (byte {} of the line); the raw line is kept with \\xNN escapes",
                        e.valid_up_to() + 1
                    ),
                    escape_bytes(bytes),
                )?;
                continue;
            }
        };
        if text.trim().is_empty() {
            stats.blank_lines += 1;
            continue;
        }
        let event = match JsonEvent::parse(text) {
            Ok(e) => e,
            Err(reason) => {
                sink.bad(line_no, reason, text.to_string())?;
                continue;
            }
        };
        if !warned_keys && let Some(k) = event.unknown_key() {
            tracing::warn!(file = %path.display(), "ignoring key `{k}`: not part of the event schema");
            warned_keys = true;
        }
        match event.validate(validator) {
            Ok(row) => sink.good(&row)?,
            Err(reason) => sink.bad(line_no, reason, text.to_string())?,
        }
    }
    tick();
    Ok(stats)
}

fn read_parquet(
    path: &Path,
    validator: &Validator,
    sink: &mut dyn RowSink,
    progress: &dyn Fn(u64),
) -> Result<ReadStats, EventsError> {
    let file = File::open(path).map_err(|source| EventsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let pq_err = |e: parquet::errors::ParquetError| EventsError::BadInput {
        path: path.to_path_buf(),
        message: format!("not a readable Parquet file: {e}"),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err)?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let map = map_columns(path, &names)?;
    let reader = builder.with_batch_size(65_536).build().map_err(pq_err)?;
    let mut row_base: u64 = 0;
    for batch in reader {
        let batch = batch.map_err(|e| EventsError::BadInput {
            path: path.to_path_buf(),
            message: format!("Parquet decode error: {e}"),
        })?;
        // Render every mapped column as text, then validate exactly like CSV.
        let mut cols: Vec<Option<arrow::array::StringArray>> = Vec::with_capacity(16);
        // Per row, the first column whose value the text cast turned into a null (bytes that
        // are not UTF-8): such a row is quarantined, never stored with the value lost.
        let mut lost: Vec<Option<usize>> = vec![None; batch.num_rows()];
        for (c, slot) in map.iter().enumerate() {
            match slot {
                Some(i) => {
                    let arr = batch.column(*i);
                    let as_text = arrow::compute::cast(arr, &DataType::Utf8).map_err(|e| {
                        EventsError::BadInput {
                            path: path.to_path_buf(),
                            message: format!("column `{}` cannot be read as text: {e}", names[*i]),
                        }
                    })?;
                    let text = as_text.as_string::<i32>().clone();
                    if text.null_count() != arr.null_count() {
                        for (r, slot) in lost.iter_mut().enumerate() {
                            if slot.is_none() && arr.is_valid(r) && text.is_null(r) {
                                *slot = Some(c);
                            }
                        }
                    }
                    cols.push(Some(text));
                }
                None => cols.push(None),
            }
        }
        for (r, &lost_col) in lost.iter().enumerate() {
            let get = |c: usize| match &cols[c] {
                Some(a) if a.is_valid(r) => Value::Str(a.value(r)),
                Some(_) => Value::Null,
                None => Value::Missing,
            };
            let outcome = match lost_col {
                Some(c) => Err(format!(
                    "field `{}` is not valid UTF-8 (raw bytes kept with \\xNN escapes)",
                    COLUMNS[c]
                )),
                None => validator.validate(get),
            };
            match outcome {
                Ok(row) => sink.good(&row)?,
                Err(reason) => {
                    let raw: serde_json::Map<String, serde_json::Value> = (0..16)
                        .filter_map(|c| {
                            cols[c].as_ref().map(|a| {
                                let v = if lost_col == Some(c) {
                                    let arr = map[c].map(|i| batch.column(i));
                                    serde_json::Value::String(
                                        arr.and_then(|col| raw_bytes(col.as_ref(), r))
                                            .map_or_else(|| "<not text>".into(), escape_bytes),
                                    )
                                } else if a.is_valid(r) {
                                    serde_json::Value::String(a.value(r).to_string())
                                } else {
                                    serde_json::Value::Null
                                };
                                (COLUMNS[c].to_string(), v)
                            })
                        })
                        .collect();
                    sink.bad(
                        row_base + r as u64 + 1,
                        reason,
                        serde_json::Value::Object(raw).to_string(),
                    )?
                }
            }
        }
        row_base += batch.num_rows() as u64;
        progress(row_base);
    }
    Ok(ReadStats {
        lines: row_base,
        blank_lines: 0,
    })
}

/// The bytes of row `r` of a binary column, for the quarantine.
fn raw_bytes(arr: &dyn Array, r: usize) -> Option<&[u8]> {
    Some(match arr.data_type() {
        DataType::Binary => arr.as_binary::<i32>().value(r),
        DataType::LargeBinary => arr.as_binary::<i64>().value(r),
        DataType::BinaryView => arr.as_binary_view().value(r),
        DataType::FixedSizeBinary(_) => arr.as_fixed_size_binary().value(r),
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        good: usize,
        /// The prompt and payment id of every good row.
        stored: Vec<(String, Option<String>)>,
        bad: Vec<String>,
        /// (line, raw) of every bad row.
        at: Vec<(u64, String)>,
    }

    impl RowSink for Collect {
        fn good(&mut self, row: &ValidRow<'_>) -> Result<(), EventsError> {
            self.good += 1;
            self.stored
                .push((row.prompt.to_string(), row.payment_id.map(str::to_string)));
            Ok(())
        }
        fn bad(&mut self, line: u64, reason: String, raw: String) -> Result<(), EventsError> {
            self.bad.push(reason);
            self.at.push((line, raw));
            Ok(())
        }
    }

    fn read_file(name: &str, bytes: &[u8]) -> (Collect, ReadStats) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (format, compression) = detect_format(&path, None).unwrap();
        let mut sink = Collect::default();
        let stats = read_rows(
            &path,
            format,
            compression,
            &Validator::default(),
            &mut sink,
            &|_| {},
        )
        .unwrap();
        (sink, stats)
    }

    fn json_event(id: u32, prompt: &str) -> String {
        format!(
            "{{\"event_id\":\"e_{id}\",\"ts\":\"2026-02-01T05:26:54Z\",\"user_id\":\"u_1\",\"ip\":\"203.0.113.1\",\"device_id\":\"d1\",\"payment_id\":null,\"surface\":\"web\",\"product\":\"chat\",\"event_type\":\"chat\",\"prompt\":\"{prompt}\",\"tokens_in\":10,\"tokens_out\":20,\"latency_ms\":300,\"blocked\":0,\"warned\":0,\"is_abuse_gt\":0}}"
        )
    }

    /// Property: over generated CSV files mixing good rows, quoted multi-line rows, five
    /// kinds of bad row, blank lines and stray quotes, with LF, CRLF, CR or mixed line ends,
    /// every physical line is accounted for, exactly the bad rows are quarantined, and each
    /// quarantined line number points at the physical line its raw text starts with.
    #[test]
    fn generated_malformed_csv_accounts_for_every_line_and_names_each_bad_one() {
        use rand::{Rng, SeedableRng};
        const HEADER: &str = "event_id,ts,user_id,ip,device_id,payment_id,surface,product,event_type,prompt,tokens_in,tokens_out,latency_ms,blocked,warned,is_abuse_gt";
        let row = |id: usize, prompt: &[u8], tail: &str| -> Vec<u8> {
            let mut r = format!("e_{id},2026-02-01T05:26:54Z,u_1,203.0.113.1,d1,,web,chat,chat,")
                .into_bytes();
            r.extend_from_slice(prompt);
            r.extend_from_slice(tail.as_bytes());
            r
        };
        let max_lines = 3;
        let validator = Validator {
            max_field_lines: max_lines,
            ..Validator::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
        for case in 0..60 {
            let eols: [&[u8]; 3] = [b"\n", b"\r\n", b"\r"];
            let fixed = rng.random_range(0..4usize);
            let eol = |rng: &mut rand_chacha::ChaCha8Rng| -> &'static [u8] {
                eols[if fixed < 3 {
                    fixed
                } else {
                    rng.random_range(0..3)
                }]
            };
            // Physical lines, each with its terminator, and what each record should give.
            let mut lines: Vec<Vec<u8>> = vec![HEADER.as_bytes().to_vec()];
            let mut terms: Vec<&[u8]> = vec![eol(&mut rng)];
            let (mut good, mut blank) = (0usize, 0u64);
            let mut bad_lines: Vec<u64> = Vec::new();
            let mut id = 0;
            let n = rng.random_range(1..40);
            let mut forced_good = 0;
            for _ in 0..n {
                id += 1;
                let kind = if forced_good > 0 {
                    forced_good -= 1;
                    0
                } else {
                    rng.random_range(0..8)
                };
                let at = lines.len() as u64 + 1;
                let mut t = eol(&mut rng);
                match kind {
                    0 => {
                        lines.push(row(
                            id,
                            format!("hello {id}").as_bytes(),
                            ",10,20,300,0,0,0",
                        ));
                        good += 1;
                    }
                    1 => {
                        // A quoted prompt over two physical lines, with a doubled quote.
                        lines.push(row(id, b"\"first \"\"half\"\"", ""));
                        terms.push(t);
                        lines.push(b"second half\",10,20,300,0,0,0".to_vec());
                        good += 1;
                    }
                    2 => {
                        lines.push(row(id, b"short", ",10,20,300,0,0"));
                        bad_lines.push(at);
                    }
                    3 => {
                        lines.push(row(id, b"\"closed\"then text", ",10,20,300,0,0,0"));
                        bad_lines.push(at);
                    }
                    4 => {
                        lines.push(row(id, b"bad \xFF byte", ",10,20,300,0,0,0"));
                        bad_lines.push(at);
                    }
                    5 => {
                        // `\r` then an empty line ended by `\n` is one `\r\n`: not a blank
                        // line in any reader, so the generator does not write it.
                        if t == b"\n" && terms.last() == Some(&&b"\r"[..]) {
                            t = b"\r\n";
                        }
                        lines.push(Vec::new());
                        blank += 1;
                    }
                    6 => {
                        lines.push(row(id, b"hi", ",ten,20,300,0,0,0"));
                        bad_lines.push(at);
                    }
                    _ => {
                        // A stray quote, then quote-free rows past the line bound.
                        lines.push(row(id, b"\"never closed", ",10,20,300,0,0,0"));
                        bad_lines.push(at);
                        forced_good = max_lines + 1;
                    }
                }
                terms.push(t);
            }
            let last_has_terminator = rng.random_bool(0.5);
            let mut bytes = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                bytes.extend_from_slice(l);
                if i + 1 < lines.len() || last_has_terminator {
                    bytes.extend_from_slice(terms[i]);
                }
            }
            // A blank last line without a terminator is no line at all.
            let physical = if !last_has_terminator && lines.last().is_some_and(Vec::is_empty) {
                blank -= 1;
                lines.len() as u64 - 1
            } else {
                lines.len() as u64
            };
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("gen.csv");
            std::fs::write(&path, &bytes).unwrap();
            let mut sink = Collect::default();
            let stats = read_rows(
                &path,
                Format::Csv,
                Compression::None,
                &validator,
                &mut sink,
                &|_| {},
            )
            .unwrap();
            let got: Vec<u64> = sink.at.iter().map(|a| a.0).collect();
            assert_eq!(got, bad_lines, "case {case}: {:?}", sink.bad);
            assert_eq!(sink.good, good, "case {case}: {:?}", sink.bad);
            assert_eq!(stats.lines, physical, "case {case}");
            assert_eq!(stats.blank_lines, blank, "case {case}");
            for (line, raw) in &sink.at {
                let want = escape_bytes(&lines[*line as usize - 1]);
                assert_eq!(raw, &want, "case {case} line {line}");
            }
        }
    }

    #[test]
    fn a_non_utf8_byte_in_jsonl_quarantines_its_row_and_keeps_the_rest() {
        let mut bytes = Vec::new();
        for i in 0..5 {
            let mut line = json_event(i, "hello").into_bytes();
            if i == 2 {
                let at = line.windows(5).position(|w| w == b"hello").unwrap();
                line[at + 1] = 0xFF;
            }
            bytes.extend_from_slice(&line);
            bytes.push(b'\n');
        }
        let (sink, stats) = read_file("e.jsonl", &bytes);
        assert_eq!(sink.good, 4);
        assert_eq!(stats.lines, 5);
        assert_eq!(sink.at.len(), 1);
        assert_eq!(sink.at[0].0, 3);
        assert!(sink.bad[0].contains("not valid UTF-8"), "{:?}", sink.bad);
        assert!(sink.at[0].1.contains("h\\xFFllo"), "{}", sink.at[0].1);
    }

    #[test]
    fn a_jsonl_byte_order_mark_is_stripped_and_a_repeated_key_is_a_bad_row() {
        let mut text = format!("\u{feff}{}\n", json_event(1, "a"));
        let twice = json_event(2, "b").replacen("{", "{\"event_id\":\"x\",", 1);
        text.push_str(&twice);
        text.push('\n');
        text.push_str("\n[1,2]\n");
        let (sink, stats) = read_file("e.jsonl", text.as_bytes());
        assert_eq!(sink.good, 1, "{:?}", sink.bad);
        assert_eq!(
            stats,
            ReadStats {
                lines: 4,
                blank_lines: 1
            }
        );
        assert_eq!(sink.at[0].0, 2);
        assert!(
            sink.bad[0].contains("`event_id` appears twice"),
            "{:?}",
            sink.bad
        );
        assert_eq!(sink.at[1].0, 4);
        assert!(sink.bad[1].contains("not a JSON object"), "{:?}", sink.bad);
    }

    #[test]
    fn parquet_binary_columns_with_non_utf8_bytes_are_quarantined_not_emptied() {
        use arrow::array::{ArrayRef, BinaryArray, Int64Array, StringArray};
        use arrow::datatypes::{Field, Schema};
        let n = 4;
        let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
        let int = |v: i64| -> ArrayRef { Arc::new(Int64Array::from(vec![v; n])) };
        let mut cols: Vec<(&str, ArrayRef)> = Vec::new();
        for c in COLUMNS {
            let arr = match c {
                "event_id" => Arc::new(StringArray::from(vec!["e1", "e2", "e3", "e4"])) as ArrayRef,
                "ts" => text("2026-02-01T05:26:54Z"),
                "prompt" => Arc::new(BinaryArray::from(vec![
                    &b"fine"[..],
                    &b"bad \xC3"[..],
                    &b"ok"[..],
                    &b"ok"[..],
                ])),
                "payment_id" => Arc::new(BinaryArray::from(vec![
                    Some(&b"pay_1"[..]),
                    Some(&b"pay_2"[..]),
                    Some(&b"\xFFpay"[..]),
                    None,
                ])),
                "surface" => text("web"),
                "product" | "event_type" => text("chat"),
                "tokens_in" | "tokens_out" | "latency_ms" => int(5),
                "blocked" | "warned" | "is_abuse_gt" => int(0),
                _ => text("x"),
            };
            cols.push((c, arr));
        }
        let schema = Arc::new(Schema::new(
            cols.iter()
                .map(|(c, a)| Field::new(*c, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            cols.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let (sink, stats) = read_file("e.parquet", &buf);
        assert_eq!(stats.lines, 4);
        // Rows 1 and 4 are stored as they are: a payment null stays "no payment".
        assert_eq!(
            sink.stored,
            vec![
                ("fine".to_string(), Some("pay_1".to_string())),
                ("ok".into(), None)
            ]
        );
        let lines: Vec<u64> = sink.at.iter().map(|a| a.0).collect();
        assert_eq!(lines, vec![2, 3]);
        assert!(
            sink.bad[0].contains("`prompt` is not valid UTF-8"),
            "{:?}",
            sink.bad
        );
        assert!(
            sink.bad[1].contains("`payment_id` is not valid UTF-8"),
            "{:?}",
            sink.bad
        );
        assert!(sink.at[0].1.contains("bad \\\\xC3"), "{}", sink.at[0].1);
    }

    /// Regression: the record-at-once UTF-8 check must not accept a character split across
    /// two fields (the whole record is valid UTF-8, each field is not).
    #[test]
    fn utf8_fast_path_rejects_a_character_split_between_fields() {
        let map: [Option<usize>; 16] = std::array::from_fn(Some);
        let mut fields: Vec<Vec<u8>> = vec![
            b"e1".to_vec(),
            b"2026-02-01T00:00:00Z".to_vec(),
            b"u1".to_vec(),
            b"1.2.3.4".to_vec(),
            b"d1".to_vec(),
            b"".to_vec(),
            b"web".to_vec(),
            b"chat".to_vec(),
            b"chat".to_vec(),
            b"hi".to_vec(),
            b"1".to_vec(),
            b"1".to_vec(),
            b"1".to_vec(),
            b"0".to_vec(),
            b"0".to_vec(),
            b"0".to_vec(),
        ];
        let record = |fields: &[Vec<u8>]| {
            let f: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            CsvRecord::from_fields(2, &f)
        };
        let good = record(&fields);
        let mut sink = Collect::default();
        check_csv_record(&good, 16, &map, &Validator::default(), &mut sink).unwrap();
        assert_eq!((sink.good, sink.bad.len()), (1, 0), "{:?}", sink.bad);
        // "é" is C3 A9: put C3 at the end of the device id and A9 at the start of payment_id
        fields[4] = b"d1\xC3".to_vec();
        fields[5] = b"\xA9".to_vec();
        let split = record(&fields);
        assert!(std::str::from_utf8(split.as_slice()).is_ok());
        let mut sink = Collect::default();
        check_csv_record(&split, 16, &map, &Validator::default(), &mut sink).unwrap();
        assert_eq!(sink.good, 0);
        assert!(sink.bad[0].contains("not valid UTF-8"), "{:?}", sink.bad);
    }

    #[test]
    fn format_detection_follows_extensions() {
        let d = |p: &str| detect_format(Path::new(p), None);
        assert_eq!(d("a.csv").unwrap(), (Format::Csv, Compression::None));
        assert_eq!(d("a.CSV.gz").unwrap(), (Format::Csv, Compression::Gzip));
        assert_eq!(
            d("a.jsonl.zst").unwrap(),
            (Format::Jsonl, Compression::Zstd)
        );
        assert_eq!(
            d("a.parquet").unwrap(),
            (Format::Parquet, Compression::None)
        );
        assert!(d("a.txt").unwrap_err().to_string().contains("--format"));
        assert!(d("a.parquet.gz").is_err());
        assert_eq!(
            detect_format(Path::new("a.txt.gz"), Some(Format::Csv)).unwrap(),
            (Format::Csv, Compression::Gzip)
        );
    }
}
