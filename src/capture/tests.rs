//! Tests that cross the files: install, the triggers and the change log together.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::log::{fold, Claim, READ_QUEUE_MAX};
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
    assert_eq!(r.created.len(), 4 + 6);
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

    // An ack of a seq that has moved on (folded since) removes nothing.
    let mut c = open_rw(&p).unwrap();
    let claimed = claim_changes(&mut c, 100, None, &Default::default())
        .unwrap()
        .changes;
    assert_eq!(claimed.len(), 3);
    app.execute("UPDATE artifact SET status = 'x' WHERE id = 'a2'", [])
        .unwrap();
    fold(&mut c).unwrap();
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

/// One app transaction: upsert artifact `id` with `status`; returns the
/// `seq` of the key's pending entry after it.
fn app_write(c: &mut Connection, id: &str, status: &str) -> i64 {
    c.execute(
        "INSERT INTO artifact (id, filename, status) VALUES (?1, 'f', ?2) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status",
        [id, status],
    )
    .unwrap();
    read_changes(c, usize::MAX)
        .unwrap()
        .into_iter()
        .find(|c| c.tbl == "artifact" && c.key == id)
        .unwrap()
        .seq
}

/// `seq` never goes back, even once the log is empty: an entry made after a
/// claim is numbered above every claimed one, so it never falls in a claimed
/// range (acknowledged by ranges) and a drainer reading on finds it.
#[test]
fn seq_never_goes_back_even_when_the_log_empties() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut app = Connection::open(&p).unwrap();
    let mut drainer = Connection::open(&p).unwrap();
    let first = app_write(&mut app, "k1", "v1");
    let second = app_write(&mut app, "k2", "v1");
    assert!(second > first);
    // Two batches out; the later one is acknowledged first and empties the
    // log above the earlier one.
    let a = claim_changes(&mut drainer, 1, None, &Default::default()).unwrap();
    let b = claim_changes(&mut drainer, 1, Some(first), &Default::default()).unwrap();
    assert_eq!(
        ack_runs(&mut drainer, &[("artifact", b.runs.clone())]).unwrap(),
        1
    );
    let third = app_write(&mut app, "k3", "v1");
    assert!(third > second, "{third} after {second}");
    assert_eq!(
        ack_runs(&mut drainer, &[("artifact", a.runs.clone())]).unwrap(),
        1
    );
    // The log is empty now; the next entry is still above everything claimed.
    let rest = claim_changes(&mut drainer, 10, Some(second), &Default::default()).unwrap();
    assert_eq!(
        rest.changes.len(),
        1,
        "read on from the last claim, k3 is found"
    );
    ack_runs(&mut drainer, &[("artifact", rest.runs)]).unwrap();
    assert!(read_changes(&app, 10).unwrap().is_empty());
    assert!(app_write(&mut app, "k1", "v2") > third);
    // An empty log claims nothing and writes nothing.
    let last = claim_changes(&mut drainer, 10, None, &Default::default()).unwrap();
    ack_runs(&mut drainer, &[("artifact", last.runs)]).unwrap();
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
    // The first covers k1's entry A claimed, superseded by the new one.
    let busy = a.changes.iter().map(|c| key_hash(&c.tbl, &c.key)).collect();
    let b = claim_changes(&mut c, 10, None, &busy).unwrap();
    let keys: Vec<&str> = b.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k2", "k3", "k4"]);
    assert_eq!(b.runs.len(), 2, "{:?}", b.runs);
    assert_eq!(b.runs[0], (a.changes[0].seq, b.changes[1].seq));
    assert_eq!(b.runs[1], (b.changes[2].seq, b.changes[2].seq));
    // k3 changes after B's claim: its entry leaves B's ranges.
    app_write(&mut c, "k3", "v2");
    let k1_now = pending(&c).into_iter().find(|(k, _)| k == "k1").unwrap();
    let k3_now = pending(&c).into_iter().find(|(k, _)| k == "k3").unwrap();

    // Another table's name removes nothing; B's own removes k2 and k4 only
    // (k3's new entry, folded, is numbered above B's ranges).
    fold(&mut c).unwrap();
    assert_eq!(
        ack_runs(&mut c, &[("document", b.runs.clone())]).unwrap(),
        0
    );
    assert_eq!(
        ack_runs(&mut c, &[("artifact", b.runs.clone())]).unwrap(),
        2
    );
    assert_eq!(pending(&c), [k1_now, k3_now.clone()]);
    // A's range no longer holds k1's entry (its key changed): it stays too.
    assert_eq!(
        ack_runs(&mut c, &[("artifact", a.runs.clone())]).unwrap(),
        0
    );
    assert_eq!(pending(&c).len(), 2);
    // A range cut around an entry leaves it.
    let k5 = app_write(&mut c, "k5", "v");
    let k6 = app_write(&mut c, "k6", "v");
    let e = claim_changes(&mut c, 10, Some(k3_now.1), &Default::default()).unwrap();
    let keys: Vec<&str> = e.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k5", "k6"]);
    let kept = runs_without(&e.runs, &[k5]);
    assert_eq!(ack_runs(&mut c, &[("artifact", kept)]).unwrap(), 1);
    assert!(pending(&c).iter().any(|(k, s)| k == "k5" && *s == k5));
    assert!(!pending(&c).iter().any(|(_, s)| *s == k6));
}

