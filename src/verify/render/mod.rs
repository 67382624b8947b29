//! A [`VerifyReport`] as a terminal table, JSON (the stable schema documented
//! in docs/verify-report.md), Markdown for a ticket, or one self-contained
//! HTML page (inline CSS, no script, no network).

use std::fmt::Write as _;
use std::str::FromStr;

mod html;

use html::html;

use super::repair::{RepairOutcome, RepairStatus};
use super::{Counts, Mode, RowDiff, TableReport, TableStatus, Verdict, VerifyReport};
use crate::error::Error;
use crate::Direction;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
    Html,
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "md" | "markdown" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            other => Err(Error::invalid(format!(
                "unknown format `{other}` (text, json, md, html)"
            ))),
        }
    }
}

pub fn render(r: &VerifyReport, f: Format) -> String {
    match f {
        Format::Text => text(r),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(r).expect("a report serialises");
            s.push('\n');
            s
        }
        Format::Markdown => markdown(r),
        Format::Html => html(r),
    }
}

fn mode_text(r: &VerifyReport) -> String {
    match r.mode {
        Mode::Counts => "counts only (content not compared)".into(),
        Mode::Content => "content (every row)".into(),
        Mode::Sample => format!(
            "sample ({} random source rows per table) and counts",
            r.sample_rows.unwrap_or(0)
        ),
    }
}

fn status_text(t: &TableReport) -> &'static str {
    match t.status {
        TableStatus::Equal => "equal",
        TableStatus::Different => "DIFFERENT",
        TableStatus::Error => "ERROR",
    }
}

fn verdict_line(r: &VerifyReport) -> String {
    let what = match r.mode {
        Mode::Counts => format!("{} tables, counts", r.tables.len()),
        _ => format!(
            "{} tables, {} rows compared by content",
            r.tables.len(),
            r.totals.compared
        ),
    };
    let why = match r.verdict {
        Verdict::PartialVisibility => format!(
            "; the key ({}) cannot see every row, so equality cannot be concluded",
            r.key.role
        ),
        Verdict::Incomplete => "; at least one table could not be verified".into(),
        _ => String::new(),
    };
    format!(
        "{}: {what} in {:.1} s{why}",
        r.verdict.as_str(),
        r.duration_ms as f64 / 1000.0
    )
}

