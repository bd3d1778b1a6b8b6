//! Small helpers to build output tables from Rust vectors and to extend feature batches.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use vigil_warehouse::Table;

use crate::PipelineError;

/// A column to add.
pub(crate) enum Col {
    F64(Vec<f64>),
    I64(Vec<i64>),
    Str(Vec<String>),
}

impl Col {
    fn array(self) -> ArrayRef {
        match self {
            Col::F64(v) => Arc::new(Float64Array::from(v)),
            Col::I64(v) => Arc::new(Int64Array::from(v)),
            Col::Str(v) => Arc::new(StringArray::from(v)),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal(e.to_string())
}

/// A table from named columns.
pub(crate) fn table(name: &str, cols: Vec<(&str, Col)>) -> Result<Table, PipelineError> {
    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    extend(name, &empty, cols)
}

/// `base`'s columns followed by `cols`, as a table called `name`.
pub(crate) fn extend(
    name: &str,
    base: &RecordBatch,
    cols: Vec<(&str, Col)>,
) -> Result<Table, PipelineError> {
    let mut fields: Vec<Field> = base
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut arrays: Vec<ArrayRef> = base.columns().to_vec();
    for (n, c) in cols {
        let a = c.array();
        fields.push(Field::new(n, a.data_type().clone(), false));
        arrays.push(a);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(internal)?;
    Ok(Table {
        name: name.to_string(),
        schema,
        batches: vec![batch],
    })
}

/// `base`'s batches, each followed by its slice of `cols` (one value per row of `base`),
/// as a table called `name`: the batches are extended where they are, not concatenated.
pub(crate) fn extend_table(
    name: &str,
    base: &Table,
    cols: Vec<(&str, Vec<f64>)>,
) -> Result<Table, PipelineError> {
    let arrays: Vec<(&str, Float64Array)> = cols
        .into_iter()
        .map(|(n, v)| (n, Float64Array::from(v)))
        .collect();
    let mut start = 0;
    let mut batches = Vec::with_capacity(base.batches.len());
    for b in &base.batches {
        let added = arrays
            .iter()
            .map(|(n, a)| (*n, a.slice(start, b.num_rows())))
            .collect::<Vec<_>>();
        start += b.num_rows();
        let mut fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        for (n, a) in added {
            fields.push(Field::new(n, DataType::Float64, false));
            cols.push(Arc::new(a));
        }
        batches.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(internal)?);
    }
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => {
            let mut fields: Vec<Field> = base
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.extend(
                arrays
                    .iter()
                    .map(|(n, _)| Field::new(*n, DataType::Float64, false)),
            );
            Arc::new(Schema::new(fields))
        }
    };
    Ok(Table {
        name: name.to_string(),
        schema,
        batches,
    })
}

/// The rows `idx` of `table` (indices over all its batches), in that order, as one batch.
pub(crate) fn take(table: &Table, idx: &[usize]) -> Result<RecordBatch, PipelineError> {
    let mut starts = Vec::with_capacity(table.batches.len());
    let mut n = 0;
    for b in &table.batches {
        starts.push(n);
        n += b.num_rows();
    }
    let mut pairs = Vec::with_capacity(idx.len());
    for &i in idx {
        if i >= n {
            return Err(internal(format!("row {i} of {} ({n} rows)", table.name)));
        }
        let b = starts.partition_point(|&s| s <= i) - 1;
        pairs.push((b, i - starts[b]));
    }
    if table.batches.is_empty() {
        return Ok(RecordBatch::new_empty(table.schema.clone()));
    }
    let batches: Vec<&RecordBatch> = table.batches.iter().collect();
    arrow::compute::interleave_record_batch(&batches, &pairs).map_err(internal)
}

/// A text column read once into one Arrow buffer (not one `String` per row): the day and
/// user id of every scored user-day.
#[derive(Clone)]
pub(crate) struct Strings(StringArray);

impl Strings {
    /// Column `column` of `table` as text (nulls read as "").
    pub(crate) fn read(table: &Table, column: &str) -> Result<Self, PipelineError> {
        let parts = table
            .batches
            .iter()
            .map(|b| {
                let col = b
                    .column_by_name(column)
                    .ok_or_else(|| internal(format!("{} has no column {column}", table.name)))?;
                arrow::compute::cast(col, &DataType::Utf8).map_err(internal)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let all = if refs.is_empty() {
            Arc::new(StringArray::from(Vec::<String>::new())) as ArrayRef
        } else {
            arrow::compute::concat(&refs).map_err(internal)?
        };
        Ok(Self(all.as_string::<i32>().clone()))
    }

    /// Row `i` (`""` when null).
    pub(crate) fn get(&self, i: usize) -> &str {
        if self.0.is_null(i) {
            ""
        } else {
            self.0.value(i)
        }
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Every row in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}
