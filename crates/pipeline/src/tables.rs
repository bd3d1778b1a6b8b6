//! Small helpers to build output tables from Rust vectors and to extend feature batches.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, UInt32Array};
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

/// The rows `idx` of `batch`, in that order.
pub(crate) fn take(batch: &RecordBatch, idx: &[usize]) -> Result<RecordBatch, PipelineError> {
    let indices = UInt32Array::from(idx.iter().map(|&i| i as u32).collect::<Vec<_>>());
    arrow::compute::take_record_batch(batch, &indices).map_err(internal)
}
