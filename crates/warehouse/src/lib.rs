//! Vigil warehouse: the SQL layer.
//!
//! A DataFusion session over the Parquet event dataset, the core tables defined in plain
//! `.sql` files (`crates/warehouse/sql/`, overridable from `vigil.toml`), and writers that put
//! record batches into Parquet, CSV and SQLite. Every later stage reads its inputs through
//! here, so the tables an analyst queries with `vigil sql` are the ones the pipeline used.

pub mod writers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};

pub use writers::{write_csv, write_parquet, write_sqlite};

/// Errors of the SQL layer, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// User: a query (ad hoc, from a `.sql` file, or a rule in `vigil.toml`) failed to plan
    /// or run.
    #[error("SQL error in {context}: {message}")]
    Sql {
        /// Which query: a table name, a rule name or "query".
        context: String,
        /// What DataFusion said.
        message: String,
    },
    /// User: a `.sql` override file could not be read.
    #[error("cannot read SQL file {path}: {source}")]
    SqlFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Environment: writing an output failed.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The output.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Environment: the async runtime could not start.
    #[error("cannot start the query runtime: {0}")]
    Runtime(std::io::Error),
    /// User: a query of the user's (a rule, `vigil sql`) ran past `sql.statement_timeout_secs`.
    #[error(
        "{context} ran longer than {seconds} s and was stopped (sql.statement_timeout_secs in vigil.toml; `vigil sql --timeout`)"
    )]
    Timeout {
        /// Which query: a rule name or "query".
        context: String,
        /// The limit.
        seconds: f64,
    },
    /// The data directory could not be brought to a consistent state before reading (an
    /// interrupted ingest commit that cannot be finished).
    #[error("data directory: {0}")]
    Dataset(#[from] vigil_events::EventsError),
    /// User: a column read by name (often one named in `vigil.toml`) does not exist or does
    /// not convert to the type asked for.
    #[error("column `{column}` of `{table}`: {message}")]
    Column {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What went wrong.
        message: String,
    },
}

/// Every batch's `column`, cast to `to`.
fn column_as(table: &Table, column: &str, to: &DataType) -> Result<Vec<ArrayRef>, WarehouseError> {
    let err = |message: String| WarehouseError::Column {
        table: table.name.clone(),
        column: column.into(),
        message,
    };
    table
        .batches
        .iter()
        .map(|b| {
            let col = b
                .column_by_name(column)
                .ok_or_else(|| err("no such column".into()))?;
            arrow::compute::cast(col, to).map_err(|e| err(format!("cannot read as {to}: {e}")))
        })
        .collect()
}

/// A column of a table as text (days, names); nulls become empty strings.
pub fn column_text(table: &Table, column: &str) -> Result<Vec<String>, WarehouseError> {
    let mut out = Vec::with_capacity(table.num_rows());
    for arr in column_as(table, column, &DataType::Utf8)? {
        let text = arr.as_string::<i32>();
        out.extend(text.iter().map(|v| v.unwrap_or_default().to_string()));
    }
    Ok(out)
}

/// A numeric column of a table as `f64` (nulls become NaN).
pub fn column_f64(table: &Table, column: &str) -> Result<Vec<f64>, WarehouseError> {
    let mut out = Vec::with_capacity(table.num_rows());
    for arr in column_as(table, column, &DataType::Float64)? {
        let f = arr.as_primitive::<Float64Type>();
        out.extend(f.iter().map(|v| v.unwrap_or(f64::NAN)));
    }
    Ok(out)
}

/// A user's boolean rule text compiled once against a schema, then evaluated on batches of
/// any size without a session or registered tables (one row for a live service, a whole
/// queue for a batch run). The rule sees the batch's columns only: no subqueries.
pub struct Predicate {
    expr: Arc<dyn datafusion::physical_expr::PhysicalExpr>,
    schema: SchemaRef,
}

impl std::fmt::Debug for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predicate")
            .field("expr", &self.expr)
            .finish()
    }
}

