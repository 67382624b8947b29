//! What a backfill reports, per table and in total.

use std::collections::BTreeMap;

use serde::Serialize;

use super::rejects::Reject;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TableCopy {
    pub table: String,
    pub supabase_table: String,
    /// `copied`, `already done` (finished by an earlier run), or `dry run`.
    pub status: String,
    /// Where this run started, when it resumed an earlier one.
    pub resumed_from: Option<String>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_rejected: u64,
    /// Rows sent again because the app changed them while they were copied.
    pub rows_resynced: u64,
    /// Lossy conversions: column → kind → count.
    pub lossy: BTreeMap<String, BTreeMap<String, u64>>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    pub source: String,
    pub target: String,
    pub dry_run: bool,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    pub tables: Vec<TableCopy>,
    /// DoX tables the source lacks (copied as empty: `--allow-missing-tables`).
    pub missing_tables: Vec<String>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_rejected: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub rejects_file: Option<String>,
    /// The first rejects (all of them are in the rejects file).
    pub sample_rejects: Vec<Reject>,
    pub peak_rss_bytes: Option<u64>,
}

impl BackfillReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}{} → {}{}\n\n",
            if self.dry_run { "dry run: " } else { "" },
            self.source,
            self.target,
            if self.resumed { " (resumed)" } else { "" }
        );
        s.push_str(&format!(
            "{:<22} {:<14} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}\n",
            "table", "status", "read", "written", "rejected", "resynced", "lossy", "seconds"
        ));
        for t in &self.tables {
            let lossy: u64 = t.lossy.values().flat_map(|m| m.values()).sum();
            s.push_str(&format!(
                "{:<22} {:<14} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8.2}\n",
                t.table,
                t.status,
                t.rows_read,
                t.rows_written,
                t.rows_rejected,
                t.rows_resynced,
                lossy,
                t.seconds
            ));
        }
        s.push_str(&format!(
            "\n{} rows read, {} written, {} rejected in {:.1} s ({:.0} rows/s)\n",
            self.rows_read,
            self.rows_written,
            self.rows_rejected,
            self.seconds,
            self.rows_per_second
        ));
        for t in &self.tables {
            for (col, kinds) in &t.lossy {
                for (k, n) in kinds {
                    s.push_str(&format!("lossy conversion: {}.{col}: {k} x{n}\n", t.table));
                }
            }
        }
        if !self.missing_tables.is_empty() {
            s.push_str(&format!(
                "the source has no table {} (--allow-missing-tables): nothing was copied for it\n",
                self.missing_tables.join(", ")
            ));
        }
        if self.rows_rejected > 0 {
            s.push_str(&format!(
                "{} rows did not land; each is in {}\n",
                self.rows_rejected,
                self.rejects_file.as_deref().unwrap_or("the report")
            ));
        }
        s
    }
}
