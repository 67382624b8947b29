//! Tests that cross the files: install, the triggers and the change log together.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::*;

fn schema(c: &Connection) -> Vec<(String, String, Option<String>)> {
    let mut s = c
        .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap()
}

fn dox_file(dir: &Path, legacy: bool) -> PathBuf {
    let p = dir.join("dox.sqlite3");
    let c = Connection::open(&p).unwrap();
    let json_col = if legacy { "json" } else { "table_content_json" };
    c.execute_batch(&format!(
        "CREATE TABLE artifact (id VARCHAR NOT NULL PRIMARY KEY, filename VARCHAR, status VARCHAR);
         CREATE TABLE doctable (id VARCHAR NOT NULL PRIMARY KEY, document_id VARCHAR NOT NULL, \"order\" INTEGER NOT NULL, {json_col} VARCHAR NOT NULL);
         CREATE TABLE app_other (x INTEGER);
         CREATE TABLE tagrow (rowname VARCHAR);
         INSERT INTO artifact VALUES ('a1', 'f', 'new');"
    ))
    .unwrap();
    p
}

#[test]
fn install_is_idempotent_captures_and_uninstall_restores_the_schema() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), true);
    let before = schema(&Connection::open(&p).unwrap());
    let r = install(&p, None).unwrap();
    assert_eq!(r.tables, vec!["artifact", "doctable"]);
    assert_eq!(r.created.len(), 3 + 6);
    let once = schema(&Connection::open(&p).unwrap());
    let again = install(&p, None).unwrap();
    assert!(again.created.is_empty(), "{:?}", again.created);
    assert_eq!(schema(&Connection::open(&p).unwrap()), once);
    let st = status(&p).unwrap();
    assert!(st.installed && st.missing.is_empty(), "{st:?}");

    let app = Connection::open(&p).unwrap();
    app.execute_batch(
        "INSERT INTO doctable VALUES ('t1', 'd1', 0, '{}');
         UPDATE artifact SET status = 'done' WHERE id = 'a1';
         UPDATE artifact SET id = 'a2' WHERE id = 'a1';
         DELETE FROM doctable;
         INSERT INTO app_other VALUES (1);",
    )
    .unwrap();
    let changes = read_changes(&app, 100).unwrap();
    let got: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|c| (c.tbl.as_str(), c.key.as_str(), c.op.as_str()))
        .collect();
    // Coalesced by key, in the order of each key's last change.
    assert_eq!(
        got,
        vec![
            ("artifact", "a1", "D"),
            ("artifact", "a2", "U"),
            ("doctable", "t1", "D")
        ]
    );
    let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(status(&p).unwrap().pending, 3);

    // An ack of a seq that has moved on removes nothing.
    let mut c = open_rw(&p).unwrap();
    app.execute("UPDATE artifact SET status = 'x' WHERE id = 'a2'", [])
        .unwrap();
    let claimed: Vec<Claimed> = changes
        .iter()
        .map(|c| Claimed {
            tbl: c.tbl.clone(),
            key: c.key.clone(),
            seq: c.seq,
        })
        .collect();
    assert_eq!(ack(&mut c, &claimed).unwrap(), 2);
    let left = read_changes(&app, 100).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, "a2");
    assert!(left[0].seq > changes[1].seq);

    let e = uninstall(&p, false).unwrap_err().to_string();
    assert!(e.contains("not mirrored yet"), "{e}");
    let u = uninstall(&p, true).unwrap();
    assert_eq!(u.discarded_changes, 1);
    assert_eq!(schema(&Connection::open(&p).unwrap()), before);
    assert!(!status(&p).unwrap().log_present);
}

#[test]
fn a_recreated_table_shows_as_missing_and_install_repairs_it() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let app = Connection::open(&p).unwrap();
    app.execute_batch(
        "DROP TABLE artifact; CREATE TABLE artifact (id VARCHAR NOT NULL PRIMARY KEY, filename VARCHAR);",
    )
    .unwrap();
    let st = status(&p).unwrap();
    assert!(!st.installed);
    assert_eq!(st.missing, vec!["artifact"]);
    let r = install(&p, None).unwrap();
    assert_eq!(r.created.len(), 3, "{:?}", r.created);
    assert!(status(&p).unwrap().installed);
}