/// A column of the per-table table: header and value.
type Column = (&'static str, fn(&Counts) -> u64);

fn columns(r: &VerifyReport) -> Vec<Column> {
    let mut cols = mode_columns(r.mode);
    // In reverse the sides are named: the source is Supabase, the target the file.
    if r.direction == Direction::Reverse {
        for (h, _) in &mut cols {
            *h = match *h {
                "source" => "supabase",
                "target" => "sqlite",
                "missing" => "missing in sqlite",
                "extra" => "extra in sqlite",
                other => other,
            };
        }
    }
    // Only when there are any, so that the usual report keeps its shape.
    if r.totals.coerced > 0 {
        cols.push(("coerced", |c| c.coerced));
    }
    cols
}

fn mode_columns(mode: Mode) -> Vec<Column> {
    let mut cols: Vec<Column> = vec![("source", |c| c.source_rows), ("target", |c| c.target_rows)];
    match mode {
        Mode::Counts => {}
        Mode::Content | Mode::Sample => {
            if mode == Mode::Sample {
                cols.push(("sampled", |c| c.compared));
            }
            cols.push(("equal", |c| c.equal));
            cols.push(("missing", |c| c.only_in_source));
            if mode == Mode::Content {
                cols.push(("extra", |c| c.only_in_target));
            }
            cols.push(("differ", |c| c.different));
            cols.push(("cannot land", |c| c.cannot_land));
        }
    }
    cols
}

fn row_detail(d: &RowDiff) -> Vec<String> {
    if let Some(reason) = &d.reason {
        return vec![reason.clone()];
    }
    d.columns
        .iter()
        .map(|c| {
            let at = c
                .path
                .as_deref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default();
            format!("{}{at}: {} → {}", c.column, c.source, c.target)
        })
        .collect()
}

fn repair_lines(o: &RepairOutcome) -> Vec<String> {
    let mut out = vec![match o.status {
        RepairStatus::NothingToDo => "repair: nothing to change".to_owned(),
        RepairStatus::NotConfirmed => "repair: NOT confirmed, nothing was changed".to_owned(),
        RepairStatus::Refused => {
            "repair: refused (the verification was incomplete or could not see every row), nothing was changed"
                .to_owned()
        }
        RepairStatus::Applied => format!(
            "repair: applied (confirmed by {}); before it the verdict was {}",
            o.confirmed_by.as_deref().unwrap_or("?"),
            o.before_verdict.as_str()
        ),
    }];
    for t in &o.tables {
        out.push(format!(
            "{}: upserted {} of {}, deleted {} of {}, extra kept {}, cannot land {}, gone from source {}",
            t.table,
            t.upserted,
            t.planned_upserts,
            t.deleted,
            t.planned_deletes,
            t.extra_kept,
            t.cannot_land,
            t.gone_from_source
        ));
    }
    out
}

fn text(r: &VerifyReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "dualwrite verify: {}", mode_text(r));
    let _ = writeln!(o, "  source  {} {}", r.source.kind, r.source.location);
    let _ = writeln!(o, "  target  {} {}", r.target.kind, r.target.location);
    if r.direction == Direction::Reverse {
        let _ = writeln!(
            o,
            "  reverse Supabase is the source of truth, the SQLite file the copy"
        );
    }
    let _ = writeln!(o, "  key     {}", r.key.describe());
    let _ = writeln!(
        o,
        "  floats  equal within a relative {:e} ({})",
        r.tolerance.float_relative, r.tolerance.applies_to
    );
    o.push('\n');
    let cols = columns(r);
    let name_w = r
        .tables
        .iter()
        .map(|t| t.table.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = write!(o, "{:<name_w$}", "table");
    for (h, _) in &cols {
        let _ = write!(o, "  {h:>w$}", w = h.len().max(7));
    }
    o.push_str("  result\n");
    let line = |o: &mut String, name: &str, c: &Counts, result: &str| {
        let _ = write!(o, "{name:<name_w$}");
        for (h, f) in &cols {
            let _ = write!(o, "  {:>w$}", f(c), w = h.len().max(7));
        }
        let _ = writeln!(o, "  {result}");
    };
    for t in &r.tables {
        line(&mut o, t.table, &t.counts, status_text(t));
    }
    line(&mut o, "total", &r.totals, "");
    o.push('\n');
    for t in &r.tables {
        if let Some(e) = &t.error {
            let _ = writeln!(o, "{}: could not verify: {e}", t.table);
        }
        for n in &t.notes {
            let _ = writeln!(o, "{}: note: {n}", t.table);
        }
        if !t.lossy.is_empty() {
            let l: Vec<String> = t
                .lossy
                .iter()
                .map(|l| format!("{} {} x{}", l.column, l.conversion, l.rows))
                .collect();
            let _ = writeln!(
                o,
                "{}: lossy conversions (documented): {}",
                t.table,
                l.join(", ")
            );
        }
        if t.status == TableStatus::Different && t.rows.is_empty() && r.mode == Mode::Counts {
            let _ = writeln!(
                o,
                "{}: counts differ by {}",
                t.table,
                t.counts.source_rows.abs_diff(t.counts.target_rows)
            );
        }
        if !t.rows.is_empty() {
            let _ = writeln!(o, "{}:", t.table);
            for d in &t.rows {
                let detail = row_detail(d);
                let _ = writeln!(
                    o,
                    "  {:<14} {}{}",
                    r.kind_label(d.kind),
                    d.key,
                    detail.first().map(|x| format!("  {x}")).unwrap_or_default()
                );
                for x in detail.iter().skip(1) {
                    let _ = writeln!(o, "  {:<14} {}  {x}", "", " ".repeat(d.key.chars().count()));
                }
            }
            if t.rows_not_listed > 0 {
                let _ = writeln!(o, "  … and {} more row(s)", t.rows_not_listed);
            }
        }
    }
    if let Some(rep) = &r.repair {
        for l in repair_lines(rep) {
            let _ = writeln!(o, "{l}");
        }
    }
    let _ = writeln!(o, "verdict: {}", verdict_line(r));
    o
}

/// Text in a Markdown table cell: `|` would end the cell, a newline the row.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .replace('<', "&lt;")
}

