"""Benchmark of the Python module (prints figures; BENCHMARKS.md records them).

Run: `scripts/bench-python.sh` (builds the module in release into target/py-venv,
then runs this). Needs the local stack (`scripts/stack.sh up`).

1. A Python loop of `add_log` calls, SQLite alone, through:
   - dualwrite.ExtendedDatabase (the module);
   - DoX's own path: a SQLModel `LogEntry` table model and one ORM session per
     write (`session.add(row); session.commit()`) on `create_engine("sqlite:///...")`,
     as DoX's `Database.add_log` does (spec 1.1, 4): no pragmas, so the rollback
     journal and synchronous=FULL;
   - the same DoX path with the module's pragmas (WAL, synchronous=NORMAL), to
     show how much of the gap is the pragmas;
   - the same write called from Rust (`cargo bench --bench embedded`).
2. A dual write (SQLite primary + Supabase mirror through nginx): p50 through the
   module against the Rust DualDatabase.
3. RSS over 100,000 `add_log` calls through the module.
4. The logging bridge (the Rust core's records to Python's `logging`), A/B in
   alternating rounds on the same file: forwarding off against on at Python's
   default level (WARNING: the write path's DEBUG/INFO records are off).

Env: WRITES (10,000), DUAL_WRITES (2,000), MEMORY_CALLS (100,000), LOG_ROUNDS (6).
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
WRITES = int(os.environ.get("WRITES", 10_000))
DUAL_WRITES = int(os.environ.get("DUAL_WRITES", 2_000))
MEMORY_CALLS = int(os.environ.get("MEMORY_CALLS", 100_000))
LOG_ROUNDS = int(os.environ.get("LOG_ROUNDS", 6))


def stack_env() -> dict:
    out = subprocess.run([str(REPO / "scripts/stack.sh"), "env"], capture_output=True, text=True, check=True)
    env = {}
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export ") :].split("=", 1)
            env[k] = v.strip("'").replace("\\", "")
    return env


def row(run: str, i: int) -> dict:
    # The same row as benches/embedded.rs.
    return {
        "id": f"{run}-{i}", "document_id": f"doc-{run}", "ts": "2025-09-18T08:15:02", "level": "ERROR",
        "code": "E1001", "component": "payment-service", "message": f"Payment posting failed for account {i}",
        "attrs_json": None,
    }


def measure(add_log, n: int) -> dict:
    run = uuid.uuid4().hex[:8]
    for i in range(n // 10 + 1):  # warm-up, not measured
        add_log(row(run + "w", i))
    rows = [row(run, i) for i in range(n)]
    lat = []
    clock = time.perf_counter_ns
    started = clock()
    for r in rows:
        t = clock()
        add_log(r)
        lat.append(clock() - t)
    total = (clock() - started) / 1e9
    lat.sort()
    return {
        "n": n,
        "p50_us": lat[n // 2] / 1000,
        "p99_us": lat[min(n - 1, n * 99 // 100)] / 1000,
        "mean_us": statistics.fmean(lat) / 1000,
        "per_sec": n / total,
    }


_LOG_ENTRY = None


def log_entry_model():
    """DoX's `LogEntry` SQLModel (spec 1.2), defined once."""
    global _LOG_ENTRY
    if _LOG_ENTRY is None:
        from sqlmodel import Field, SQLModel

        class LogEntry(SQLModel, table=True):
            id: str = Field(primary_key=True)
            document_id: str
            ts: Optional[str] = None
            level: Optional[str] = None
            code: Optional[str] = None
            component: Optional[str] = None
            message: Optional[str] = None
            attrs_json: Optional[str] = None

        _LOG_ENTRY = LogEntry
    return _LOG_ENTRY


def dox_sqlalchemy(path: str, pragmas: bool):
    """DoX's SQLite add_log path: a SQLModel table model, one session per write."""
    from sqlalchemy import event
    from sqlmodel import Session, SQLModel, create_engine

    LogEntry = log_entry_model()

    engine = create_engine(f"sqlite:///{path}")
    if pragmas:
        @event.listens_for(engine, "connect")
        def _pragmas(con, _record):
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")

    SQLModel.metadata.create_all(engine)
    fields = set(LogEntry.model_fields)

    def add_log(log: dict) -> None:
        # DoX drops keys that are not model fields (spec B2), then inserts.
        with Session(engine) as session:
            session.add(LogEntry(**{k: v for k, v in log.items() if k in fields}))
            session.commit()

    return add_log


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rust_figures(env: dict) -> dict:
    out = subprocess.run(
        ["cargo", "bench", "--bench", "embedded"],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "WRITES": str(WRITES), "DUAL_WRITES": str(DUAL_WRITES)},
    )
    if out.returncode != 0:
        sys.exit(f"cargo bench --bench embedded failed:\n{out.stderr[-3000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON "))
    return json.loads(line[len("BENCH_JSON "):])


