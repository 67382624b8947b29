//! The dual-write behaviour table, with real backends: SQLite on a temp file and
//! Supabase on a private database whose PostgREST the tests stop, pause, or
//! make reject rows.

use std::time::{Duration, Instant};

use serde_json::json;

use dualwrite::catalogue::{self, TABLES};
use dualwrite::db::{Database, Dox, DualDatabase, SqliteDatabase, SupabaseDatabase};
use dualwrite::model::{Artifact, TagRow, Write};

use crate::harness::{temp_sqlite, PrivateDb};

fn artifact(id: &str) -> Artifact {
    serde_json::from_value(
        json!({"id": id, "filename": "f.pdf", "filepath": "uploads/f.pdf", "filetype": ".pdf"}),
    )
    .unwrap()
}

fn tag(id: &str, text: &str) -> TagRow {
    serde_json::from_value(json!({"id": id, "document_id": "doc", "tag": text})).unwrap()
}

fn dual(
    lite: SqliteDatabase,
    sb: SupabaseDatabase,
    timeout: Duration,
) -> DualDatabase<SqliteDatabase, SupabaseDatabase> {
    DualDatabase::new(lite, sb, timeout, 10_000)
}

async fn ids(db: &impl Database, t: &'static catalogue::Table) -> Vec<String> {
    db.fetch(t, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r[t.key().supabase].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_method_through_dual_leaves_both_sides_equal() {
    needs_stack!();
    let (_d, lite) = temp_sqlite().await;
    let pg = PrivateDb::new().await;
    let d = dual(lite, pg.supabase(), Duration::from_secs(5));
    for w in crate::backends::script() {
        d.apply(w).await.unwrap();
    }
    assert_eq!(d.stats().failed, 0);
    assert_eq!(d.stats().mirrored as usize, crate::backends::script().len());
    for t in TABLES {
        let l = d.primary().fetch(t, &[]).await.unwrap();
        let r = d.secondary().fetch(t, &[]).await.unwrap();
        assert!(!l.is_empty(), "{}", t.sqlite);
        assert_eq!(l, r, "{}", t.sqlite);
    }
    for r in crate::backends::reads() {
        assert_eq!(
            d.read(r.clone()).await.unwrap(),
            d.secondary().read(r.clone()).await.unwrap(),
            "{r:?}"
        );
    }
    // Reads come from the primary: rows only the primary has are seen.
    d.primary()
        .add_artifact(artifact("primary-only"))
        .await
        .unwrap();
    let ids: Vec<_> = d
        .get_artifacts()
        .await
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert!(ids.contains(&json!("primary-only")));
}

#[tokio::test]
async fn a_primary_failure_is_returned_and_the_secondary_is_not_touched() {
    needs_stack!();
    let (dir, lite) = temp_sqlite().await;
    // Make SQLite refuse one id, the way a constraint or a full disk would.
    let conn = rusqlite::Connection::open(dir.path().join("dox.sqlite3")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON artifact WHEN NEW.id = 'refused'
         BEGIN SELECT RAISE(ABORT, 'refused by the primary'); END;",
    )
    .unwrap();
    let pg = PrivateDb::new().await;
    let d = dual(lite, pg.supabase(), Duration::from_secs(5));
    let e = d
        .add_artifact(artifact("refused"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused by the primary"), "{e}");
    assert!(ids(d.secondary(), &catalogue::ARTIFACT).await.is_empty());
    assert_eq!(
        d.stats().mirrored + d.stats().failed,
        0,
        "no mirror attempted"
    );
    d.add_artifact(artifact("accepted")).await.unwrap();
    assert_eq!(
        ids(d.secondary(), &catalogue::ARTIFACT).await,
        vec!["accepted"]
    );
}

#[tokio::test]
async fn an_unreachable_secondary_never_fails_the_app_and_failures_replay() {
    needs_stack!();
    let (_d, lite) = temp_sqlite().await;
    let mut pg = PrivateDb::new().await;
    let d = dual(lite, pg.supabase(), Duration::from_secs(5));
    d.add_artifact(artifact("before")).await.unwrap();
    pg.stop(); // PostgREST down mid-run
    for i in 0..5 {
        d.add_artifact(artifact(&format!("during-{i}")))
            .await
            .unwrap();
    }
    let id = d
        .add_memory("workspace", json!({"k": "v"}), None, Some("dev_user"))
        .await
        .unwrap();
    assert_eq!(
        ids(d.primary(), &catalogue::ARTIFACT).await.len(),
        6,
        "the app kept writing"
    );
    let st = d.stats();
    assert_eq!((st.mirrored, st.failed, st.pending), (1, 6, 6));
    let f = d.failures();
    assert_eq!(f[0].method, "add_artifact");
    assert_eq!(f[0].table, "artifact");
    assert_eq!(f[0].key, "during-0");
    assert!(
        f[0].transient && f[0].error.contains("unreachable"),
        "{}",
        f[0].error
    );
    assert_eq!(f[5].key, id, "the recorded write carries the generated id");

    pg.start().await;
    let r = d.replay_failures().await;
    assert_eq!((r.attempted, r.replayed, r.still_failing), (6, 6, 0));
    let (l, s) = (
        d.primary()
            .fetch(&catalogue::CIPHER_MEMORY, &[])
            .await
            .unwrap(),
        d.secondary()
            .fetch(&catalogue::CIPHER_MEMORY, &[])
            .await
            .unwrap(),
    );
    assert_eq!(
        l, s,
        "the replayed memory has the same id and content on both sides"
    );
    assert_eq!(ids(d.secondary(), &catalogue::ARTIFACT).await.len(), 6);
}

#[tokio::test]
async fn a_secondary_that_rejects_a_row_is_recorded_and_other_writes_continue() {
    needs_stack!();
    let (_d, lite) = temp_sqlite().await;
    let pg = PrivateDb::new().await;
    pg.ddl("ALTER TABLE tags ADD CONSTRAINT no_rejects CHECK (tag <> 'reject-me')")
        .await;
    let d = dual(lite, pg.supabase(), Duration::from_secs(5));
    d.add_tag(tag("t1", "fine")).await.unwrap();
    d.add_tag(tag("t2", "reject-me")).await.unwrap();
    d.add_tag(tag("t3", "also fine")).await.unwrap();
    assert_eq!(
        ids(d.primary(), &catalogue::TAGROW).await,
        vec!["t1", "t2", "t3"]
    );
    assert_eq!(
        ids(d.secondary(), &catalogue::TAGROW).await,
        vec!["t1", "t3"]
    );
    let f = d.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].key, "t2");
    assert!(!f[0].transient);
    assert!(f[0].error.contains("23514"), "{}", f[0].error);
}

#[tokio::test]
async fn a_hung_secondary_holds_an_app_write_no_longer_than_the_timeout() {
    needs_stack!();
    let (_d, lite) = temp_sqlite().await;
    let pg = PrivateDb::new().await;
    // The client's own timeout is long; the dual layer's bound is what must hold.
    let sb = SupabaseDatabase::new(pg.rest(Duration::from_secs(120)));
    let d = dual(lite, sb, Duration::from_millis(500));
    d.add_artifact(artifact("warm")).await.unwrap();
    pg.pause(true);
    let started = Instant::now();
    d.add_artifact(artifact("while-paused")).await.unwrap();
    let held = started.elapsed();
    pg.pause(false);
    // 500 ms configured; the original stalled 120 s. Generous margin for a loaded machine.
    assert!(held < Duration::from_secs(5), "held {held:?}");
    assert!(held >= Duration::from_millis(450), "held {held:?}");
    assert_eq!(d.stats().failed, 1);
    assert!(d.failures()[0].error.contains("did not answer"));
}

#[tokio::test]
async fn supabase_can_be_primary_with_sqlite_as_the_mirror() {
    needs_stack!();
    let (_d, lite) = temp_sqlite().await;
    let pg = PrivateDb::new().await;
    let d = DualDatabase::new(pg.supabase(), lite, Duration::from_secs(5), 100);
    assert_eq!(d.backend(), "dual:supabase+sqlite");
    let id = d
        .save_tag_prompt("doc", "prompt", Some(json!([{"text": "x"}])), None)
        .await
        .unwrap();
    d.register_skill("s", "d", json!({}), json!({}), true)
        .await
        .unwrap();
    let skill_id = d.list_skills(true).await.unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let updated = d.update_skill(&skill_id, false).await.unwrap().unwrap();
    assert_eq!(updated["enabled"], false);
    for t in [&catalogue::TAGPROMPT, &catalogue::SKILLS_REGISTRY] {
        assert_eq!(
            d.primary().fetch(t, &[]).await.unwrap(),
            d.secondary().fetch(t, &[]).await.unwrap(),
            "{}",
            t.sqlite
        );
    }
    assert_eq!(ids(d.secondary(), &catalogue::TAGPROMPT).await, vec![id]);
    // A Supabase-primary failure is an error and SQLite is not touched.
    let w = Write::from_call(
        "add_tag",
        json!({"tag": {"id": "x", "document_id": "d", "tag": "a\u{0}"}}),
    )
    .unwrap();
    assert!(d.apply(w).await.is_err());
    assert!(ids(d.secondary(), &catalogue::TAGROW).await.is_empty());
}
