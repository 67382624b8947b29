"""What change capture costs the app's own writes, measured the way DoX writes.

Run: `scripts/bench-capture-app.sh` (builds the release `dualwrite`, a venv
with SQLAlchemy and SQLModel under target/, then runs this). No stack needed, but for `capture-serve`.

DoX commits every write on its own (one SQLAlchemy session per call). Each
measurement is CALLS single-row autocommit INSERTs into `logentry` (a uuid4
id, as DoX's) on a fresh copy of a real DoX file (fixtures/dox-medium) in WAL,
after CALLS/10 unmeasured ones, through:
  - `sqlite3`: Python's sqlite3, autocommit, one `INSERT` per call;
  - `sqlalchemy`: DoX's path, a SQLModel `LogEntry` and one `Session` per call
    (`session.add(row); session.commit()`);
each with `synchronous` NORMAL and FULL (Python's and SQLAlchemy's default).
The variants (VARIANTS, comma-separated) run in alternating rounds (ROUNDS),
so a change of the machine's load hits them all:
  - `none`: no capture;
  - `capture`: `dualwrite capture install` (DUALWRITE, default the release binary);
  - `capture-b`: the same with another build (DUALWRITE_B), e.g. one of another
    change-log version, compared in the same run;
  - `capture-serve`: capture with `dualwrite serve` draining the file into the
    local stack (`scripts/stack.sh up` first), as capture runs in production:
    the daemon's connection also takes the WAL checkpoints the app would;
  - `capture-serve-b`: the same with DUALWRITE_B (its capture and its daemon);
  - prototypes, logentry's insert trigger alone: `keyed` (the log of
    LOG_VERSION 1: a WITHOUT ROWID table keyed by (tbl, key), an index on seq),
    `append` (rowid = seq, no other index), `append-autoinc` (the same with
    AUTOINCREMENT), `append-meta` (seq given by the trigger: max(seq, a mark
    in a meta table) + 1).
Prints, per path and variant, p50 / p99 / mean pooled over the rounds, each
round's p99, and the ratios to `none`. Env: CALLS (5000), ROUNDS (2), PATHS
(sqlite3,sqlalchemy), SYNC (NORMAL,FULL), VARIANTS (none,capture).
"""

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
CALLS = int(os.environ.get("CALLS", 5000))
ROUNDS = int(os.environ.get("ROUNDS", 2))
PATHS = os.environ.get("PATHS", "sqlite3,sqlalchemy").split(",")
SYNC = os.environ.get("SYNC", "NORMAL,FULL").split(",")
VARIANTS = os.environ.get("VARIANTS", "none,capture").split(",")
DUALWRITE = os.environ.get("DUALWRITE", str(REPO / "target/release/dualwrite"))
DUALWRITE_B = os.environ.get("DUALWRITE_B", "")

NOW = "((julianday('now') - 2440587.5) * 86400.0)"
PROTOTYPES = {
    "keyed": f"""
        CREATE TABLE _p_changes (tbl TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
            op TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;
        CREATE INDEX _p_changes_seq ON _p_changes (seq);
        CREATE TABLE _p_meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TRIGGER _p_ins AFTER INSERT ON logentry BEGIN
            INSERT INTO _p_changes (tbl, key, seq, op, at) SELECT 'logentry', NEW.id,
            (max((SELECT coalesce(max(seq), 0) FROM _p_changes),
                 (SELECT coalesce(max(value), 0) FROM _p_meta WHERE name = 'acked_hi')) + 1),
            'I', {NOW} WHERE NEW.id IS NOT NULL
            ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq, op = excluded.op; END;""",
    "append": f"""
        CREATE TABLE _p_queue (seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key TEXT NOT NULL,
            op TEXT NOT NULL, at REAL NOT NULL);
        CREATE TRIGGER _p_ins AFTER INSERT ON logentry BEGIN
            INSERT INTO _p_queue (tbl, key, op, at) SELECT 'logentry', NEW.id, 'I', {NOW}
            WHERE NEW.id IS NOT NULL; END;""",
    "append-autoinc": f"""
        CREATE TABLE _p_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL,
            key TEXT NOT NULL, op TEXT NOT NULL, at REAL NOT NULL);
        CREATE TRIGGER _p_ins AFTER INSERT ON logentry BEGIN
            INSERT INTO _p_queue (tbl, key, op, at) SELECT 'logentry', NEW.id, 'I', {NOW}
            WHERE NEW.id IS NOT NULL; END;""",
    "append-meta": f"""
        CREATE TABLE _p_queue (seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key TEXT NOT NULL,
            op TEXT NOT NULL, at REAL NOT NULL);
        CREATE TABLE _p_meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TRIGGER _p_ins AFTER INSERT ON logentry BEGIN
            INSERT INTO _p_queue (seq, tbl, key, op, at) SELECT
            (max((SELECT coalesce(max(seq), 0) FROM _p_queue),
                 (SELECT coalesce(max(value), 0) FROM _p_meta WHERE name = 'folded_hi')) + 1),
            'logentry', NEW.id, 'I', {NOW} WHERE NEW.id IS NOT NULL; END;""",
}


def fixture(tmp: Path) -> Path:
    src = tmp / "dox-medium.sqlite3"
    if not src.exists():
        subprocess.run(["zstd", "-q", "-d", str(REPO / "fixtures/dox-medium.sqlite3.zst"), "-o", str(src)],
                       check=True)
        with sqlite3.connect(src) as c:
            c.execute("PRAGMA journal_mode=WAL")
    return src