#[test]
fn bad_files_get_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.sqlite3");
    let e = install(&missing, None).unwrap_err().to_string();
    assert!(e.contains("no such file"), "{e}");
    assert!(!missing.exists(), "a missing file must not be created");

    let text = d.path().join("notes.txt");
    std::fs::write(
        &text,
        "hello, this is not a database at all, just some text",
    )
    .unwrap();
    let e = install(&text, None).unwrap_err().to_string();
    assert!(e.contains("not a SQLite database"), "{e}");

    let other = d.path().join("other.sqlite3");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let e = install(&other, None).unwrap_err().to_string();
    assert!(e.contains("not a DoX database"), "{e}");

    let p = dox_file(d.path(), false);
    let mut perms = std::fs::metadata(&p).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&p, perms).unwrap();
    // Root ignores file modes; only check where they apply.
    if std::fs::OpenOptions::new().write(true).open(&p).is_err() {
        let e = install(&p, None).unwrap_err().to_string();
        assert!(e.contains("read-only"), "{e}");
    }
}

/// One app transaction: upsert artifact `id` with `status`, returning the
/// change rows it recorded (as `db/sqlite/write.rs` reads them).
fn app_write(c: &mut Connection, id: &str, status: &str) -> Vec<Change> {
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    let (mark, current) = log_mark(&tx).unwrap().unwrap();
    tx.execute(
        "INSERT INTO artifact (id, filename, status) VALUES (?1, 'f', ?2) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status",
        [id, status],
    )
    .unwrap();
    let got = changes_after(&tx, mark, current).unwrap();
    tx.commit().unwrap();
    got
}

#[test]
fn a_writer_acknowledges_only_its_own_unclaimed_entries() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut a = Connection::open(&p).unwrap();
    let mut b = Connection::open(&p).unwrap();
    let keys = |c: &Connection| -> Vec<String> {
        read_changes(c, 100)
            .unwrap()
            .into_iter()
            .map(|c| c.key)
            .collect()
    };

    // Alone: the writer's entry is fresh and its acknowledgement removes it.
    let w = app_write(&mut a, "k1", "v1");
    assert_eq!(w.len(), 1);
    assert!(w[0].fresh);
    assert_eq!(ack_own(&mut a, &w).unwrap(), 1);
    assert!(keys(&a).is_empty());

    // Two writers of one key (two processes): the second finds the entry
    // pending, so neither may remove it; a mirror of v1 landing after v2
    // is then corrected by the drainer.
    let w1 = app_write(&mut a, "k2", "v1");
    let w2 = app_write(&mut b, "k2", "v2");
    assert!(w1[0].fresh && !w2[0].fresh, "{w1:?} {w2:?}");
    assert_eq!(ack_own(&mut b, &w2).unwrap(), 0);
    assert_eq!(ack_own(&mut a, &w1).unwrap(), 0, "the key changed since");
    assert_eq!(keys(&a), ["k2"]);

    // A drainer's claim: a writer no longer removes the entry, even its own.
    let claimed = claim_changes(&mut b, 100, None, &Default::default())
        .unwrap()
        .changes;
    assert_eq!(claimed.len(), 1);
    let w3 = app_write(&mut a, "k2", "v3");
    assert!(!w3[0].fresh);
    let fresh = app_write(&mut a, "k3", "v1");
    assert!(fresh[0].fresh);
    claim_changes(&mut b, 100, None, &Default::default()).unwrap();
    assert_eq!(
        ack_own(&mut a, &fresh).unwrap(),
        0,
        "claimed by the drainer"
    );
    // The drainer's own ack: k2 changed after its first claim and stays.
    assert_eq!(ack(&mut b, &claimed).unwrap(), 0);
    let again = claim_changes(&mut b, 100, None, &Default::default())
        .unwrap()
        .changes;
    assert_eq!(ack(&mut b, &again).unwrap(), 2);
    assert!(keys(&a).is_empty());

    // An entry drained and created anew is not the old writer's: `seq`
    // never goes back, even once the log is empty, and a fresh entry made
    // after a claim is the new writer's to acknowledge.
    let old = app_write(&mut a, "k4", "v1");
    let drained = claim_changes(&mut b, 100, None, &Default::default())
        .unwrap()
        .changes;
    ack(&mut b, &drained).unwrap();
    assert!(keys(&a).is_empty());
    let new = app_write(&mut b, "k4", "v2");
    assert!(new[0].seq > old[0].seq, "{new:?} {old:?}");
    assert!(new[0].fresh);
    assert_eq!(ack_own(&mut a, &old).unwrap(), 0);
    assert_eq!(keys(&a), ["k4"]);
    assert_eq!(ack_own(&mut b, &new).unwrap(), 1);
}

