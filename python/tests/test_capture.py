"""Zero loss for the embedded dual write across a crash of the Python process,
with change capture installed on the DoX file (`dualwrite capture install`).

The app process writes through `dualwrite.init_database()` and dies by SIGKILL:
once with Supabase unreachable (every mirror fails), once in the middle of a
stream of writes with Supabase up. Then `dualwrite serve` drains what was
captured, and `dualwrite verify` says EQUAL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import dualwrite

from conftest import DelayProxy, closed_port_url

# The child: write DoX records through the module, then die without cleanup.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, uuid
    sys.path.insert(0, sys.argv[1])
    from test_ingestion import ingest
    import dualwrite

    db, meta = dualwrite.init_database()
    assert meta["dual_write"], meta
    mode = sys.argv[2]
    art = os.environ.get("ART")
    if mode == "exit":
        # One write, then a normal exit: the daemon sends it later.
        db.add_log({"id": str(uuid.uuid4()), "document_id": "exit", "ts": "2025-09-18T08:15:00",
                    "level": "INFO", "code": "C0", "component": "svc", "message": "last",
                    "attrs_json": None})
        print("written", flush=True)
        sys.exit(0)
    if mode == "down":
        ingest(db, 3)
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    # "up": keep writing until killed from outside.
    print("writing", flush=True)
    i = 0
    while True:
        i += 1
        db.add_log({"id": str(uuid.uuid4()), "document_id": "stream", "ts": "2025-09-18T08:15:00",
                    "level": "INFO", "code": f"C{i}", "component": "svc", "message": f"event {i}",
                    "attrs_json": None})
        db.set_user_pref("dev_user", f"k{i % 7}", i)
        if art:
            db.update_artifact(art, status=f"step {i}")
    """
)


def _pending(path) -> int:
    c = sqlite3.connect(path)
    try:
        # Distinct keys, in the change log or in the queue not yet folded into it.
        return c.execute(
            "SELECT count(*) FROM (SELECT tbl, key FROM _dualwrite_changes UNION SELECT tbl, key "
            "FROM _dualwrite_queue WHERE seq > (SELECT coalesce(max(value), 0) FROM _dualwrite_meta "
            "WHERE name = 'folded_hi'))"
        ).fetchone()[0]
    finally:
        c.close()