impl Predicate {
    /// Compile `text` (one SQL expression, see [`parse_expression`]) over `schema`. The
    /// error says what is wrong: not one expression, an unknown column, not a boolean.
    pub fn compile(text: &str, schema: SchemaRef) -> Result<Self, String> {
        let canonical = parse_expression(text)?;
        let df_schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone())
            .map_err(|e| e.to_string())?;
        let ctx = SessionContext::new();
        ctx.register_udf(format_fixed_udf());
        let expr = ctx
            .parse_sql_expr(&canonical, &df_schema)
            .map_err(|e| e.to_string())?;
        let expr = ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| e.to_string())?;
        match expr.data_type(&schema).map_err(|e| e.to_string())? {
            DataType::Boolean | DataType::Null => Ok(Self { expr, schema }),
            other => Err(format!("must be true or false, but is of type {other}")),
        }
    }

    /// Which rows of `batch` the rule holds for (a null result does not hold, as in SQL's
    /// `CASE WHEN`). `batch` must have the schema the rule was compiled for.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<bool>, String> {
        if batch.schema().fields() != self.schema.fields() {
            return Err("the batch does not have the columns the rule was compiled for".into());
        }
        let value = self
            .expr
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| e.to_string())?;
        let mut out = vec![false; batch.num_rows()];
        if let Some(b) = value.as_boolean_opt() {
            for (slot, v) in out.iter_mut().zip(b.iter()) {
                *slot = v == Some(true);
            }
        }
        Ok(out)
    }
}

/// Parse a user's rule text as exactly one SQL expression and return it in canonical form,
/// ready to be placed inside a generated query. Text that is not one whole expression (a
/// stray `)`, a second clause, a trailing comment that would swallow the rest of the query)
/// is refused: rule text is never pasted into SQL as it was written.
pub fn parse_expression(text: &str) -> Result<String, String> {
    use datafusion::sql::sqlparser::{dialect::GenericDialect, parser::Parser, tokenizer::Token};
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let expr = parser.parse_expr().map_err(|e| e.to_string())?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(format!(
            "expected one expression, but it goes on after it at `{}`",
            next.token
        ));
    }
    Ok(expr.to_string())
}

/// The built-in SQL of each named table, in the order the pipeline builds them.
pub const BUILTIN_SQL: [(&str, &str); 9] = [
    ("core_users", include_str!("../sql/core_users.sql")),
    ("core_user_day", include_str!("../sql/core_user_day.sql")),
    (
        "core_day_metrics",
        include_str!("../sql/core_day_metrics.sql"),
    ),
    (
        "monitoring_metrics",
        include_str!("../sql/monitoring_metrics.sql"),
    ),
    (
        "user_day_features",
        include_str!("../sql/user_day_features.sql"),
    ),
    ("user_keys", include_str!("../sql/user_keys.sql")),
    ("user_context", include_str!("../sql/user_context.sql")),
    ("queue_prompts", include_str!("../sql/queue_prompts.sql")),
    ("chat_messages", include_str!("../sql/chat_messages.sql")),
];

/// One named table held in memory.
#[derive(Debug, Clone)]
pub struct Table {
    /// Table name (also the output file stem).
    pub name: String,
    /// Its schema.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

impl Table {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    /// All rows in one batch.
    pub fn concat(&self) -> Result<RecordBatch, WarehouseError> {
        arrow::compute::concat_batches(&self.schema, &self.batches).map_err(|e| {
            WarehouseError::Sql {
                context: self.name.clone(),
                message: e.to_string(),
            }
        })
    }
}

/// A DataFusion session with the event dataset registered as `events`.
pub struct Warehouse {
    ctx: SessionContext,
    /// Runs the queries; owned by `runtime`.
    rt: tokio::runtime::Handle,
    /// Held to keep the runtime alive; on drop it is shut down without waiting, so a stopped
    /// query still computing (cancellation takes effect only where a task yields) cannot hold
    /// up the exit.
    runtime: Option<tokio::runtime::Runtime>,
    sql_dir: Option<PathBuf>,
    /// The limit on one query of a user's text (rules, `vigil sql`); built-in tables have none.
    user_timeout: Option<std::time::Duration>,
}

impl Drop for Warehouse {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("sql_dir", &self.sql_dir)
            .finish()
    }
}

