//! Writers for record batches: Parquet, CSV and a SQLite database.
//!
//! Each writer fills a temporary file next to the target and renames it into place when done,
//! so an interrupted run never leaves a half-written output behind.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::{Table, WarehouseError};

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn werr(path: &Path) -> impl Fn(String) -> WarehouseError + '_ {
    move |message| WarehouseError::Write {
        path: path.to_path_buf(),
        message,
    }
}

/// Fill the temporary file beside `path` with `fill`, then rename it into place. On any
/// error the temporary file is removed: a failed write leaves neither a partial output nor
/// a stray temporary file, and an existing output stays as it was.
fn atomically(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), WarehouseError>,
) -> Result<(), WarehouseError> {
    let tmp = tmp_path(path);
    let result = fill(&tmp)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| werr(path)(e.to_string())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write a table as Parquet (Snappy-compressed).
pub fn write_parquet(table: &Table, path: &Path) -> Result<(), WarehouseError> {
    atomically(path, |tmp| fill_parquet(table, path, tmp))
}

fn fill_parquet(table: &Table, path: &Path, tmp: &Path) -> Result<(), WarehouseError> {
    let e = werr(path);
    let file = File::create(tmp).map_err(|x| e(x.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(file, table.schema.clone(), Some(props))
        .map_err(|x| e(x.to_string()))?;
    for b in &table.batches {
        w.write(b).map_err(|x| e(x.to_string()))?;
    }
    w.close().map_err(|x| e(x.to_string()))?;
    Ok(())
}

/// Write a table as CSV with a header line.
pub fn write_csv(table: &Table, path: &Path) -> Result<(), WarehouseError> {
    atomically(path, |tmp| fill_csv(table, path, tmp))
}

fn fill_csv(table: &Table, path: &Path, tmp: &Path) -> Result<(), WarehouseError> {
    use std::io::Write as _;
    let e = werr(path);
    let file = File::create(tmp).map_err(|x| e(x.to_string()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut text = Vec::with_capacity(1 << 20);
    csv_header(&table.schema, &mut text);
    for b in &table.batches {
        // One batch at a time, in pieces of rows, so the text never holds a whole table.
        for start in (0..b.num_rows()).step_by(CSV_ROWS_PER_WRITE) {
            let len = CSV_ROWS_PER_WRITE.min(b.num_rows() - start);
            csv_rows(&b.slice(start, len), &mut text).map_err(|x| e(x.to_string()))?;
            w.write_all(&text).map_err(|x| e(x.to_string()))?;
            text.clear();
        }
    }
    w.write_all(&text).map_err(|x| e(x.to_string()))?;
    // Flush explicitly: dropping the buffer would swallow a failed last write (a full disk)
    // and commit a truncated file.
    w.into_inner().map_err(|x| e(x.error().to_string()))?;
    Ok(())
}

/// Rows formatted before their text is handed to the file.
const CSV_ROWS_PER_WRITE: usize = 16_384;

/// Append `field` as a CSV field: quoted (quotes doubled) only when it holds a comma, a
/// quote or a line break, as the `csv` crate's default writer does.
fn csv_field(field: &[u8], out: &mut Vec<u8>) {
    if field
        .iter()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push(b'"');
        for &b in field {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field);
    }
}

/// The header line: the column names as CSV fields.
fn csv_header(schema: &arrow::datatypes::Schema, out: &mut Vec<u8>) {
    let fields = schema.fields();
    for (k, f) in fields.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        csv_field(f.name().as_bytes(), out);
    }
    if fields.len() == 1 && fields[0].name().is_empty() {
        out.extend_from_slice(b"\"\"");
    }
    out.push(b'\n');
}

/// Appends the integer in row `i` of one column.
type IntWriter<'a> = Box<dyn Fn(usize, &mut itoa::Buffer, &mut Vec<u8>) + 'a>;

/// How one column's values become text: the common types directly, anything else through
/// Arrow's own display (the text `arrow::csv` would write).
enum CsvColumn<'a> {
    Utf8(&'a arrow::array::StringArray),
    LargeUtf8(&'a arrow::array::LargeStringArray),
    Utf8View(&'a arrow::array::StringViewArray),
    Int(IntWriter<'a>),
    Float64(&'a arrow::array::Float64Array),
    Float32(&'a arrow::array::Float32Array),
    Boolean(&'a arrow::array::BooleanArray),
    Date32(
        &'a arrow::array::Date32Array,
        arrow::util::display::ArrayFormatter<'a>,
    ),
    Other(arrow::util::display::ArrayFormatter<'a>),
}

fn int_column<'a, T>(a: &'a dyn Array) -> CsvColumn<'a>
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: itoa::Integer,
{
    let a = a.as_primitive::<T>();
    CsvColumn::Int(Box::new(move |i, buf, out| {
        out.extend_from_slice(buf.format(a.value(i)).as_bytes());
    }))
}

/// Append the rows of `batch` as CSV lines, byte for byte what `arrow::csv::Writer` (with
/// its defaults and our timestamp format) writes, faster: no per-value dynamic formatter.
fn csv_rows(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), arrow::error::ArrowError> {
    use arrow::datatypes::{
        Int8Type, Int16Type, Int32Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
    };
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default()
        .with_null("")
        .with_timestamp_tz_format(Some(CSV_TIMESTAMP_TZ_FORMAT));
    let mut columns = Vec::with_capacity(batch.num_columns());
    for a in batch.columns() {
        let a = a.as_ref();
        if a.data_type().is_nested() {
            return Err(arrow::error::ArrowError::CsvError(format!(
                "Nested type {} is not supported in CSV",
                a.data_type()
            )));
        }
        columns.push(match a.data_type() {
            DataType::Utf8 => CsvColumn::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => CsvColumn::LargeUtf8(a.as_string::<i64>()),
            DataType::Utf8View => CsvColumn::Utf8View(a.as_string_view()),
            DataType::Int8 => int_column::<Int8Type>(a),
            DataType::Int16 => int_column::<Int16Type>(a),
            DataType::Int32 => int_column::<Int32Type>(a),
            DataType::Int64 => int_column::<Int64Type>(a),
            DataType::UInt8 => int_column::<UInt8Type>(a),
            DataType::UInt16 => int_column::<UInt16Type>(a),
            DataType::UInt32 => int_column::<UInt32Type>(a),
            DataType::UInt64 => int_column::<UInt64Type>(a),
            DataType::Float64 => CsvColumn::Float64(a.as_primitive::<Float64Type>()),
            DataType::Float32 => {
                CsvColumn::Float32(a.as_primitive::<arrow::datatypes::Float32Type>())
            }
            DataType::Boolean => CsvColumn::Boolean(a.as_boolean()),
            DataType::Date32 => CsvColumn::Date32(
                a.as_primitive::<arrow::datatypes::Date32Type>(),
                ArrayFormatter::try_new(a, &options)?,
            ),
            _ => CsvColumn::Other(ArrayFormatter::try_new(a, &options)?),
        });
    }
    let single = columns.len() == 1;
    let (mut ints, mut floats, mut text) = (itoa::Buffer::new(), ryu::Buffer::new(), String::new());
    for i in 0..batch.num_rows() {
        let row_start = out.len();
        for (k, (col, a)) in columns.iter().zip(batch.columns()).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            if a.is_null(i) {
                continue;
            }
            match col {
                CsvColumn::Utf8(s) => csv_field(s.value(i).as_bytes(), out),
                CsvColumn::LargeUtf8(s) => csv_field(s.value(i).as_bytes(), out),
                CsvColumn::Utf8View(s) => csv_field(s.value(i).as_bytes(), out),
                CsvColumn::Int(f) => f(i, &mut ints, out),
                CsvColumn::Float64(v) => {
                    out.extend_from_slice(floats.format(v.value(i)).as_bytes())
                }
                CsvColumn::Float32(v) => {
                    out.extend_from_slice(floats.format(v.value(i)).as_bytes())
                }
                CsvColumn::Boolean(v) => {
                    out.extend_from_slice(if v.value(i) { b"true" } else { b"false" });
                }
                CsvColumn::Date32(v, fallback) => match ymd(v.value(i)) {
                    Some(date) => out.extend_from_slice(&date),
                    None => {
                        text.clear();
                        fallback.value(i).write(&mut text)?;
                        csv_field(text.as_bytes(), out);
                    }
                },
                CsvColumn::Other(f) => {
                    text.clear();
                    f.value(i).write(&mut text)?;
                    csv_field(text.as_bytes(), out);
                }
            }
        }
        if single && out.len() == row_start {
            // A lone empty field is written quoted, so the line is not read as blank.
            out.extend_from_slice(b"\"\"");
        }
        out.push(b'\n');
    }
    Ok(())
}

/// `YYYY-MM-DD` of a day number for years 0 to 9999, where Arrow writes exactly that;
/// `None` outside, where its text differs (signs, wider years).
fn ymd(days: i32) -> Option<[u8; 10]> {
    vigil_events::timestamp::date_text(i64::from(days))
}

/// Timestamps with a time zone are written as UTC with microseconds.
const CSV_TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

fn sqlite_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Boolean => "INTEGER",
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "REAL",
        _ => "TEXT",
    }
}

/// Write tables into a new SQLite database at `path` (replacing any previous file), one SQL
/// table per [`Table`], in one transaction.
pub fn write_sqlite(tables: &[&Table], path: &Path) -> Result<(), WarehouseError> {
    let _ = std::fs::remove_file(tmp_path(path));
    atomically(path, |tmp| fill_sqlite(tables, path, tmp))
}

fn fill_sqlite(tables: &[&Table], path: &Path, tmp: &Path) -> Result<(), WarehouseError> {
    let e = werr(path);
    let mut conn = rusqlite::Connection::open(tmp).map_err(|x| e(x.to_string()))?;
    conn.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(|x| e(x.to_string()))?;
    let tx = conn.transaction().map_err(|x| e(x.to_string()))?;
    for table in tables {
        let fields = table.schema.fields();
        let cols: Vec<String> = fields
            .iter()
            .map(|f| format!("\"{}\" {}", f.name(), sqlite_type(f.data_type())))
            .collect();
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS \"{0}\"; CREATE TABLE \"{0}\" ({1});",
            table.name,
            cols.join(", ")
        ))
        .map_err(|x| e(x.to_string()))?;
        let placeholders = vec!["?"; fields.len()].join(", ");
        let mut stmt = tx
            .prepare(&format!(
                "INSERT INTO \"{}\" VALUES ({placeholders})",
                table.name
            ))
            .map_err(|x| e(x.to_string()))?;
        for batch in &table.batches {
            // Normalise every column to i64, f64 or text once per batch.
            let mut converted = Vec::with_capacity(batch.num_columns());
            for (f, col) in fields.iter().zip(batch.columns()) {
                let target = match sqlite_type(f.data_type()) {
                    "INTEGER" => DataType::Int64,
                    "REAL" => DataType::Float64,
                    _ => DataType::Utf8,
                };
                let arr = if matches!(f.data_type(), DataType::Timestamp(_, _)) {
                    format_timestamps(col)
                } else if let Some(days) = col.as_primitive_opt::<arrow::datatypes::Date32Type>() {
                    format_dates(days).map_err(|x| e(x.to_string()))?
                } else {
                    arrow::compute::cast(col, &target).map_err(|x| e(x.to_string()))?
                };
                converted.push(arr);
            }
            // Values are bound in place (no per-cell allocation).
            for r in 0..batch.num_rows() {
                for (k, arr) in converted.iter().enumerate() {
                    let bound = if arr.is_null(r) {
                        stmt.raw_bind_parameter(k + 1, rusqlite::types::Null)
                    } else {
                        match arr.data_type() {
                            DataType::Int64 => stmt.raw_bind_parameter(
                                k + 1,
                                arr.as_primitive::<Int64Type>().value(r),
                            ),
                            DataType::Float64 => stmt.raw_bind_parameter(
                                k + 1,
                                arr.as_primitive::<Float64Type>().value(r),
                            ),
                            _ => stmt.raw_bind_parameter(k + 1, arr.as_string::<i32>().value(r)),
                        }
                    };
                    bound.map_err(|x| e(x.to_string()))?;
                }
                stmt.raw_execute().map_err(|x| e(x.to_string()))?;
            }
        }
    }
    tx.commit().map_err(|x| e(x.to_string()))?;
    conn.close().map_err(|(_, x)| e(x.to_string()))?;
    Ok(())
}

/// Dates as `YYYY-MM-DD` text (Arrow's own text for years outside 0-9999), what a cast to
/// text gives, without a calendar conversion through chrono per value.
fn format_dates(
    days: &arrow::array::Date32Array,
) -> Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    if days.iter().flatten().any(|d| ymd(d).is_none()) {
        return arrow::compute::cast(days, &DataType::Utf8);
    }
    let mut out = arrow::array::StringBuilder::with_capacity(days.len(), days.len() * 10);
    for d in days {
        match d.and_then(ymd) {
            // ASCII digits and dashes only.
            Some(text) => out.append_value(std::str::from_utf8(&text).unwrap_or_default()),
            None => out.append_null(),
        }
    }
    Ok(std::sync::Arc::new(out.finish()))
}

/// Timestamps as RFC 3339 text in UTC with microseconds (`2026-02-01T05:26:54.143876Z`).
fn format_timestamps(col: &arrow::array::ArrayRef) -> arrow::array::ArrayRef {
    use arrow::array::StringBuilder;
    let micros = arrow::compute::cast(
        col,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
    )
    .ok();
    let mut out = StringBuilder::with_capacity(col.len(), col.len() * 27);
    match micros {
        Some(m) => {
            let m = m.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            for i in 0..m.len() {
                if m.is_null(i) {
                    out.append_null();
                } else {
                    out.append_value(vigil_events::timestamp::format_rfc3339_micros(m.value(i)));
                }
            }
        }
        None => {
            for _ in 0..col.len() {
                out.append_null();
            }
        }
    }
    std::sync::Arc::new(out.finish())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int8Array, Int64Array,
        LargeStringArray, StringArray, StringViewArray, TimestampMicrosecondArray, UInt32Array,
    };
    use arrow::datatypes::{Field, Schema};

    use super::*;

    /// What `arrow::csv::Writer` writes for `t` with the settings our CSVs always used.
    fn arrow_csv(t: &Table) -> Vec<u8> {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .with_timestamp_tz_format(CSV_TIMESTAMP_TZ_FORMAT.to_string())
            .build(Vec::new());
        for b in &t.batches {
            w.write(b).unwrap();
        }
        w.into_inner()
    }

    fn table(columns: Vec<(&str, ArrayRef)>) -> Table {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch =
            RecordBatch::try_new(schema.clone(), columns.into_iter().map(|c| c.1).collect())
                .unwrap();
        Table {
            name: "t".into(),
            schema,
            batches: vec![batch.slice(0, 3), batch.slice(3, batch.num_rows() - 3)],
        }
    }

    fn ours(t: &Table) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        write_csv(t, &path).unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn csv_text_matches_arrow_csv_for_every_column_type() {
        let text = [
            Some("plain"),
            Some(""),
            None,
            Some("comma, inside"),
            Some("a \"quote\""),
            Some("line\nbreak"),
            Some("carriage\rreturn"),
            Some("ünïcödé"),
        ];
        let floats = [
            Some(0.1),
            Some(-0.0),
            None,
            Some(1e21),
            Some(1e-7),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(123_456_789.125),
        ];
        let t = table(vec![
            ("s", Arc::new(StringArray::from(text.to_vec()))),
            ("large", Arc::new(LargeStringArray::from(text.to_vec()))),
            ("view", Arc::new(StringViewArray::from(text.to_vec()))),
            (
                "i64",
                Arc::new(Int64Array::from(vec![
                    Some(i64::MIN),
                    Some(0),
                    None,
                    Some(-7),
                    Some(i64::MAX),
                    Some(42),
                    Some(1),
                    Some(-1),
                ])),
            ),
            (
                "i8",
                Arc::new(Int8Array::from(vec![-128, 127, 0, 1, -1, 5, 6, 7])),
            ),
            (
                "u32",
                Arc::new(UInt32Array::from(vec![
                    Some(u32::MAX),
                    None,
                    Some(0),
                    Some(9),
                    Some(10),
                    Some(99),
                    Some(100),
                    Some(1000),
                ])),
            ),
            ("f64", Arc::new(Float64Array::from(floats.to_vec()))),
            (
                "f32",
                Arc::new(Float32Array::from(vec![
                    Some(0.1f32),
                    None,
                    Some(f32::NEG_INFINITY),
                    Some(3.5),
                    Some(1e-8),
                    Some(-2.25),
                    Some(7.0),
                    Some(1e30),
                ])),
            ),
            (
                "flag",
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                    Some(false),
                    Some(true),
                    Some(true),
                    Some(false),
                ])),
            ),
            (
                "day",
                Arc::new(Date32Array::from(vec![
                    Some(0),
                    Some(20_499),
                    None,
                    Some(-719_528),
                    Some(-719_529),
                    Some(2_932_896),
                    Some(2_932_897),
                    Some(-1),
                ])),
            ),
            (
                "ts",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        Some(0),
                        Some(1_771_113_600_123_456),
                        None,
                        Some(-1),
                        Some(1),
                        Some(86_400_000_000),
                        Some(1_000_000),
                        Some(999_999),
                    ])
                    .with_timezone("UTC"),
                ),
            ),
        ]);
        let expected = arrow_csv(&t);
        assert_eq!(
            String::from_utf8_lossy(&ours(&t)),
            String::from_utf8_lossy(&expected)
        );
    }

    #[test]
    fn a_lone_empty_field_is_quoted_like_arrow_csv() {
        let t = table(vec![(
            "only",
            Arc::new(StringArray::from(vec![
                Some("x"),
                Some(""),
                None,
                Some("y"),
            ])) as ArrayRef,
        )]);
        assert_eq!(ours(&t), arrow_csv(&t));
        let empty = Table {
            name: "t".into(),
            schema: t.schema.clone(),
            batches: vec![],
        };
        assert_eq!(ours(&empty), b"only\n");
    }

    /// (day, n, x, s, the SQLite types of day, n and x).
    type SqliteRow = (
        Option<String>,
        Option<i64>,
        Option<f64>,
        Option<String>,
        String,
    );

    #[test]
    fn sqlite_cells_keep_their_types_and_arrow_text_for_dates() {
        let t = table(vec![
            (
                "day",
                Arc::new(Date32Array::from(vec![
                    Some(20_499),
                    None,
                    Some(-719_529),
                    Some(0),
                ])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    Some(-2),
                    None,
                    Some(i64::MAX),
                ])),
            ),
            (
                "x",
                Arc::new(Float64Array::from(vec![
                    Some(0.5),
                    None,
                    Some(-1e300),
                    Some(2.0),
                ])),
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![
                    Some("a,b"),
                    Some(""),
                    None,
                    Some("ü"),
                ])),
            ),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        write_sqlite(&[&t], &path).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT day, n, x, s, typeof(day), typeof(n), typeof(x) FROM t ORDER BY rowid")
            .unwrap();
        let rows: Vec<SqliteRow> = stmt
            .query_map([], |r| {
                let types: Vec<String> = (4..7).map(|k| r.get::<_, String>(k).unwrap()).collect();
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, types.join(" ")))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let arrow_days =
            arrow::compute::cast(&t.batches[0].column(0).clone(), &DataType::Utf8).unwrap();
        assert_eq!(
            arrow_days.as_string::<i32>().value(2),
            rows[2].0.as_deref().unwrap(),
            "a year outside 0-9999 keeps Arrow's text"
        );
        assert_eq!(
            rows,
            vec![
                (
                    Some("2026-02-15".into()),
                    Some(1),
                    Some(0.5),
                    Some("a,b".into()),
                    "text integer real".into()
                ),
                (
                    None,
                    Some(-2),
                    None,
                    Some("".into()),
                    "null integer null".into()
                ),
                (
                    rows[2].0.clone(),
                    None,
                    Some(-1e300),
                    None,
                    "text null real".into()
                ),
                (
                    Some("1970-01-01".into()),
                    Some(i64::MAX),
                    Some(2.0),
                    Some("ü".into()),
                    "text integer real".into()
                ),
            ]
        );
    }
}
