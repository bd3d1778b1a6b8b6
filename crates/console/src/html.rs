//! Server-side HTML: escaping, the page frame, small inline-SVG charts. Every value that
//! came from data or a user passes through [`esc`] (text and attributes) or [`path_seg`]
//! (URL path segments) before it reaches a page.

use std::fmt::Write;

use crate::accounts::Session;

/// Escape text for HTML text and double- or single-quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode one URL path segment (or query value): everything but unreserved
/// characters and `@`.
pub(crate) fn path_seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A whole page: the frame (navigation by role, the logout form) around `body`. `session`
/// is `None` on the login page.
pub(crate) fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(s) = session {
        let _ = write!(
            nav,
            "<nav><a href=\"/\" class=\"brand\">Vigil review</a><a href=\"/\">Queue</a>"
        );
        if s.role >= crate::Role::Lead {
            nav.push_str("<a href=\"/lead\">Team</a>");
        }
        if s.role >= crate::Role::Admin {
            nav.push_str("<a href=\"/admin/users\">Accounts</a>");
        }
        let _ = write!(
            nav,
            "<span class=\"who\">{} ({})</span>\
             <form method=\"post\" action=\"/logout\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out</button></form>\
             <button type=\"button\" id=\"help-open\" title=\"Keyboard shortcuts (?)\">?</button></nav>",
            esc(&s.name),
            s.role.as_str(),
            esc(&s.csrf)
        );
    }
    let csrf_meta = session
        .map(|s| format!("<meta name=\"csrf\" content=\"{}\">", esc(&s.csrf)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{csrf_meta}\
         <title>{} · Vigil</title><link rel=\"stylesheet\" href=\"/static/console.css\">\
         <link rel=\"icon\" href=\"data:,\"></head><body>{nav}<main>{body}</main>{HELP}\
         <script src=\"/static/console.js\"></script></body></html>",
        esc(title)
    )
}

const HELP: &str = "<div id=\"help\" class=\"overlay\" hidden><div class=\"card\"><h2>Keyboard</h2>\
<table><tr><td><kbd>j</kbd> / <kbd>k</kbd></td><td>next / previous row</td></tr>\
<tr><td><kbd>Enter</kbd></td><td>open the selected case; on a case, record the decision</td></tr>\
<tr><td><kbd>n</kbd></td><td>take the next case</td></tr>\
<tr><td><kbd>1</kbd>..<kbd>5</kbd></td><td>allow, warn, rate_limit, block, escalate</td></tr>\
<tr><td><kbd>r</kbd></td><td>reveal blurred text (logged)</td></tr>\
<tr><td><kbd>u</kbd></td><td>back to the queue</td></tr>\
<tr><td><kbd>?</kbd></td><td>this help; <kbd>Esc</kbd> closes it</td></tr></table>\
<button type=\"button\" id=\"help-close\">Close</button></div></div>";

/// A horizontal bar chart as inline SVG: one labelled bar per `(label, value)`.
pub(crate) fn bars(rows: &[(String, f64)], unit: &str) -> String {
    if rows.is_empty() {
        return "<p class=\"muted\">Nothing yet.</p>".into();
    }
    let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max).max(1e-9);
    let (w, bar_h, label_w) = (520.0, 22.0, 140.0);
    let h = rows.len() as f64 * (bar_h + 6.0) + 6.0;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">"
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 6.0 + i as f64 * (bar_h + 6.0);
        let len = (w - label_w - 70.0) * v / max;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar_h}\"></rect>\
             <text x=\"{:.1}\" y=\"{}\">{} {}</text>",
            label_w - 6.0,
            y + bar_h * 0.7,
            esc(label),
            label_w + len + 6.0,
            y + bar_h * 0.7,
            fmt_num(*v),
            esc(unit)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A number for people: integers without decimals, others with three.
pub(crate) fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_data_cannot_open_a_tag_or_leave_an_attribute() {
        assert_eq!(
            esc("<script>alert('x')</script>\" onload=\"x"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot; onload=&quot;x"
        );
        assert_eq!(path_seg("u 1/../x@2026-02-01"), "u%201%2F..%2Fx@2026-02-01");
    }
}
