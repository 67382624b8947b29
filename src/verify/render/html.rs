//! The HTML report: one self-contained page (inline CSS, no script, no network).

use std::fmt::Write as _;

use super::*;

/// Escape text for HTML element content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
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

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:600}
.v-equal{background:#1a7f37}.v-different{background:#cf222e}.v-partial_visibility,.v-incomplete{background:#9a6700}
.meta td{padding:2px 12px 2px 0;vertical-align:top}.meta td:first-child{color:#57606a}
table.t{border-collapse:collapse;width:100%;margin-top:8px}
table.t th,table.t td{border-bottom:1px solid #d0d7de;padding:5px 8px;text-align:right;white-space:nowrap}
table.t th:first-child,table.t td:first-child{text-align:left}
table.t .bar{width:38%;text-align:left}
.b{display:flex;height:14px;border-radius:3px;overflow:hidden;background:#eaeef2;min-width:120px}
.b span{display:block;height:100%}
.eq{background:#2da44e}.mi{background:#cf222e}.ex{background:#bc4c00}.di{background:#d4a72c}.cl{background:#8250df}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;border-radius:2px}
.s-equal{color:#1a7f37}.s-different,.s-error{color:#cf222e;font-weight:600}
table.d{border-collapse:collapse;width:100%;table-layout:fixed}
table.d th,table.d td{border:1px solid #d0d7de;padding:4px 6px;text-align:left;vertical-align:top;word-break:break-all}
table.d th{background:#f6f8fa}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.note{color:#57606a}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:4px;margin:12px 0}
";

fn bar(mode: Mode, c: &Counts) -> String {
    // In counts mode only the difference of the counts is known.
    let parts: Vec<(&str, u64, &str)> = match mode {
        Mode::Counts => vec![
            ("eq", c.source_rows.min(c.target_rows), "matching count"),
            (
                "mi",
                c.source_rows.saturating_sub(c.target_rows),
                "missing (by count)",
            ),
            (
                "ex",
                c.target_rows.saturating_sub(c.source_rows),
                "extra (by count)",
            ),
        ],
        _ => vec![
            ("eq", c.equal, "equal"),
            ("mi", c.only_in_source, "missing"),
            ("ex", c.only_in_target, "extra"),
            ("di", c.different, "different"),
            ("cl", c.cannot_land, "cannot land"),
        ],
    };
    let total: u64 = parts.iter().map(|p| p.1).sum();
    let mut o = String::from("<div class=\"b\">");
    if total > 0 {
        for (class, n, label) in parts.into_iter().filter(|p| p.1 > 0) {
            let pct = (n as f64 * 100.0 / total as f64).max(0.8);
            let _ = write!(
                o,
                "<span class=\"{class}\" style=\"width:{pct:.2}%\" title=\"{label}: {n}\"></span>"
            );
        }
    }
    o.push_str("</div>");
    o
}

pub(super) fn html(r: &VerifyReport) -> String {
    let mut o = String::new();
    let verdict_class = serde_json::to_value(r.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>dualwrite verify: {}</title><style>{CSS}</style></head><body>\n",
        esc(r.verdict.as_str())
    );
    let _ = writeln!(
        o,
        "<h1>dualwrite verify <span class=\"verdict v-{verdict_class}\" id=\"verdict\">{}</span></h1>",
        esc(r.verdict.as_str())
    );
    let _ = writeln!(o, "<p>{}</p>", esc(&verdict_line(r)));
    if !r.key.full_visibility {
        let _ = writeln!(
            o,
            "<div class=\"warn\">Visibility is partial: the key {} acts as <b>{}</b>, and row level \
             security hides rows from it. Rows reported missing may exist. Verify with the service \
             role key.</div>",
            esc(&r.key.variable),
            esc(&r.key.role)
        );
    }
    o.push_str("<table class=\"meta\">");
    for (k, v) in [
        ("mode", mode_text(r)),
        ("source", format!("{} {}", r.source.kind, r.source.location)),
        ("target", format!("{} {}", r.target.kind, r.target.location)),
        ("key", r.key.describe()),
        (
            "float tolerance",
            format!(
                "relative {:e}, {}",
                r.tolerance.float_relative, r.tolerance.applies_to
            ),
        ),
        ("generated", r.generated_at.clone()),
    ] {
        let _ = write!(o, "<tr><td>{k}</td><td>{}</td></tr>", esc(&v));
    }
    o.push_str("</table>\n<h2>Tables</h2>\n<div class=\"legend\">");
    let (missing, extra) = match r.direction {
        Direction::Forward => ("missing on target", "extra on target"),
        Direction::Reverse => ("missing in SQLite", "extra in SQLite"),
    };
    for (class, label) in [
        ("eq", "equal"),
        ("mi", missing),
        ("ex", extra),
        ("di", "different"),
        ("cl", "cannot land"),
    ] {
        let _ = write!(o, "<span class=\"{class}\"></span>{label}");
    }
    o.push_str("</div>\n<table class=\"t\"><thead><tr><th>table</th>");
    let cols = columns(r);
    for (h, _) in &cols {
        let _ = write!(o, "<th>{h}</th>");
    }
    o.push_str("<th class=\"bar\">rows</th><th>result</th></tr></thead><tbody>\n");
    for t in &r.tables {
        let _ = write!(
            o,
            "<tr id=\"t-{}\"><td><code>{}</code></td>",
            esc(t.table),
            esc(t.table)
        );
        for (_, f) in &cols {
            let _ = write!(o, "<td>{}</td>", f(&t.counts));
        }
        let status = serde_json::to_value(t.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "<td class=\"bar\">{}</td><td class=\"s-{status}\">{}</td></tr>",
            bar(r.mode, &t.counts),
            status_text(t)
        );
    }
    let _ = write!(o, "<tr><td><b>total</b></td>");
    for (_, f) in &cols {
        let _ = write!(o, "<td><b>{}</b></td>", f(&r.totals));
    }
    let _ = writeln!(
        o,
        "<td class=\"bar\">{}</td><td></td></tr></tbody></table>",
        bar(r.mode, &r.totals)
    );

    let detailed: Vec<&TableReport> = r
        .tables
        .iter()
        .filter(|t| {
            !t.rows.is_empty() || t.error.is_some() || !t.notes.is_empty() || !t.lossy.is_empty()
        })
        .collect();
    if !detailed.is_empty() {
        o.push_str("<h2>Details</h2>\n");
    }
    for t in detailed {
        let _ = writeln!(
            o,
            "<h3><code>{}</code> → <code>{}</code></h3>",
            esc(t.table),
            esc(t.supabase_table)
        );
        if let Some(e) = &t.error {
            let _ = writeln!(o, "<p class=\"s-error\">Could not verify: {}</p>", esc(e));
        }
        for n in &t.notes {
            let _ = writeln!(o, "<p class=\"note\">{}</p>", esc(n));
        }
        for l in &t.lossy {
            let _ = writeln!(
                o,
                "<p class=\"note\">Lossy conversion (documented): <code>{}</code> {} in {} row(s)</p>",
                esc(l.column),
                esc(l.conversion),
                l.rows
            );
        }
        if t.rows.is_empty() {
            continue;
        }
        o.push_str(
            "<table class=\"d\"><thead><tr><th style=\"width:22%\">key</th><th style=\"width:11%\">kind</th>\
             <th style=\"width:17%\">column</th><th>source</th><th>target</th></tr></thead><tbody>\n",
        );
        for d in &t.rows {
            let key = format!(
                "<td><code>{}</code></td><td>{}</td>",
                esc(&d.key),
                r.kind_label(d.kind)
            );
            if d.columns.is_empty() {
                let _ = writeln!(
                    o,
                    "<tr>{key}<td colspan=\"3\">{}</td></tr>",
                    esc(d.reason.as_deref().unwrap_or(""))
                );
            }
            for c in &d.columns {
                let col = match &c.path {
                    Some(p) => format!("{} <code>{}</code>", esc(c.column), esc(p)),
                    None => esc(c.column),
                };
                let _ = writeln!(
                    o,
                    "<tr>{key}<td>{col}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                    esc(&c.source),
                    esc(&c.target)
                );
            }
        }
        o.push_str("</tbody></table>\n");
        if t.rows_not_listed > 0 {
            let _ = writeln!(
                o,
                "<p class=\"note\">… and {} more row(s).</p>",
                t.rows_not_listed
            );
        }
    }
    if let Some(rep) = &r.repair {
        o.push_str("<h2>Repair</h2>\n<ul>");
        for l in repair_lines(rep) {
            let _ = write!(o, "<li>{}</li>", esc(&l));
        }
        o.push_str("</ul>\n");
    }
    let _ = writeln!(
        o,
        "<p class=\"note\">dualwrite {} · report schema {} · generated {}</p>\n</body></html>",
        esc(r.tool_version),
        esc(r.schema),
        esc(&r.generated_at)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_everything_it_shows() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
