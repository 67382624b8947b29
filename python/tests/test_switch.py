"""The module follows a real ``dualwrite cutover run`` and ``cutover rollback`` without a restart
(docs/design/cutover.md, "The embedded module follows without a restart"): 4 threads and 2 forked
processes write about 200 times a second through ``dualwrite.init_database()`` while the commands switch,
with ``dualwrite serve`` running as a supervisor keeps it (it follows both switches)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
import uuid

import dualwrite

from conftest import PrivateDb, free_port, wait_child

WRITERS = 6
RATE = 200  # writes a second, over all the writers


def _log(key: str) -> dict:
    # Its own document: list_logs(document_id=key) reads back this row alone.
    return {"id": key, "document_id": key, "level": "INFO", "message": "written"}


def _write_until(db, prefix: str, stopped, done: list, errors: list) -> None:
    """Write, then read the row back, until ``stopped()`` (or a minute): each write as (key, started,
    ended, unread)."""
    i = 0
    every = WRITERS / RATE
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
        time.sleep(max(0.0, every - (time.time() - started)))


def _dualwrite(bin_, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_), *args], capture_output=True, text=True, timeout=timeout)


def _cutover(bin_, verb: str) -> dict:
    out = _dualwrite(bin_, "cutover", verb, "--yes", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["switched"], report
    return report


def _in_file(path, run: str) -> set:
    # Through the module: Python's own sqlite3 is another copy of SQLite, and closing its connection
    # would drop the POSIX locks the module's connection holds on the file in this process.
    with dualwrite.ExtendedDatabase(str(path)) as f:
        return {r["id"] for r in f.list_logs() if r["id"].startswith(run)}


def _read_your_write(db, key: str) -> None:
    db.add_log(_log(key))
    assert len(db.list_logs(document_id=key)) == 1


def test_threads_and_forked_processes_follow_a_cutover_and_a_rollback(clean_env, monkeypatch, stack,
                                                                       dualwrite_bin):
    # A pool above the writers by two: the rollback's fence and its own requests need a connection
    # each while every writer waits behind the fence (docs/design/cutover.md).
    private_db = PrivateDb(stack, pool=WRITERS + 4)
    serve = None
    try:
        path = clean_env / "dox.sqlite3"
        for k, v in {"DB_PATH": str(path), "SUPABASE_DUAL_WRITE": "true", "DUALWRITE_REST_URL": private_db.url,
                     "SUPABASE_SERVICE_KEY": stack["SUPABASE_SERVICE_KEY"]}.items():
            monkeypatch.setenv(k, v)
        db, meta = dualwrite.init_database()
        assert meta["dual_write"] and db.backend == "dual:sqlite+supabase", meta
        installed = _dualwrite(dualwrite_bin, "capture", "install")
        assert installed.returncode == 0, installed.stderr
        port = free_port()
        serve_log = open(clean_env / "serve.log", "w")
        serve = subprocess.Popen([str(dualwrite_bin), "serve", "--listen", f"127.0.0.1:{port}"],
                                 stdout=subprocess.DEVNULL, stderr=serve_log)
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
                                    daemon=True) for t in range(WRITERS - 2)]
        for th in threads:
            th.start()
        try:
            time.sleep(1.0)
            cut_started = time.time()
            cut = _cutover(dualwrite_bin, "run")
            cut_ended = time.time()
            _read_your_write(db, f"{run}-ryw-cutover")
            time.sleep(1.0)
            back_started = time.time()
            back = _cutover(dualwrite_bin, "rollback")
            back_ended = time.time()
            _read_your_write(db, f"{run}-ryw-rollback")
            time.sleep(1.0)
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
        # Every write is in the file (the primary again), and reaches Supabase through serve.
        assert _in_file(path, run) == every
        deadline = time.monotonic() + 30
        while True:
            on_supabase = set(private_db.sql(f"SELECT id FROM log_entries WHERE id LIKE '{run}%'").split())
            if on_supabase == every or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert on_supabase == every, (len(every - on_supabase), open(clean_env / "serve.log").read()[-2000:])
        verify = _dualwrite(dualwrite_bin, "verify")
        assert verify.returncode == 0, verify.stdout[-2000:]

        for who, ws in per_process.items():
            during = [w for w in ws if cut_ended < w[1] and w[2] < back_started]
            after = [w for w in ws if w[1] > back_ended]
            assert during and after, (who, len(during), len(after))
        # Read-your-writes, but for a write the rollback's fence held on Supabase: it returns once the
        # file is the primary again, and is carried into the file a moment later (checked above).
        unread = [w for w in writes if w[3] is not None and not back_started <= w[2] <= back_ended + 1.0]
        assert not unread, [w[0] for w in unread][:5]
        assert db.dual_stats()["promoted"] > 0
        lat = sorted(w[2] - w[1] for w in writes)
        p50, p99, longest = statistics.median(lat), lat[int(len(lat) * 0.99)], lat[-1]
        print(f"{len(writes)} writes from {WRITERS - 2} threads and 2 processes through cutover run "
              f"({cut_ended - cut_started:.2f} s, fence {cut['pause_ms']} ms) and rollback "
              f"({back_ended - back_started:.2f} s, fence {back['pause_ms']} ms): write p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, longest {longest * 1000:.0f} ms")
        # The target is under 1 s; the bound here leaves room for a loaded machine.
        assert longest < 3.0, longest
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(30)
        private_db.close()
