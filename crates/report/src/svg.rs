//! Minimal SVG charts: bars, lines, histograms and x-y curves, drawn as plain shapes with
//! axis ticks so the page needs no plotting library and no network.

use crate::{Chart, ChartData};

const W: f64 = 440.0;
const H: f64 = 252.0;
const L: f64 = 56.0; // left margin
const R: f64 = 12.0;
const T: f64 = 12.0;
// Room under the x axis for labels of up to `X_LABEL_CHARS` characters rotated by 35°.
const B: f64 = 58.0;
const X_LABEL_CHARS: usize = 10;
const COLORS: [&str; 4] = ["#2f6fde", "#e0563b", "#2a9d8f", "#8e6bbf"];

/// A short axis label for `v` (3 significant figures at most, k and M for large values).
pub fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Labels for a run of axis values (ticks or bin edges): [`fmt_tick`]'s short form when
/// it tells them apart, else as many decimals as it takes (up to 9) so that neighbouring
/// labels differ: a narrow range such as 0.9991-0.9999 never shows every tick as "1.000".
pub fn fmt_ticks(values: &[f64]) -> Vec<String> {
    let distinct = |l: &[String]| l.windows(2).all(|w| w[0] != w[1]);
    let short: Vec<String> = values.iter().map(|&v| fmt_tick(v)).collect();
    if distinct(&short) {
        return short;
    }
    for d in 0..=9 {
        let l: Vec<String> = values.iter().map(|v| format!("{v:.d$}")).collect();
        if distinct(&l) {
            return l;
        }
    }
    values.iter().map(|v| format!("{v:e}")).collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Frame {
    y_min: f64,
    y_max: f64,
}

impl Frame {
    fn y(&self, v: f64) -> f64 {
        let span = (self.y_max - self.y_min).max(1e-12);
        T + (H - T - B) * (1.0 - (v - self.y_min) / span)
    }
    fn axes(&self, out: &mut String) {
        out.push_str(&format!(
            "<line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"#9aa5b1\"/>\
             <line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#9aa5b1\"/>",
            H - B,
            W - R
        ));
        let ticks: Vec<f64> = (0..=4)
            .map(|k| self.y_min + (self.y_max - self.y_min) * f64::from(k) / 4.0)
            .collect();
        for (v, label) in ticks.iter().zip(fmt_ticks(&ticks)) {
            let y = self.y(*v);
            out.push_str(&format!(
                "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{L}\" y2=\"{y:.1}\" stroke=\"#9aa5b1\"/>\
                 <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                L - 4.0,
                L - 6.0,
                y + 4.0,
            ));
        }
    }
}

/// The axis top for a largest value `v`: the next round number above it (1, 1.2, 2, 4, 6,
/// 8 times a power of ten), so the four tick steps are round too.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 2.0, 4.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|top| *top >= v * 1.02)
        .unwrap_or(v * 1.05)
}

fn x_labels(labels: &[String], xs: &[f64], out: &mut String) {
    let every = (labels.len() / 8).max(1);
    for (i, (l, x)) in labels.iter().zip(xs).enumerate() {
        if i % every == 0 {
            let short: String = if l.chars().count() > X_LABEL_CHARS {
                let mut t: String = l.chars().take(X_LABEL_CHARS - 1).collect();
                t.push('…');
                t
            } else {
                l.clone()
            };
            out.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {x:.1} {:.1})\">{}</text>",
                H - B + 14.0,
                H - B + 14.0,
                esc(&short)
            ));
        }
    }
}

fn bars(labels: &[String], values: &[f64], out: &mut String) {
    let f = Frame {
        y_min: 0.0,
        y_max: nice_max(values.iter().copied().fold(0.0, f64::max)),
    };
    f.axes(out);
    let n = values.len().max(1) as f64;
    let slot = (W - L - R) / n;
    let mut centers = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let x = L + slot * i as f64 + slot * 0.1;
        let y = f.y(v.max(0.0));
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
            slot * 0.8,
            (H - B - y).max(0.0),
            COLORS[0],
            esc(labels.get(i).map_or("", String::as_str)),
            fmt_tick(*v)
        ));
        centers.push(x + slot * 0.4);
    }
    x_labels(labels, &centers, out);
}

fn legend(names: &[&str], out: &mut String) {
    for (i, n) in names.iter().enumerate() {
        let x = L + 8.0 + 150.0 * i as f64;
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{T}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            COLORS[i % COLORS.len()],
            x + 14.0,
            T + 9.0,
            esc(n)
        ));
    }
}