def main() -> None:
    import dualwrite

    env = stack_env()
    tmp = Path(tempfile.mkdtemp(prefix="dw-pybench-"))
    os.chdir(tmp)  # no .env or config/ of the caller's
    for k in ("DB_BACKEND", "DB_PATH", "SUPABASE_DUAL_WRITE"):
        os.environ.pop(k, None)

    lines = []
    module = dualwrite.ExtendedDatabase(str(tmp / "module.sqlite3"))
    lines.append(("Python → dualwrite.ExtendedDatabase", measure(module.add_log, WRITES)))
    lines.append(("Python → DoX's SQLModel/SQLAlchemy path (as DoX: no pragmas)",
                  measure(dox_sqlalchemy(str(tmp / "dox.sqlite3"), pragmas=False), WRITES)))
    lines.append(("Python → DoX's SQLModel/SQLAlchemy path + WAL, synchronous=NORMAL",
                  measure(dox_sqlalchemy(str(tmp / "dox-wal.sqlite3"), pragmas=True), WRITES)))

    os.environ["SUPABASE_URL"] = env["SUPABASE_URL"]
    os.environ["SUPABASE_SERVICE_KEY"] = env["SUPABASE_SERVICE_KEY"]
    dual = dualwrite.DualDatabase(dualwrite.ExtendedDatabase(str(tmp / "dual.sqlite3")), dualwrite.SupabaseDatabase())
    py_dual = measure(dual.add_log, DUAL_WRITES)
    assert dual.dual_stats()["failed"] == 0, dual.dual_stats()

    rust = rust_figures(env)
    lines.append(("Rust → Dox::add_log on SqliteDatabase", rust["sqlite"]))
    lines.append(("Python → dualwrite.DualDatabase (SQLite + Supabase via nginx)", py_dual))
    lines.append(("Rust → DualDatabase (SQLite + Supabase via nginx)", rust["dual"]))

    # Memory: RSS over MEMORY_CALLS add_log calls, sampled every tenth.
    mem = dualwrite.ExtendedDatabase(str(tmp / "memory.sqlite3"))
    run = uuid.uuid4().hex[:8]
    samples = []
    step = MEMORY_CALLS // 10
    for i in range(MEMORY_CALLS):
        mem.add_log(row(run, i))
        if (i + 1) % step == 0:
            samples.append(rss_kib())

    # The logging bridge, A/B: the same store, rounds alternating off/on.
    from dualwrite import _native

    ab = dualwrite.ExtendedDatabase(str(tmp / "logging.sqlite3"))
    arms = {"off": [], "on": []}
    for i in range(LOG_ROUNDS * 2):
        arm = "off" if i % 2 == 0 else "on"
        _native._forward_logs(arm == "on")
        arms[arm].append(measure(ab.add_log, WRITES // 2))
    _native._forward_logs(True)

    print(f"# add_log from Python vs SQLAlchemy vs Rust ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    print("| path | calls | p50 µs | p99 µs | mean µs | calls/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, f in lines:
        print(f"| {name} | {f['n']} | {f['p50_us']:.1f} | {f['p99_us']:.1f} | {f['mean_us']:.1f} | {f['per_sec']:.0f} |")
    m = lines[0][1]
    sa, sa_wal, r = lines[1][1], lines[2][1], rust["sqlite"]
    print()
    print(f"module vs DoX's SQLAlchemy path, mean: {sa['mean_us'] / m['mean_us']:.1f}x faster "
          f"(with the same pragmas: {sa_wal['mean_us'] / m['mean_us']:.1f}x) "
          f"[target: faster: {'MET' if m['mean_us'] < min(sa['mean_us'], sa_wal['mean_us']) else 'MISSED'}]")
    print(f"module vs Rust, SQLite alone: p50 {m['p50_us'] / r['p50_us']:.2f}x, mean {m['mean_us'] / r['mean_us']:.2f}x "
          f"[target: p50 within 1.5x: {'MET' if m['p50_us'] / r['p50_us'] <= 1.5 else 'MISSED'}]")
    ratio = py_dual["p50_us"] / rust["dual"]["p50_us"]
    print(f"module vs Rust, dual write: p50 {ratio:.2f}x [target: within 1.2x: {'MET' if ratio <= 1.2 else 'MISSED'}]")
    print(f"RSS over {MEMORY_CALLS} add_log calls (KiB, every {step}): {samples}")
    growth = samples[-1] - samples[0]
    print(f"RSS growth from call {step} to call {MEMORY_CALLS}: {growth} KiB "
          f"[target: no growth: {'MET' if growth < 2048 else 'MISSED'} (threshold 2 MiB)]")
    print()
    print(f"# logging bridge A/B: ExtendedDatabase.add_log, {LOG_ROUNDS} alternating rounds of {WRITES // 2} calls each\n")
    print("| logging bridge | p50 µs (median of rounds) | mean µs (median of rounds) |")
    print("|---|---:|---:|")
    med = {a: (statistics.median(f["p50_us"] for f in fs), statistics.median(f["mean_us"] for f in fs))
           for a, fs in arms.items()}
    print(f"| off (nothing forwarded) | {med['off'][0]:.1f} | {med['off'][1]:.1f} |")
    print(f"| on, Python's default level (WARNING) | {med['on'][0]:.1f} | {med['on'][1]:.1f} |")
    ratio = med["on"][0] / med["off"][0]
    print(f"\non / off, p50: {ratio:.3f}x [target: within noise (<= 1.05x): {'MET' if ratio <= 1.05 else 'MISSED'}]")


if __name__ == "__main__":
    main()
