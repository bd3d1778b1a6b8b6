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
) -> Result<(), EventsError> {
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

fn csv_error(path: &Path, e: csv::Error) -> EventsError {
    EventsError::BadInput {
        path: path.to_path_buf(),
        message: format!("CSV read error: {e}"),
    }
}

fn raw_csv(rec: &csv::ByteRecord) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let _ = w.write_byte_record(rec);
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .to_string()
}

fn read_csv(
    path: &Path,
    input: Box<dyn BufRead + Send>,
    validator: &Validator,
    sink: &mut dyn RowSink,
    tick: &dyn Fn(),
) -> Result<(), EventsError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(input);
    let headers = rdr.byte_headers().map_err(|e| csv_error(path, e))?.clone();
    let names: Vec<String> = headers
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    let map = map_columns(path, &names)?;
    let width = headers.len();
    // CSV parsing runs on its own thread, handing chunks of records to this one for
    // validation; emptied chunks come back for reuse so records keep their allocations.
    const CHUNK: usize = 8192;
    std::thread::scope(|s| -> Result<(), EventsError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<csv::ByteRecord>, csv::Error>>(4);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<csv::ByteRecord>>();
        s.spawn(move || {
            loop {
                let mut chunk = back_rx.try_recv().unwrap_or_default();
                chunk.resize_with(CHUNK, csv::ByteRecord::new);
                let mut n = 0;
                while n < CHUNK {
                    match rdr.read_byte_record(&mut chunk[n]) {
                        Ok(true) => n += 1,
                        Ok(false) => break,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                let done = n < CHUNK;
                chunk.truncate(n);
                if n > 0 && tx.send(Ok(chunk)).is_err() {
                    return;
                }
                if done {
                    return;
                }
            }
        });
        let mut n: u64 = 0;
        for msg in rx {
            let chunk = msg.map_err(|e| csv_error(path, e))?;
            for rec in &chunk {
                n += 1;
                check_csv_record(rec, n, width, &map, validator, sink)?;
            }
            tick();
            let _ = back_tx.send(chunk);
        }
        Ok(())
    })?;
    tick();
    Ok(())
}