fn sql_err(context: &str) -> impl Fn(datafusion::error::DataFusionError) -> WarehouseError + '_ {
    move |e| WarehouseError::Sql {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// `format_fixed(x DOUBLE, digits BIGINT) -> TEXT`: `x` with exactly `digits` decimals, as
/// Python's `f"{x:.3f}"`, for alert details.
fn format_fixed_udf() -> datafusion::logical_expr::ScalarUDF {
    let fun = Arc::new(|args: &[ColumnarValue]| {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let xs = arrays[0].as_primitive::<Float64Type>();
        let ds = arrays[1].as_primitive::<Int64Type>();
        let mut out = StringBuilder::with_capacity(xs.len(), xs.len() * 8);
        for i in 0..xs.len() {
            if xs.is_null(i) || ds.is_null(i) {
                out.append_null();
            } else {
                let d = ds.value(i).clamp(0, 17) as usize;
                out.append_value(format!("{:.*}", d, xs.value(i)));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    });
    create_udf(
        "format_fixed",
        vec![DataType::Float64, DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        fun,
    )
}

/// Whether consecutive rows of `table` (across batches) never decrease in `columns`
/// (ascending, nulls last); false when a column is missing or cannot be compared.
fn is_sorted_by(table: &Table, columns: &[&str]) -> bool {
    use arrow::compute::SortOptions;
    let opts = SortOptions {
        descending: false,
        nulls_first: false,
    };
    let cols = |b: &RecordBatch| -> Option<Vec<ArrayRef>> {
        columns
            .iter()
            .map(|c| b.column_by_name(c).cloned())
            .collect()
    };
    // Compare row `i` of `a` with row `j` of `b`, column by column.
    let in_order = |a: &[ArrayRef], i: usize, b: &[ArrayRef], j: usize| -> Option<bool> {
        for (x, y) in a.iter().zip(b) {
            let cmp = arrow::array::make_comparator(x.as_ref(), y.as_ref(), opts).ok()?;
            match cmp(i, j) {
                std::cmp::Ordering::Less => return Some(true),
                std::cmp::Ordering::Greater => return Some(false),
                std::cmp::Ordering::Equal => {}
            }
        }
        Some(true)
    };
    let mut prev: Option<(Vec<ArrayRef>, usize)> = None;
    for b in table.batches.iter().filter(|b| b.num_rows() > 0) {
        let Some(c) = cols(b) else { return false };
        if let Some((p, last)) = &prev
            && in_order(p, *last, &c, 0) != Some(true)
        {
            return false;
        }
        let comparators: Option<Vec<_>> = c
            .iter()
            .map(|a| arrow::array::make_comparator(a.as_ref(), a.as_ref(), opts).ok())
            .collect();
        let Some(comparators) = comparators else {
            return false;
        };
        for i in 1..b.num_rows() {
            for cmp in &comparators {
                match cmp(i - 1, i) {
                    std::cmp::Ordering::Less => break,
                    std::cmp::Ordering::Greater => return false,
                    std::cmp::Ordering::Equal => {}
                }
            }
        }
        prev = Some((c, b.num_rows() - 1));
    }
    true
}

impl Warehouse {
    /// A session reading events from `data_dir/events/*.parquet`. `sql_dir` optionally holds
    /// replacement `.sql` files for the built-in tables.
    pub fn open(data_dir: &Path, sql_dir: Option<&Path>) -> Result<Self, WarehouseError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(WarehouseError::Runtime)?;
        let config = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .with_batch_size(64 * 1024)
            // A table registered as sorted (see `register_sorted`) keeps its order rather
            // than being split across partitions and sorted again.
            .set_bool("datafusion.optimizer.prefer_existing_sort", true);
        let ctx = SessionContext::new_with_config(config);
        ctx.register_udf(format_fixed_udf());
        let wh = Self {
            ctx,
            rt: rt.handle().clone(),
            runtime: Some(rt),
            sql_dir: sql_dir.map(Path::to_path_buf),
            user_timeout: None,
        };
        wh.register_events(data_dir)?;
        Ok(wh)
    }

    fn register_events(&self, data_dir: &Path) -> Result<(), WarehouseError> {
        vigil_events::Dataset::settle(data_dir)?;
        let dir = data_dir.join("events");
        let has_parts = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            })
            .unwrap_or(false);
        if has_parts {
            let path = format!("{}/", dir.display());
            self.rt
                .block_on(
                    self.ctx
                        .register_parquet("events", &path, ParquetReadOptions::default()),
                )
                .map_err(sql_err("events"))?;
        } else {
            let schema = vigil_events::event_schema();
            let empty = MemTable::try_new(schema, vec![vec![]]).map_err(sql_err("events"))?;
            self.ctx
                .register_table("events", Arc::new(empty))
                .map_err(sql_err("events"))?;
        }
        Ok(())
    }

    /// The SQL text of a named table: the override file if one exists, else the built-in.
    pub fn sql_for(&self, name: &str) -> Result<String, WarehouseError> {
        if let Some(dir) = &self.sql_dir {
            let path = dir.join(format!("{name}.sql"));
            if path.exists() {
                return std::fs::read_to_string(&path)
                    .map_err(|source| WarehouseError::SqlFile { path, source });
            }
        }
        BUILTIN_SQL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, sql)| sql.to_string())
            .ok_or_else(|| WarehouseError::Sql {
                context: name.to_string(),
                message: "no SQL defined for this table".into(),
            })
    }

    /// Run a query and collect its rows.
    pub fn query(&self, context: &str, sql: &str) -> Result<Table, WarehouseError> {
        self.run_sql(context, sql, SQLOptions::new())
    }

    /// Limit each query built from a user's text ([`query_user`](Self::query_user),
    /// [`query_read_only`](Self::query_read_only)) to `timeout`; `None` for no limit.
    pub fn set_user_timeout(&mut self, timeout: Option<std::time::Duration>) {
        self.user_timeout = timeout;
    }

    /// Run a query built from a user's text (an alert or enforcement rule) under the user
    /// timeout: a slow rule fails naming `context` instead of running forever.
    pub fn query_user(&self, context: &str, sql: &str) -> Result<Table, WarehouseError> {
        self.run_sql_limited(context, sql, SQLOptions::new(), self.user_timeout)
    }

    /// Run a user's query read-only (`vigil sql`), under the user timeout: DDL (`CREATE`,
    /// `DROP`), DML (`INSERT`, `COPY ... TO 'file'`) and session statements (`SET`) are
    /// refused before they run.
    pub fn query_read_only(&self, context: &str, sql: &str) -> Result<Table, WarehouseError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        self.run_sql_limited(context, sql, options, self.user_timeout)
    }

    /// Plan `sql` under `options` and collect its rows.
    fn run_sql(
        &self,
        context: &str,
        sql: &str,
        options: SQLOptions,
    ) -> Result<Table, WarehouseError> {
        self.run_sql_limited(context, sql, options, None)
    }

    /// [`run_sql`](Self::run_sql) within `timeout`: past it the query is dropped (DataFusion
    /// stops its tasks) and [`WarehouseError::Timeout`] names it.
    fn run_sql_limited(
        &self,
        context: &str,
        sql: &str,
        options: SQLOptions,
        timeout: Option<std::time::Duration>,
    ) -> Result<Table, WarehouseError> {
        let started = std::time::Instant::now();
        let ctx = self.ctx.clone();
        let (sql_owned, ctx_name) = (sql.to_string(), context.to_string());
        let work = async move {
            let df = ctx
                .sql_with_options(&sql_owned, options)
                .await
                .map_err(sql_err(&ctx_name))?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await.map_err(sql_err(&ctx_name))?;
            Ok(Table {
                name: ctx_name.clone(),
                schema,
                batches,
            })
        };
        let t = match timeout {
            None => self.rt.block_on(work),
            Some(limit) => {
                // The query runs as a task of its own and a plain thread keeps the time: a
                // CPU-bound query starves the runtime's timer, never this thread.
                let mut task = self.rt.spawn(work);
                let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
                let (fire_tx, fire_rx) = tokio::sync::oneshot::channel::<()>();
                std::thread::spawn(move || {
                    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                        done_rx.recv_timeout(limit)
                    {
                        let _ = fire_tx.send(());
                    }
                });
                let t = self.rt.block_on(async {
                    tokio::select! {
                        joined = &mut task => joined.unwrap_or_else(|e| {
                            Err(WarehouseError::Sql {
                                context: context.to_string(),
                                message: format!("the query task failed: {e}"),
                            })
                        }),
                        _ = fire_rx => Err(WarehouseError::Timeout {
                            context: context.to_string(),
                            seconds: limit.as_secs_f64(),
                        }),
                    }
                });
                task.abort();
                drop(done_tx);
                t
            }
        };
        tracing::trace!(
            "query {context} in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        t
    }

    /// Build a named table from its SQL and register it for later queries.
    pub fn build(&self, name: &str) -> Result<Table, WarehouseError> {
        let started = std::time::Instant::now();
        let sql = self.sql_for(name)?;
        let table = self.query(name, &sql)?;
        self.register(&table)?;
        tracing::debug!(
            "{name}: {} rows in {:.2} s",
            table.num_rows(),
            started.elapsed().as_secs_f64()
        );
        Ok(table)
    }

    /// Register an in-memory table under its name (replacing any table of that name).
    pub fn register(&self, table: &Table) -> Result<(), WarehouseError> {
        let mem = MemTable::try_new(table.schema.clone(), vec![table.batches.clone()])
            .map_err(sql_err(&table.name))?;
        let _ = self.ctx.deregister_table(table.name.as_str());
        self.ctx
            .register_table(table.name.as_str(), Arc::new(mem))
            .map_err(sql_err(&table.name))?;
        Ok(())
    }

    /// Register `table` as [`Warehouse::register`] does and, when its rows are in ascending
    /// order of `columns` (checked here, so an edited SQL file without that ORDER BY cannot
    /// make later results come out misordered), tell the planner so: queries that sort by
    /// those columns again then skip the sort. Returns whether the order was declared.
    pub fn register_sorted(&self, table: &Table, columns: &[&str]) -> Result<bool, WarehouseError> {
        let sorted = is_sorted_by(table, columns);
        if !sorted {
            self.register(table)?;
            return Ok(false);
        }
        let order = columns
            .iter()
            .map(|c| datafusion::prelude::col(*c).sort(true, false))
            .collect();
        // Contiguous runs of batches, one per partition, each in order: the planner merges
        // them instead of sorting (a single partition would be split up and lose its order).
        let parts = self
            .ctx
            .copied_config()
            .target_partitions()
            .clamp(1, table.batches.len().max(1));
        let per = table.batches.len().div_ceil(parts).max(1);
        let partitions: Vec<Vec<RecordBatch>> = if table.batches.is_empty() {
            vec![vec![]]
        } else {
            table
                .batches
                .chunks(per)
                .map(<[RecordBatch]>::to_vec)
                .collect()
        };
        let mem = MemTable::try_new(table.schema.clone(), partitions)
            .map_err(sql_err(&table.name))?
            .with_sort_order(vec![order]);
        let _ = self.ctx.deregister_table(table.name.as_str());
        self.ctx
            .register_table(table.name.as_str(), Arc::new(mem))
            .map_err(sql_err(&table.name))?;
        Ok(true)
    }

    /// Register a Parquet file as a table.
    pub fn register_parquet_file(&self, name: &str, path: &Path) -> Result<(), WarehouseError> {
        let p = path.display().to_string();
        self.rt
            .block_on(
                self.ctx
                    .register_parquet(name, &p, ParquetReadOptions::default()),
            )
            .map_err(sql_err(name))
    }

    /// Register a CSV file with a header line as a table (column types inferred from its
    /// first rows), for outputs that have no Parquet twin.
    pub fn register_csv_file(&self, name: &str, path: &Path) -> Result<(), WarehouseError> {
        let p = path.display().to_string();
        self.rt
            .block_on(
                self.ctx
                    .register_csv(name, &p, CsvReadOptions::new().has_header(true)),
            )
            .map_err(sql_err(name))
    }

    /// Names of the registered tables.
    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .map(|s| s.table_names())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl vigil_core::Classify for WarehouseError {
    fn kind(&self) -> vigil_core::ErrorKind {
        use vigil_core::ErrorKind as K;
        match self {
            // A query of the user's that ran too long; a rule or ad hoc query that fails to
            // plan is classified by the caller that knows it is the user's (the SQL of a
            // built-in table failing on stored data is not).
            WarehouseError::Timeout { .. } | WarehouseError::Column { .. } => K::Usage,
            WarehouseError::Sql { .. }
            | WarehouseError::SqlFile { .. }
            | WarehouseError::Write { .. }
            | WarehouseError::Runtime(_) => K::Environment,
            WarehouseError::Dataset(e) => vigil_core::Classify::kind(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    #[test]
    fn columns_read_across_batches_as_f64_or_text_and_a_missing_one_is_the_users_fault() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", DataType::Int64, true),
            arrow::datatypes::Field::new("day", DataType::Utf8, true),
        ]));
        let batch = |n: Vec<Option<i64>>, d: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(n)) as ArrayRef,
                    Arc::new(StringArray::from(d)) as ArrayRef,
                ],
            )
            .unwrap()
        };
        let t = Table {
            name: "t".into(),
            schema: schema.clone(),
            batches: vec![
                batch(vec![Some(1), None], vec![Some("2026-01-01"), None]),
                batch(vec![Some(3)], vec![Some("2026-01-02")]),
            ],
        };
        let n = column_f64(&t, "n").unwrap();
        assert_eq!(n[0], 1.0);
        assert!(n[1].is_nan());
        assert_eq!(n[2], 3.0);
        assert_eq!(
            column_text(&t, "day").unwrap(),
            ["2026-01-01", "", "2026-01-02"]
        );
        let e = column_f64(&t, "missing").unwrap_err();
        assert_eq!(e.to_string(), "column `missing` of `t`: no such column");
        assert_eq!(vigil_core::Classify::kind(&e), vigil_core::ErrorKind::Usage);
    }

    #[test]
    fn user_sql_is_read_only_copy_to_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open(dir.path(), None).unwrap();
        let target = dir.path().join("leak.csv");
        let copy = format!("COPY (SELECT 1 AS x) TO '{}'", target.display());
        for sql in [
            copy.as_str(),
            "CREATE TABLE t AS SELECT 1",
            "SET datafusion.execution.batch_size = 1",
        ] {
            let err = wh.query_read_only("q", sql).unwrap_err().to_string();
            assert!(
                err.contains("not supported") || err.contains("not allowed"),
                "{sql}: {err}"
            );
        }
        assert!(!target.exists());
        let t = wh.query_read_only("q", "SELECT 1 AS x").unwrap();
        assert_eq!(t.num_rows(), 1);
    }

    #[test]
    fn rule_text_that_closes_the_generated_case_is_refused() {
        let inject = "false) THEN 'allow' WHEN (true) THEN 'nuke_account' WHEN (true";
        assert!(parse_expression(inject).is_err());
        for bad in ["x > 1; DROP TABLE events", "x > 1 ORDER BY y", "", "x >"] {
            assert!(parse_expression(bad).is_err(), "{bad:?} accepted");
        }
        // A trailing comment would swallow the rest of the generated query: it is dropped.
        assert_eq!(parse_expression("x > 1 -- note").unwrap(), "x > 1");
        let ok = parse_expression("risk_score >= 0.9 AND flags LIKE '%ml%'").unwrap();
        assert_eq!(ok, "risk_score >= 0.9 AND flags LIKE '%ml%'");
        assert_eq!(
            parse_expression("format_fixed(block_rate, 3) || ' it''s'").unwrap(),
            "format_fixed(block_rate, 3) || ' it''s'"
        );
    }
    use arrow::datatypes::{Field, Schema};

    fn table(parts: &[&[(&str, i64)]]) -> Table {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batches = parts
            .iter()
            .map(|rows| {
                let k = StringArray::from_iter_values(rows.iter().map(|r| r.0));
                let v = Int64Array::from_iter_values(rows.iter().map(|r| r.1));
                RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)]).unwrap()
            })
            .collect();
        Table {
            name: "t".into(),
            schema,
            batches,
        }
    }

    fn keys(wh: &Warehouse) -> Vec<String> {
        let t = wh.query("q", "SELECT k, v FROM t ORDER BY k, v").unwrap();
        let mut out = Vec::new();
        for b in &t.batches {
            let k = b.column(0).as_string_view_opt().map_or_else(
                || {
                    let s = b.column(0).as_string::<i32>();
                    (0..s.len())
                        .map(|i| s.value(i).to_string())
                        .collect::<Vec<_>>()
                },
                |s| (0..s.len()).map(|i| s.value(i).to_string()).collect(),
            );
            out.extend(k);
        }
        out
    }

    #[test]
    fn register_sorted_declares_an_order_only_when_the_rows_have_it() {
        let dir = tempfile::tempdir().unwrap();
        let wh = Warehouse::open(dir.path(), None).unwrap();
        // In order within each batch but not across the boundary (c > b): must not be
        // declared, or the ORDER BY below would be skipped and come back misordered.
        let across = table(&[&[("a", 1), ("c", 2)], &[("b", 3), ("d", 4)]]);
        assert!(!wh.register_sorted(&across, &["k", "v"]).unwrap());
        assert_eq!(keys(&wh), ["a", "b", "c", "d"]);
        // Equal first keys fall back to the second column.
        let ties = table(&[&[("a", 2), ("a", 1)]]);
        assert!(!wh.register_sorted(&ties, &["k", "v"]).unwrap());
        let sorted = table(&[&[("a", 1), ("a", 2), ("b", 0)], &[("b", 5)], &[("c", 1)]]);
        assert!(wh.register_sorted(&sorted, &["k", "v"]).unwrap());
        assert_eq!(keys(&wh), ["a", "a", "b", "b", "c"]);
        assert!(!wh.register_sorted(&sorted, &["no_such_column"]).unwrap());
    }

    /// The core tables compute the UTC day with integer arithmetic instead of
    /// `CAST(ts AS DATE)`; this pins it to the calendar around midnight, before 1970 included.
    #[test]
    fn utc_day_arithmetic_matches_the_calendar_before_and_after_1970() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("ev.csv");
        let times = [
            "1969-12-31T00:00:00Z",
            "1969-12-31T23:59:59.999999Z",
            "1970-01-01T00:00:00Z",
            "2026-02-14T23:59:59.999999Z",
            "2026-02-15T00:00:00.000001+01:00",
            "2026-02-15T00:00:00Z",
        ];
        let mut text = vigil_events::COLUMNS.join(",") + "\n";
        for (i, t) in times.iter().enumerate() {
            text += &format!("e_{i},{t},u_1,203.0.113.1,dev_1,,web,chat,chat,hi,1,2,{i},0,0,0\n");
        }
        std::fs::write(&csv, text).unwrap();
        let data = dir.path().join("data");
        let ds = vigil_events::Dataset::open(&data).unwrap();
        let lock = ds.lock().unwrap();
        let mut known = ds.known_event_keys().unwrap();
        let opts = vigil_events::IngestOptions::default();
        vigil_events::ingest_file(&ds, &lock, &mut known, &csv, &opts, &|_| {}).unwrap();
        let wh = Warehouse::open(&data, None).unwrap();
        let days = |t: &Table, count: &str| -> Vec<(String, i64)> {
            let mut out = Vec::new();
            for b in &t.batches {
                let d = arrow::compute::cast(b.column_by_name("day").unwrap(), &DataType::Utf8)
                    .unwrap();
                let n = arrow::compute::cast(b.column_by_name(count).unwrap(), &DataType::Int64)
                    .unwrap();
                let (d, n) = (d.as_string::<i32>(), n.as_primitive::<Int64Type>());
                out.extend((0..b.num_rows()).map(|i| (d.value(i).to_string(), n.value(i))));
            }
            out
        };
        let expected: Vec<(String, i64)> = [
            ("1969-12-31", 2),
            ("1970-01-01", 1),
            ("2026-02-14", 2),
            ("2026-02-15", 1),
        ]
        .iter()
        .map(|(d, n)| (d.to_string(), *n))
        .collect();
        let user_day = wh.build("core_user_day").unwrap();
        assert_eq!(days(&user_day, "n_events"), expected);
        wh.build("user_keys").unwrap();
        assert_eq!(
            days(&wh.build("core_day_metrics").unwrap(), "n_events"),
            expected
        );
    }
}