/// A log of the layout before versions were recorded (an entry column and a
/// claim table this version has no use for, triggers of their own): `install`
/// records the version and replaces the triggers; pending entries stay and
/// drain; no table is re-sent (its writes were captured all along).
#[test]
fn a_log_of_an_earlier_layout_is_brought_up_to_date_by_install() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    let mut c = Connection::open(&p).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE {LOG} (tbl TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, \
         op TEXT NOT NULL, at REAL NOT NULL, first INTEGER, PRIMARY KEY (tbl, key)) WITHOUT ROWID; \
         CREATE INDEX {LOG_SEQ_INDEX} ON {LOG} (seq); CREATE TABLE _dualwrite_claim (hi INTEGER NOT NULL); \
         CREATE TRIGGER _dualwrite_artifact_ins AFTER INSERT ON artifact BEGIN \
         INSERT INTO {LOG} (tbl, key, seq, op, at, first) SELECT 'artifact', NEW.id, \
         (SELECT coalesce(max(seq), 0) + 1 FROM {LOG}), 'I', 0, 0 ON CONFLICT (tbl, key) \
         DO UPDATE SET seq = excluded.seq; END; \
         CREATE TRIGGER _dualwrite_artifact_upd AFTER UPDATE ON artifact BEGIN SELECT 1; END; \
         CREATE TRIGGER _dualwrite_artifact_del AFTER DELETE ON artifact BEGIN SELECT 1; END; \
         CREATE TRIGGER _dualwrite_doctable_ins AFTER INSERT ON doctable BEGIN SELECT 1; END; \
         CREATE TRIGGER _dualwrite_doctable_upd AFTER UPDATE ON doctable BEGIN SELECT 1; END; \
         CREATE TRIGGER _dualwrite_doctable_del AFTER DELETE ON doctable BEGIN SELECT 1; END;"
    ))
    .unwrap();
    app_write(&mut c, "k1", "v1");
    let st = triggers_on(&c).unwrap();
    assert_eq!(st.version, None);
    assert_eq!(
        st.missing,
        ["artifact", "doctable"],
        "another version's triggers"
    );
    let r = install(&p, None).unwrap();
    assert!(r.resynced.is_empty(), "{:?}", r.resynced);
    assert!(pending_resyncs(&c).unwrap().is_empty());
    let st = triggers_on(&c).unwrap();
    assert_eq!((st.version, st.missing.len()), (Some(LOG_VERSION), 0));
    // The entry made before, and the next write, both drain.
    let k2 = app_write(&mut c, "k2", "v1");
    let claim = claim_changes(&mut c, 10, None, &Default::default()).unwrap();
    let keys: Vec<&str> = claim.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k1", "k2"]);
    assert_eq!(claim.changes[1].seq, k2);
    assert_eq!(ack_runs(&mut c, &[("artifact", claim.runs)]).unwrap(), 2);
}