def test_a_killed_app_process_loses_nothing_with_capture(clean_env, monkeypatch, private_db, stack, dualwrite_bin):
    path = clean_env / "dox.sqlite3"
    dualwrite.ExtendedDatabase(str(path))  # DoX's bootstrap: the tables
    env = {k: v for k, v in os.environ.items()}
    env["DB_PATH"] = str(path)
    out = subprocess.run([str(dualwrite_bin), "capture", "install"], capture_output=True, text=True, env=env,
                         cwd=clean_env)
    assert out.returncode == 0, out.stderr

    child = clean_env / "child.py"
    child.write_text(CHILD)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    app_env = dict(env, SUPABASE_DUAL_WRITE="true", SUPABASE_SERVICE_KEY=stack["SUPABASE_SERVICE_KEY"])

    # 1. Supabase unreachable: every mirror fails; the process dies after its writes.
    down = subprocess.run([sys.executable, str(child), tests_dir, "down"], capture_output=True, text=True,
                          env=dict(app_env, SUPABASE_URL=closed_port_url()), cwd=clean_env, timeout=120)
    assert down.returncode == -signal.SIGKILL, down.stdout + down.stderr
    assert "written" in down.stdout
    assert _pending(path) > 50

    # 2. Supabase up: killed in the middle of a stream of writes.
    art = "11111111-2222-3333-4444-555555555555"
    setup = dualwrite.ExtendedDatabase(str(path))
    setup.add_artifact({"id": art, "filename": "a.pdf", "filepath": "a.pdf", "filetype": ".pdf",
                        "report_week": "", "status": "new"})
    up = subprocess.Popen([sys.executable, str(child), tests_dir, "up"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=clean_env,
                          env=dict(app_env, DUALWRITE_REST_URL=private_db.url, ART=art))
    assert up.stdout.readline().strip() == "writing"
    time.sleep(1.5)
    up.send_signal(signal.SIGKILL)
    up.wait(timeout=30)
    assert up.returncode == -signal.SIGKILL

    # The daemon drains what was captured.
    serve_env = dict(env, DUALWRITE_REST_URL=private_db.url, SUPABASE_SERVICE_KEY=stack["SUPABASE_SERVICE_KEY"])
    serve = subprocess.Popen([str(dualwrite_bin), "serve", "--listen", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=serve_env, cwd=clean_env)
    try:
        deadline = time.monotonic() + 60
        while _pending(path) > 0:
            assert serve.poll() is None, serve.stderr.read()
            assert time.monotonic() < deadline, f"{_pending(path)} changes still pending"
            time.sleep(0.2)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert serve.returncode == 0, serve.stderr.read()

    out = subprocess.run([str(dualwrite_bin), "verify", "--from-sqlite", str(path), "--format", "json"],
                         capture_output=True, text=True, env=serve_env, cwd=clean_env)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["verdict"] == "equal", out.stdout + out.stderr
    # Rows of both crashed runs are on Supabase: the unreachable run's documents and the stream's logs.
    assert int(private_db.sql("SELECT count(*) FROM documents")) >= 6
    assert int(private_db.sql("SELECT count(*) FROM log_entries WHERE document_id = 'stream'")) > 0


def _serve(dualwrite_bin, env, cwd, *args) -> subprocess.Popen:
    # Port 0: the kernel picks one as serve binds (a port looked up before could be taken meanwhile, as
    # the delaying proxy's was once).
    return subprocess.Popen([str(dualwrite_bin), "serve", "--listen", "127.0.0.1:0", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _wait_drained(path, serve, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _pending(path) > 0:
        assert serve.poll() is None, serve.stderr.read()
        assert time.monotonic() < deadline, f"{_pending(path)} changes still pending"
        time.sleep(0.1)


def test_a_process_that_exits_right_after_a_write_leaves_it_to_the_daemon(clean_env, private_db, stack,
                                                                          dualwrite_bin):
    """With capture, the module mirrors nothing inline: the write's change row commits with it, and
    the daemon sends the row, even when the process is gone."""
    path = clean_env / "dox.sqlite3"
    dualwrite.ExtendedDatabase(str(path))
    env = dict(os.environ, DB_PATH=str(path))
    out = subprocess.run([str(dualwrite_bin), "capture", "install"], capture_output=True, text=True, env=env,
                         cwd=clean_env)
    assert out.returncode == 0, out.stderr
    child = clean_env / "child.py"
    child.write_text(CHILD)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    supabase = dict(DUALWRITE_REST_URL=private_db.url, SUPABASE_SERVICE_KEY=stack["SUPABASE_SERVICE_KEY"])
    run = subprocess.run([sys.executable, str(child), tests_dir, "exit"], capture_output=True, text=True,
                         cwd=clean_env, timeout=120, env=dict(env, SUPABASE_DUAL_WRITE="true", **supabase))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "written" in run.stdout
    assert _pending(path) == 1
    assert int(private_db.sql("SELECT count(*) FROM log_entries WHERE document_id = 'exit'")) == 0
    serve = _serve(dualwrite_bin, dict(env, **supabase), clean_env)
    try:
        _wait_drained(path, serve, 30)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert int(private_db.sql("SELECT count(*) FROM log_entries WHERE document_id = 'exit'")) == 1


# Another process of the app: v2 of each row, while the module's mirrors (if any) are slow.
UPDATER = textwrap.dedent(
    """
    import sqlite3, sys, time
    time.sleep(0.3)
    c = sqlite3.connect(sys.argv[1], timeout=10)
    for i in range(10):
        c.execute("UPDATE logentry SET message = 'v2' WHERE id = ?", (f"race-{i}",))
        c.commit()
    c.close()
    """
)


def test_a_slow_mirror_never_overwrites_a_newer_row_the_daemon_sent(clean_env, monkeypatch, private_db, stack,
                                                                     dualwrite_bin):
    """The module writes v1 of 10 rows; its Supabase is slow (a delaying proxy, 1.5 s, under the 2 s
    mirror timeout); another process updates them to v2 and `serve` mirrors v2. An inline mirror of v1
    would land last and stay for good, with nothing pending: every row must end v2 on Supabase."""
    path = clean_env / "dox.sqlite3"
    dualwrite.ExtendedDatabase(str(path))
    env = dict(os.environ, DB_PATH=str(path))
    out = subprocess.run([str(dualwrite_bin), "capture", "install"], capture_output=True, text=True, env=env,
                         cwd=clean_env)
    assert out.returncode == 0, out.stderr
    supabase = dict(DUALWRITE_REST_URL=private_db.url, SUPABASE_SERVICE_KEY=stack["SUPABASE_SERVICE_KEY"])
    serve = _serve(dualwrite_bin, dict(env, **supabase), clean_env, "--poll-ms", "50")
    proxy = DelayProxy(private_db.url, 1.5)
    try:
        monkeypatch.setenv("DB_PATH", str(path))
        monkeypatch.setenv("DUALWRITE_REST_URL", proxy.url)
        monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
        monkeypatch.setenv("SUPABASE_DUAL_WRITE", "true")
        db, meta = dualwrite.init_database()
        assert meta["dual_write"], meta
        updater = clean_env / "updater.py"
        updater.write_text(UPDATER)
        other = subprocess.Popen([sys.executable, str(updater), str(path)])
        for i in range(10):
            db.add_log({"id": f"race-{i}", "document_id": "race", "ts": "2025-09-18T08:15:00", "level": "INFO",
                        "code": "C", "component": "svc", "message": "v1", "attrs_json": None})
        assert other.wait(timeout=60) == 0
        assert db.dual_stats()["left_to_drainer"] == 10
        time.sleep(2.5)  # anything still in the proxy has landed
        _wait_drained(path, serve, 30)
        got = private_db.sql("SELECT string_agg(DISTINCT message, ',') FROM log_entries WHERE document_id = 'race'")
        assert got.strip() == "v2", got
        assert int(private_db.sql("SELECT count(*) FROM log_entries WHERE document_id = 'race'")) == 10
        db.close()
    finally:
        proxy.close()
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
