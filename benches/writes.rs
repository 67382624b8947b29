//! Per-write latency of 10,000 mixed DoX writes: SQLite alone, Supabase alone,
//! and DualDatabase (SQLite primary, Supabase mirror inline), also on a file
//! with change capture installed (where the dual layer leaves every write to
//! the drainer: what it costs the app then), against the local stack; then a hung
//! secondary (its PostgREST paused with SIGSTOP); last, the dual layer's local
//! cost with and without capture (a mirror that answers at once).
//!
//! Run: `scripts/stack.sh up && cargo bench --bench writes` (prints a Markdown
//! table; BENCHMARKS.md records the figures). `WRITES=N` changes the count.
//! Under `cargo test` (no `--bench` argument) it makes a short smoke run, so CI
//! keeps it working without spending minutes on it.

// Test and benchmark helpers fail loudly by design: an unwrap is their assertion
// (clippy.toml allows it inside #[test] functions only).
#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use secrecy::SecretString;
use serde_json::{json, Value};

use dualwrite::catalogue::Table;
use dualwrite::db::{
    Applied, Database, DualDatabase, Filter, Row, SqliteDatabase, SqliteOptions, SupabaseDatabase,
};
use dualwrite::db::{RestClient, RestConfig};
use dualwrite::model::Write;

/// A realistic mix of DoX writes: ingestion rows, summaries, memories, prefs, updates.
fn mixed_writes(n: usize, run: &str) -> Vec<Write> {
    let text = "Revenue: $2.5M, up 12% year over year. Выручка выросла. 收入增长。 ".repeat(4);
    let call = |m: &str, a: Value| Write::from_call(m, a).unwrap();
    (0..n)
        .map(|i| {
            let id = format!("{run}-{i}");
            let doc = format!("{run}-doc-{}", i / 10);
            match i % 12 {
                0 => call("add_artifact", json!({"artifact": {"id": id, "filename": "q3.csv", "filepath": format!("uploads/{id}.csv"), "filetype": ".csv", "report_week": "2025-W38", "status": "processed", "extras": {"rows": i}}})),
                1 => call("add_document", json!({"doc": {"id": doc, "path": "uploads/a.pdf", "type": "pdf", "title": "Annual report", "source": "watch|upload"}})),
                2 => call("add_evidence", json!({"evidence": {"id": id, "artifact_id": doc, "locator": "a.pdf#table0", "preview": text, "content_type": "table", "coordinates": {"page": 3, "bbox": [72.0, 512.3, 540.0, 548.9]}, "full_data": {"rows": [{"Region": "EMEA", "Revenue": 1200}], "columns": ["Region", "Revenue"]}}})),
                3 => call("add_fact", json!({"fact": {"id": id, "artifact_id": doc, "report_week": "", "entity": "table", "metrics": {"rows": 2, "columns": 2}, "evidence_id": format!("{run}-{}", i - 1)}})),
                4 => call("add_log", json!({"log": {"id": id, "document_id": doc, "ts": "2025-09-18T08:15:02", "level": "ERROR", "code": "E1001", "component": "payment-service", "message": text}})),
                5 => call("add_tag", json!({"tag": {"id": id, "document_id": doc, "tag": "payments", "score": 0.82, "source_ptr": "hrm-refined:steps3", "hrm_steps": 3}})),
                6 => call("add_api", json!({"api": {"id": id, "document_id": doc, "name": "listPets", "method": "GET", "path": "/pets", "summary": "List all pets", "tags_json": "[\"pets\"]", "params_json": "[{\"name\": \"limit\", \"in\": \"query\"}]", "responses_json": "{\"200\": {\"description\": \"ok\"}}"}})),
                7 => call("add_section", json!({"section": {"id": id, "document_id": doc, "order": i, "text": text, "page": 1, "bbox_json": "[72.0, 700.0, 540.0, 720.0]"}})),
                8 => call("store_summary", json!({"summary": {"id": id, "scope": "workspace", "style": "bullet", "provider": "heuristic", "summary_text": text, "artifact_ids": [doc]}})),
                9 => call("add_memory", json!({"category": "team_memory", "content": {"key": "q3-plan", "owner": "dana"}, "context": {"type": "team_memory"}, "user_id": "dev_user"})),
                10 => call("set_user_pref", json!({"user_id": format!("{run}-user-{}", i % 50), "key": format!("k{}", i % 7), "value": i})),
                _ => call("update_artifact", json!({"artifact_id": format!("{run}-{}", i - i % 12), "status": "done", "extras": {"seen": i}})),
            }
        })
        .collect()
}

/// A mirror that accepts every write at once: a dual layer over it costs
/// only its local work (the SQLite write, capture, acknowledgements).
struct Accepts;