/// The claim comes before the read: every entry pending when a drainer
/// claims is its own from then on, even one its batch does not reach (the
/// limit), and what the drainer reads is all claimed. (Read first and claimed
/// after, a writer could remove an entry read but not yet claimed, write the
/// key again and remove that one too, while the drainer sent the older row.)
#[test]
fn a_claim_takes_every_pending_entry_before_it_reads() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut app = Connection::open(&p).unwrap();
    let mut drainer = Connection::open(&p).unwrap();
    let w: Vec<Vec<Change>> = ["k1", "k2", "k3"]
        .iter()
        .map(|k| app_write(&mut app, k, "v1"))
        .collect();
    let first = claim_changes(&mut drainer, 1, None, &Default::default()).unwrap();
    assert_eq!(first.changes.len(), 1);
    assert_eq!(first.changes[0].key, "k1");
    // k3 is beyond the batch, and claimed all the same.
    assert_eq!(
        ack_own(&mut app, &w[2]).unwrap(),
        0,
        "claimed by the drainer"
    );
    // A key written after the claim is the writer's again.
    let later = app_write(&mut app, "k4", "v1");
    assert!(later[0].fresh);
    // The next claims read on, the claimed entries only after the new one's
    // claim raised the watermark past it.
    let rest = claim_changes(
        &mut drainer,
        100,
        first.changes.last().map(|c| c.seq),
        &Default::default(),
    )
    .unwrap();
    let keys: Vec<&str> = rest.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k2", "k3", "k4"]);
    assert_eq!(ack_own(&mut app, &later).unwrap(), 0, "claimed since");
    // An empty log claims nothing and writes nothing.
    ack(&mut drainer, &first.changes).unwrap();
    ack(&mut drainer, &rest.changes).unwrap();
    let version = data_version(&app).unwrap();
    assert!(claim_changes(&mut drainer, 100, None, &Default::default())
        .unwrap()
        .changes
        .is_empty());
    assert_eq!(
        data_version(&app).unwrap(),
        version,
        "no write for an empty claim"
    );
}

#[test]
fn a_claim_skips_the_keys_of_batches_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut c = Connection::open(&p).unwrap();
    for k in ["k1", "k2", "k3"] {
        app_write(&mut c, k, "v");
    }
    let first = claim_changes(&mut c, 2, None, &Default::default())
        .unwrap()
        .changes;
    assert_eq!(first.len(), 2);
    // k1 changes again while its batch is out: the next claim leaves it.
    app_write(&mut c, "k1", "v2");
    let busy = first.iter().map(|c| key_hash(&c.tbl, &c.key)).collect();
    let next = claim_changes(&mut c, 10, None, &busy).unwrap();
    let keys: Vec<&str> = next.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k3"]);
    // k2 (still in flight) is the first entry left.
    assert_eq!(next.skipped_from, Some(first[1].seq));
    // Read on from the last claim: the entries in flight are not read again,
    // and k1 (changed again, a new seq) is still left while busy.
    let last = first[1].seq;
    app_write(&mut c, "k4", "v");
    let on = claim_changes(&mut c, 10, Some(last.max(next.changes[0].seq)), &busy).unwrap();
    let keys: Vec<&str> = on.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k4"]);
    assert!(on.skipped_from.is_some());
    // Once k1's batch is back, k1 is claimed again.
    let free = claim_changes(&mut c, 10, None, &Default::default()).unwrap();
    let keys: Vec<&str> = free.changes.iter().map(|c| c.key.as_str()).collect();
    assert!(keys.contains(&"k1"), "{keys:?}");
}