fn lines(labels: &[String], series: &[(String, Vec<f64>)], out: &mut String) {
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max);
    let f = Frame {
        y_min: 0.0,
        y_max: nice_max(max),
    };
    f.axes(out);
    let n = labels.len().max(2) as f64 - 1.0;
    let xs: Vec<f64> = (0..labels.len())
        .map(|i| L + (W - L - R) * i as f64 / n)
        .collect();
    for (k, (_, vals)) in series.iter().enumerate() {
        let pts: Vec<String> = vals
            .iter()
            .zip(&xs)
            .map(|(v, x)| format!("{x:.1},{:.1}", f.y(*v)))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[k % COLORS.len()],
            pts.join(" ")
        ));
    }
    x_labels(labels, &xs, out);
    let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
    legend(&names, out);
}

fn curves(series: &[(String, Vec<(f64, f64)>)], x_title: &str, y_title: &str, out: &mut String) {
    let f = Frame {
        y_min: 0.0,
        y_max: 1.0,
    };
    f.axes(out);
    let x = |v: f64| L + (W - L - R) * v.clamp(0.0, 1.0);
    for k in 0..=4 {
        let v = f64::from(k) / 4.0;
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(v),
            H - B + 14.0,
            fmt_tick(v)
        ));
    }
    for (k, (_, pts)) in series.iter().enumerate() {
        let p: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), f.y(*b)))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[k % COLORS.len()],
            p.join(" ")
        ));
    }
    out.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        (L + W - R) / 2.0,
        H - 8.0,
        esc(x_title),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_title)
    ));
    let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
    legend(&names, out);
}

/// Edges (`bins + 1`) and counts (`bins`) of the finite `values` in equal-width bins over
/// their range; both empty when no value is finite.
pub fn histogram(values: &[f64], bins: usize) -> (Vec<f64>, Vec<f64>) {
    let bins = bins.max(1);
    let finite = || values.iter().copied().filter(|v| v.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    if lo > hi {
        return (vec![], vec![]);
    }
    // A constant sample (or one within rounding of it) is one bin, not many empty ones
    // whose edges cannot be told apart.
    let bins = if hi - lo <= 1e-9 * hi.abs().max(1.0) {
        1
    } else {
        bins
    };
    let width = ((hi - lo) / bins as f64).max(1e-12);
    let mut counts = vec![0.0; bins];
    for v in finite() {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1.0;
    }
    let edges = (0..=bins).map(|b| lo + width * b as f64).collect();
    (edges, counts)
}

/// One chart as an inline `<svg>` element.
pub fn render(c: &Chart) -> String {
    let mut body = String::new();
    match &c.data {
        ChartData::Bars { labels, values } => bars(labels, values, &mut body),
        ChartData::Histogram { labels, counts, .. } => bars(labels, counts, &mut body),
        ChartData::Lines { x_labels, series } => lines(x_labels, series, &mut body),
        ChartData::Curves {
            series,
            x_title,
            y_title,
        } => curves(series, x_title, y_title, &mut body),
    }
    format!(
        "<svg id=\"chart-{}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">{body}</svg>",
        esc(&c.id),
        esc(&c.title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_numbers_above_the_data() {
        assert_eq!(nice_max(15_118.0), 20_000.0);
        assert_eq!(nice_max(0.186), 0.2);
        assert_eq!(nice_max(1.0), 1.2);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn narrow_ranges_get_ticks_that_differ() {
        let t = fmt_ticks(&[0.9991, 0.9993, 0.9995, 0.9997, 0.9999]);
        assert!(t.windows(2).all(|w| w[0] != w[1]), "{t:?}");
        assert_eq!(fmt_ticks(&[0.0, 250.0, 500.0]), ["0", "250", "500"]);
        let (edges, counts) = histogram(&[1.0, 1.0, 1.0], 10);
        assert_eq!((edges.len(), counts), (2, vec![3.0]));
    }

    #[test]
    fn histogram_counts_every_value() {
        let (edges, counts) = histogram(&[0.0, 0.5, 1.0, 1.0, f64::NAN], 4);
        assert_eq!(edges, [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(counts, [1.0, 0.0, 1.0, 2.0]);
        assert_eq!(histogram(&[f64::NAN], 4), (vec![], vec![]));
    }
}
