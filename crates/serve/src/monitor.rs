//! Live monitoring: the day totals the state keeps become `monitoring_metrics` (the batch
//! table's columns and types), the configuration's alert rules are evaluated over it by the
//! batch's own `vigil_monitor::evaluate_alerts`, and an alert seen for the first time is
//! logged, sent to the `alert` webhooks and kept in `DATA/live_alerts.jsonl`; a new
//! high-severity alert opens an incident as the batch does (`DATA/incident_log.csv` and
//! `DATA/incident_<id>.md`). Alerts already kept are not raised again after a restart.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use vigil_config::MonitoringConfig;
use vigil_monitor::Alert;
use vigil_warehouse::{Table, Warehouse};

use crate::ServeError;
use crate::state::DayTotals;

/// What one evaluation found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    /// Every alert firing over the days held (ordered by day, then rule).
    pub alerts: Vec<Alert>,
    /// The alerts not raised before (these went to the webhooks).
    pub new_alerts: Vec<Alert>,
    /// The incident opened by this evaluation, when a new alert was high.
    pub incident: Option<String>,
}

/// Alerts raised so far, and where they are kept.
#[derive(Debug)]
pub struct Monitor {
    raised: Mutex<HashSet<(String, String)>>,
    last: Mutex<Option<Evaluation>>,
    data: PathBuf,
}

fn raised_path(data: &Path) -> PathBuf {
    data.join("live_alerts.jsonl")
}

/// `monitoring_metrics` of the day totals, as the batch's SQL types it.
pub fn metrics_table(days: &[(i32, DayTotals)]) -> Result<Table, ServeError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("day", DataType::Date32, false),
        Field::new("n_events", DataType::Int64, false),
        Field::new("n_chat", DataType::Int64, false),
        Field::new("n_active_users", DataType::Int64, false),
        Field::new("n_blocked", DataType::Int64, false),
        Field::new("n_warned", DataType::Int64, false),
        Field::new("latency_ms_avg", DataType::Float64, true),
        Field::new("block_rate", DataType::Float64, false),
        Field::new("warn_rate", DataType::Float64, false),
    ]));
    let int = |f: fn(&DayTotals) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(days.iter().map(|d| f(&d.1))))
    };
    let rate = |f: fn(&DayTotals) -> i64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(days.iter().map(|(_, t)| {
            if t.n_chat > 0 {
                f(t) as f64 / t.n_chat as f64
            } else {
                0.0
            }
        })))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from_iter_values(days.iter().map(|d| d.0))),
        int(|t| t.n_events),
        int(|t| t.n_chat),
        int(|t| t.n_active_users),
        int(|t| t.n_blocked),
        int(|t| t.n_warned),
        Arc::new(Float64Array::from_iter_values(
            days.iter()
                .map(|(_, t)| t.latency_sum as f64 / t.n_events.max(1) as f64),
        )),
        rate(|t| t.n_blocked),
        rate(|t| t.n_warned),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| ServeError::Internal(format!("monitoring_metrics: {e}")))?;
    Ok(Table {
        name: "monitoring_metrics".into(),
        schema,
        batches: vec![batch],
    })
}

/// Evaluate the rules over the day totals (blocking: it runs the SQL engine).
pub fn evaluate(
    days: &[(i32, DayTotals)],
    cfg: &MonitoringConfig,
    scratch: &Path,
) -> Result<Vec<Alert>, ServeError> {
    let table = metrics_table(days)?;
    // A session with no events of its own: only the metrics table is registered.
    let wh = Warehouse::open(scratch, None).map_err(|e| ServeError::Internal(e.to_string()))?;
    wh.register(&table)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    vigil_monitor::evaluate_alerts(&wh, &table, &cfg.alerts, &cfg.robust_z)
        .map_err(|e| ServeError::Usage(format!("monitoring rules: {e}")))
}

impl Monitor {
    /// Alerts already raised, read back from `DATA/live_alerts.jsonl`.
    pub fn open(data: &Path) -> Self {
        let mut raised = HashSet::new();
        if let Ok(text) = std::fs::read_to_string(raised_path(data)) {
            for line in text.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && let (Some(d), Some(t)) = (v["day"].as_str(), v["alert_type"].as_str())
                {
                    raised.insert((d.to_string(), t.to_string()));
                }
            }
        }
        Self {
            raised: Mutex::new(raised),
            last: Mutex::new(None),
            data: data.to_path_buf(),
        }
    }

    /// Where the SQL session of an evaluation looks for events (never created).
    pub fn scratch(&self) -> PathBuf {
        self.data.join(".monitor-no-events")
    }

    /// The last evaluation.
    pub fn last(&self) -> Option<Evaluation> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keep the alerts of an evaluation: the new ones are appended to
    /// `live_alerts.jsonl` and, when one is high, an incident is opened dated `as_of`.
    pub fn record(
        &self,
        alerts: Vec<Alert>,
        as_of: chrono::DateTime<chrono::Utc>,
    ) -> Result<Evaluation, ServeError> {
        let mut raised = self
            .raised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new_alerts: Vec<Alert> = alerts
            .iter()
            .filter(|a| !raised.contains(&(a.day.clone(), a.alert_type.clone())))
            .cloned()
            .collect();
        if !new_alerts.is_empty() {
            let path = raised_path(&self.data);
            let mut text = String::new();
            for a in &new_alerts {
                text.push_str(&serde_json::to_string(a).unwrap_or_default());
                text.push('\n');
            }
            append(&path, text.as_bytes())?;
            for a in &new_alerts {
                raised.insert((a.day.clone(), a.alert_type.clone()));
            }
        }
        drop(raised);
        let incident = match vigil_monitor::open_incident(&new_alerts, as_of) {
            Some(inc) => {
                let log = self.data.join("incident_log.csv");
                let mut w = csv::WriterBuilder::new()
                    .has_headers(!log.exists())
                    .from_writer(Vec::new());
                w.serialize(&inc)
                    .map_err(|e| ServeError::Internal(format!("incident record: {e}")))?;
                let bytes = w
                    .into_inner()
                    .map_err(|e| ServeError::Internal(format!("incident record: {e}")))?;
                append(&log, &bytes)?;
                let md = self.data.join(format!("incident_{}.md", inc.incident_id));
                vigil_core::write_atomic(
                    &md,
                    vigil_monitor::incident_markdown(&inc, &new_alerts).as_bytes(),
                )
                .map_err(|(p, e)| ServeError::io(&p, e))?;
                Some(inc.incident_id)
            }
            None => None,
        };
        let ev = Evaluation {
            alerts,
            new_alerts,
            incident,
        };
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ev.clone());
        Ok(ev)
    }
}

/// Append and fsync.
fn append(path: &Path, bytes: &[u8]) -> Result<(), ServeError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ServeError::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| ServeError::io(path, e))
}