/// A table re-created by the app loses its triggers: nothing written to it
/// meanwhile was logged. `install` re-installs them and marks the table; the
/// resync queues every key it holds, then the target's keys it lost.
#[test]
fn a_recreated_table_is_queued_whole_with_the_keys_it_lost() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    assert!(
        install(&p, None).unwrap().resynced.is_empty(),
        "a first install re-sends nothing"
    );
    let mut app = Connection::open(&p).unwrap();
    // The 12-step re-create, then writes while no trigger logs them.
    app.execute_batch(
        "BEGIN; CREATE TABLE artifact_new (id VARCHAR NOT NULL PRIMARY KEY, filename VARCHAR, status VARCHAR);
         INSERT INTO artifact_new SELECT id, filename, status FROM artifact; DROP TABLE artifact;
         ALTER TABLE artifact_new RENAME TO artifact; COMMIT;",
    )
    .unwrap();
    for i in 0..(KEYS_PER_STEP + 7) {
        app.execute(
            "INSERT INTO artifact (id, filename, status) VALUES (?1, 'f', 'new')",
            [format!("n{i:05}")],
        )
        .unwrap();
    }
    app.execute("DELETE FROM artifact WHERE id = 'a1'", [])
        .unwrap();
    assert!(
        read_changes(&app, 10).unwrap().is_empty(),
        "nothing was logged"
    );
    let r = install(&p, None).unwrap();
    assert_eq!(r.resynced, ["artifact"]);
    assert_eq!(
        pending_resyncs(&app).unwrap(),
        [(&crate::catalogue::ARTIFACT, Resync::FileKeys(String::new()))]
    );
    let mut drainer = Connection::open(&p).unwrap();
    let mut after = String::new();
    let mut steps = 0;
    while let Some(last) =
        queue_file_keys(&mut drainer, &crate::catalogue::ARTIFACT, &after).unwrap()
    {
        after = last;
        steps += 1;
    }
    assert_eq!(steps, 2);
    assert_eq!(
        pending_resyncs(&app).unwrap(),
        [(&crate::catalogue::ARTIFACT, Resync::TargetKeys)]
    );
    let queued = read_changes(&app, 100_000).unwrap();
    assert_eq!(queued.len(), KEYS_PER_STEP + 7);
    let mut seqs: Vec<i64> = queued.iter().map(|c| c.seq).collect();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        queued.len(),
        "every queued key has a seq of its own"
    );
    // The target still has a1 (deleted meanwhile) and n00000 (still here).
    let gone = queue_gone_keys(
        &mut drainer,
        &crate::catalogue::ARTIFACT,
        &["a1".to_owned(), "n00000".to_owned()],
    )
    .unwrap();
    assert_eq!(gone, 1);
    finish_resync(&mut drainer, &crate::catalogue::ARTIFACT).unwrap();
    assert!(pending_resyncs(&app).unwrap().is_empty());
    let a1: Vec<Change> = read_changes(&app, 100_000)
        .unwrap()
        .into_iter()
        .filter(|c| c.key == "a1")
        .collect();
    assert_eq!(a1.len(), 1);
    assert_eq!(a1[0].op, "D");
    // Writes are captured again.
    let s = app_write(&mut app, "late", "v");
    assert!(s > a1[0].seq);
}

/// Pending keys and their `seq`s, as a claim would see them.
fn pending_keys(c: &Connection) -> Vec<(String, i64)> {
    read_changes(c, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|c| (c.key, c.seq))
        .collect()
}

