//! Vigil executive report: one page a T&S lead can act on.
//!
//! The pipeline fills a [`Report`] (summary rows, tables, charts); this crate renders it as a
//! self-contained HTML page (inline CSS and SVG, no network, no scripts needed to read it),
//! as Markdown and as JSON, all carrying the same numbers.

pub mod svg;

use serde::Serialize;

/// One `(section, metric, value)` row of the executive summary.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    /// Data, Monitoring, Detection, ...
    pub section: String,
    /// What is measured.
    pub metric: String,
    /// The value, formatted.
    pub value: String,
}

/// What a chart draws.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChartData {
    /// One bar per label.
    Bars {
        /// Bar labels.
        labels: Vec<String>,
        /// Bar heights.
        values: Vec<f64>,
    },
    /// Lines over shared x labels.
    Lines {
        /// X-axis labels (e.g. days).
        x_labels: Vec<String>,
        /// Named series, each as long as `x_labels`.
        series: Vec<(String, Vec<f64>)>,
    },
    /// A histogram: a sample's count per equal-width bin over its finite range, built by
    /// [`ChartData::histogram`] (the sample itself is not kept: a run scores a million
    /// user-days, and `summary.json` carries the bins, not the scores).
    Histogram {
        /// Each bin's left edge, as shown under its bar.
        labels: Vec<String>,
        /// The bins' edges: each bin's left edge, then the last bin's right edge.
        edges: Vec<f64>,
        /// Values per bin.
        counts: Vec<f64>,
    },
    /// Curves of (x, y) points, e.g. precision-recall.
    Curves {
        /// Named curves.
        series: Vec<(String, Vec<(f64, f64)>)>,
        /// X-axis title.
        x_title: String,
        /// Y-axis title.
        y_title: String,
    },
}

impl ChartData {
    /// The histogram of `values` (non-finite ones left out) in `bins` equal-width bins
    /// between the smallest and largest; no bins for an empty sample.
    pub fn histogram(values: &[f64], bins: usize) -> Self {
        let (edges, counts) = svg::histogram(values, bins);
        let mut labels = svg::fmt_ticks(&edges);
        labels.truncate(counts.len());
        ChartData::Histogram {
            labels,
            edges,
            counts,
        }
    }
}

/// One chart.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    /// Stable id (used as the SVG element id).
    pub id: String,
    /// Title shown above it.
    pub title: String,
    /// The data.
    pub data: ChartData,
}

/// A table shown on the page.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Title.
    pub title: String,
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of formatted cells.
    pub rows: Vec<Vec<String>>,
}

/// Everything on the page.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Page title.
    pub title: String,
    /// One line under the title (data window, run time).
    pub subtitle: String,
    /// The executive summary.
    pub summary: Vec<SummaryRow>,
    /// Top-10 tables and the like.
    pub tables: Vec<Table>,
    /// Charts.
    pub charts: Vec<Chart>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let mut h = String::from("<table><thead><tr>");
    for c in headers {
        h.push_str(&format!("<th>{}</th>", esc(c)));
    }
    h.push_str("</tr></thead><tbody>");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            h.push_str(&format!("<td>{}</td>", esc(c)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;\
margin:24px;color:#1f2933;background:#fff}h1{margin:0 0 4px}.sub{color:#616e7c;margin-bottom:16px}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:16px;grid-auto-flow:dense}\
.card{border:1px solid #e4e7eb;border-radius:8px;padding:12px;min-width:0;overflow-x:auto}\
.wide{grid-column:1/-1}h2{font-size:15px;margin:0 0 8px}\
table{border-collapse:collapse;font-size:12px;width:100%}th,td{border-bottom:1px solid #e4e7eb;\
padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}th{background:#f5f7fa}\
svg{width:100%;height:auto}svg text{font-size:11px;fill:#3e4c59}";

/// The report as one self-contained HTML page.
pub fn render_html(r: &Report) -> String {
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\
         <h1>{}</h1><div class=\"sub\">{}</div>",
        esc(&r.title),
        esc(&r.title),
        esc(&r.subtitle)
    );
    let summary_rows: Vec<Vec<String>> = r
        .summary
        .iter()
        .map(|s| vec![s.section.clone(), s.metric.clone(), s.value.clone()])
        .collect();
    h.push_str("<div class=\"grid\"><div class=\"card\"><h2>Executive summary</h2>");
    h.push_str(&html_table(
        &["Section".into(), "Metric".into(), "Value".into()],
        &summary_rows,
    ));
    h.push_str("</div>");
    for t in &r.tables {
        // A table of many columns gets the page's whole width instead of squeezing them.
        let class = if t.headers.len() > 5 {
            "card wide"
        } else {
            "card"
        };
        h.push_str(&format!(
            "<div class=\"{class}\"><h2>{}</h2>",
            esc(&t.title)
        ));
        h.push_str(&html_table(&t.headers, &t.rows));
        h.push_str("</div>");
    }
    for c in &r.charts {
        h.push_str(&format!(
            "<div class=\"card\"><h2>{}</h2>{}</div>",
            esc(&c.title),
            svg::render(c)
        ));
    }
    h.push_str("</div></body></html>\n");
    h
}

/// The report as Markdown (summary and tables; charts are listed by title).
pub fn render_markdown(r: &Report) -> String {
    let mut md = format!(
        "# {}\n\n{}\n\n## Executive summary\n\n",
        r.title, r.subtitle
    );
    md.push_str("| Section | Metric | Value |\n|---|---|---|\n");
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    for s in &r.summary {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            cell(&s.section),
            cell(&s.metric),
            cell(&s.value)
        ));
    }
    for t in &r.tables {
        md.push_str(&format!(
            "\n## {}\n\n| {} |\n|",
            t.title,
            t.headers.join(" | ")
        ));
        md.push_str(&"---|".repeat(t.headers.len()));
        md.push('\n');
        for row in &t.rows {
            let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
            md.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
    }
    md.push_str("\n## Charts (in report.html)\n\n");
    for c in &r.charts {
        md.push_str(&format!("- {}\n", c.title));
    }
    md
}

/// The report as pretty JSON.
pub fn render_json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            title: "Vigil report".into(),
            subtitle: "test <window>".into(),
            summary: vec![SummaryRow {
                section: "Data".into(),
                metric: "Total events".into(),
                value: "50000".into(),
            }],
            tables: vec![Table {
                title: "Top".into(),
                headers: vec!["a".into()],
                rows: vec![vec!["x|y".into()]],
            }],
            charts: vec![
                Chart {
                    id: "bars".into(),
                    title: "Bars".into(),
                    data: ChartData::Bars {
                        labels: vec!["a".into(), "b".into()],
                        values: vec![1.0, 3.0],
                    },
                },
                Chart {
                    id: "hist".into(),
                    title: "Hist".into(),
                    data: ChartData::histogram(&[0.1, 0.2, 0.9], 5),
                },
            ],
        }
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let h = render_html(&sample());
        assert!(h.contains("test &lt;window&gt;"));
        assert_eq!(h.matches("<svg").count(), 2);
        assert!(!h.contains("http://") || h.contains("http://www.w3.org/2000/svg"));
        assert!(!h.contains("<script src"));
    }

    #[test]
    fn markdown_and_json_carry_the_summary() {
        let r = sample();
        assert!(render_markdown(&r).contains("| Data | Total events | 50000 |"));
        assert!(render_markdown(&r).contains("x\\|y"));
        assert!(render_json(&r).contains("\"Total events\""));
    }
}
