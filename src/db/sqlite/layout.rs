//! What a DoX file holds and how it is opened: the physical layout of each
//! catalogue table (legacy column names, missing columns), DoX's bootstrap,
//! and opening a connection.

use super::*;

/// Where each catalogue column lives in this particular file.
#[derive(Debug)]
pub(super) struct TableLayout {
    /// Physical column name per catalogue column; `None` when the file lacks it.
    pub(super) physical: Vec<Option<String>>,
    pub(super) select: String,
    pub(super) upsert: Option<String>,
}

impl TableLayout {
    /// The catalogue columns of `t` the file lacks (why `upsert` is `None`).
    pub(super) fn missing(&self, t: &Table) -> Vec<&'static str> {
        t.columns
            .iter()
            .zip(&self.physical)
            .filter(|(_, p)| p.is_none())
            .map(|(c, _)| c.sqlite)
            .collect()
    }
}

#[derive(Debug)]
pub(super) struct Layout {
    pub(super) tables: HashMap<&'static str, TableLayout>,
}

impl Layout {
    pub(super) fn get(&self, t: &Table) -> Option<&TableLayout> {
        self.tables.get(t.sqlite)
    }

    pub(super) fn writable(&self, t: &Table) -> Result<&TableLayout> {
        let l = self
            .get(t)
            .ok_or_else(|| Error::Sqlite(format!("the file has no table {}", t.sqlite)))?;
        if l.upsert.is_none() {
            return Err(Error::Sqlite(format!(
                "table {} lacks column(s) {} that DoX writes",
                t.sqlite,
                l.missing(t).join(", ")
            )));
        }
        Ok(l)
    }
}

pub(super) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The DoX schema of a table as SQLModel creates it.
pub(super) fn create_table_sql(t: &Table) -> String {
    let mut parts: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let ty = match c.kind {
                Kind::Integer => "INTEGER",
                Kind::Float => "FLOAT",
                Kind::Bool => "BOOLEAN",
                Kind::Text | Kind::Json | Kind::Timestamp => "VARCHAR",
            };
            let null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {ty}{null}", quote(c.sqlite))
        })
        .collect();
    parts.push(format!("PRIMARY KEY ({})", quote(t.key().sqlite)));
    if t.sqlite == cat::SKILLS_REGISTRY.sqlite {
        parts.push("UNIQUE (name)".into());
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n\t{}\n)",
        quote(t.sqlite),
        parts.join(", \n\t")
    )
}

/// Columns DoX's bootstrap adds to existing files (spec 1.1).
pub(super) const PATCHES: [(&str, &str); 3] = [
    ("fact", "evidence_id"),
    ("artifact", "source_url"),
    ("artifact", "extra_json"),
];

pub(super) fn table_columns(conn: &Connection, table: &str) -> Result<Option<Vec<String>>> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(table)))?;
    let cols = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(cols))
}

pub(super) fn build_layout(conn: &Connection) -> Result<Layout> {
    let mut tables = HashMap::new();
    for t in TABLES {
        if let Some(l) = table_layout(conn, t)? {
            tables.insert(t.sqlite, l);
        }
    }
    Ok(Layout { tables })
}

/// Where `t`'s columns live in this file (`None`: the file lacks the table).
pub(super) fn table_layout(conn: &Connection, t: &Table) -> Result<Option<TableLayout>> {
    let Some(existing) = table_columns(conn, t.sqlite)? else {
        return Ok(None);
    };
    let physical: Vec<Option<String>> = t
        .columns
        .iter()
        .map(|c| {
            if existing.iter().any(|e| e == c.sqlite) {
                return Some(c.sqlite.to_owned());
            }
            t.legacy_names
                .iter()
                .find(|(orm, legacy)| *orm == c.sqlite && existing.iter().any(|e| e == legacy))
                .map(|(_, legacy)| (*legacy).to_owned())
        })
        .collect();
    let select_cols: Vec<String> = physical
        .iter()
        .map(|p| p.as_deref().map_or_else(|| "NULL".to_owned(), quote))
        .collect();
    let select = format!("SELECT {} FROM {}", select_cols.join(", "), quote(t.sqlite));
    let upsert = physical.iter().all(Option::is_some).then(|| {
        let cols: Vec<String> = physical.iter().flatten().map(|p| quote(p)).collect();
        let marks = vec!["?"; cols.len()].join(", ");
        let updates: Vec<String> = cols[1..]
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        format!(
            "INSERT INTO {} ({}) VALUES ({marks}) ON CONFLICT ({}) DO UPDATE SET {}",
            quote(t.sqlite),
            cols.join(", "),
            cols[0],
            updates.join(", ")
        )
    });
    Ok(Some(TableLayout {
        physical,
        select,
        upsert,
    }))
}

pub(super) fn bootstrap(conn: &Connection) -> Result<()> {
    for t in TABLES {
        conn.execute_batch(&create_table_sql(t))?;
    }
    for (table, column) in PATCHES {
        let cols = table_columns(conn, table)?.unwrap_or_default();
        if !cols.iter().any(|c| c == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} VARCHAR",
                quote(table),
                quote(column)
            ))?;
        }
    }
    Ok(())
}

pub(super) fn open_connection(path: &Path, opts: &SqliteOptions) -> Result<(Connection, Layout)> {
    open_connection_inner(path, opts).map_err(|e| match e {
        Error::Sqlite(m) if !m.contains(&path.display().to_string()) => {
            Error::Sqlite(format!("{}: {m}", path.display()))
        }
        other => other,
    })
}

pub(super) fn open_connection_inner(
    path: &Path,
    opts: &SqliteOptions,
) -> Result<(Connection, Layout)> {
    let conn = if opts.read_only {
        Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    } else {
        Connection::open(path)
    }
    .map_err(|e| {
        // rusqlite's message ends with the path: name it once, and say what to check.
        let p = path.display().to_string();
        let m = e.to_string();
        let m = m.strip_suffix(&format!(": {p}")).unwrap_or(&m);
        let hint = if path.exists() {
            ""
        } else {
            " (no such file: check DB_PATH or --from-sqlite)"
        };
        Error::Sqlite(format!("cannot open {p}: {m}{hint}"))
    })?;
    conn.busy_timeout(opts.busy_timeout)?;
    // Every DoX table's upsert and reads, and change capture's statements
    // (mark, own changes, acknowledgements): more than rusqlite's default of
    // 16, and an LRU cache smaller than the statements used in turn misses
    // every time (preparing a write to a table with capture's triggers
    // compiles the triggers too: tens of µs).
    conn.set_prepared_statement_cache_capacity(64);
    if !opts.read_only {
        if opts.wal {
            let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        }
        if opts.synchronous_normal {
            conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        }
        bootstrap(&conn)
            .map_err(|e| Error::Sqlite(format!("cannot prepare {}: {e}", path.display())))?;
    } else {
        // Fail early on a file that is not a database at all.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(|e| Error::Sqlite(format!("cannot read {}: {e}", path.display())))?;
    }
    let layout = build_layout(&conn)?;
    Ok((conn, layout))
}