/// A key changed while its batch is out goes again, whether its new change is
/// still in the queue when the batch is acknowledged (its acknowledgement
/// folds it) or was folded into the log meanwhile.
#[test]
fn a_change_made_during_the_send_is_never_acknowledged_with_the_batch() {
    for folded_before_ack in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), false);
        install(&p, None).unwrap();
        let mut app = Connection::open(&p).unwrap();
        let mut drainer = Connection::open(&p).unwrap();
        for k in ["k1", "k2"] {
            app_write(&mut app, k, "v1");
        }
        let a = claim_changes(&mut drainer, 10, None, &Default::default()).unwrap();
        assert_eq!(a.changes.len(), 2);
        // During the send: k1 changes again, once or many times.
        for i in 0..5 {
            app_write(&mut app, "k1", &format!("v{}", i + 2));
        }
        let busy = a.changes.iter().map(|c| key_hash(&c.tbl, &c.key)).collect();
        if folded_before_ack {
            // By the acknowledgement of another batch, say.
            fold(&mut drainer).unwrap();
        }
        // k1 is busy, whether its new change is read from the log or the queue.
        let b = claim_changes(&mut drainer, 10, Some(a.runs[0].1), &busy).unwrap();
        assert!(b.changes.is_empty(), "k1 is busy: {:?}", b.changes);
        ack_runs(&mut drainer, &[("artifact", a.runs.clone())]).unwrap();
        let left = pending_keys(&app);
        assert_eq!(left.len(), 1, "{folded_before_ack}: {left:?}");
        assert_eq!(left[0].0, "k1");
        assert!(left[0].1 > a.runs[0].1);
        assert_eq!(status(&p).unwrap().pending, 1);
        let again = claim_changes(&mut drainer, 10, None, &Default::default()).unwrap();
        let keys: Vec<&str> = again.changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["k1"], "{folded_before_ack}");
        ack_runs(&mut drainer, &[("artifact", again.runs)]).unwrap();
        assert!(pending_keys(&app).is_empty());
        assert_eq!(status(&p).unwrap().pending, 0);
    }
}

/// The acknowledgement deletes a claim's ranges from the queue itself: a key
/// changed during its batch's send (its new entry lies between another
/// batch's ranges, or is the queue's last row) stays pending whichever batch
/// is acknowledged first.
#[test]
fn a_change_made_during_the_send_survives_the_other_batches_acknowledgement() {
    for a_first in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), false);
        install(&p, None).unwrap();
        let mut app = Connection::open(&p).unwrap();
        let mut drainer = Connection::open(&p).unwrap();
        for k in ["k1", "k2", "k3"] {
            app_write(&mut app, k, "v1");
        }
        let a = claim_changes(&mut drainer, 1, None, &Default::default()).unwrap();
        // During A's send: k1 changes (between k3 and k4), then k4 is written.
        let k1 = app_write(&mut app, "k1", "v2");
        app_write(&mut app, "k4", "v1");
        let busy = a.changes.iter().map(|c| key_hash(&c.tbl, &c.key)).collect();
        let b = claim_changes(&mut drainer, 10, Some(a.runs[0].1), &busy).unwrap();
        let keys: Vec<&str> = b.changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["k2", "k3", "k4"]);
        let (first, second) = if a_first { (&a, &b) } else { (&b, &a) };
        ack_runs(&mut drainer, &[("artifact", first.runs.clone())]).unwrap();
        assert!(
            pending_keys(&app).contains(&("k1".to_owned(), k1)),
            "{a_first}"
        );
        ack_runs(&mut drainer, &[("artifact", second.runs.clone())]).unwrap();
        assert_eq!(pending_keys(&app), [("k1".to_owned(), k1)], "{a_first}");
        // k1 changes again: numbered above everything, and claimed once.
        let k1 = app_write(&mut app, "k1", "v3");
        let c = claim_changes(&mut drainer, 10, None, &Default::default()).unwrap();
        let got: Vec<(&str, i64)> = c.changes.iter().map(|c| (c.key.as_str(), c.seq)).collect();
        assert_eq!(got, [("k1", k1)]);
        ack_runs(&mut drainer, &[("artifact", c.runs)]).unwrap();
        assert!(pending_keys(&app).is_empty());
    }
}

