"""`DualDatabase` built by hand over a file with change capture installed: as the
factory's, no payload failure log (failures wait in the change log), and with
`drain="background"` a drainer task in the embedding process, stopped by `close()`.

The change log is read through `dualwrite status --json` in a subprocess, never
with `sqlite3` in this process: closing another library's connection to a file
drops every POSIX lock this process holds on it, the module's own included."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import time
import uuid

import pytest

import dualwrite
from conftest import closed_port_url, wait_child


def _installed(dualwrite_bin, path) -> None:
    dualwrite.ExtendedDatabase(str(path))  # DoX's bootstrap: the tables
    out = subprocess.run([str(dualwrite_bin), "capture", "install"], capture_output=True, text=True,
                         env=dict(os.environ, DB_PATH=str(path)))
    assert out.returncode == 0, out.stderr


def _status(dualwrite_bin, path) -> dict:
    out = subprocess.run([str(dualwrite_bin), "status", "--json"], capture_output=True, text=True,
                         env=dict(os.environ, DB_PATH=str(path)))
    # 0 healthy, 3 not (no daemon, not ready): the figures are there either way.
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def _artifact(aid: str) -> dict:
    return {"id": aid, "filename": "a.pdf", "filepath": "uploads/a.pdf", "filetype": ".pdf",
            "report_week": "2025-W38", "status": "new"}


def _wait_drained(dualwrite_bin, path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (st := _status(dualwrite_bin, path))["pending"] > 0:
        assert time.monotonic() < deadline, f"{st['pending']} changes still pending"
        time.sleep(0.1)


def test_a_background_drainer_sends_what_the_app_writes(clean_env, monkeypatch, private_db, stack,
                                                                 dualwrite_bin):
    path = clean_env / "dox.sqlite3"
    _installed(dualwrite_bin, path)
    monkeypatch.setenv("DUALWRITE_REST_URL", private_db.url)
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    lite = dualwrite.ExtendedDatabase(str(path))
    aid = str(uuid.uuid4())
    lite.add_artifact(_artifact(aid))  # SQLite alone: captured, not on Supabase

    # With capture nothing is mirrored inline: the change waits for a drainer.
    db = dualwrite.DualDatabase(lite, dualwrite.SupabaseDatabase())
    assert not db.draining
    db.update_artifact(aid, status="processed")
    time.sleep(1.0)
    assert _status(dualwrite_bin, path)["pending"] == 1, "without a drainer the change waits"
    assert private_db.sql(f"SELECT count(*) FROM artifacts WHERE id = '{aid}'").strip() == "0"
    db.close()  # no drainer: nothing to stop

    with dualwrite.DualDatabase(lite, dualwrite.SupabaseDatabase(), drain="background") as db:
        assert db.draining
        _wait_drained(dualwrite_bin, path, 10)
        assert _status(dualwrite_bin, path)["daemon_running"], "the drainer holds serve's lease"
        # The whole row, as it is now in the file.
        row = private_db.sql(f"SELECT filename, filepath, report_week, status FROM artifacts WHERE id = '{aid}'")
        assert row.strip() == "a.pdf|uploads/a.pdf|2025-W38|processed"
        # It keeps draining what later writes leave.
        db.update_artifact(aid, status="archived")
        _wait_drained(dualwrite_bin, path, 10)
        assert private_db.sql(f"SELECT status FROM artifacts WHERE id = '{aid}'").strip() == "archived"
    # close(): the drainer has let the lease go when it returns.
    assert not db.draining
    assert not _status(dualwrite_bin, path)["daemon_running"]
    db.update_artifact(aid, status="after close")  # writes keep working; the change waits again
    assert _status(dualwrite_bin, path)["pending"] == 1
    assert not list(clean_env.glob("*.failures.ndjson"))


def test_no_failure_log_with_capture(clean_env, monkeypatch, stack, dualwrite_bin):
    """A captured write waits in the change log (nothing is mirrored inline, so nothing fails): no
    payload is kept for a replay that could later write it over a newer row, by hand-built objects
    and by `init_database` alike. The search index (Supabase only) is still mirrored inline."""
    path = clean_env / "dox.sqlite3"
    _installed(dualwrite_bin, path)
    monkeypatch.setenv("DB_PATH", str(path))
    monkeypatch.setenv("SUPABASE_URL", closed_port_url())
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    monkeypatch.setenv("SUPABASE_DUAL_WRITE", "true")
    hand = dualwrite.DualDatabase(dualwrite.ExtendedDatabase(str(path)), dualwrite.SupabaseDatabase())
    monkeypatch.setenv("DUALWRITE_DRAIN", "background")
    made, meta = dualwrite.init_database()
    assert meta["dual_write"], meta
    assert made.draining and not hand.draining
    for db in (hand, made):
        aid = str(uuid.uuid4())
        db.add_artifact(_artifact(aid))  # a change row, left to the drainer
        db.reset_search_chunks()  # no change row (a no-op on SQLite), its inline mirror fails
        st = db.dual_stats()
        assert (st["failed"], st["left_to_drainer"]) == (1, 1), st
    assert _status(dualwrite_bin, path)["pending"] == 2
    assert not list(clean_env.glob("*.failures.ndjson"))
    # Supabase down: stopping waits for the batch in flight, which gives up after the mirror's timeout.
    made.close()
    assert not made.draining and _status(dualwrite_bin, path)["pending"] == 2


def test_a_drain_request_needs_capture_and_a_sqlite_primary(clean_env, monkeypatch, stack):
    monkeypatch.setenv("SUPABASE_URL", closed_port_url())
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    lite = dualwrite.ExtendedDatabase(str(clean_env / "plain.sqlite3"))
    sb = dualwrite.SupabaseDatabase()
    with pytest.raises(dualwrite.ConfigError, match="dualwrite capture install"):
        dualwrite.DualDatabase(lite, sb, drain="background")
    monkeypatch.setenv("DUALWRITE_DRAIN", "background")  # the factory's setting is the default
    with pytest.raises(dualwrite.ConfigError, match="dualwrite capture install"):
        dualwrite.DualDatabase(lite, sb)
    assert not dualwrite.DualDatabase(lite, sb, drain="serve").draining  # the argument wins
    with pytest.raises(dualwrite.InvalidInputError, match="drain mode"):
        dualwrite.DualDatabase(lite, sb, drain="sideways")
    with pytest.raises(dualwrite.InvalidInputError, match="ExtendedDatabase primary"):
        dualwrite.DualDatabase(sb, lite, drain="background")


def test_fork_pauses_the_drainer_and_a_child_takes_over(clean_env, monkeypatch, private_db, stack, dualwrite_bin):
    """A pre-forking server: fork() stops the parent's drainer (no lease inherited) and restarts it in
    the parent; the child starts its own on first use, which drains once the parent's stops."""
    path = clean_env / "dox.sqlite3"
    _installed(dualwrite_bin, path)
    monkeypatch.setenv("DUALWRITE_REST_URL", private_db.url)
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    lite = dualwrite.ExtendedDatabase(str(path))
    db = dualwrite.DualDatabase(lite, dualwrite.SupabaseDatabase(), drain="background")
    aid = str(uuid.uuid4())
    lite.add_artifact(_artifact(aid))
    _wait_drained(dualwrite_bin, path, 10)
    assert _status(dualwrite_bin, path)["daemon_running"]
    status = lambda: private_db.sql(f"SELECT status FROM artifacts WHERE id = '{aid}'").strip()  # noqa: E731
    # Fork from a quiet process (objects of earlier tests closed; test_concurrency.py says why). The
    # drainer need not be quiet: fork() stops it first.
    gc.collect()
    time.sleep(0.2)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.read(go_r, 1)  # the parent's drainer has stopped
            db.update_artifact(aid, status="from the child")
            os.write(ready_w, b"1" if db.draining else b"0")
            os.read(go_r, 1)
            os._exit(0)
        except BaseException:  # noqa: BLE001 - the exit code says it
            os._exit(2)
    os.close(go_r)
    try:
        # The parent's drainer runs again after the fork.
        assert db.draining
        db.update_artifact(aid, status="parent after fork")
        _wait_drained(dualwrite_bin, path, 10)
        assert status() == "parent after fork"
        db.close()
        assert not _status(dualwrite_bin, path)["daemon_running"]
        # The child's drainer, started on its first call, takes the lease the parent let go.
        os.write(go_w, b"1")
        assert os.read(ready_r, 1) == b"1", "the child started a drainer of its own"
        _wait_drained(dualwrite_bin, path, 10)
        assert status() == "from the child"
        assert _status(dualwrite_bin, path)["daemon_running"], "the child's drainer holds the lease"
    finally:
        os.write(go_w, b"1")
        assert wait_child(pid, 30) == 0
    assert not _status(dualwrite_bin, path)["daemon_running"]