impl Database for Accepts {
    fn backend(&self) -> String {
        "accepts".into()
    }
    async fn apply(&self, mut write: Write) -> dualwrite::Result<Applied> {
        write.prepare();
        Ok(Applied {
            value: Value::Null,
            resolved: write,
        })
    }
    async fn fetch(&self, _t: &'static Table, _f: &[Filter]) -> dualwrite::Result<Vec<Row>> {
        Ok(Vec::new())
    }
}

struct Line {
    name: String,
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
    failures: u64,
}

/// Two backends measured in alternating rounds of 100 writes, so that a change
/// in the machine's load (other processes share its 2 cores) hits both alike.
async fn measure_pair<A: Database, B: Database>(
    (name_a, a, writes_a): (&str, &A, Vec<Write>),
    (name_b, b, writes_b): (&str, &B, Vec<Write>),
) -> (Line, Line) {
    let new = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    let (mut ha, mut hb) = (new(), new());
    let mut wa = writes_a.into_iter();
    let mut wb = writes_b.into_iter();
    loop {
        let (chunk_a, chunk_b): (Vec<Write>, Vec<Write>) = (
            wa.by_ref().take(100).collect(),
            wb.by_ref().take(100).collect(),
        );
        if chunk_a.is_empty() && chunk_b.is_empty() {
            break;
        }
        for w in chunk_a {
            let t = Instant::now();
            a.apply(w).await.expect("write");
            ha.record(t.elapsed().as_micros().max(1) as u64).unwrap();
        }
        for w in chunk_b {
            let t = Instant::now();
            b.apply(w).await.expect("write");
            hb.record(t.elapsed().as_micros().max(1) as u64).unwrap();
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let line = |name: &str, h: &Histogram<u64>| Line {
        name: name.into(),
        p50: ms(h.value_at_quantile(0.50)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
        failures: 0,
    };
    (line(name_a, &ha), line(name_b, &hb))
}

async fn measure<D: Database>(
    name: &str,
    db: &D,
    writes: Vec<Write>,
    failures: impl Fn() -> u64,
) -> Line {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    for w in writes {
        let t = Instant::now();
        db.apply(w).await.expect("write");
        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Line {
        name: name.into(),
        p50: ms(h.value_at_quantile(0.50)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
        failures: failures(),
    }
}

fn rest(url: &str, key: &str, timeout: Duration) -> RestClient {
    RestClient::new(&RestConfig {
        url: url.into(),
        key: SecretString::from(key.to_owned()),
        user_jwt: None,
        schema: "public".into(),
        timeout,
        connect_timeout: Duration::from_secs(2),
    })
    .unwrap()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let env = stack_env();
    let key = env["SUPABASE_SERVICE_KEY"].clone();
    let gateway = rest_endpoint(&env);
    let dir = tempfile::tempdir().unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let timeout = Duration::from_secs(10);
    let mut lines = Vec::new();

    // Warm up connections and caches, not measured.
    let warm = SupabaseDatabase::new(rest(&gateway, &key, timeout));
    for w in mixed_writes(200, &format!("{run}w")) {
        warm.apply(w).await.unwrap();
    }

    let lite = SqliteDatabase::open(dir.path().join("alone.sqlite3"), SqliteOptions::default())
        .await
        .unwrap();
    lines.push(
        measure(
            "SQLite alone",
            &lite,
            mixed_writes(n, &format!("{run}a")),
            || 0,
        )
        .await,
    );

    let sb = SupabaseDatabase::new(rest(&gateway, &key, timeout));
    lines.push(
        measure(
            "Supabase alone (nginx /rest/v1)",
            &sb,
            mixed_writes(n, &format!("{run}b")),
            || 0,
        )
        .await,
    );

    // Dual write, and the same on a file with change capture installed (each
    // write's change row commits with it and the mirror's success acknowledges
    // it), measured in alternating rounds.
    let lite = SqliteDatabase::open(dir.path().join("dual.sqlite3"), SqliteOptions::default())
        .await
        .unwrap();
    let dual = DualDatabase::new(
        lite,
        SupabaseDatabase::new(rest(&gateway, &key, timeout)),
        Duration::from_secs(2),
        100_000,
    );
    let captured = dir.path().join("dual-capture.sqlite3");
    let lite = SqliteDatabase::open(&captured, SqliteOptions::default())
        .await
        .unwrap();
    dualwrite::capture::install(&captured, None).unwrap();
    let dual_capture = DualDatabase::new(
        lite,
        SupabaseDatabase::new(rest(&gateway, &key, timeout)),
        Duration::from_secs(2),
        100_000,
    );
    let (mut plain, mut with_capture) = measure_pair(
        (
            "Dual: SQLite primary + Supabase mirror (nginx /rest/v1)",
            &dual,
            mixed_writes(n, &format!("{run}c")),
        ),
        (
            "Dual with change capture (nginx /rest/v1), alternating with the line above",
            &dual_capture,
            mixed_writes(n, &format!("{run}g")),
        ),
    )
    .await;
    plain.failures = dual.stats().failed;
    with_capture.failures = dual_capture.stats().failed;
    lines.push(plain);
    lines.push(with_capture);
    let left = dualwrite::capture::status(&captured).unwrap().pending;

    let direct = env["DUALWRITE_POSTGREST_URL"].clone();
    let lite = SqliteDatabase::open(
        dir.path().join("dual-direct.sqlite3"),
        SqliteOptions::default(),
    )
    .await
    .unwrap();
    let dual = DualDatabase::new(
        lite,
        SupabaseDatabase::new(rest(&direct, &key, timeout)),
        Duration::from_secs(2),
        100_000,
    );
    lines.push(
        measure(
            "Dual: SQLite primary + Supabase mirror (PostgREST direct)",
            &dual,
            mixed_writes(n, &format!("{run}d")),
            || dual.stats().failed,
        )
        .await,
    );

    // A hung secondary: PostgREST paused with SIGSTOP; the configured mirror timeout is 250 ms.
    let own = own_postgrest(&env, "dox", 10).await;
    let lite = SqliteDatabase::open(dir.path().join("hung.sqlite3"), SqliteOptions::default())
        .await
        .unwrap();
    let mirror_timeout = Duration::from_millis(250);
    let dual = DualDatabase::new(
        lite,
        SupabaseDatabase::new(rest(&own.url, &key, Duration::from_secs(120))),
        mirror_timeout,
        100_000,
    );
    dual.apply(mixed_writes(1, &format!("{run}e"))[0].clone())
        .await
        .unwrap();
    own.pause(true);
    let hung = measure(
        "Dual with the mirror paused (SIGSTOP), mirror timeout 250 ms",
        &dual,
        mixed_writes(40, &format!("{run}f")),
        || dual.stats().failed,
    )
    .await;
    own.pause(false);
    lines.push(hung);

    // The dual layer's local cost, with and without capture: a mirror that
    // answers at once, so the figures are the SQLite side only.
    let local = |name: &str| {
        let path = dir.path().join(name);
        async move {
            let lite = SqliteDatabase::open(&path, SqliteOptions::default())
                .await
                .unwrap();
            (path, lite)
        }
    };
    let (_, lite) = local("local.sqlite3").await;
    let plain = DualDatabase::new(lite, Accepts, Duration::from_secs(2), 100_000);
    let (path, lite) = local("local-capture.sqlite3").await;
    dualwrite::capture::install(&path, None).unwrap();
    let with_capture = DualDatabase::new(lite, Accepts, Duration::from_secs(2), 100_000);
    let (a, b) = measure_pair(
        (
            "Dual, mirror answering at once (the local cost)",
            &plain,
            mixed_writes(n, &format!("{run}h")),
        ),
        (
            "Dual with change capture, mirror answering at once, alternating",
            &with_capture,
            mixed_writes(n, &format!("{run}i")),
        ),
    )
    .await;
    lines.push(a);
    lines.push(b);

    println!(
        "{n} mixed DoX writes per line ({} kinds), one at a time, latency per write in ms:\n",
        12
    );
    println!("| backend | p50 | p99 | max | mean | mirror failures |");
    println!("|---|---:|---:|---:|---:|---:|");
    for l in &lines {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            l.name, l.p50, l.p99, l.max, l.mean, l.failures
        );
    }
    let base = &lines[0];
    println!(
        "\nratios to SQLite alone (same run): dual p50 {:.2}x, dual p99 {:.2}x",
        lines[2].p50 / base.p50,
        lines[2].p99 / base.p99
    );
    println!(
        "dual with capture / dual (same run): p50 {:.2}x, p99 {:.2}x; changes left for the drainer: {left} \
         (with capture the dual layer leaves every write to the drainer)",
        lines[3].p50 / lines[2].p50,
        lines[3].p99 / lines[2].p99
    );
    println!(
        "local cost of capture (mirror answering at once): p50 +{:.1} µs, p99 +{:.1} µs",
        (lines[7].p50 - lines[6].p50) * 1000.0,
        (lines[7].p99 - lines[6].p99) * 1000.0
    );
    println!("targets: SQLite alone p99 < 1 ms: {}; dual p50 < 1.5 ms: {}; dual with capture p50 <= 1.2x dual: {}; hung mirror max <= timeout + 50 ms: {}",
        ok(base.p99 < 1.0), ok(lines[2].p50 < 1.5), ok(lines[3].p50 <= 1.2 * lines[2].p50),
        ok(lines[5].max <= mirror_timeout.as_secs_f64() * 1000.0 + 50.0));
}

fn ok(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "NOT met"
    }
}