fn check_csv_record(
    rec: &csv::ByteRecord,
    n: u64,
    width: usize,
    map: &[Option<usize>; 16],
    validator: &Validator,
    sink: &mut dyn RowSink,
) -> Result<(), EventsError> {
    let line = rec.position().map(|p| p.line()).unwrap_or(n + 1);
    if rec.len() != width {
        return sink.bad(
            line,
            format!("expected {width} fields, found {}", rec.len()),
            raw_csv(rec),
        );
    }
    let mut fields: [&str; 16] = [""; 16];
    // Fast path: validate the record's bytes once and slice the fields out of it. A field
    // boundary inside a character (or any invalid byte) falls through to the per-field check,
    // which names the field.
    let mut all_ok = false;
    if let Ok(whole) = std::str::from_utf8(rec.as_slice()) {
        all_ok = true;
        for (c, slot) in map.iter().enumerate() {
            if let Some(i) = slot {
                match rec.range(*i).and_then(|r| whole.get(r)) {
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
            match std::str::from_utf8(rec.get(*i).unwrap_or_default()) {
                Ok(s) => fields[c] = s,
                Err(_) => {
                    return sink.bad(
                        line,
                        format!("field `{}` is not valid UTF-8", COLUMNS[c]),
                        raw_csv(rec),
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
        Err(reason) => sink.bad(line, reason, raw_csv(rec)),
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

fn read_jsonl(
    path: &Path,
    mut input: Box<dyn BufRead + Send>,
    validator: &Validator,
    sink: &mut dyn RowSink,
    tick: &dyn Fn(),
) -> Result<(), EventsError> {
    let mut line = String::new();
    let mut line_no: u64 = 0;
    let mut warned_keys = false;
    loop {
        line.clear();
        let read = input.read_line(&mut line).map_err(|source| {
            // A stream that stops decoding (a truncated .gz/.zst, bytes that are not text) is
            // the input's fault, as the CSV reader says too; other failures are the machine's.
            use std::io::ErrorKind as K;
            match source.kind() {
                K::InvalidData | K::UnexpectedEof | K::InvalidInput => EventsError::BadInput {
                    path: path.to_path_buf(),
                    message: format!("JSONL read error after line {line_no}: {source}"),
                },
                _ => EventsError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            }
        })?;
        if read == 0 {
            break;
        }
        line_no += 1;
        if line_no.is_multiple_of(65_536) {
            tick();
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let obj = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => {
                sink.bad(line_no, "not a JSON object".into(), text.to_string())?;
                continue;
            }
            Err(e) => {
                sink.bad(line_no, format!("invalid JSON: {e}"), text.to_string())?;
                continue;
            }
        };
        if !warned_keys && let Some(k) = obj.keys().find(|k| !COLUMNS.contains(&k.as_str())) {
            tracing::warn!(file = %path.display(), "ignoring key `{k}`: not part of the event schema");
            warned_keys = true;
        }
        if let Some(c) = (0..16).find(|c| {
            matches!(
                obj.get(COLUMNS[*c]),
                Some(serde_json::Value::Array(_) | serde_json::Value::Object(_))
            )
        }) {
            sink.bad(
                line_no,
                format!(
                    "field `{}` must be a scalar, found a JSON array or object",
                    COLUMNS[c]
                ),
                text.to_string(),
            )?;
            continue;
        }
        match validator.validate(|c| json_value(obj.get(COLUMNS[c]))) {
            Ok(row) => sink.good(&row)?,
            Err(reason) => sink.bad(line_no, reason, text.to_string())?,
        }
    }
    tick();
    Ok(())
}

fn read_parquet(
    path: &Path,
    validator: &Validator,
    sink: &mut dyn RowSink,
    progress: &dyn Fn(u64),
) -> Result<(), EventsError> {
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
        for slot in map.iter() {
            match slot {
                Some(i) => {
                    let arr = batch.column(*i);
                    let as_text = arrow::compute::cast(arr, &DataType::Utf8).map_err(|e| {
                        EventsError::BadInput {
                            path: path.to_path_buf(),
                            message: format!("column `{}` cannot be read as text: {e}", names[*i]),
                        }
                    })?;
                    cols.push(Some(as_text.as_string::<i32>().clone()));
                }
                None => cols.push(None),
            }
        }
        for r in 0..batch.num_rows() {
            let get = |c: usize| match &cols[c] {
                Some(a) if a.is_valid(r) => Value::Str(a.value(r)),
                Some(_) => Value::Null,
                None => Value::Missing,
            };
            match validator.validate(get) {
                Ok(row) => sink.good(&row)?,
                Err(reason) => {
                    let raw: serde_json::Map<String, serde_json::Value> = (0..16)
                        .filter_map(|c| {
                            cols[c].as_ref().map(|a| {
                                let v = if a.is_valid(r) {
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
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        good: usize,
        bad: Vec<String>,
    }

    impl RowSink for Collect {
        fn good(&mut self, _row: &ValidRow<'_>) -> Result<(), EventsError> {
            self.good += 1;
            Ok(())
        }
        fn bad(&mut self, _line: u64, reason: String, _raw: String) -> Result<(), EventsError> {
            self.bad.push(reason);
            Ok(())
        }
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
        let good = csv::ByteRecord::from(fields.clone());
        let mut sink = Collect::default();
        check_csv_record(&good, 1, 16, &map, &Validator::default(), &mut sink).unwrap();
        assert_eq!((sink.good, sink.bad.len()), (1, 0), "{:?}", sink.bad);
        // "é" is C3 A9: put C3 at the end of the device id and A9 at the start of payment_id
        fields[4] = b"d1\xC3".to_vec();
        fields[5] = b"\xA9".to_vec();
        let split = csv::ByteRecord::from(fields);
        assert!(std::str::from_utf8(split.as_slice()).is_ok());
        let mut sink = Collect::default();
        check_csv_record(&split, 1, 16, &map, &Validator::default(), &mut sink).unwrap();
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