/// A key changed 1,000 times while nobody drains, among 3,000 other keys, is
/// one pending change and is claimed once, however small the batches.
#[test]
fn a_key_changed_a_thousand_times_during_an_outage_is_claimed_once() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut app = Connection::open(&p).unwrap();
    let tx = app.transaction().unwrap();
    for i in 0..3000 {
        for sql in [
            "INSERT INTO artifact (id, filename, status) VALUES (?1, 'f', 'new')",
            "UPDATE artifact SET status = ?1 WHERE id = 'a1'",
        ] {
            if sql.contains("INSERT") || i % 3 == 0 {
                tx.execute(sql, [format!("n{i:05}")]).unwrap();
            }
        }
    }
    tx.commit().unwrap();
    let st = status(&p).unwrap();
    assert_eq!(st.pending, 3001, "distinct keys");
    assert!(st.lag_seconds >= 0.0);
    let mut drainer = Connection::open(&p).unwrap();
    let mut a1 = 0;
    let mut claimed = 0;
    loop {
        let c = claim_changes(&mut drainer, 100, None, &Default::default()).unwrap();
        if c.changes.is_empty() {
            break;
        }
        claimed += c.changes.len();
        a1 += c.changes.iter().filter(|c| c.key == "a1").count();
        ack_runs(&mut drainer, &[("artifact", c.runs)]).unwrap();
    }
    assert_eq!((claimed, a1), (3001, 1));
    assert_eq!(status(&p).unwrap().pending, 0);
}

/// The triggers of log version 1, which upserted into the dirty-key log.
fn v1_triggers(table: &str, key: &str) -> String {
    let next = "(max((SELECT coalesce(max(seq), 0) FROM _dualwrite_changes), \
         (SELECT coalesce(max(value), 0) FROM _dualwrite_meta WHERE name = 'acked_hi')) + 1)";
    let record = |k: &str, op: &str| {
        format!(
            "INSERT INTO _dualwrite_changes (tbl, key, seq, op, at) SELECT '{table}', {k}, \
             {next}, '{op}', {NOW_SQL} WHERE {k} IS NOT NULL \
             ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq, op = excluded.op;"
        )
    };
    let q = format!("\"{key}\"");
    format!(
        "CREATE TRIGGER _dualwrite_{table}_ins AFTER INSERT ON \"{table}\" BEGIN {} END;\n\
         CREATE TRIGGER _dualwrite_{table}_upd AFTER UPDATE ON \"{table}\" BEGIN {} {} END;\n\
         CREATE TRIGGER _dualwrite_{table}_del AFTER DELETE ON \"{table}\" BEGIN {} END;\n",
        record(&format!("NEW.{q}"), "I"),
        record(
            &format!("(CASE WHEN OLD.{q} IS NOT NEW.{q} THEN OLD.{q} END)"),
            "D"
        ),
        record(&format!("NEW.{q}"), "U"),
        record(&format!("OLD.{q}"), "D"),
    )
}

/// A file captured by version 1 (the dirty-key log written by the triggers),
/// with changes pending and others acknowledged: `install` upgrades it in
/// place. Nothing pending is lost, nothing is re-sent whole, new changes are
/// numbered above every `seq` the log held or acknowledged, and they drain.
#[test]
fn a_log_of_version_1_is_upgraded_in_place_with_its_pending_changes() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    let mut c = Connection::open(&p).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE {LOG} (\n\ttbl TEXT NOT NULL,\n\tkey TEXT NOT NULL,\n\tseq INTEGER NOT NULL,\n\
         \top TEXT NOT NULL,\n\tat REAL NOT NULL,\n\tPRIMARY KEY (tbl, key)\n) WITHOUT ROWID;\n\
         CREATE INDEX {LOG_SEQ_INDEX} ON {LOG} (seq);\n\
         CREATE TABLE {META} (name TEXT PRIMARY KEY, value) WITHOUT ROWID;\n\
         INSERT INTO {META} VALUES ('log_version', 1), ('acked_hi', 40);\n{}{}",
        v1_triggers("artifact", "id"),
        v1_triggers("doctable", "id"),
    ))
    .unwrap();
    // Pending under version 1: k1, k2 (numbered above acked_hi), a1 deleted.
    for sql in [
        "INSERT INTO artifact (id, filename, status) VALUES ('k1', 'f', 'v1')",
        "INSERT INTO artifact (id, filename, status) VALUES ('k2', 'f', 'v1')",
        "UPDATE artifact SET status = 'v2' WHERE id = 'k1'",
        "DELETE FROM artifact WHERE id = 'a1'",
    ] {
        c.execute(sql, []).unwrap();
    }
    let before = read_changes(&c, 100).unwrap();
    assert_eq!(before.len(), 3);
    let top = before.iter().map(|c| c.seq).max().unwrap();
    assert_eq!(top, 44);
    assert_eq!(triggers_on(&c).unwrap().version, Some(1));
    assert_eq!(status(&p).unwrap().pending, 3, "status before the upgrade");

    let r = install(&p, None).unwrap();
    assert_eq!(r.created[0], QUEUE, "{:?}", r.created);
    assert!(r.resynced.is_empty(), "{:?}", r.resynced);
    let st = triggers_on(&c).unwrap();
    assert_eq!((st.version, st.missing.len()), (Some(LOG_VERSION), 0));
    assert_eq!(
        read_changes(&c, 100).unwrap(),
        before,
        "pending kept as they were"
    );
    assert!(install(&p, None).unwrap().created.is_empty());

    // A new change (k2 again, and k3) is numbered above everything before.
    let k2 = app_write(&mut c, "k2", "v2");
    let k3 = app_write(&mut c, "k3", "v1");
    assert!(k2 > top && k3 > k2, "{top} {k2} {k3}");
    assert_eq!(status(&p).unwrap().pending, 4);
    let mut drainer = Connection::open(&p).unwrap();
    let claim = claim_changes(&mut drainer, 100, None, &Default::default()).unwrap();
    let keys: Vec<(&str, i64)> = claim
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.seq))
        .collect();
    assert_eq!(keys, [("k1", 43), ("a1", 44), ("k2", k2), ("k3", k3)]);
    // Five entries: k2's in the log (42) goes with its newer one in the queue.
    assert_eq!(
        ack_runs(&mut drainer, &[("artifact", claim.runs)]).unwrap(),
        5
    );
    assert_eq!(status(&p).unwrap().pending, 0);
    let u = uninstall(&p, false).unwrap();
    assert!(u.dropped.iter().any(|n| n == QUEUE), "{:?}", u.dropped);
}

