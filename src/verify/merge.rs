//! The merge join: source and target rows of one key range, classified row by
//! row ([`Merger`]), and the key-order check it depends on.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};

use serde_json::{Map, Value};

use super::compare;
use super::repair;
use super::{LossyCount, RowDiff, RowKind, TableReport, VerifyOptions};
use crate::catalogue::Table;
use crate::error::{Error, Result};
use crate::normalise::{self, Lossy, SqlRow, UnrepresentablePolicy};
use crate::Direction;

/// Longest key a report shows, in characters.
const KEY_CHARS: usize = 200;

/// A source row, canonical, or the reason it cannot land.
pub(super) enum SqliteItem {
    Row {
        /// The key is read from the row (`key_column`), not copied: at a
        /// million rows per table every allocation counts.
        key_column: &'static str,
        row: Map<String, Value>,
        digest: u64,
        lossy: Vec<(&'static str, Lossy)>,
    },
    CannotLand {
        /// `None` when the key itself cannot be a Supabase key (NULL, a blob,
        /// not UTF-8): such rows have no place in the key order.
        key: Option<String>,
        shown: String,
        reason: String,
    },
}

impl SqliteItem {
    pub(super) fn new(
        t: &'static Table,
        row: &SqlRow,
        digests: &RandomState,
        policy: UnrepresentablePolicy,
    ) -> SqliteItem {
        let key_column = t.key().supabase;
        let reason = match normalise::to_canonical_with(t, row, policy) {
            Ok(c) if c.row.get(key_column).is_some_and(Value::is_string) => {
                return SqliteItem::Row {
                    digest: compare::row_digest(digests, &c.row),
                    key_column,
                    row: c.row,
                    lossy: c.lossy,
                }
            }
            Ok(_) => None,
            Err(Error::Unrepresentable { column, reason, .. }) => {
                Some(format!("column {column}: {reason}"))
            }
            Err(e) => Some(e.to_string()),
        };
        let shown = row[0].display();
        match (normalise::value_to_canonical(t.key(), &row[0]), reason) {
            (Ok((Value::String(k), _)), Some(reason)) => SqliteItem::CannotLand {
                key: Some(k),
                shown,
                reason,
            },
            (Err(why), _) => SqliteItem::CannotLand {
                key: None,
                shown,
                reason: format!("the key {}: {why}", t.key().sqlite),
            },
            (_, _) => SqliteItem::CannotLand {
                key: None,
                shown,
                reason: format!("the key {} is NULL", t.key().sqlite),
            },
        }
    }

    pub(super) fn key(&self) -> Option<&str> {
        match self {
            SqliteItem::Row {
                key_column, row, ..
            } => row.get(*key_column).and_then(Value::as_str),
            SqliteItem::CannotLand { key, .. } => key.as_deref(),
        }
    }
}

/// A Supabase row, canonical.
pub(super) struct SupabaseRow {
    pub(super) key_column: &'static str,
    pub(super) row: Map<String, Value>,
    pub(super) digest: u64,
    /// In reverse: why the row cannot land in the SQLite file (a value
    /// [`normalise::to_dox`] refuses), if it cannot.
    pub(super) refused: Option<String>,
}

impl SupabaseRow {
    pub(super) fn new(
        t: &'static Table,
        raw: Map<String, Value>,
        digests: &RandomState,
        direction: Direction,
    ) -> Result<Self> {
        let row = normalise::from_supabase_owned(t, raw);
        let key_column = t.key().supabase;
        if let Some(other) = row.get(key_column).filter(|k| !k.is_string()) {
            return Err(Error::Protocol(format!(
                "{}: a row whose key is not text: {other}",
                t.supabase
            )));
        }
        // In reverse the row is a source row: it must be writable in DoX's
        // shape, through the inverse normaliser the reverse mirror uses.
        let refused = match direction {
            Direction::Forward => None,
            Direction::Reverse => t.columns.iter().find_map(|c| {
                let v = row.get(c.supabase).unwrap_or(&Value::Null);
                normalise::to_dox(c, v, None)
                    .err()
                    .map(|e| compare::truncate(&e.to_string(), KEY_CHARS))
            }),
        };
        Ok(SupabaseRow {
            digest: compare::row_digest(digests, &row),
            key_column,
            row,
            refused,
        })
    }

