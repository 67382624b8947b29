//! The file as a mirror (the reverse direction, Supabase the primary): rows
//! read from Supabase written in DoX's own shape (the inverse of the
//! normaliser, [`crate::normalise::to_dox`]), in one `BEGIN IMMEDIATE`
//! transaction, with the file's own column names ([`super::layout`]).
//! Blocking: the daemon calls it from `spawn_blocking`, on the connection
//! `capture::open_drainer` opened.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde_json::{Map, Value};

use super::layout::{quote, table_layout};
use super::scan::from_ref;
use super::to_param;
use crate::catalogue::Table;
use crate::error::{Error, Result};
use crate::normalise::{to_dox, SqlValue};

/// What one table of a batch brings: rows as they are now (canonical, after
/// [`crate::normalise::from_supabase_owned`]) and keys that are gone.
#[derive(Debug, Default)]
pub(crate) struct TableBatch {
    pub rows: Vec<Map<String, Value>>,
    pub gone: Vec<String>,
}

/// Rows written (changed or new), rows left as they were, rows deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowsApplied {
    pub written: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

/// [`apply`] on a connection of its own to the file at `path` (for callers
/// other than the reverse daemon: `verify --repair --direction reverse`).
/// Blocking: call it from `spawn_blocking`.
pub(crate) fn apply_to_file(
    path: &std::path::Path,
    batch: &[(&'static Table, TableBatch)],
) -> Result<(HashMap<&'static str, RowsApplied>, Vec<Refused>)> {
    let mut conn = crate::capture::open_rw(path)?;
    apply(&mut conn, batch)
}

/// A row (or the deletion of a key) the SQLite file refused: a dead letter.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub table: &'static Table,
    pub key: String,
    /// `sqlite_constraint` (a CHECK, NOT NULL, UNIQUE or a trigger's RAISE),
    /// `sqlite_mismatch`, `sqlite_too_big`, `unconvertible` (no DoX form for
    /// the value) or `bad_key`.
    pub code: &'static str,
    pub message: String,
    /// The row as read from Supabase (canonical shape); null for a deletion.
    pub row: Value,
}

/// One unit of a batch: a row to write or a key to delete.
enum Item<'a> {
    Row(&'a Map<String, Value>),
    Gone(&'a str),
}

struct Unit<'a> {
    t: &'static Table,
    item: Item<'a>,
}

impl Unit<'_> {
    fn refused(&self, code: &'static str, message: String) -> Refused {
        let (key, row) = match &self.item {
            Item::Row(r) => (
                r.get(self.t.key().supabase)
                    .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_owned))
                    .unwrap_or_default(),
                Value::Object((*r).clone()),
            ),
            Item::Gone(k) => ((*k).to_owned(), Value::Null),
        };
        Refused {
            table: self.t,
            key,
            code,
            message,
            row,
        }
    }
}

/// Why a transaction failed.
enum Failure {
    /// The unit at this index was refused (its data, not the file's state).
    Unit(usize, &'static str, String),
    /// A constraint checked at commit: some unit, not known which.
    AtCommit(&'static str, String),
    /// Nothing to do with the rows: a locked or broken file, a missing table
    /// or column. No subset of the batch would pass; it waits and is retried.
    Batch(Error),
}

/// The dead-letter code of an SQLite error caused by the data written, if it is one.
fn data_error(e: &rusqlite::Error) -> Option<&'static str> {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code()? {
        C::ConstraintViolation => Some("sqlite_constraint"),
        C::TypeMismatch => Some("sqlite_mismatch"),
        C::TooBig => Some("sqlite_too_big"),
        _ => None,
    }
}