/// Acknowledge a batch as `serve` does: the tables it sent but `failed`, by
/// `runs` (its claim's, less the changes left to try again), and those it
/// holds only superseded entries of, by the claim's ranges.
fn ack_as_serve(c: &mut Connection, claim: &Claim, runs: &[(i64, i64)], failed: Option<&str>) {
    let mut sends: Vec<&str> = claim.changes.iter().map(|c| c.tbl.as_str()).collect();
    sends.sort_unstable();
    sends.dedup();
    let mut acked: Vec<(&str, Vec<(i64, i64)>)> = sends
        .iter()
        .filter(|t| Some(**t) != failed)
        .map(|t| (*t, runs.to_vec()))
        .collect();
    for t in &claim.superseded {
        if !sends.contains(&t.as_str()) {
            acked.push((t.as_str(), claim.runs.clone()));
        }
    }
    ack_runs(c, &acked).unwrap();
}

/// The drainer against a model, in a random interleaving (a fixed seed) of
/// app writes to two tables (single ones, and bursts past what a claim reads
/// from the queue unfolded), claims of a few keys with batches in flight,
/// acknowledgements in any order (now and then of one table only, the other
/// failing; some keys left to try again), and folds. After every step, a
/// change not sent yet is pending, or in a batch out that read it; at the
/// end every key's last value is sent.
#[test]
fn claims_and_acknowledgements_in_any_interleaving_lose_no_change() {
    let d = tempfile::tempdir().unwrap();
    let p = dox_file(d.path(), false);
    install(&p, None).unwrap();
    let mut app = Connection::open(&p).unwrap();
    let mut drainer = Connection::open(&p).unwrap();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    const KEYS: u64 = 24;
    // Even keys are artifacts, odd ones doctables; the value is the version.
    let table = |k: u64| if k % 2 == 0 { "artifact" } else { "doctable" };
    let key_of = |tbl: &str, key: &str| -> usize {
        let k: usize = key[1..].parse().unwrap();
        assert_eq!(table(k as u64), tbl);
        k
    };
    let mut version = vec![0u64; KEYS as usize];
    let mut sent = vec![0u64; KEYS as usize];
    let write = |app: &Connection, k: u64, v: u64| {
        let sql = if k % 2 == 0 {
            "INSERT INTO artifact (id, filename, status) VALUES (?1, 'f', ?2) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status"
        } else {
            "INSERT INTO doctable (id, document_id, \"order\", table_content_json) \
             VALUES (?1, 'd', ?2, '{}') ON CONFLICT (id) DO UPDATE SET \"order\" = excluded.\"order\""
        };
        app.execute(sql, [format!("k{k:02}"), v.to_string()])
            .unwrap();
    };
    let read = |app: &Connection, tbl: &str, key: &str| -> u64 {
        let sql = if tbl == "artifact" {
            "SELECT status FROM artifact WHERE id = ?1"
        } else {
            "SELECT CAST(\"order\" AS TEXT) FROM doctable WHERE id = ?1"
        };
        let v: String = app.query_row(sql, [key], |r| r.get(0)).unwrap();
        v.parse().unwrap()
    };
    // The batches out: their claims and the values read.
    let mut out: Vec<(Claim, Vec<(usize, u64)>)> = Vec::new();
    let mut after: Option<i64> = None;
    let (mut bursts, mut settled) = (0, 0);
    for step in 0..3000 {
        match next(10) {
            0..=3 => {
                let k = next(KEYS);
                version[k as usize] += 1;
                write(&app, k, version[k as usize]);
            }
            4 if next(100) == 0 => {
                bursts += 1;
                let tx = app.transaction().unwrap();
                for i in 0..(READ_QUEUE_MAX as u64 + 500) {
                    let k = (i * 7 + step) % KEYS;
                    version[k as usize] += 1;
                    write(&tx, k, version[k as usize]);
                }
                tx.commit().unwrap();
            }
            4 | 5 => {
                let busy: std::collections::HashSet<u64> = out
                    .iter()
                    .flat_map(|(c, _)| c.changes.iter().map(|c| key_hash(&c.tbl, &c.key)))
                    .collect();
                if busy.is_empty() {
                    after = None;
                }
                let c = claim_changes(&mut drainer, 1 + next(5) as usize, after, &busy).unwrap();
                after = match (c.skipped_from, c.changes.last()) {
                    (Some(s), _) => s.checked_sub(1),
                    (None, Some(last)) => Some(last.seq),
                    (None, None) => after,
                };
                if c.changes.is_empty() {
                    continue;
                }
                // The rows as they are now (the drainer reads them after the claim).
                let values = c
                    .changes
                    .iter()
                    .map(|ch| (key_of(&ch.tbl, &ch.key), read(&app, &ch.tbl, &ch.key)))
                    .collect();
                out.push((c, values));
            }
            6 | 7 if !out.is_empty() => {
                let i = next(out.len() as u64) as usize;
                let (c, values) = out.remove(i);
                // Now and then one key of the batch is left to try again, or
                // one table fails (its changes stay).
                let kept: Vec<i64> = if next(4) == 0 {
                    vec![c.changes[next(c.changes.len() as u64) as usize].seq]
                } else {
                    Vec::new()
                };
                let failed = match next(6) {
                    0 => Some("artifact"),
                    1 => Some("doctable"),
                    _ => None,
                };
                for (ch, (k, v)) in c.changes.iter().zip(values) {
                    if !kept.contains(&ch.seq) && Some(ch.tbl.as_str()) != failed {
                        sent[k] = sent[k].max(v);
                    }
                }
                let runs = runs_without(&c.runs, &kept);
                ack_as_serve(&mut drainer, &c, &runs, failed);
            }
            8 if next(3) == 0 => {
                fold(&mut drainer).unwrap();
            }
            9 if next(20) == 0 => {
                // The daemon from idle, nothing written meanwhile: what is
                // out lands, then claims read on (the batches out) until one
                // comes back short, and they land in any order. Then it
                // waits for a commit: nothing may be left pending.
                for (c, values) in out.drain(..) {
                    for (k, v) in values {
                        sent[k] = sent[k].max(v);
                    }
                    ack_as_serve(&mut drainer, &c, &c.runs, None);
                }
                after = None;
                let mut settling: Vec<Claim> = Vec::new();
                loop {
                    let busy = settling
                        .iter()
                        .flat_map(|c| c.changes.iter().map(|c| key_hash(&c.tbl, &c.key)))
                        .collect();
                    let c = claim_changes(&mut drainer, 3, after, &busy).unwrap();
                    if let Some(last) = c.changes.last() {
                        after = Some(last.seq);
                    }
                    let short = c.changes.len() < 3;
                    for ch in &c.changes {
                        let k = key_of(&ch.tbl, &ch.key);
                        sent[k] = sent[k].max(read(&app, &ch.tbl, &ch.key));
                    }
                    settling.push(c);
                    if short {
                        break;
                    }
                }
                while !settling.is_empty() {
                    let c = settling.remove(next(settling.len() as u64) as usize);
                    ack_as_serve(&mut drainer, &c, &c.runs, None);
                }
                after = None;
                settled += 1;
                assert_eq!(status(&p).unwrap().pending, 0, "step {step}: left pending");
            }
            _ => {}
        }
        // No change is lost: one not sent is pending, or read by a batch out.
        let pending: std::collections::HashSet<usize> = read_changes(&app, usize::MAX)
            .unwrap()
            .iter()
            .map(|c| key_of(&c.tbl, &c.key))
            .collect();
        for k in 0..KEYS as usize {
            let reading = out
                .iter()
                .flat_map(|(_, v)| v.iter())
                .any(|&(key, v)| key == k && v == version[k]);
            assert!(
                sent[k] == version[k] || pending.contains(&k) || reading,
                "step {step}: key {k} at {} (sent {}) is neither pending nor out",
                version[k],
                sent[k]
            );
        }
    }
    assert!(bursts > 0 && settled > 0);
    for (c, values) in out.drain(..) {
        for (k, v) in values {
            sent[k] = sent[k].max(v);
        }
        ack_as_serve(&mut drainer, &c, &c.runs, None);
    }
    loop {
        let c = claim_changes(&mut drainer, 7, None, &Default::default()).unwrap();
        if c.changes.is_empty() {
            break;
        }
        for ch in &c.changes {
            let k = key_of(&ch.tbl, &ch.key);
            sent[k] = version[k];
        }
        ack_as_serve(&mut drainer, &c, &c.runs, None);
    }
    assert_eq!(status(&p).unwrap().pending, 0);
    // Every key written was sent at its last value: the final drain sends
    // only keys still pending, so a change acknowledged without being sent
    // shows here.
    let missed: Vec<(usize, u64, u64)> = (0..KEYS as usize)
        .filter(|&k| sent[k] != version[k])
        .map(|k| (k, version[k], sent[k]))
        .collect();
    assert!(missed.is_empty(), "(key, last value, sent): {missed:?}");
}

