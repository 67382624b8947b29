"""The module follows a cutover and a rollback without a restart (docs/design/cutover.md, "The embedded
module follows without a restart"): 4 threads and 2 forked processes write through
``dualwrite.init_database()`` while another process (``examples/switch_primary.rs``) holds the file's
fence, switches Supabase's side and commits the recorded primary, then the same back."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid

import dualwrite

from conftest import wait_child

HOLD_MS = 1000


def _log(key: str) -> dict:
    # Its own document: list_logs(document_id=key) reads back this row alone.
    return {"id": key, "document_id": key, "level": "INFO", "message": "written"}


def _write_until(db, prefix: str, stopped, done: list, errors: list) -> None:
    """Write, then read the row back, until ``stopped()`` (or a minute): each write as (key, started, ended,
    unread)."""
    i = 0
    deadline = time.monotonic() + 60
    while not stopped() and time.monotonic() < deadline:
        i += 1
        key = f"{prefix}-{i}"
        started = time.time()
        try:
            db.add_log(_log(key))
        except Exception as e:  # noqa: BLE001 - collected and asserted
            errors.append(f"{key}: {e!r}")
            continue
        ended = time.time()
        unread = None
        try:
            if len(db.list_logs(document_id=key)) != 1:
                unread = time.time()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{key} read: {e!r}")
        done.append((key, started, ended, unread))
        time.sleep(0.002)


def _switch(switch_bin, to: str, *extra: str) -> tuple:
    out = subprocess.run([str(switch_bin), to, "--hold-ms", str(HOLD_MS), *extra], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    times = dict(line.split() for line in out.stdout.splitlines())
    return float(times["taken"]), float(times["committed"])


def _in_file(path, run: str) -> set:
    # Through the module: Python's own sqlite3 is another copy of SQLite, and closing its connection
    # would drop the POSIX locks the module's connection holds on the file in this process.
    with dualwrite.ExtendedDatabase(str(path)) as f:
        return {r["id"] for r in f.list_logs() if r["id"].startswith(run)}


def _read_your_write(db, path, key: str, in_file: bool) -> None:
    db.add_log(_log(key))
    assert len(db.list_logs(document_id=key)) == 1
    assert (key in _in_file(path, key)) == in_file


def test_threads_and_forked_processes_follow_a_cutover_and_a_rollback(clean_env, monkeypatch, private_db, stack,
                                                                       switch_bin):
    path = clean_env / "dox.sqlite3"
    for k, v in {"DB_PATH": str(path), "SUPABASE_DUAL_WRITE": "true", "DUALWRITE_REST_URL": private_db.url,
                 "SUPABASE_SERVICE_KEY": stack["SUPABASE_SERVICE_KEY"]}.items():
        monkeypatch.setenv(k, v)
    db, meta = dualwrite.init_database()
    assert meta["dual_write"] and db.backend == "dual:sqlite+supabase", meta
    run = uuid.uuid4().hex
    db.add_log(_log(f"{run}-first"))  # used before the fork, as a preloading server does
    stop_file = clean_env / "stop"

    children = {}
    time.sleep(0.2)
    for c in range(2):
        out = clean_env / f"child{c}.json"
        pid = os.fork()
        if pid == 0:
            done, errors = [], []
            try:
                _write_until(db, f"{run}-p{c}", stop_file.exists, done, errors)
            except BaseException as e:  # noqa: BLE001 - reported through the file
                errors.append(repr(e))
            out.write_text(json.dumps({"done": done, "errors": errors}))
            os._exit(0)
        children[pid] = out

    stop = threading.Event()
    done, errors = [], []
    threads = [threading.Thread(target=_write_until, args=(db, f"{run}-t{t}", stop.is_set, done, errors),
                                daemon=True) for t in range(4)]
    for th in threads:
        th.start()
    try:
        time.sleep(0.3)
        cut_taken, cut_at = _switch(switch_bin, "supabase")
        _read_your_write(db, path, f"{run}-ryw-cutover", in_file=False)
        time.sleep(0.5)
        # The capture log on Supabase stays: it shows what was written there as the primary.
        back_taken, back_at = _switch(switch_bin, "sqlite", "--keep-capture")
        _read_your_write(db, path, f"{run}-ryw-rollback", in_file=True)
        time.sleep(0.3)
    finally:
        stop.set()
        stop_file.touch()
        for th in threads:
            th.join(60)
    per_process = {"parent": done}
    for pid, out in children.items():
        assert wait_child(pid, 60) == 0
        child = json.loads(out.read_text())
        errors.extend(child["errors"])
        per_process[pid] = child["done"]

    assert not errors, errors[:5]
    writes = [w for ws in per_process.values() for w in ws]
    every = {w[0] for w in writes} | {f"{run}-first", f"{run}-ryw-cutover", f"{run}-ryw-rollback"}
    on_supabase = set(private_db.sql(f"SELECT id FROM log_entries WHERE id LIKE '{run}%'").split())
    logged = dict(
        line.split("|")
        for line in private_db.sql(
            "SELECT k, count(*) FROM dualwrite_capture.changes, unnest(keys) AS k "
            f"WHERE tbl = 'log_entries' AND k LIKE '{run}%' GROUP BY k"
        ).split()
    )
    in_file = _in_file(path, run)
    # Each write landed once, on the primary of its commit: the file (mirrored, not logged on Supabase)
    # or Supabase as the primary (logged once for the reverse mirror, never in the file).
    assert on_supabase == every
    assert not in_file & set(logged), "a write went to both sides"
    assert in_file | set(logged) == every, "a write went to neither primary"
    assert set(logged.values()) == {"1"}, logged

    for who, ws in per_process.items():
        before = [w for w in ws if w[2] < cut_taken]
        during = [w for w in ws if w[1] > cut_at and w[2] < back_taken]
        after = [w for w in ws if w[1] > back_at]
        # Every process followed on its own, both ways.
        assert before and during and after, (who, len(before), len(during), len(after))
        assert all(w[0] in in_file for w in before + after), who
        assert all(w[0] in logged for w in during), who
    # Read-your-writes: the only misses are rows written to Supabase and read back from the file after
    # the rollback, which the real rollback drains into the file inside its fence (this one does not).
    for key, _, _, unread in writes:
        assert unread is None or (key in logged and unread > back_at), key
    longest = max(w[2] - w[1] for w in writes)
    hold = HOLD_MS / 1000
    assert hold / 2 <= longest < hold + 1.5, longest
    assert db.dual_stats()["promoted"] > 0
    print(f"{len(writes)} writes from 4 threads and 2 processes; longest {longest:.3f} s for a {hold} s fence")