/// Apply a batch, every row that the file accepts: the rows are written and
/// the gone keys deleted in one write transaction; when the file refuses a
/// row for its data (a constraint, a trigger's `RAISE`, a value with no DoX
/// form), that row is set aside as [`Refused`] and the others are applied
/// again without it (a failure only known at commit is found by bisection);
/// the set-aside rows are then tried again while that lands some (a row may
/// have waited for another to give up a UNIQUE value).
/// Any other failure (the file locked, a missing table or column) fails the
/// whole batch: nothing is set aside, the caller retries later.
pub(crate) fn apply(
    conn: &mut Connection,
    batch: &[(&'static Table, TableBatch)],
) -> Result<(HashMap<&'static str, RowsApplied>, Vec<Refused>)> {
    // Per table, deletions first: a row inserted under a new key may take the
    // place (a UNIQUE column) of a row that is gone.
    let mut units = Vec::new();
    for (t, b) in batch {
        units.extend(b.gone.iter().map(|k| Unit {
            t,
            item: Item::Gone(k),
        }));
        units.extend(b.rows.iter().map(|r| Unit {
            t,
            item: Item::Row(r),
        }));
    }
    let mut out: HashMap<&'static str, RowsApplied> = HashMap::new();
    let mut left = settle(conn, units.iter().collect(), &mut out)?;
    // A row refused only because of another one written after it (a UNIQUE
    // value that row gave up) passes now: try the set-aside rows again while
    // that helps.
    while !left.is_empty() {
        let before = left.len();
        let again = settle(conn, left.iter().map(|(u, _, _)| *u).collect(), &mut out)?;
        let done = again.len() == before;
        left = again;
        if done {
            break;
        }
    }
    let refused = left
        .into_iter()
        .map(|(u, code, msg)| u.refused(code, msg))
        .collect();
    Ok((out, refused))
}

/// Apply `units`, isolating the ones the file refuses; returns those, with why.
fn settle<'u, 'a>(
    conn: &mut Connection,
    units: Vec<&'u Unit<'a>>,
    out: &mut HashMap<&'static str, RowsApplied>,
) -> Result<Vec<(&'u Unit<'a>, &'static str, String)>> {
    let mut refused = Vec::new();
    let mut todo: Vec<Vec<&Unit>> = vec![units];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        match try_apply(conn, &part) {
            Ok(applied) => {
                for (t, a) in applied {
                    let o = out.entry(t).or_default();
                    o.written += a.written;
                    o.unchanged += a.unchanged;
                    o.deleted += a.deleted;
                }
            }
            Err(Failure::Batch(e)) => return Err(e),
            Err(Failure::Unit(i, code, msg)) => {
                let mut rest = part;
                refused.push((rest.remove(i), code, msg));
                todo.push(rest);
            }
            Err(Failure::AtCommit(code, msg)) if part.len() == 1 => {
                refused.push((part[0], code, msg));
            }
            Err(Failure::AtCommit(..)) => {
                let mut left = part;
                let right = left.split_off(left.len() / 2);
                todo.push(right);
                todo.push(left);
            }
        }
    }
    Ok(refused)
}

/// One transaction over `units`: all of them or none. Once Supabase is the
/// primary the file refuses every other writer (`cutover::marker`): this
/// write, the copy's, goes past the refusal in its own transaction.
fn try_apply(
    conn: &mut Connection,
    units: &[&Unit],
) -> std::result::Result<HashMap<&'static str, RowsApplied>, Failure> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| Failure::Batch(e.into()))?;
    let out = crate::cutover::marker::write_as_mirror(&tx, |tx| Ok(write_units(tx, units)))
        .map_err(Failure::Batch)??;
    tx.commit().map_err(|e| match data_error(&e) {
        Some(code) => Failure::AtCommit(code, e.to_string()),
        None => Failure::Batch(e.into()),
    })?;
    Ok(out)
}

