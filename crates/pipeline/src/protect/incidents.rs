//! Incidents: the incident record of a day with a high-severity alert.

use vigil_monitor::Alert;
use vigil_warehouse::Warehouse;
use vigil_warehouse::column_f64;

use crate::PipelineError;
use crate::tables::{Col, table};

use super::Written;

/// The incident record (`incident_log.csv` and `incident_<id>.md`).
pub(crate) fn incidents(
    wh: &Warehouse,
    alerts: &[Alert],
    as_of_micros: Option<i64>,
    out: &mut Written,
) -> Result<Option<vigil_monitor::Incident>, PipelineError> {
    let end_us = match as_of_micros {
        Some(us) => us as f64,
        None => {
            let t = wh.query(
                "data end",
                "SELECT CAST(MAX(ts) AS BIGINT) AS end_us FROM events",
            )?;
            column_f64(&t, "end_us")?.first().copied().unwrap_or(0.0)
        }
    };
    let as_of =
        chrono::DateTime::from_timestamp_micros(if end_us.is_finite() { end_us as i64 } else { 0 })
            .unwrap_or_default();
    let inc = vigil_monitor::open_incident(alerts, as_of);
    let list: Vec<&vigil_monitor::Incident> = inc.iter().collect();
    let col = |f: fn(&vigil_monitor::Incident) -> &str| {
        Col::Str(list.iter().map(|i| f(i).to_string()).collect())
    };
    out.csv(&table(
        "incident_log",
        vec![
            ("incident_id", col(|i| &i.incident_id)),
            ("created_ts", col(|i| &i.created_ts)),
            ("severity", col(|i| &i.severity)),
            ("summary", col(|i| &i.summary)),
            ("status", col(|i| &i.status)),
            ("retrospective_stub", col(|i| &i.retrospective_stub)),
        ],
    )?)?;
    if let Some(i) = &inc {
        out.text(
            &format!("incident_{}.md", i.incident_id),
            &vigil_monitor::incident_markdown(i, alerts),
        )?;
    }
    Ok(inc)
}
