//! Vigil monitoring: daily metrics, alert rules and PSI drift.
//!
//! Alert rules are data: each is a SQL boolean expression from `vigil.toml` evaluated by the
//! warehouse's engine over `monitoring_metrics`. On top of the fixed thresholds sits one
//! statistical rule (robust z-score against a trailing median/MAD baseline).

pub mod drift;
pub mod incident;
pub mod robust;

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use vigil_config::{AlertRule, DriftConfig, RobustZConfig};
use vigil_warehouse::{Table, Warehouse, WarehouseError, column_f64, column_text};

pub use drift::{FeatureDrift, drift_table, psi};
pub use incident::{Incident, incident_markdown, open_incident};

/// Errors of the monitoring stage.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// User: an alert rule's SQL does not run (named, with DataFusion's message).
    #[error("alert rule `{rule}`: {source}")]
    Rule {
        /// The rule's name.
        rule: String,
        /// The SQL error.
        source: WarehouseError,
    },
    /// User: an alert rule's `when` or `details` is not one SQL expression.
    #[error("alert rule `{rule}`: `{key}` is not one SQL expression: {message}")]
    RuleText {
        /// The rule's name.
        rule: String,
        /// `when` or `details`.
        key: String,
        /// What the parser said.
        message: String,
    },
    /// User: a configured column does not exist or is not numeric.
    #[error("column `{column}` of `{table}`: {message}")]
    Column {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// An error from the SQL layer.
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

/// One alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// The rule's name.
    pub alert_type: String,
    /// `high`, `medium` or `low`.
    pub severity: String,
    /// Human-readable details.
    pub details: String,
}

/// Evaluate the fixed rules (SQL over the registered `monitoring_metrics` table) and the
/// robust rule; alerts come back ordered by day, then rule order.
pub fn evaluate_alerts(
    wh: &Warehouse,
    metrics: &Table,
    rules: &[AlertRule],
    robust: &RobustZConfig,
) -> Result<Vec<Alert>, MonitorError> {
    let mut alerts: Vec<(String, usize, Alert)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        // Each text is parsed as one expression, never pasted into the query as written.
        let expr = |what: &str, text: &str| {
            vigil_warehouse::parse_expression(text).map_err(|message| MonitorError::RuleText {
                rule: rule.name.clone(),
                key: what.to_string(),
                message,
            })
        };
        let sql = format!(
            "SELECT CAST(day AS VARCHAR) AS day, CAST(({details}) AS VARCHAR) AS details \
             FROM monitoring_metrics WHERE ({when}) ORDER BY day",
            details = expr("details", &rule.details)?,
            when = expr("when", &rule.when)?
        );
        let t = wh
            .query_user(&rule.name, &sql)
            .map_err(|source| MonitorError::Rule {
                rule: rule.name.clone(),
                source,
            })?;
        let days = column_text(&t, "day")?;
        let details = column_text(&t, "details")?;
        for (day, details) in days.into_iter().zip(details) {
            alerts.push((
                day.clone(),
                i,
                Alert {
                    day,
                    alert_type: rule.name.clone(),
                    severity: rule.severity.clone(),
                    details,
                },
            ));
        }
    }
    if robust.enabled {
        for (j, a) in robust::robust_alerts(metrics, robust)?
            .into_iter()
            .enumerate()
        {
            alerts.push((a.day.clone(), rules.len() + j, a));
        }
    }
    alerts.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(alerts.into_iter().map(|(_, _, a)| a).collect())
}

/// Alerts as a table (`day, alert_type, severity, details`).
pub fn alerts_table(alerts: &[Alert]) -> Table {
    let schema = Arc::new(Schema::new(vec![
        Field::new("day", DataType::Utf8, false),
        Field::new("alert_type", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("details", DataType::Utf8, false),
    ]));
    let col = |f: fn(&Alert) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(alerts.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            col(|a| &a.day),
            col(|a| &a.alert_type),
            col(|a| &a.severity),
            col(|a| &a.details),
        ],
    );
    Table {
        name: "alerts".into(),
        schema: schema.clone(),
        batches: batch.map(|b| vec![b]).unwrap_or_default(),
    }
}

/// PSI of the configured features of `user_day_features`.
pub fn compute_drift(
    features: &Table,
    cfg: &DriftConfig,
) -> Result<Vec<FeatureDrift>, MonitorError> {
    let mut day_ids = Vec::with_capacity(features.num_rows());
    for b in &features.batches {
        let col = b
            .column_by_name("day")
            .ok_or_else(|| MonitorError::Column {
                table: features.name.clone(),
                column: "day".into(),
                message: "no such column".into(),
            })?;
        let d = arrow::compute::cast(col, &DataType::Date32).map_err(|e| MonitorError::Column {
            table: features.name.clone(),
            column: "day".into(),
            message: e.to_string(),
        })?;
        let d = d.as_primitive::<arrow::datatypes::Date32Type>();
        day_ids.extend(d.iter().map(|v| v.unwrap_or(i32::MIN)));
    }
    let mut columns = Vec::with_capacity(cfg.features.len());
    for f in &cfg.features {
        columns.push((f.clone(), column_f64(features, f)?));
    }
    Ok(drift_table(
        &day_ids,
        &columns,
        cfg.recent_days,
        cfg.min_days,
        cfg.bins,
        cfg.flag_threshold,
    ))
}

/// Drift results as a table (`feature, psi, drift_flag`).
pub fn drift_to_table(rows: &[FeatureDrift]) -> Table {
    let schema = Arc::new(Schema::new(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("psi", DataType::Float64, false),
        Field::new("drift_flag", DataType::UInt8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.feature.as_str()),
            )),
            Arc::new(arrow::array::Float64Array::from_iter_values(
                rows.iter().map(|r| r.psi),
            )),
            Arc::new(arrow::array::UInt8Array::from_iter_values(
                rows.iter().map(|r| r.drift_flag),
            )),
        ],
    );
    Table {
        name: "drift".into(),
        schema,
        batches: batch.map(|b| vec![b]).unwrap_or_default(),
    }
}

impl vigil_core::Classify for MonitorError {
    fn kind(&self) -> vigil_core::ErrorKind {
        match self {
            MonitorError::Rule { .. }
            | MonitorError::RuleText { .. }
            | MonitorError::Column { .. } => vigil_core::ErrorKind::Usage,
            MonitorError::Warehouse(e) => vigil_core::Classify::kind(e),
        }
    }
}
