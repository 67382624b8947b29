"""DoX's own environment and habits: the project URL, Supabase's key name, Python's
logging, `with`, exceptions a program can act on, the package's version."""

from __future__ import annotations

import logging
import sqlite3
import uuid

import pytest

import dualwrite


@pytest.mark.parametrize("form", ["project", "slashed", "suffixed"])
def test_doxs_supabase_url_and_the_service_role_key_alone(clean_env, monkeypatch, stack, caplog, form):
    url = {
        "project": stack["SUPABASE_URL"],
        "slashed": stack["SUPABASE_URL"] + "/",
        "suffixed": stack["SUPABASE_URL"] + "/rest/v1",
    }[form]
    assert not stack["SUPABASE_URL"].endswith("/rest/v1"), "the stack prints the project URL"
    monkeypatch.setenv("SUPABASE_URL", url)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", stack["SUPABASE_SERVICE_KEY"])
    monkeypatch.setenv("SUPABASE_DUAL_WRITE", "true")
    monkeypatch.setenv("DB_PATH", str(clean_env / "app.sqlite3"))
    with caplog.at_level(logging.INFO, logger="dualwrite"):
        db, meta = dualwrite.init_database()
    assert meta["supabase_error"] is None, meta
    assert meta["active"] == "dual:sqlite+supabase", meta
    assert db.secondary.url == stack["SUPABASE_URL"] + "/rest/v1"
    doc = f"env-{uuid.uuid4().hex[:8]}"
    with db:
        db.add_tag({"id": doc, "document_id": doc, "tag": "x"})
        assert db.dual_stats()["failed"] == 0
        assert [t["tag"] for t in db.secondary.list_tags(document_id=doc)] == ["x"]
    notes = [r for r in caplog.records if "ends in /rest/v1" in r.getMessage()]
    # The suffixed form is read as the project URL, with a note (once per process).
    if form != "suffixed":
        assert not notes


def test_a_mirror_failure_is_a_warning_in_pythons_logging(clean_env, monkeypatch, stack, caplog):
    bad = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2VjcmV0LXNpZ25hdHVyZS10aGF0LWlzLXdyb25n"
    monkeypatch.setenv("SUPABASE_URL", stack["SUPABASE_URL"])
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", bad)
    primary = dualwrite.ExtendedDatabase("app.sqlite3")
    with caplog.at_level(logging.WARNING, logger="dualwrite"):
        with dualwrite.DualDatabase(primary, dualwrite.SupabaseDatabase()) as db:
            db.add_tag({"id": "t1", "document_id": "d1", "tag": "x"})  # never raises
            assert db.dual_stats()["failed"] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("dualwrite")]
    assert warnings, [r.getMessage() for r in caplog.records]
    r = warnings[0]
    assert r.name == "dualwrite.db.dual"
    assert "secondary write failed" in r.getMessage() and "401" in r.getMessage()
    assert r.dualwrite_fields["method"] == "add_tag" and r.dualwrite_fields["transient"] == "false"
    assert r.pathname.endswith("dual.rs") and r.lineno > 0
    assert all(bad not in x.getMessage() for x in caplog.records)
    # The app's write is there all the same.
    con = sqlite3.connect("app.sqlite3")
    assert con.execute("select tag from tagrow where id = 't1'").fetchall() == [("x",)]


def test_a_level_python_turns_off_is_not_forwarded(clean_env, monkeypatch, stack, caplog):
    monkeypatch.setenv("SUPABASE_URL", stack["SUPABASE_URL"])
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", "sb_secret_wrong")
    logger = logging.getLogger("dualwrite")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.DEBUG):  # the root takes everything; dualwrite says ERROR
            with dualwrite.DualDatabase(dualwrite.ExtendedDatabase("a.sqlite3"), dualwrite.SupabaseDatabase()) as db:
                db.add_tag({"id": "t1", "document_id": "d1", "tag": "x"})
                assert db.dual_stats()["failed"] == 1
        assert not [r for r in caplog.records if r.name.startswith("dualwrite")]
    finally:
        logger.setLevel(before)


def test_exceptions_carry_status_code_and_transient(shared_supabase, monkeypatch, stack):
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_ANON_KEY"])
    with dualwrite.SupabaseDatabase() as db:
        with pytest.raises(dualwrite.SupabaseError) as e:
            db.add_tag({"id": "t1", "document_id": "d1", "tag": "x"})
    err = e.value
    assert (err.status, err.code, err.transient) == (401, "42501", False) or (
        err.status == 403 and err.code == "42501"
    ), (err.status, err.code, str(err))
    assert "the key's role is anon" in str(err)
    lite = dualwrite.ExtendedDatabase("x.sqlite3")
    with pytest.raises(dualwrite.InvalidInputError) as e:
        lite.add_log({"id": "l1"})
    assert (e.value.status, e.value.code) == (None, None)


def test_every_class_is_a_context_manager_and_close_lets_the_file_go(clean_env):
    with dualwrite.ExtendedDatabase("a.sqlite3") as db:
        db.add_tag({"id": "t1", "document_id": "d1", "tag": "x"})
    db.close()  # idempotent
    # Closed means no connection of ours holds the file: it can be replaced.
    (clean_env / "a.sqlite3").rename(clean_env / "moved.sqlite3")
    sqlite3.connect("a.sqlite3").close()
    # A later call opens the backend again, on what is at the path now.
    assert db.list_tags(document_id="d1") == []
    db.close()


def test_version_is_the_packages():
    from importlib.metadata import version

    assert dualwrite.__version__ == version("dualwrite")
    assert dualwrite.__version__.count(".") == 2


def test_records_made_between_calls_reach_logging_from_a_thread_of_their_own(
    clean_env, monkeypatch, caplog, dualwrite_bin
):
    # The background drainer fails (Supabase down) while the app makes no call:
    # its WARNING is delivered by the `dualwrite-log` thread, not by a call.
    import os
    import subprocess
    import time

    from conftest import closed_port_url

    path = clean_env / "dox.sqlite3"
    dualwrite.ExtendedDatabase(str(path)).close()
    out = subprocess.run([str(dualwrite_bin), "capture", "install"], capture_output=True, text=True,
                         env=dict(os.environ, DB_PATH=str(path)))
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("DUALWRITE_REST_URL", closed_port_url())
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", "sb_secret_unused")
    with caplog.at_level(logging.WARNING, logger="dualwrite"):
        with dualwrite.DualDatabase(dualwrite.ExtendedDatabase(str(path)), dualwrite.SupabaseDatabase(),
                                    drain="background") as db:
            db.add_tag({"id": "t1", "document_id": "d1", "tag": "x"})
            deadline = time.monotonic() + 15
            while not [r for r in caplog.records if r.name.startswith("dualwrite.serve")]:
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(0.1)
    r = next(r for r in caplog.records if r.name.startswith("dualwrite.serve"))
    assert r.levelno == logging.WARNING and "Supabase" in r.getMessage(), r.getMessage()
    assert r.threadName != "MainThread", r.threadName