/// A code span in a table cell (no escapes apply inside it but `\|`); a value
/// holding backticks gets a longer fence.
fn md_code(s: &str) -> String {
    let cell = s.replace('|', "\\|").replace(['\n', '\r'], " ");
    if cell.contains('`') {
        format!("`` {cell} ``")
    } else {
        format!("`{cell}`")
    }
}

fn markdown(r: &VerifyReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# dualwrite verify: {}\n", r.verdict.as_str());
    let _ = writeln!(o, "{}\n", md_cell(&verdict_line(r)));
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in [
        ("mode", mode_text(r)),
        (
            "source",
            format!("{} `{}`", r.source.kind, r.source.location),
        ),
        (
            "target",
            format!("{} `{}`", r.target.kind, r.target.location),
        ),
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
        let _ = writeln!(o, "| {k} | {} |", md_cell(&v));
    }
    let cols = columns(r);
    let _ = write!(o, "\n| table |");
    for (h, _) in &cols {
        let _ = write!(o, " {h} |");
    }
    let _ = write!(o, " result |\n|---|");
    for _ in &cols {
        o.push_str("---:|");
    }
    o.push_str("---|\n");
    for t in &r.tables {
        let _ = write!(o, "| {} |", t.table);
        for (_, f) in &cols {
            let _ = write!(o, " {} |", f(&t.counts));
        }
        let _ = writeln!(o, " {} |", status_text(t));
    }
    let _ = write!(o, "| **total** |");
    for (_, f) in &cols {
        let _ = write!(o, " {} |", f(&r.totals));
    }
    o.push_str(" |\n");
    for t in &r.tables {
        let listed = !t.rows.is_empty();
        if !listed && t.error.is_none() && t.notes.is_empty() {
            continue;
        }
        let _ = writeln!(o, "\n## {}\n", t.table);
        if let Some(e) = &t.error {
            let _ = writeln!(o, "Could not verify: {}\n", md_cell(e));
        }
        for n in &t.notes {
            let _ = writeln!(o, "- {}", md_cell(n));
        }
        if listed {
            if !t.notes.is_empty() {
                // A table right after a list would be read as part of it.
                o.push('\n');
            }
            let _ = writeln!(
                o,
                "| key | kind | column | source | target |\n|---|---|---|---|---|"
            );
            for d in &t.rows {
                if d.columns.is_empty() {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | | |",
                        md_code(&d.key),
                        r.kind_label(d.kind),
                        md_cell(d.reason.as_deref().unwrap_or(""))
                    );
                }
                for c in &d.columns {
                    let col = match &c.path {
                        Some(p) => format!("{} {p}", c.column),
                        None => c.column.to_owned(),
                    };
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} | {} | {} |",
                        md_code(&d.key),
                        r.kind_label(d.kind),
                        md_cell(&col),
                        md_code(&c.source),
                        md_code(&c.target)
                    );
                }
            }
            if t.rows_not_listed > 0 {
                let _ = writeln!(o, "\n… and {} more row(s).", t.rows_not_listed);
            }
        }
    }
    if let Some(rep) = &r.repair {
        o.push_str("\n## Repair\n\n");
        for l in repair_lines(rep) {
            let _ = writeln!(o, "- {}", md_cell(&l));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("md".parse::<Format>().unwrap(), Format::Markdown);
        assert_eq!("HTML".parse::<Format>().unwrap(), Format::Html);
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn markdown_cells_cannot_break_the_table() {
        assert_eq!(md_cell("a|b\nc"), "a\\|b c");
        assert_eq!(md_code("x`y|z"), "`` x`y\\|z ``");
        assert_eq!(md_code(r"back\slash"), r"`back\slash`");
    }
}
