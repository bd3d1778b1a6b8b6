//! Incident records: one per run with high-severity alerts, with a retrospective template.

use serde::Serialize;

use crate::Alert;

/// The retrospective template, in the notebook's key order.
#[derive(Debug, Clone, Serialize)]
pub struct Retrospective {
    /// What happened.
    pub what_happened: String,
    /// Who and what was affected.
    pub impact: String,
    /// Best current explanation.
    pub root_cause_hypothesis: String,
    /// What was done already.
    pub mitigations_applied: String,
    /// Follow-up work.
    pub followups: Vec<String>,
    /// Who owns the incident.
    pub owner: String,
    /// When follow-ups are due.
    pub due_date: String,
}

/// One incident (`incident_log.csv`).
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// `inc_<unix seconds of created_ts>`.
    pub incident_id: String,
    /// When it was opened (the end of the data window, so reruns are reproducible).
    pub created_ts: String,
    /// Always `high`: only high-severity alerts open incidents.
    pub severity: String,
    /// Count of high alerts and the first one's type and day.
    pub summary: String,
    /// `open`.
    pub status: String,
    /// The retrospective template as pretty JSON.
    pub retrospective_stub: String,
}

/// Open an incident when any alert is high severity. `as_of` is the instant it is dated.
pub fn open_incident(alerts: &[Alert], as_of: chrono::DateTime<chrono::Utc>) -> Option<Incident> {
    let high: Vec<&Alert> = alerts.iter().filter(|a| a.severity == "high").collect();
    let first = high.first()?;
    let retro = Retrospective {
        what_happened: String::new(),
        impact: String::new(),
        root_cause_hypothesis: String::new(),
        mitigations_applied: String::new(),
        followups: vec![
            "Tune thresholds".into(),
            "Backtest detectors".into(),
            "Improve enrichment".into(),
            "Ship prevention and validate".into(),
        ],
        owner: String::new(),
        due_date: String::new(),
    };
    Some(Incident {
        incident_id: format!("inc_{}", as_of.timestamp()),
        created_ts: as_of.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string(),
        severity: "high".into(),
        summary: format!(
            "{} high-severity alert(s), example {} on {}",
            high.len(),
            first.alert_type,
            first.day
        ),
        status: "open".into(),
        retrospective_stub: serde_json::to_string_pretty(&retro).unwrap_or_default(),
    })
}

/// The incident as a Markdown page an on-call engineer fills in.
pub fn incident_markdown(inc: &Incident, alerts: &[Alert]) -> String {
    let mut md = format!(
        "# Incident {}\n\n- Created: {}\n- Severity: {}\n- Status: {}\n- Summary: {}\n\n\
         ## Alerts\n\n| day | alert | severity | details |\n|---|---|---|---|\n",
        inc.incident_id, inc.created_ts, inc.severity, inc.status, inc.summary
    );
    for a in alerts {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            a.day, a.alert_type, a.severity, a.details
        ));
    }
    md.push_str(
        "\n## Retrospective\n\n### What happened\n\n_TODO_\n\n### Impact\n\n_TODO_\n\n\
         ### Root-cause hypothesis\n\n_TODO_\n\n### Mitigations applied\n\n_TODO_\n\n\
         ### Follow-ups\n\n- [ ] Tune thresholds\n- [ ] Backtest detectors\n\
         - [ ] Improve enrichment\n- [ ] Ship prevention and validate\n\n\
         ### Owner\n\n_TODO_\n\n### Due date\n\n_TODO_\n",
    );
    md
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn incident_matches_the_notebook_record() {
        let alert = |day: &str, sev: &str| Alert {
            day: day.into(),
            alert_type: "spike_block_rate".into(),
            severity: sev.into(),
            details: String::new(),
        };
        let as_of = chrono::DateTime::parse_from_rfc3339("2026-02-15T05:26:38.215190Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let inc = open_incident(
            &[alert("2026-02-04", "high"), alert("2026-02-15", "high")],
            as_of,
        )
        .unwrap();
        assert_eq!(inc.incident_id, "inc_1771133198");
        assert_eq!(inc.created_ts, "2026-02-15T05:26:38.215190+00:00");
        assert_eq!(
            inc.summary,
            "2 high-severity alert(s), example spike_block_rate on 2026-02-04"
        );
        assert!(
            inc.retrospective_stub
                .starts_with("{\n  \"what_happened\": \"\",\n")
        );
        assert!(open_incident(&[alert("d", "medium")], as_of).is_none());
    }
}
