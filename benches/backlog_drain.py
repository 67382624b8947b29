"""How fast `serve` drains a backlog of N changes, and its peak RSS: builds compared in the same run.

Run: `scripts/stack.sh up && eval "$(scripts/stack.sh env)" && python3 benches/backlog_drain.py BIN [BIN ...]`
(each BIN a `dualwrite` binary, e.g. target/release/dualwrite and another build's). Env: N (changes in the
backlog, default 30000), ROUNDS (default 4, after one unmeasured).

A generated DoX file with capture installed gets N changes with no daemon running, shaped like DoX's steps
(3 log entries, then an update of one of 50 artifacts); each round copies it and times every binary's `serve`
(alternating the order) from its start until nothing is pending, read from the file every 5 ms, with its
peak RSS (VmHWM). Rows go to the stack the environment names (the same ids every round: upserts).
"""

import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

N = int(os.environ.get("N", 30000))
ROUNDS = int(os.environ.get("ROUNDS", 4))
PENDING = (
    "SELECT count(*) FROM (SELECT tbl, key FROM _dualwrite_changes UNION SELECT tbl, key FROM _dualwrite_queue "
    "WHERE seq > (SELECT coalesce(max(value), 0) FROM _dualwrite_meta WHERE name = 'folded_hi'))"
)


def pending(path: str) -> int:
    c = sqlite3.connect(path)
    try:
        return c.execute(PENDING).fetchone()[0]
    finally:
        c.close()


def backlog(bin: str, work: str) -> str:
    src = os.path.join(work, "src.sqlite3")
    subprocess.run([bin, "fixtures", "generate", "--rows", "2000", "--seed", "7", "--out", src],
                   check=True, capture_output=True)
    subprocess.run([bin, "capture", "install"], check=True, capture_output=True, cwd=work,
                   env=dict(os.environ, DB_PATH=src))
    c = sqlite3.connect(src, isolation_level=None)
    arts = [r[0] for r in c.execute("SELECT id FROM artifact LIMIT 50")]
    rnd = random.Random(1)
    i = 0
    while i < N:
        for _ in range(3):
            c.execute("INSERT INTO logentry (id, document_id, ts, level, code, component, message) "
                      "VALUES (?, 'd', '2025-01-01T00:00:00', 'INFO', 'C', 'x', 'm')",
                      (str(uuid.UUID(int=rnd.getrandbits(128))),))
            i += 1
        c.execute("UPDATE artifact SET status = ? WHERE id = ?", (f"s{i}", rnd.choice(arts)))
        i += 1
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    return src


def drain(bin: str, src: str, work: str) -> tuple[float, float]:
    path = os.path.join(work, "run.sqlite3")
    for ext in ("", "-wal", "-shm"):
        if os.path.exists(path + ext):
            os.remove(path + ext)
    shutil.copy(src, path)
    shutil.rmtree(os.path.join(work, "dualwrite-state"), ignore_errors=True)
    started = time.monotonic()
    with open(os.path.join(work, "serve.log"), "a") as log:
        serve = subprocess.Popen([bin, "serve", "--listen", "127.0.0.1:0"], cwd=work, stdout=subprocess.DEVNULL,
                                 stderr=log, env=dict(os.environ, DB_PATH=path))
    try:
        while pending(path) > 0:
            if serve.poll() is not None or time.monotonic() - started > 300:
                sys.exit(f"{bin}: serve ended or did not drain; see {work}/serve.log")
            time.sleep(0.005)
        took = time.monotonic() - started
        with open(f"/proc/{serve.pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    finally:
        serve.terminate()
        serve.wait()
    return took, hwm


def main() -> None:
    bins = sys.argv[1:]
    if not bins:
        sys.exit(__doc__)
    work = tempfile.mkdtemp(prefix="backlog-drain-")
    src = backlog(bins[0], work)
    print(f"backlog: {N} changes, {pending(src)} keys pending")
    got: dict[str, list[tuple[float, float]]] = {b: [] for b in bins}
    for r in range(ROUNDS + 1):
        for b in bins if r % 2 == 0 else bins[::-1]:
            took, hwm = drain(b, src, work)
            if r > 0:
                got[b].append((took, hwm))
    print("| binary | drain, median (s) | each round (s) | peak RSS (MB) |")
    print("|---|---:|---|---|")
    for b in bins:
        t = [x for x, _ in got[b]]
        print(f"| {b} | {statistics.median(t):.3f} | {', '.join(f'{x:.3f}' for x in t)} | "
              f"{', '.join(f'{m:.0f}' for _, m in got[b])} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