/// Keys changed between every other write (DoX updates an artifact's status
/// and a user's preferences at each step) span many batches of a drainer reading on from its
/// last claim: each batch acknowledges only the tables it sent, yet once
/// every batch is acknowledged nothing is pending, whichever order they
/// finish in.
#[test]
fn a_key_superseded_across_batches_leaves_nothing_pending() {
    for order in 0..3 {
        let d = tempfile::tempdir().unwrap();
        let p = dox_file(d.path(), false);
        install(&p, None).unwrap();
        let mut app = Connection::open(&p).unwrap();
        let mut drainer = Connection::open(&p).unwrap();
        for i in 0..30 {
            app.execute(
                "INSERT INTO doctable (id, document_id, \"order\", table_content_json) \
                 VALUES (?1, 'd', 1, '{}')",
                [format!("t{i:02}")],
            )
            .unwrap();
            app_write(&mut app, "warm", &format!("step {i}"));
            app_write(&mut app, "hot", &format!("step {i}"));
        }
        // Batches of 5, read on from the last claim, all out at once.
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let busy = out
                .iter()
                .flat_map(|c: &Claim| c.changes.iter().map(|c| key_hash(&c.tbl, &c.key)))
                .collect();
            let c = claim_changes(&mut drainer, 5, after, &busy).unwrap();
            let Some(last) = c.changes.last() else { break };
            after = Some(last.seq);
            out.push(c);
        }
        assert_eq!(out.len(), 7, "30 doctables and the artifacts' latest");
        match order {
            0 => {}
            1 => out.reverse(),
            _ => out.rotate_left(3),
        }
        for c in out {
            ack_as_serve(&mut drainer, &c, &c.runs, None);
        }
        assert_eq!(pending_keys(&app), [], "order {order}");
    }
}
