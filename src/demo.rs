//! The dual-write demo: write the sample records through `DualDatabase`
//! (SQLite primary, Supabase mirror) and show them on both sides.

use serde::Serialize;

use crate::catalogue::TABLES;
use crate::config::Settings;
use crate::db::{Database, DualStats, SqliteDatabase};
use crate::error::Result;
use crate::factory;
use crate::samples;

#[derive(Debug, Serialize)]
pub struct TableLine {
    pub table: &'static str,
    pub supabase_table: &'static str,
    pub samples: usize,
    pub in_sqlite: usize,
    pub in_supabase: usize,
    /// Sample rows equal on both sides after normalisation.
    pub equal: usize,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub sqlite_path: String,
    pub supabase_url: String,
    pub writes: usize,
    pub tables: Vec<TableLine>,
    pub dual: DualStats,
    /// (table, column, conversion, count) of lossy conversions on the mirror.
    pub lossy: Vec<(String, String, String, u64)>,
}

impl DemoReport {
    pub fn ok(&self) -> bool {
        self.dual.failed == 0
            && self.tables.iter().all(|t| {
                t.equal == t.samples && t.in_sqlite == t.samples && t.in_supabase == t.samples
            })
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "dual-write demo: {} writes through dual:sqlite+supabase\n  sqlite:   {}\n  supabase: {}\n\n",
            self.writes, self.sqlite_path, self.supabase_url
        );
        s.push_str(&format!(
            "{:<22} {:<22} {:>7} {:>7} {:>9} {:>6}\n",
            "sqlite table", "supabase table", "samples", "sqlite", "supabase", "equal"
        ));
        for t in &self.tables {
            s.push_str(&format!(
                "{:<22} {:<22} {:>7} {:>7} {:>9} {:>6}\n",
                t.table, t.supabase_table, t.samples, t.in_sqlite, t.in_supabase, t.equal
            ));
        }
        s.push_str(&format!(
            "\nmirrored writes: {}, secondary failures: {}\n",
            self.dual.mirrored, self.dual.failed
        ));
        for (t, c, k, n) in &self.lossy {
            s.push_str(&format!("lossy conversion: {t}.{c}: {k} x{n}\n"));
        }
        s.push_str(if self.ok() {
            "result: every sample row is on both sides and equal after normalisation\n"
        } else {
            "result: MISMATCH (see the table above)\n"
        });
        s
    }
}

pub async fn run(settings: &Settings) -> Result<DemoReport> {
    let sqlite = SqliteDatabase::open(&settings.db_path, factory::sqlite_options(settings)).await?;
    let supabase = factory::connect_supabase(settings).await?;
    let url = supabase.rest().url().to_owned();
    let dual = factory::dual(settings, sqlite, supabase)?;
    let writes = samples::writes()?;
    let n = writes.len();
    for w in writes {
        dual.apply(w).await?;
    }
    let sample_rows = samples::rows();
    let mut tables = Vec::new();
    for t in TABLES {
        let keys: Vec<String> = sample_rows
            .get(t.sqlite)
            .map(|rows| {
                rows.iter()
                    .map(|r| r[t.key().sqlite].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let pick = |rows: Vec<crate::db::Row>| -> Vec<crate::db::Row> {
            rows.into_iter()
                .filter(|r| keys.iter().any(|k| r[t.key().supabase].as_str() == Some(k)))
                .collect()
        };
        let left = pick(dual.primary().fetch(t, &[]).await?);
        let right = pick(dual.secondary().fetch(t, &[]).await?);
        let equal = left.iter().filter(|l| right.contains(l)).count();
        tables.push(TableLine {
            table: t.sqlite,
            supabase_table: t.supabase,
            samples: keys.len(),
            in_sqlite: left.len(),
            in_supabase: right.len(),
            equal,
        });
    }
    let lossy = dual
        .secondary()
        .lossy_counts()
        .into_iter()
        .map(|((t, c, k), n)| (t.to_owned(), c.to_owned(), k.as_str().to_owned(), n))
        .collect();
    Ok(DemoReport {
        sqlite_path: settings.db_path.display().to_string(),
        supabase_url: url,
        writes: n,
        tables,
        dual: dual.stats(),
        lossy,
    })
}