    pub(super) fn key(&self) -> &str {
        // `new` checked that the key is text (from_supabase_owned fills every column).
        self.row
            .get(self.key_column)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Classifies rows and keeps the table report (and the repair plan) up to date.
pub(super) struct Merger<'a> {
    pub(super) t: &'static Table,
    pub(super) tr: &'a mut TableReport,
    pub(super) plan: Option<&'a mut repair::TablePlan>,
    pub(super) listed: usize,
    pub(super) digests: &'a RandomState,
    pub(super) policy: UnrepresentablePolicy,
    pub(super) direction: Direction,
}

impl<'a> Merger<'a> {
    pub(super) fn new(
        t: &'static Table,
        tr: &'a mut TableReport,
        plan: Option<&'a mut repair::TablePlan>,
        opts: &VerifyOptions,
        digests: &'a RandomState,
    ) -> Self {
        Merger {
            t,
            tr,
            plan,
            listed: opts.listed_rows,
            digests,
            policy: opts.unrepresentable,
            direction: opts.direction,
        }
    }

    /// An equal row that holds coerced values: counted and listed, not a difference.
    pub(super) fn note_coerced(&mut self, key: &str, lossy: &[(&'static str, Lossy)]) {
        let coerced: Vec<String> = lossy
            .iter()
            .filter(|(_, l)| l.is_coercion())
            .map(|(c, l)| format!("{c}: {}", l.as_str()))
            .collect();
        if !coerced.is_empty() {
            self.record(
                RowKind::Coerced,
                key,
                Vec::new(),
                Some(format!("equal as coerced ({})", coerced.join(", "))),
            );
        }
    }

    pub(super) fn record(
        &mut self,
        kind: RowKind,
        key: &str,
        columns: Vec<compare::ColumnDiff>,
        reason: Option<String>,
    ) {
        self.record_as(kind, key, columns, reason, true);
    }

    /// Like [`Self::record`]; `planned: false` keeps the row out of a repair
    /// plan (its key is not a text key a repair could address).
    fn record_as(
        &mut self,
        kind: RowKind,
        key: &str,
        columns: Vec<compare::ColumnDiff>,
        reason: Option<String>,
        planned: bool,
    ) {
        let c = &mut self.tr.counts;
        match kind {
            RowKind::OnlyInSource => c.only_in_source += 1,
            RowKind::OnlyInTarget => c.only_in_target += 1,
            RowKind::Different => c.different += 1,
            RowKind::CannotLand => c.cannot_land += 1,
            RowKind::Coerced => c.coerced += 1,
        }
        if let Some(p) = self.plan.as_deref_mut().filter(|_| planned) {
            p.note(kind, key);
        }
        if self.tr.rows.len() < self.listed {
            self.tr.rows.push(RowDiff {
                kind,
                key: compare::truncate(key, KEY_CHARS),
                columns,
                reason: reason.map(|r| {
                    if compare::looks_secret(&r) {
                        "[redacted]".into()
                    } else {
                        r
                    }
                }),
            });
        } else {
            self.tr.rows_not_listed += 1;
        }
    }

    pub(super) fn count_lossy(&mut self, lossy: &[(&'static str, Lossy)]) {
        for (column, l) in lossy {
            let conversion = l.as_str();
            match self
                .tr
                .lossy
                .iter_mut()
                .find(|x| x.column == *column && x.conversion == conversion)
            {
                Some(x) => x.rows += 1,
                None => self.tr.lossy.push(LossyCount {
                    column,
                    conversion,
                    rows: 1,
                }),
            }
        }
    }

    /// A SQLite row and the Supabase row with the same key (or none).
    pub(super) fn pair(&mut self, s: SqliteItem, t: Option<SupabaseRow>) {
        if self.direction == Direction::Reverse {
            return self.pair_reverse(s, t);
        }
        self.tr.counts.compared += 1;
        let key = s.key().unwrap_or_default().to_owned();
        match (s, t) {
            (SqliteItem::CannotLand { shown, reason, .. }, t) => {
                let reason = if t.is_some() {
                    format!("{reason} (the target holds a row with this key)")
                } else {
                    reason
                };
                self.record(RowKind::CannotLand, &shown, Vec::new(), Some(reason));
            }
            (SqliteItem::Row { lossy, .. }, None) => {
                self.count_lossy(&lossy);
                self.record(RowKind::OnlyInSource, &key, Vec::new(), None);
            }
            (
                SqliteItem::Row {
                    row, digest, lossy, ..
                },
                Some(t),
            ) => {
                self.count_lossy(&lossy);
                if digest == t.digest {
                    self.tr.counts.equal += 1;
                    self.note_coerced(&key, &lossy);
                    return;
                }
                let columns = compare::diff_row(self.t, &row, &t.row);
                if columns.is_empty() {
                    // Equal under the tolerance, in another representation.
                    self.tr.counts.equal += 1;
                    self.note_coerced(&key, &lossy);
                } else {
                    self.record(RowKind::Different, &key, columns, None);
                }
            }
        }
    }

    /// In reverse (Supabase the source): the same classification, sides
    /// swapped. Only Supabase rows count as compared; a SQLite row alone is
    /// extra in SQLite; a SQLite row the normaliser cannot read is different
    /// from the Supabase row with its key (a repair rewrites it), or extra.
    fn pair_reverse(&mut self, s: SqliteItem, t: Option<SupabaseRow>) {
        if let Some(why) = t.as_ref().and_then(|t| t.refused.clone()) {
            if let SqliteItem::Row { lossy, .. } = &s {
                self.count_lossy(lossy);
            }
            let key = t.as_ref().map(|t| t.key().to_owned()).unwrap_or_default();
            return self.cannot_land_in_sqlite(&key, Some(why));
        }
        match (s, t) {
            (SqliteItem::CannotLand { reason, .. }, Some(t)) => {
                self.tr.counts.compared += 1;
                let why = format!("the SQLite row cannot be read as Supabase holds it: {reason}");
                self.record(RowKind::Different, t.key(), Vec::new(), Some(why));
            }
            (SqliteItem::CannotLand { key, shown, reason }, None) => {
                let planned = key.is_some();
                self.record_as(
                    RowKind::OnlyInTarget,
                    &shown,
                    Vec::new(),
                    Some(reason),
                    planned,
                );
            }
            (s @ SqliteItem::Row { .. }, None) => {
                if let SqliteItem::Row { lossy, .. } = &s {
                    self.count_lossy(lossy);
                }
                let key = s.key().unwrap_or_default().to_owned();
                self.record(RowKind::OnlyInTarget, &key, Vec::new(), None);
            }
            (
                SqliteItem::Row {
                    row, digest, lossy, ..
                },
                Some(t),
            ) => {
                self.tr.counts.compared += 1;
                self.count_lossy(&lossy);
                if digest == t.digest {
                    self.tr.counts.equal += 1;
                    self.note_coerced(t.key(), &lossy);
                    return;
                }
                // Source first: Supabase, then the SQLite file.
                let columns = compare::diff_row(self.t, &t.row, &row);
                if columns.is_empty() {
                    self.tr.counts.equal += 1;
                    self.note_coerced(t.key(), &lossy);
                } else {
                    self.record(RowKind::Different, t.key(), columns, None);
                }
            }
        }
    }

    /// In reverse: a Supabase row that cannot be written in DoX's shape.
    fn cannot_land_in_sqlite(&mut self, key: &str, reason: Option<String>) {
        self.tr.counts.compared += 1;
        self.record(RowKind::CannotLand, key, Vec::new(), reason);
    }

    /// A Supabase row with no SQLite row of its key.
    pub(super) fn only_in_supabase(&mut self, t: SupabaseRow) {
        match self.direction {
            Direction::Forward => {
                self.record(RowKind::OnlyInTarget, t.key(), Vec::new(), None);
            }
            Direction::Reverse => match t.refused.clone() {
                Some(why) => self.cannot_land_in_sqlite(t.key(), Some(why)),
                None => {
                    self.tr.counts.compared += 1;
                    self.record(RowKind::OnlyInSource, t.key(), Vec::new(), None);
                }
            },
        }
    }

    pub(super) fn segment_digest<'k>(&self, items: impl Iterator<Item = (&'k str, u64)>) -> u64 {
        let mut h = self.digests.build_hasher();
        for (k, d) in items {
            k.hash(&mut h);
            d.hash(&mut h);
        }
        h.finish()
    }

    /// Compare one segment: both sides' rows of the same key range, in key order.
    pub(super) fn segment(&mut self, source: Vec<SqliteItem>, target: Vec<SupabaseRow>) {
        self.tr.segments += 1;
        let all_rows = source.iter().all(|s| matches!(s, SqliteItem::Row { .. }))
            && target.iter().all(|t| t.refused.is_none());
        if all_rows && source.len() == target.len() {
            let sd = self.segment_digest(source.iter().filter_map(|s| match s {
                SqliteItem::Row { digest, .. } => Some((s.key().unwrap_or_default(), *digest)),
                SqliteItem::CannotLand { .. } => None,
            }));
            let td = self.segment_digest(target.iter().map(|t| (t.key(), t.digest)));
            if sd == td {
                let n = source.len() as u64;
                self.tr.counts.compared += n;
                self.tr.counts.equal += n;
                for s in &source {
                    if let SqliteItem::Row { lossy, .. } = s {
                        self.count_lossy(lossy);
                        self.note_coerced(s.key().unwrap_or_default(), lossy);
                    }
                }
                return;
            }
        }
        self.tr.segments_differing += 1;
        let mut s = source.into_iter().peekable();
        let mut t = target.into_iter().peekable();
        loop {
            let order = match (s.peek(), t.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => a.key().unwrap_or_default().cmp(b.key()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let a = s.next().expect("peeked");
                    self.pair(a, None);
                }
                std::cmp::Ordering::Greater => {
                    let b = t.next().expect("peeked");
                    self.only_in_supabase(b);
                }
                std::cmp::Ordering::Equal => {
                    let a = s.next().expect("peeked");
                    let b = t.next();
                    self.pair(a, b);
                }
            }
        }
    }

    /// A source row whose key cannot exist in Supabase: reported, outside the merge.
    pub(super) fn unkeyed(&mut self, s: SqliteItem) {
        self.pair(s, None);
    }
}

/// Keys must arrive strictly increasing, page after page: the merge join
/// depends on it. `last` is the last key of the previous page (one copy per
/// page, not per row).
pub(super) fn check_order<'k>(
    table: &Table,
    side: &str,
    last: &mut Option<String>,
    keys: impl Iterator<Item = &'k str>,
) -> Result<()> {
    let mut prev: Option<&str> = None;
    for key in keys {
        if let Some(before) = prev.or(last.as_deref()).filter(|b| key <= *b) {
            let why = if side == "SQLite" {
                "the key column holds non-text values (e.g. integers) or has a non-BINARY collation"
            } else {
                "the key column is not COLLATE \"C\": apply supabase/migrations/"
            };
            return Err(Error::invalid(format!(
                "{}: {side} returned key `{}` after `{}`: keys are not in byte order ({why}); content not verified",
                table.sqlite,
                compare::truncate(key, 80),
                compare::truncate(before, 80),
            )));
        }
        prev = Some(key);
    }
    if let Some(p) = prev {
        *last = Some(p.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::catalogue;

    #[test]
    fn out_of_order_keys_are_an_error_not_a_wrong_answer() {
        let t = &catalogue::TAGROW;
        let mut last = None;
        check_order(t, "SQLite", &mut last, ["1", "10"].into_iter()).unwrap();
        let e = check_order(t, "SQLite", &mut last, ["10"].into_iter()).unwrap_err();
        assert!(e.to_string().contains("not in byte order"), "{e}");
        check_order(t, "SQLite", &mut last, ["9"].into_iter()).unwrap();
        assert_eq!(last.as_deref(), Some("9"));
        assert!(check_order(t, "SQLite", &mut last, ["a", "b", "b"].into_iter()).is_err());
        let mut last = None;
        assert!(check_order(t, "Supabase", &mut last, ["2", "10"].into_iter()).is_err());
    }
}
