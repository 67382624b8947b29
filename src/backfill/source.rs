//! Sources: what hands the loader one batch at a time, and the SQLite source.

use crate::catalogue::Table;
use crate::db::sqlite::ScanFrom;
use crate::db::SqliteDatabase;
use crate::error::Result;
use crate::normalise::coerced::CoercedValue;
use crate::normalise::{Lossy, UnrepresentablePolicy};

use super::checkpoint::Cursor;
use super::prepare::{prepare_row_into, PreparedRows, RowsBuilder};
use super::rejects::Reject;

/// What a source hands over for one batch.
pub struct SourceBatch {
    pub rows: PreparedRows,
    pub rejects: Vec<Reject>,
    pub read: u64,
    pub lossy: Vec<(&'static str, Lossy)>,
    /// Values coerced to land (under `--unrepresentable coerce`), with their originals.
    pub coerced: Vec<CoercedValue>,
    /// The source position after this batch.
    pub cursor: Cursor,
    /// Whether the stale guard should check this batch's rows against the source.
    pub check_stale: bool,
    /// The source's `data_version` taken before the batch was read.
    pub version: Option<i64>,
}

/// A sequential reader of one table's rows.
pub trait BatchSource: Send {
    fn next(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> impl std::future::Future<Output = Result<Option<SourceBatch>>> + Send;
}

/// Reads one table of a DoX SQLite file, in storage (rowid) order where the
/// table has rowids: sequential reads, several times cheaper than key order on
/// files whose keys are random (uuids).
pub struct SqliteSource {
    db: SqliteDatabase,
    /// A second connection (thread) for `data_version`: asking the reading one
    /// would wait behind the page it is preparing and hold up every batch.
    watch: SqliteDatabase,
    table: &'static Table,
    from: ScanFrom,
    /// The last batch's size (bytes, rows).
    last_batch: (usize, usize),
    /// What to do with values Supabase cannot hold (reject by default).
    pub policy: UnrepresentablePolicy,
}

impl SqliteSource {
    /// Position a reader after `after` (a checkpoint), or at the start.
    pub async fn open(
        db: SqliteDatabase,
        watch: SqliteDatabase,
        table: &'static Table,
        after: Option<&Cursor>,
    ) -> Result<SqliteSource> {
        let from = match after {
            Some(Cursor::Rowid { rowid, key }) => match db.key_at_rowid(table, *rowid).await? {
                Some(k) if k.display() == *key => ScanFrom::Rowid(Some(*rowid)),
                // VACUUM renumbered the rows: copying the table again is safe (upserts).
                _ => {
                    tracing::warn!(table = table.sqlite, "the checkpoint's row moved (VACUUM?); copying the table again from the start");
                    ScanFrom::Rowid(None)
                }
            },
            Some(c) => ScanFrom::Key(c.to_key()),
            None if db.has_rowid(table).await => ScanFrom::Rowid(None),
            None => ScanFrom::Key(None),
        };
        Ok(SqliteSource {
            db,
            watch,
            table,
            from,
            last_batch: (0, 0),
            policy: UnrepresentablePolicy::Reject,
        })
    }
}

impl BatchSource for SqliteSource {
    async fn next(&mut self, max_rows: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        // Taken before the read: a commit in between shows as a change, never as none.
        let version = self.watch.data_version().await?;
        let table = self.table;
        // Rows are prepared on the connection's thread, straight from SQLite's
        // buffers into the request body.
        // Sized like the last batch, plus a margin: a body that grows is copied.
        let hint = self.last_batch;
        let rows = RowsBuilder::with_capacity(hint.0 + hint.0 / 8, hint.1 + hint.1 / 8);
        let start = (rows, Vec::new(), Vec::new(), Vec::new());
        let policy = self.policy;
        let page = self
            .db
            .scan_page(
                table,
                self.from.clone(),
                max_rows,
                max_bytes,
                start,
                move |(rows, rejects, lossy, coerced), row| {
                    let before = rows.bytes();
                    if let Err(r) = prepare_row_into(table, row, lossy, rows, policy, coerced) {
                        rejects.push(*r);
                    }
                    rows.bytes() - before
                },
            )
            .await?;
        let Some(page) = page else {
            return Ok(None);
        };
        let (from, cursor) = match self.from {
            ScanFrom::Rowid(_) => (
                ScanFrom::Rowid(Some(page.last_rowid)),
                Cursor::Rowid {
                    rowid: page.last_rowid,
                    key: page.last.display(),
                },
            ),
            ScanFrom::Key(_) => (
                ScanFrom::Key(Some(page.last.clone())),
                Cursor::from_key(&page.last),
            ),
        };
        self.from = from;
        let (rows, rejects, lossy, coerced) = page.state;
        self.last_batch = (rows.bytes(), rows.len());
        Ok(Some(SourceBatch {
            rows: rows.finish(),
            rejects,
            read: page.rows as u64,
            lossy,
            coerced,
            cursor,
            check_stale: true,
            version: Some(version),
        }))
    }
}