def stack_env() -> dict:
    out = subprocess.run([str(REPO / "scripts/stack.sh"), "env"], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k] = v.strip("'").replace("\\", "")
    return env


def serve(path: Path, binary: str):
    """`binary serve` on `path` into the local stack, ready; stop it with `.terminate()`."""
    import socket
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    st = stack_env()
    env = {"PATH": "/usr/bin:/bin", "RUST_LOG": "warn", "DB_PATH": str(path),
           "SUPABASE_URL": st["SUPABASE_URL"], "SUPABASE_SERVICE_KEY": st["SUPABASE_SERVICE_KEY"]}
    p = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(path.parent / "state")],
                         env=env, cwd=path.parent, stdout=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError("serve did not start: is the stack up (scripts/stack.sh up)?")


def prepare(tmp: Path, variant: str, n: int) -> Path:
    path = tmp / f"{variant}-{n}.sqlite3"
    shutil.copyfile(fixture(tmp), path)
    if variant in ("capture", "capture-b", "capture-serve", "capture-serve-b"):
        binary = DUALWRITE_B if variant.endswith("-b") else DUALWRITE
        subprocess.run([binary, "capture", "install", "--db-path", str(path)], check=True,
                       stdout=subprocess.DEVNULL)
    elif variant != "none":
        with sqlite3.connect(path) as c:
            c.executescript(PROTOTYPES[variant])
    return path


def row() -> dict:
    return {"id": str(uuid.uuid4()), "document_id": "doc-bench", "ts": "2025-09-18T08:15:02", "level": "ERROR",
            "code": "E1001", "component": "payment-service", "message": "Payment posting failed for account 42",
            "attrs_json": None}


def sqlite3_path(path: Path, sync: str):
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA synchronous={sync}")
    sql = ("INSERT INTO logentry (id, document_id, ts, level, code, component, message, attrs_json) "
           "VALUES (:id, :document_id, :ts, :level, :code, :component, :message, :attrs_json)")

    def write(r: dict) -> None:
        con.execute(sql, r)

    return write, con.close


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


def sqlalchemy_path(path: Path, sync: str):
    from sqlalchemy import event
    from sqlmodel import Session, create_engine

    LogEntry = log_entry_model()
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(con, _record):
        con.execute(f"PRAGMA synchronous={sync}")

    def write(r: dict) -> None:
        with Session(engine) as session:
            session.add(LogEntry(**r))
            session.commit()

    return write, engine.dispose


def measure(tmp: Path, app: str, sync: str, variant: str, n: int) -> list:
    path = prepare(tmp, variant, n)
    daemon = None
    if variant.startswith("capture-serve"):
        daemon = serve(path, DUALWRITE_B if variant.endswith("-b") else DUALWRITE)
    write, close = (sqlite3_path if app == "sqlite3" else sqlalchemy_path)(path, sync)
    for _ in range(n // 10):
        write(row())
    rows = [row() for _ in range(n)]
    lat = []
    clock = time.perf_counter_ns
    for r in rows:
        t = clock()
        write(r)
        lat.append((clock() - t) / 1000)
    close()
    if daemon is not None:
        daemon.terminate()
        daemon.wait()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return lat


def figures(lat: list) -> tuple:
    s = sorted(lat)
    return s[len(s) // 2], s[min(len(s) - 1, len(s) * 99 // 100)], statistics.fmean(s)


def main() -> None:
    print(f"# capture's cost to the app's writes ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{CALLS} calls x {ROUNDS} rounds, variants alternating; load {os.getloadavg()[0]:.2f})\n")
    print("| path | synchronous | variant | p50 us | p99 us | mean us | p99 per round | vs none: p50 / p99 / mean |")
    print("|---|---|---|---:|---:|---:|---|---|")
    with tempfile.TemporaryDirectory(prefix="capture-app-") as d:
        tmp = Path(d)
        for app in PATHS:
            for sync in SYNC:
                runs = {v: [] for v in VARIANTS}
                for r in range(ROUNDS):
                    order = VARIANTS if r % 2 == 0 else list(reversed(VARIANTS))
                    for v in order:
                        runs[v].append(measure(tmp, app, sync, v, CALLS))
                base = figures([x for run in runs[VARIANTS[0]] for x in run])
                for v in VARIANTS:
                    p50, p99, mean = figures([x for run in runs[v] for x in run])
                    per_round = ", ".join(f"{figures(run)[1]:.0f}" for run in runs[v])
                    ratio = f"{p50 - base[0]:+.1f} us / {p99 / base[1]:.2f}x / {mean / base[2]:.2f}x"
                    print(f"| {app} | {sync} | {v} | {p50:.1f} | {p99:.1f} | {mean:.1f} | {per_round} | {ratio} |",
                          flush=True)
    if any(v.startswith("capture-serve") for v in VARIANTS):
        # The rows the daemon mirrored into the local stack.
        n = subprocess.run(["psql", stack_env()["DATABASE_URL"], "-tAqc",
                            "DELETE FROM log_entries WHERE document_id = 'doc-bench' RETURNING 1"],
                           check=True, capture_output=True, text=True).stdout.count("1")
        print(f"rows the daemons mirrored (then deleted from the stack): {n}", file=sys.stderr)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
