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

/// Write a table as Parquet (zstd-compressed).
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
    let e = werr(path);
    let file = File::create(tmp).map_err(|x| e(x.to_string()))?;
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.6fZ".to_string())
        .build(std::io::BufWriter::with_capacity(1 << 20, file));
    if table.batches.is_empty() {
        // Still write the header so an empty result is a valid CSV with known columns.
        let empty = RecordBatch::new_empty(table.schema.clone());
        w.write(&empty).map_err(|x| e(x.to_string()))?;
    }
    for b in &table.batches {
        w.write(b).map_err(|x| e(x.to_string()))?;
    }
    // Flush explicitly: dropping the buffer would swallow a failed last write (a full disk)
    // and commit a truncated file.
    w.into_inner()
        .into_inner()
        .map_err(|x| e(x.error().to_string()))?;
    Ok(())
}

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
                } else {
                    arrow::compute::cast(col, &target).map_err(|x| e(x.to_string()))?
                };
                converted.push(arr);
            }
            for r in 0..batch.num_rows() {
                let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(fields.len());
                for arr in &converted {
                    use rusqlite::types::Value as V;
                    let v = if arr.is_null(r) {
                        V::Null
                    } else {
                        match arr.data_type() {
                            DataType::Int64 => V::Integer(arr.as_primitive::<Int64Type>().value(r)),
                            DataType::Float64 => {
                                V::Real(arr.as_primitive::<Float64Type>().value(r))
                            }
                            _ => V::Text(arr.as_string::<i32>().value(r).to_string()),
                        }
                    };
                    values.push(v);
                }
                stmt.execute(rusqlite::params_from_iter(values))
                    .map_err(|x| e(x.to_string()))?;
            }
        }
    }
    tx.commit().map_err(|x| e(x.to_string()))?;
    conn.close().map_err(|(_, x)| e(x.to_string()))?;
    Ok(())
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