#[test]
fn a_claim_is_acknowledged_by_its_ranges_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut c = Connection::open(&p).unwrap();
    let pending = |c: &Connection| -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = read_changes(c, 100)
            .unwrap()
            .into_iter()
            .map(|c| (c.key, c.seq))
            .collect();
        v.sort();
        v
    };
    for k in ["k1", "k2", "k3"] {
        app_write(&mut c, k, "v");
    }
    // Batch A takes k1; k1 changes again while A is out, then k4 is written.
    let a = claim_changes(&mut c, 1, None, &Default::default()).unwrap();
    assert_eq!(a.runs.len(), 1);
    app_write(&mut c, "k1", "v2");
    app_write(&mut c, "k4", "v");
    // Batch B leaves k1 (busy), which now sits between k3 and k4: two ranges.
    let busy = a.changes.iter().map(|c| key_hash(&c.tbl, &c.key)).collect();
    let b = claim_changes(&mut c, 10, None, &busy).unwrap();
    let keys: Vec<&str> = b.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k2", "k3", "k4"]);
    assert_eq!(b.runs.len(), 2, "{:?}", b.runs);
    assert_eq!(b.runs[0], (b.changes[0].seq, b.changes[1].seq));
    assert_eq!(b.runs[1], (b.changes[2].seq, b.changes[2].seq));
    // k3 changes after B's claim: its entry leaves B's ranges.
    app_write(&mut c, "k3", "v2");
    let k1_now = pending(&c).into_iter().find(|(k, _)| k == "k1").unwrap();
    let k3_now = pending(&c).into_iter().find(|(k, _)| k == "k3").unwrap();

    // Another table's name removes nothing; B's own removes k2 and k4 only.
    assert_eq!(ack_runs(&mut c, &["document"], &b.runs).unwrap(), 0);
    assert_eq!(ack_runs(&mut c, &["artifact"], &b.runs).unwrap(), 2);
    assert_eq!(pending(&c), [k1_now, k3_now]);
    // A's range no longer holds k1's entry (its key changed): it stays too.
    assert_eq!(ack_runs(&mut c, &["artifact"], &a.runs).unwrap(), 0);
    assert_eq!(pending(&c).len(), 2);
}

#[test]
fn an_older_change_log_is_upgraded_and_writes_never_fail_meanwhile() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut c = Connection::open(&p).unwrap();
    // The log as the first release made it, with its triggers.
    c.execute_batch(&format!(
        "DROP TABLE {LOG}; CREATE TABLE {LOG} (tbl TEXT NOT NULL, key TEXT NOT NULL, \
         seq INTEGER NOT NULL, op TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID; \
         CREATE INDEX {LOG_SEQ_INDEX} ON {LOG} (seq); DROP TABLE {CLAIM};
         DROP TRIGGER _dualwrite_artifact_ins; DROP TRIGGER _dualwrite_artifact_upd;
         DROP TRIGGER _dualwrite_artifact_del; DROP TRIGGER _dualwrite_doctable_upd;
         DROP TRIGGER _dualwrite_doctable_ins; DROP TRIGGER _dualwrite_doctable_del;
         CREATE TRIGGER _dualwrite_artifact_ins AFTER INSERT ON artifact BEGIN \
         INSERT INTO {LOG} (tbl, key, seq, op, at) SELECT 'artifact', NEW.id, \
         (SELECT coalesce(max(seq), 0) + 1 FROM {LOG}), 'I', 0 ON CONFLICT (tbl, key) \
         DO UPDATE SET seq = excluded.seq; END;"
    ))
    .unwrap();
    let w = app_write(&mut c, "k1", "v1");
    assert_eq!(w.len(), 1);
    assert!(
        !w[0].fresh,
        "an old log cannot tell: nothing is acknowledged"
    );
    let r = install(&p, None).unwrap();
    assert!(
        r.created.contains(&format!("{LOG}.first")) && r.created.contains(&CLAIM.to_owned()),
        "{:?}",
        r.created
    );
    assert!(status(&p).unwrap().installed);
    let w = app_write(&mut c, "k2", "v1");
    assert!(w[0].fresh);
}