/// The statements of [`try_apply`], in its transaction.
fn write_units(
    tx: &Connection,
    units: &[&Unit],
) -> std::result::Result<HashMap<&'static str, RowsApplied>, Failure> {
    let batch = |e: rusqlite::Error| Failure::Batch(e.into());
    let mut out: HashMap<&'static str, RowsApplied> = HashMap::new();
    let mut layouts: HashMap<&'static str, Statements> = HashMap::new();
    for (i, u) in units.iter().enumerate() {
        let t = u.t;
        if !layouts.contains_key(t.sqlite) {
            let s = Statements::of(tx, t).map_err(Failure::Batch)?;
            layouts.insert(t.sqlite, s);
        }
        let st = &layouts[t.sqlite];
        let applied = out.entry(t.sqlite).or_default();
        let on_data = |e: rusqlite::Error| match data_error(&e) {
            Some(code) => Failure::Unit(i, code, e.to_string()),
            None => Failure::Batch(e.into()),
        };
        match &u.item {
            Item::Gone(k) => {
                applied.deleted += tx
                    .prepare_cached(&st.delete)
                    .and_then(|mut s| s.execute([k]))
                    .map_err(on_data)? as u64;
            }
            Item::Row(row) => {
                let k = match row.get(t.key().supabase) {
                    Some(Value::String(s)) => s.clone(),
                    other => {
                        return Err(Failure::Unit(
                            i,
                            "bad_key",
                            format!(
                                "a {} row from Supabase has no text key: {other:?}",
                                t.supabase
                            ),
                        ))
                    }
                };
                let existing: Option<Vec<SqlValue>> = tx
                    .prepare_cached(&st.select)
                    .and_then(|mut s| {
                        s.query_row([&k], |r| {
                            (0..st.width)
                                .map(|c| r.get_ref(c).map(from_ref))
                                .collect::<rusqlite::Result<Vec<_>>>()
                        })
                        .optional()
                    })
                    .map_err(batch)?;
                let mut values = Vec::with_capacity(st.width);
                for (c, col) in t.columns.iter().enumerate() {
                    let v = row.get(col.supabase).unwrap_or(&Value::Null);
                    match to_dox(col, v, existing.as_ref().map(|e| &e[c])) {
                        Ok(x) => values.push(x),
                        Err(e) => {
                            return Err(Failure::Unit(
                                i,
                                "unconvertible",
                                format!("{} {k}: {e}", t.supabase),
                            ))
                        }
                    }
                }
                if existing.as_ref() == Some(&values) {
                    applied.unchanged += 1;
                    continue;
                }
                tx.prepare_cached(&st.upsert)
                    .and_then(|mut s| {
                        s.execute(rusqlite::params_from_iter(values.iter().map(to_param)))
                    })
                    .map_err(on_data)?;
                applied.written += 1;
            }
        }
    }
    Ok(out)
}

/// A table's statements, in the file's column names.
struct Statements {
    width: usize,
    select: String,
    upsert: String,
    delete: String,
}

