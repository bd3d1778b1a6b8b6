//! The executive summary and the report page: the notebook's summary rows (same sections,
//! metrics and formatting), Vigil's additions, the three top-10 tables and every chart.

use std::collections::HashMap;

use vigil_monitor::{Alert, FeatureDrift};
use vigil_report::{Chart, ChartData, Report, SummaryRow, Table as HtmlTable};
use vigil_warehouse::{Table, Warehouse};
use vigil_warehouse::{column_f64, column_text};

use crate::PipelineError;
use crate::protect::{Actions, Automation, Queue, Scored};

/// Python's `str(round(x, 4))` for the values the notebook rounds.
pub(crate) fn r4(x: f64) -> String {
    let s = format!("{x:.4}");
    let t = s.trim_end_matches('0');
    if t.ends_with('.') {
        format!("{t}0")
    } else {
        t.to_string()
    }
}

/// `value:count; ...` of the most common values, most common first (ties: first seen).
fn top_counts<'a>(values: impl IntoIterator<Item = &'a str>, k: usize) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for v in values {
        match index.get(v) {
            Some(&i) => counts[i].1 += 1,
            None => {
                index.insert(v.to_string(), counts.len());
                counts.push((v.to_string(), 1));
            }
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.truncate(k);
    counts
}

fn joined(c: &[(String, usize)]) -> String {
    c.iter()
        .map(|(v, n)| format!("{v}:{n}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    vigil_monitor::drift::quantile_linear(&v, q)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Inputs of the summary.
pub(crate) struct SummaryInputs<'a> {
    pub wh: &'a Warehouse,
    pub day_metrics: &'a Table,
    pub monitoring: &'a Table,
    pub alerts: &'a [Alert],
    pub drift: &'a [FeatureDrift],
    pub scored: &'a Scored,
    pub queue: &'a Queue,
    pub automation: &'a Automation,
    pub actions: &'a Actions,
    pub incidents: usize,
    pub subtitle: String,
    pub rare_harm: Option<&'a crate::protect::RareHarmInfo>,
    /// `ground_truth.csv`'s abusers and their actors, when given.
    pub ground_truth: Option<&'a HashMap<String, String>>,
    /// The queue the behaviour-only model would have driven, beside the run's.
    pub text_signal: Option<&'a crate::protect::TextSignal>,
}

fn scalar(wh: &Warehouse, sql: &str) -> Result<f64, PipelineError> {
    let t = wh.query("summary", sql)?;
    Ok(column_f64(&t, "v")?.first().copied().unwrap_or(0.0))
}

/// Build the report (summary rows, tables, charts).
pub(crate) fn build(i: &SummaryInputs<'_>) -> Result<Report, PipelineError> {
    let wh = i.wh;
    let s = i.scored;
    let q = i.queue;
    let a = i.automation;
    let mut rows: Vec<SummaryRow> = Vec::new();
    let mut add = |section: &str, metric: &str, value: String| {
        rows.push(SummaryRow {
            section: section.into(),
            metric: metric.into(),
            value,
        })
    };
    let int = |x: f64| format!("{}", x as i64);
    // The data counts come from the core tables (already built from every stored event)
    // rather than from more scans of the events.
    add(
        "Data",
        "Total events",
        int(scalar(wh, "SELECT COUNT(*) AS v FROM events")?),
    );
    add(
        "Data",
        "Unique users",
        int(scalar(wh, "SELECT COUNT(*) AS v FROM core_users")?),
    );
    add("Data", "Days covered", int(i.day_metrics.num_rows() as f64));
    add(
        "Data",
        "Chat events",
        int(scalar(wh, "SELECT SUM(n_chat) AS v FROM core_day_metrics")?),
    );
    add(
        "Data",
        "Blocks (events)",
        int(scalar(
            wh,
            "SELECT SUM(n_blocked) AS v FROM core_day_metrics",
        )?),
    );
    add(
        "Data",
        "Warnings (events)",
        int(scalar(
            wh,
            "SELECT SUM(n_warned) AS v FROM core_day_metrics",
        )?),
    );
    add(
        "Data",
        "GT abuse users (synthetic)",
        int(scalar(
            wh,
            "SELECT COUNT(DISTINCT user_id) AS v FROM core_user_day WHERE is_abuse_gt = 1",
        )?),
    );
    let br = column_f64(i.monitoring, "block_rate")?;
    let wr = column_f64(i.monitoring, "warn_rate")?;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    add("Monitoring", "Avg block rate", r4(mean(&br)));
    add("Monitoring", "Peak block rate", r4(max(&br)));
    add("Monitoring", "Avg warn rate", r4(mean(&wr)));
    add("Monitoring", "Peak warn rate", r4(max(&wr)));
    let n = s.risk.len();
    let ml_flagged = s.flags.iter().filter(|f| f.ml).count();
    add(
        "Detection",
        "Model threshold",
        if s.threshold.is_finite() {
            r4(s.threshold)
        } else {
            "n/a (no labels)".into()
        },
    );
    add("Detection", "ML-flagged user-days", ml_flagged.to_string());
    add(
        "Detection",
        "ML-flagged rate",
        r4(ml_flagged as f64 / n.max(1) as f64),
    );
    add("Detection", "Mean risk score", r4(mean(&s.risk)));
    add(
        "Detection",
        "95th percentile risk",
        r4(percentile(&s.risk, 0.95)),
    );
    add("Detection", "Mean uncertainty", r4(mean(&s.uncertainty)));
    let qn = q.entries.len();
    let dups = a.is_dup.iter().filter(|d| **d).count();
    add("Review Ops", "Queue size", qn.to_string());
    add(
        "Review Ops",
        "Duplicate fraction",
        r4(dups as f64 / qn.max(1) as f64),
    );
    add("Review Ops", "Non-duplicate cases", (qn - dups).to_string());
    add(
        "Review Ops",
        "Top repeated prompts",
        joined(&top_counts(q.recent_prompts.iter().map(String::as_str), 3)),
    );
    let mut cluster_sizes: Vec<(String, usize)> = {
        let ids: Vec<String> = a.cluster_of_nondup.iter().map(|c| c.to_string()).collect();
        top_counts(ids.iter().map(String::as_str), usize::MAX)
    };
    add(
        "Automation",
        "Cluster count (non-dup)",
        cluster_sizes.len().to_string(),
    );
    add(
        "Automation",
        "Top cluster sizes",
        joined(&cluster_sizes[..cluster_sizes.len().min(5)]),
    );
    let comp_ids: Vec<String> = a
        .resolution
        .component
        .iter()
        .map(|c| c.to_string())
        .collect();
    let comp_sizes = top_counts(comp_ids.iter().map(String::as_str), usize::MAX);
    add(
        "Networks",
        "Entity edges",
        a.resolution.edges.len().to_string(),
    );
    add(
        "Networks",
        "Connected components",
        comp_sizes.len().to_string(),
    );
    add(
        "Networks",
        "Largest component size",
        comp_sizes.first().map_or(0, |c| c.1).to_string(),
    );
    add(
        "Networks",
        "Top component sizes",
        joined(&comp_sizes[..comp_sizes.len().min(5)]),
    );
    let action_counts = top_counts(i.actions.action.iter().map(String::as_str), usize::MAX);
    add("Enforcement", "Action counts", joined(&action_counts));
    add("Incidents", "Alerts total", i.alerts.len().to_string());
    add(
        "Incidents",
        "Alerts by type",
        joined(&top_counts(
            i.alerts.iter().map(|x| x.alert_type.as_str()),
            usize::MAX,
        )),
    );
    add("Incidents", "Incidents created", i.incidents.to_string());
    // Vigil's additions
    add("Detection", "Risk model", s.model.clone());
    if let Some(det) = &s.detection {
        for e in &det.evals {
            add(
                "Detection",
                &format!("Test AUC / F1 ({})", e.model),
                format!("{} / {}", r4(e.test_auc), r4(e.test_f1)),
            );
            add(
                "Detection",
                &format!("Test calibration error, ECE ({})", e.model),
                r4(e.test_ece),
            );
        }
    }
    for (mode, qv) in &a.quality {
        add(
            "Networks",
            &format!("ER quality ({mode})"),
            format!(
                "largest {} users; purity {}; ring members in pure components {}",
                qv.largest_component,
                r4(qv.mean_purity),
                r4(qv.ring_members_in_pure_components)
            ),
        );
    }
    add(
        "Drift",
        "Features with PSI > threshold",
        i.drift
            .iter()
            .filter(|d| d.drift_flag == 1)
            .map(|d| d.feature.clone())
            .collect::<Vec<_>>()
            .join(", "),
    );

    // top-10 tables
    let mut by_risk: Vec<usize> = (0..qn).collect();
    by_risk.sort_by(|&x, &y| s.risk[q.entries[y].row].total_cmp(&s.risk[q.entries[x].row]));
    let f = |t: &[f64], r: usize| format!("{}", t[r]);
    let qcol = |name: &str| {
        column_f64(
            &vigil_warehouse::Table {
                name: "q".into(),
                schema: q.batch.schema(),
                batches: vec![q.batch.clone()],
            },
            name,
        )
    };
    let (nb, nw, ni, nd) = (
        qcol("n_blocked")?,
        qcol("n_warned")?,
        qcol("n_ips")?,
        qcol("n_devices")?,
    );
    let riskiest = HtmlTable {
        title: "Top 10 riskiest queue items".into(),
        headers: [
            "day",
            "user_id",
            "risk_score",
            "uncertainty",
            "n_chat",
            "n_blocked",
            "n_warned",
            "n_ips",
            "n_devices",
            "recent_prompts",
        ]
        .map(String::from)
        .to_vec(),
        rows: by_risk
            .iter()
            .take(10)
            .map(|&k| {
                let r = q.entries[k].row;
                vec![
                    s.day.get(r).to_string(),
                    s.user.get(r).to_string(),
                    r4(s.risk[r]),
                    r4(s.uncertainty[r]),
                    f(&s.n_chat, r),
                    f(&nb, k),
                    f(&nw, k),
                    f(&ni, k),
                    f(&nd, k),
                    q.recent_prompts[k].clone(),
                ]
            })
            .collect(),
    };
    let components = HtmlTable {
        title: "Top 10 linked-actor components".into(),
        headers: [
            "component_id",
            "size",
            "flagged_share",
            "max_risk",
            "edge_types",
        ]
        .map(String::from)
        .to_vec(),
        rows: a
            .component_risk
            .iter()
            .take(10)
            .map(|c| {
                vec![
                    c.component_id.to_string(),
                    c.size.to_string(),
                    r4(c.flagged_share),
                    r4(c.max_risk),
                    c.edge_types.clone(),
                ]
            })
            .collect(),
    };
    let nondup_prompts: Vec<&str> = (0..qn)
        .filter(|&k| !a.is_dup[k])
        .map(|k| q.recent_prompts[k].as_str())
        .collect();
    cluster_sizes.truncate(10);
    let clusters = HtmlTable {
        title: "Top 10 case clusters (non-dup)".into(),
        headers: ["cluster_id", "size", "example prompts"]
            .map(String::from)
            .to_vec(),
        rows: cluster_sizes
            .iter()
            .map(|(id, size)| {
                let example = a
                    .cluster_of_nondup
                    .iter()
                    .position(|c| c.to_string() == *id)
                    .map(|p| nondup_prompts[p].to_string())
                    .unwrap_or_default();
                vec![id.clone(), size.to_string(), example]
            })
            .collect(),
    };

    // charts
    let days = column_text(i.day_metrics, "day")?;
    let by_type = wh.query("events by type", "SELECT event_type, COUNT(*) AS n FROM events GROUP BY event_type ORDER BY n DESC, event_type")?;
    let queue_risk: Vec<f64> = q.entries.iter().map(|e| s.risk[e.row]).collect();
    let mut charts = vec![
        Chart {
            id: "events_per_day".into(),
            title: "Events per day".into(),
            data: ChartData::Lines {
                x_labels: days.clone(),
                series: vec![("events".into(), column_f64(i.day_metrics, "n_events")?)],
            },
        },
        Chart {
            id: "events_by_type".into(),
            title: "Events by type".into(),
            data: ChartData::Bars {
                labels: column_text(&by_type, "event_type")?,
                values: column_f64(&by_type, "n")?,
            },
        },
        Chart {
            id: "chats_users".into(),
            title: "Chats and active users per day".into(),
            data: ChartData::Lines {
                x_labels: days.clone(),
                series: vec![
                    ("chats".into(), column_f64(i.day_metrics, "n_chat")?),
                    (
                        "active users".into(),
                        column_f64(i.day_metrics, "n_active_users")?,
                    ),
                ],
            },
        },
        Chart {
            id: "block_warn_rates".into(),
            title: "Block and warn rates per day".into(),
            data: ChartData::Lines {
                x_labels: column_text(i.monitoring, "day")?,
                series: vec![
                    ("block rate".into(), br.clone()),
                    ("warn rate".into(), wr.clone()),
                ],
            },
        },
        Chart {
            id: "risk_hist".into(),
            title: "Risk score distribution (all user-days)".into(),
            data: ChartData::histogram(&s.risk, 30),
        },
        Chart {
            id: "uncertainty_hist".into(),
            title: "Uncertainty distribution".into(),
            data: ChartData::histogram(&s.uncertainty, 30),
        },
    ];
    if let Some(det) = &s.detection {
        charts.push(Chart {
            id: "pr_curve".into(),
            title: "Precision-recall on the test split".into(),
            data: ChartData::Curves {
                series: det
                    .pr_curves
                    .iter()
                    .map(|(m, p)| {
                        (
                            m.clone(),
                            p.iter().map(|x| (x.recall, x.precision)).collect(),
                        )
                    })
                    .collect(),
                x_title: "recall".into(),
                y_title: "precision".into(),
            },
        });
        // Calibration: a calibrated model's points lie on the diagonal.
        let mut series = det.reliability.clone();
        series.push(("ideal".into(), vec![(0.0, 0.0), (1.0, 1.0)]));
        charts.push(Chart {
            id: "reliability".into(),
            title: "Calibration (test split)".into(),
            data: ChartData::Curves {
                series,
                x_title: "predicted".into(),
                y_title: "observed".into(),
            },
        });
    }
    charts.push(Chart {
        id: "queue_risk_hist".into(),
        title: "Review queue risk distribution".into(),
        data: ChartData::histogram(&queue_risk, 20),
    });
    charts.push(Chart {
        id: "cluster_sizes".into(),
        title: "Top case clusters".into(),
        data: ChartData::Bars {
            labels: cluster_sizes.iter().map(|c| format!("c{}", c.0)).collect(),
            values: cluster_sizes.iter().map(|c| c.1 as f64).collect(),
        },
    });
    let top_comp = &comp_sizes[..comp_sizes.len().min(10)];
    charts.push(Chart {
        id: "component_sizes".into(),
        title: "Largest linked-account components".into(),
        data: ChartData::Bars {
            labels: top_comp.iter().map(|c| format!("#{}", c.0)).collect(),
            values: top_comp.iter().map(|c| c.1 as f64).collect(),
        },
    });
    charts.push(Chart {
        id: "psi".into(),
        title: "Feature drift (PSI, last days vs reference)".into(),
        data: ChartData::Bars {
            labels: i.drift.iter().map(|d| d.feature.clone()).collect(),
            values: i.drift.iter().map(|d| d.psi).collect(),
        },
    });
    charts.push(Chart {
        id: "actions".into(),
        title: "Suggested enforcement actions".into(),
        data: ChartData::Bars {
            labels: action_counts.iter().map(|c| c.0.clone()).collect(),
            values: action_counts.iter().map(|c| c.1 as f64).collect(),
        },
    });

    let mut tables = vec![riskiest, components, clusters];
    if let Some(info) = i.rare_harm {
        let (mut rows_rh, table) = rare_harm_section(s, q, info, i.ground_truth)?;
        if let Some(t) = i.text_signal {
            rows_rh.extend(text_signal_rows(t));
        }
        rows.extend(rows_rh);
        tables.push(table);
    }
    Ok(Report {
        title: "Vigil — Trust & Safety executive report".into(),
        subtitle: i.subtitle.clone(),
        summary: rows,
        tables,
        charts,
    })
}

/// The run's queue against the behaviour-only model's (same capacity and policy): rare-harm
/// users found and the suggested action mix of each.
fn text_signal_rows(t: &crate::protect::TextSignal) -> Vec<SummaryRow> {
    let row = |metric: String, value: String| SummaryRow {
        section: "Rare harm".into(),
        metric,
        value,
    };
    let mut rows = Vec::new();
    for (k, (q, label)) in t
        .queues
        .iter()
        .zip(["with the text signal", "behaviour only"])
        .enumerate()
    {
        // The run's own count is the row above ("... with a user-day in the queue").
        if let (1, Some(found), Some(all)) = (k, q.rare_harm_found, q.rare_harm_users) {
            rows.push(row(
                format!("Rare-harm users (ground truth) in the queue, {label}"),
                format!("{found} of {all} ({} user-days queued)", q.queued),
            ));
        }
        let mix: Vec<String> = q
            .actions
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(a, n)| format!("{a} {n}"))
            .collect();
        rows.push(row(
            format!("Suggested actions, {label}"),
            if mix.is_empty() {
                "none".into()
            } else {
                mix.join(", ")
            },
        ));
    }
    rows
}

/// The rare-harm stage's lines and its top-10 user-days (by the day's affinity), with
/// whether the queue holds them: what the text signal found that behaviour may not.
fn rare_harm_section(
    s: &Scored,
    q: &Queue,
    info: &crate::protect::RareHarmInfo,
    truth: Option<&HashMap<String, String>>,
) -> Result<(Vec<SummaryRow>, HtmlTable), PipelineError> {
    let day = column_f64(&s.table, "rare_harm_affinity")?;
    let window = column_f64(&s.table, "rare_harm_affinity_window")?;
    let mut order: Vec<usize> = (0..day.len()).collect();
    order.sort_by(|&a, &b| day[b].total_cmp(&day[a]).then(a.cmp(&b)));
    let queued: std::collections::HashSet<usize> = q.entries.iter().map(|e| e.row).collect();
    let top: Vec<usize> = order.into_iter().take(10).collect();
    let row = |metric: &str, value: String| SummaryRow {
        section: "Rare harm".into(),
        metric: metric.into(),
        value,
    };
    let mut summary = vec![
        row(
            "Chat messages scored (distinct texts)",
            format!("{} ({})", info.messages, info.distinct_texts),
        ),
        row(
            "Scorer (window aggregator)",
            format!("{} ({})", info.scorer, info.aggregator),
        ),
    ];
    if let Some(c) = &info.cascade {
        summary.push(row(
            "Cascade: distinct texts encoded exactly (first-stage cut)",
            format!(
                "{} of {} ({:.3e})",
                c.candidates, info.distinct_texts, c.cut
            ),
        ));
        summary.push(row(
            "Cascade: estimated recall of notable texts (audit)",
            match c.estimated_recall {
                Some(r) => format!(
                    "{r:.4} ({} of {} screened-out texts checked were notable)",
                    c.audited_notable, c.audited
                ),
                None => format!("n/a ({} checked)", c.audited),
            },
        ));
    }
    summary.extend([row(
        "Top-10 rare-harm user-days in the review queue",
        format!(
            "{} of {}",
            top.iter().filter(|r| queued.contains(r)).count(),
            top.len()
        ),
    )]);
    // With ground truth from `vigil generate --scenario realistic`: how many rare-harm users
    // (actor `rare_harm_*`) have a user-day in the queue, i.e. within its capacity.
    if let Some(truth) = truth {
        let rare: std::collections::HashSet<&str> = truth
            .iter()
            .filter(|(_, actor)| actor.starts_with("rare_harm"))
            .map(|(u, _)| u.as_str())
            .collect();
        if !rare.is_empty() {
            let found: std::collections::HashSet<&str> = q
                .entries
                .iter()
                .map(|e| s.user.get(e.row))
                .filter(|u| rare.contains(u))
                .collect();
            summary.push(row(
                "Rare-harm users (ground truth) with a user-day in the queue",
                format!("{} of {}", found.len(), rare.len()),
            ));
        }
    }
    let table = HtmlTable {
        title: "Top 10 rare-harm user-days".into(),
        headers: [
            "day",
            "user_id",
            "rare_harm_affinity",
            "rare_harm_affinity_window",
            "risk_score",
            "queued",
        ]
        .map(String::from)
        .to_vec(),
        rows: top
            .iter()
            .map(|&r| {
                vec![
                    s.day.get(r).to_string(),
                    s.user.get(r).to_string(),
                    r4(day[r]),
                    r4(window[r]),
                    r4(s.risk[r]),
                    if queued.contains(&r) { "yes" } else { "no" }.into(),
                ]
            })
            .collect(),
    };
    Ok((summary, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_python_str_round() {
        assert_eq!(r4(0.44), "0.44");
        assert_eq!(r4(0.068_512), "0.0685");
        assert_eq!(r4(0.78), "0.78");
        assert_eq!(r4(1.0), "1.0");
    }

    #[test]
    fn top_counts_keep_first_seen_order_on_ties() {
        let c = top_counts(["b", "a", "a", "b", "c"], 2);
        assert_eq!(c, vec![("b".to_string(), 2), ("a".to_string(), 2)]);
    }
}