impl Statements {
    fn of(conn: &Connection, t: &Table) -> Result<Statements> {
        let Some(l) = table_layout(conn, t)? else {
            return Err(Error::invalid(format!(
                "the SQLite file has no table {}: it is not the DoX database Supabase was migrated from",
                t.sqlite
            )));
        };
        let Some(upsert) = l.upsert else {
            return Err(Error::invalid(format!(
                "the SQLite table {} has no column {}",
                t.sqlite,
                l.missing(t).join(", ")
            )));
        };
        let key = quote(l.physical[0].as_deref().unwrap_or(t.key().sqlite));
        Ok(Statements {
            width: t.columns.len(),
            select: format!("{} WHERE {key} = ?1", l.select),
            upsert,
            delete: format!("DELETE FROM {} WHERE {key} = ?1", quote(t.sqlite)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::ARTIFACT;
    use serde_json::json;

    /// A file with DoX's `artifact` table (and what a test adds to it).
    fn file(extra: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        let cols: Vec<String> = ARTIFACT.columns.iter().map(|c| quote(c.sqlite)).collect();
        c.execute_batch(&format!(
            "CREATE TABLE artifact ({}, PRIMARY KEY (id)); {extra}",
            cols.join(", ")
        ))
        .unwrap();
        c
    }

    fn row(id: &str, filename: &str) -> Map<String, Value> {
        let v = json!({"id": id, "filename": filename, "filepath": "/p", "filetype": "pdf",
                       "extras": {"b": 1, "a": [true]}});
        v.as_object().unwrap().clone()
    }

    fn ids(c: &Connection) -> Vec<String> {
        let mut s = c.prepare("SELECT id FROM artifact ORDER BY id").unwrap();
        let v = s.query_map([], |r| r.get(0)).unwrap();
        v.collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn a_row_the_file_refuses_is_set_aside_and_the_others_land() {
        let mut c = file(
            "CREATE TRIGGER no BEFORE INSERT ON artifact WHEN NEW.filename = 'refuse' \
             BEGIN SELECT RAISE(ABORT, 'refused by the file'); END;
             CREATE TRIGGER keep BEFORE DELETE ON artifact WHEN OLD.id = 'kept' \
             BEGIN SELECT RAISE(ABORT, 'kept by the file'); END;
             INSERT INTO artifact (id, filename) VALUES ('kept', 'k'), ('old', 'o');",
        );
        let batch = vec![(
            &ARTIFACT,
            TableBatch {
                rows: vec![
                    row("a", "f"),
                    row("b", "refuse"),
                    row("c", "f"),
                    row("d", "refuse"),
                ],
                gone: vec!["kept".into(), "old".into()],
            },
        )];
        let (applied, refused) = apply(&mut c, &batch).unwrap();
        assert_eq!(
            applied["artifact"],
            RowsApplied {
                written: 2,
                unchanged: 0,
                deleted: 1
            }
        );
        let mut got: Vec<(String, &str, bool)> = refused
            .iter()
            .map(|r| (r.key.clone(), r.code, r.row.is_null()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("b".into(), "sqlite_constraint", false),
                ("d".into(), "sqlite_constraint", false),
                ("kept".into(), "sqlite_constraint", true),
            ]
        );
        assert!(refused[0].message.contains("by the file"), "{refused:?}");
        assert_eq!(
            refused.iter().find(|r| r.key == "b").unwrap().row["filename"],
            json!("refuse")
        );
        assert_eq!(ids(&c), vec!["a", "c", "kept"]);
    }

    #[test]
    fn a_value_with_no_dox_form_or_a_row_without_a_text_key_is_set_aside() {
        use crate::catalogue::SKILLS_REGISTRY as S;
        let mut c = file("");
        let cols: Vec<String> = S.columns.iter().map(|c| quote(c.sqlite)).collect();
        c.execute_batch(&format!(
            "CREATE TABLE skills_registry ({}, PRIMARY KEY (id))",
            cols.join(", ")
        ))
        .unwrap();
        let skill = |id: Value, enabled: Value| {
            json!({"id": id, "name": "n", "description": "d", "parameters": {}, "workflow_def": {},
                   "enabled": enabled})
            .as_object()
            .unwrap()
            .clone()
        };
        let batch = vec![
            (
                &S,
                TableBatch {
                    rows: vec![
                        skill(json!("s1"), json!(true)),
                        skill(json!("s2"), json!("yes")),
                        skill(json!(7), json!(false)),
                    ],
                    gone: vec![],
                },
            ),
            (
                &ARTIFACT,
                TableBatch {
                    rows: vec![row("a", "f")],
                    gone: vec![],
                },
            ),
        ];
        let (applied, refused) = apply(&mut c, &batch).unwrap();
        assert_eq!(
            (
                applied["skills_registry"].written,
                applied["artifact"].written
            ),
            (1, 1)
        );
        let got: Vec<(&str, &str, &str)> = refused
            .iter()
            .map(|r| (r.table.sqlite, r.key.as_str(), r.code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("skills_registry", "s2", "unconvertible"),
                ("skills_registry", "7", "bad_key"),
            ]
        );
        assert!(refused[0].message.contains("not a boolean"), "{refused:?}");
        let enabled: i64 = c
            .query_row(
                "SELECT enabled FROM skills_registry WHERE id = 's1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(enabled, 1);
    }

    #[test]
    fn a_row_that_waits_for_another_to_give_up_a_unique_value_lands() {
        // Supabase renamed `a` to y, then created `b` as x; the batch reads b first.
        let mut c = file(
            "CREATE UNIQUE INDEX one_name ON artifact (filename);
             INSERT INTO artifact (id, filename) VALUES ('a', 'x');",
        );
        let batch = vec![(
            &ARTIFACT,
            TableBatch {
                rows: vec![row("b", "x"), row("a", "y"), row("c", "y")],
                gone: vec![],
            },
        )];
        let (applied, refused) = apply(&mut c, &batch).unwrap();
        assert_eq!(applied["artifact"].written, 2);
        // c really takes a value another row keeps: a dead letter.
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(
            (refused[0].key.as_str(), refused[0].code),
            ("c", "sqlite_constraint")
        );
        let names: Vec<(String, String)> = c
            .prepare("SELECT id, filename FROM artifact ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            names,
            vec![("a".into(), "y".into()), ("b".into(), "x".into())]
        );
    }

    #[test]
    fn a_failure_known_only_at_commit_is_found_by_bisection() {
        // A deferred foreign key is checked at COMMIT: which deletion broke it
        // is not known, so the batch is halved until it is.
        let mut c = file(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE child (a TEXT REFERENCES artifact (id) DEFERRABLE INITIALLY DEFERRED);
             INSERT INTO artifact (id, filename) VALUES ('x', 'x'), ('y', 'y');
             INSERT INTO child VALUES ('x');",
        );
        let rows: Vec<_> = (0..9).map(|i| row(&format!("r{i}"), "f")).collect();
        let batch = vec![(
            &ARTIFACT,
            TableBatch {
                rows,
                gone: vec!["y".into(), "x".into()],
            },
        )];
        let (applied, refused) = apply(&mut c, &batch).unwrap();
        assert_eq!(
            (applied["artifact"].written, applied["artifact"].deleted),
            (9, 1)
        );
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(
            (refused[0].key.as_str(), refused[0].code),
            ("x", "sqlite_constraint")
        );
        assert_eq!(ids(&c).len(), 10);
    }

    #[test]
    fn a_locked_file_a_reader_or_a_missing_column_fails_the_batch_and_sets_nothing_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sqlite3");
        let mut c = Connection::open(&path).unwrap();
        let cols: Vec<String> = ARTIFACT.columns.iter().map(|c| quote(c.sqlite)).collect();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; CREATE TABLE artifact ({}, PRIMARY KEY (id));",
            cols.join(", ")
        ))
        .unwrap();
        let batch = vec![(
            &ARTIFACT,
            TableBatch {
                rows: vec![row("a", "f")],
                gone: vec![],
            },
        )];
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        c.busy_timeout(std::time::Duration::from_millis(50))
            .unwrap();
        let e = apply(&mut c, &batch).unwrap_err();
        assert!(matches!(e, Error::Busy(_)) && e.is_transient(), "{e}");
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(apply(&mut c, &batch).unwrap().1.len(), 0);
        assert_eq!(ids(&c), vec!["a"]);

        // A rollback-journal file: a reader's shared lock holds up the commit.
        let path = dir.path().join("journal.sqlite3");
        let mut c = Connection::open(&path).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = DELETE; CREATE TABLE artifact ({}, PRIMARY KEY (id));",
            cols.join(", ")
        ))
        .unwrap();
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM artifact;")
            .unwrap();
        c.busy_timeout(std::time::Duration::from_millis(50))
            .unwrap();
        let e = apply(&mut c, &batch).unwrap_err();
        assert!(matches!(e, Error::Busy(_)) && e.is_transient(), "{e}");
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(apply(&mut c, &batch).unwrap().1.len(), 0);
        assert_eq!(ids(&c), vec!["a"]);

        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE artifact (id TEXT PRIMARY KEY, filename TEXT)")
            .unwrap();
        let e = apply(&mut c, &batch).unwrap_err();
        assert!(e.to_string().contains("has no column"), "{e}");
    }

    #[test]
    fn once_supabase_is_the_primary_the_copy_is_written_past_the_refusal_and_the_app_is_not() {
        use crate::cutover::marker::{record_primary, refusal_triggers, Primary};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dox.sqlite3");
        let mut c = Connection::open(&path).unwrap();
        let cols: Vec<String> = ARTIFACT.columns.iter().map(|c| quote(c.sqlite)).collect();
        c.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; CREATE TABLE artifact ({}, PRIMARY KEY (id)); \
             INSERT INTO artifact (id, filename) VALUES ('old', 'o');",
            cols.join(", ")
        ))
        .unwrap();
        record_primary(&c, Primary::Supabase).unwrap();
        let refusals = refusal_triggers(&c).unwrap();
        assert_eq!(refusals.len(), 3);
        let batch = vec![(
            &ARTIFACT,
            TableBatch {
                rows: vec![row("a", "f"), row("b", "g")],
                gone: vec!["old".into()],
            },
        )];
        let (applied, refused) = apply(&mut c, &batch).unwrap();
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            (applied["artifact"].written, applied["artifact"].deleted),
            (2, 1)
        );
        assert_eq!(ids(&c), vec!["a", "b"]);
        // The refusal is back, for every other writer.
        assert_eq!(refusal_triggers(&c).unwrap(), refusals);
        let app = Connection::open(&path).unwrap();
        let e = app
            .execute("UPDATE artifact SET filename = 'x' WHERE id = 'a'", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no longer the primary"), "{e}");
    }
}
