"""init_database() in each mode, driven by the environment as the Rust factory is."""

from __future__ import annotations

import uuid

import pytest

import dualwrite
from conftest import closed_port_url


def log(u: str) -> dict:
    return {"id": f"log-{u}", "document_id": f"doc-{u}", "level": "INFO", "message": f"hello {u}"}


def test_sqlite_only_by_default(clean_env):
    db, meta = dualwrite.init_database()
    assert type(db) is dualwrite.ExtendedDatabase
    assert meta == {"configured": "sqlite", "active": "sqlite", "dual_write": False, "supabase_error": None}
    assert db.backend == "sqlite"
    # DB_PATH unset: db.sqlite3 in the working directory, as DoX.
    assert (clean_env / "db.sqlite3").exists()
    db.add_log(log("a"))
    assert db.list_log_messages("doc-a") == ["hello a"]


def test_db_path_and_dotenv_are_read(clean_env):
    (clean_env / ".env").write_text("DB_PATH=from-dotenv.sqlite3\n")
    db, meta = dualwrite.init_database()
    assert db.db_path.endswith("from-dotenv.sqlite3") and (clean_env / "from-dotenv.sqlite3").exists()
    assert dualwrite.ExtendedDatabase().db_path.endswith("from-dotenv.sqlite3")


def test_dual_with_supabase_up_writes_both_sides(shared_supabase, monkeypatch):
    monkeypatch.setenv("SUPABASE_DUAL_WRITE", "true")
    db, meta = dualwrite.init_database()
    assert type(db) is dualwrite.DualDatabase
    assert meta == {"configured": "sqlite", "active": "dual:sqlite+supabase", "dual_write": True, "supabase_error": None}
    assert type(db.primary) is dualwrite.ExtendedDatabase and type(db.secondary) is dualwrite.SupabaseDatabase
    u = uuid.uuid4().hex
    db.add_log(log(u))
    db.update_artifact("no-such-artifact", status="processed")  # a no-op on both sides
    assert db.primary.list_log_messages(f"doc-{u}") == [f"hello {u}"]
    assert db.secondary.list_log_messages(f"doc-{u}") == [f"hello {u}"]
    assert db.dual_stats() == {"mirrored": 2, "left_to_drainer": 0, "promoted": 0, "failed": 0, "dropped": 0,
                               "pending": 0}
    # DoX's DualDatabase looks other attributes up on the primary.
    assert db.engine is db.primary.engine


def test_dual_with_supabase_down_at_start_never_raises_and_records(clean_env, monkeypatch, stack):
    monkeypatch.setenv("SUPABASE_DUAL_WRITE", "1")
    monkeypatch.setenv("SUPABASE_URL", closed_port_url())
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    db, meta = dualwrite.init_database()
    assert type(db) is dualwrite.DualDatabase and meta["dual_write"] is True
    assert "unreachable" in meta["supabase_error"] and "replay" in meta["supabase_error"]
    u = uuid.uuid4().hex
    db.add_log(log(u))  # the mirror fails: no exception
    mid = db.add_memory("fact", {"k": 1})
    assert db.list_log_messages(f"doc-{u}") == [f"hello {u}"]
    stats = db.dual_stats()
    assert stats["failed"] == 2 and stats["pending"] == 2 and stats["mirrored"] == 0
    failures = db.failures()
    assert [f["method"] for f in failures] == ["add_log", "add_memory"]
    assert failures[1]["key"] == mid and failures[0]["transient"] is True
    # Kept for replay on disk, next to the SQLite file.
    assert (clean_env / "db.sqlite3.failures.ndjson").read_text().count("\n") == 2
    assert db.replay_failures() == {"attempted": 2, "replayed": 0, "still_failing": 2}


def test_dual_with_supabase_misconfigured_stays_on_sqlite(clean_env, monkeypatch):
    # DoX's test 3: no credentials -> SQLite alone, dual_write False, the reason kept.
    monkeypatch.setenv("DB_BACKEND", "sqlite")
    monkeypatch.setenv("SUPABASE_DUAL_WRITE", "true")
    db, meta = dualwrite.init_database()
    assert type(db) is dualwrite.ExtendedDatabase
    assert meta["dual_write"] is False and meta["active"] == "sqlite"
    assert "SUPABASE_URL" in meta["supabase_error"]


def test_supabase_primary(shared_supabase, monkeypatch):
    monkeypatch.setenv("DB_BACKEND", " Supabase ")
    db, meta = dualwrite.init_database()
    assert type(db) is dualwrite.SupabaseDatabase
    assert meta["active"] == "supabase" and meta["dual_write"] is False
    u = uuid.uuid4().hex
    db.add_log(log(u))
    assert db.list_log_messages(f"doc-{u}") == [f"hello {u}"]
    assert db.has_tag(f"doc-{u}", "x") is False  # has_tag works on Supabase too (spec B5)


def test_supabase_primary_with_sqlite_mirror(shared_supabase, monkeypatch):
    monkeypatch.setenv("DB_BACKEND", "supabase")
    monkeypatch.setenv("SUPABASE_DUAL_WRITE", "on")
    db, meta = dualwrite.init_database()
    assert type(db) is dualwrite.DualDatabase and meta["active"] == "dual:supabase+sqlite"
    u = uuid.uuid4().hex
    db.add_log(log(u))
    assert db.secondary.list_log_messages(f"doc-{u}") == [f"hello {u}"]
    with pytest.raises(AttributeError, match="engine"):
        db.engine  # the primary is Supabase: no engine, as in DoX


def test_supabase_primary_down_fails_at_start(clean_env, monkeypatch, stack):
    monkeypatch.setenv("DB_BACKEND", "supabase")
    monkeypatch.setenv("SUPABASE_URL", closed_port_url())
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    with pytest.raises(dualwrite.SupabaseError) as e:
        dualwrite.init_database()
    assert e.value.transient is True
    assert stack["SUPABASE_SERVICE_KEY"] not in str(e.value)


def test_unknown_backend_is_a_config_error(clean_env, monkeypatch):
    monkeypatch.setenv("DB_BACKEND", "oracle")
    with pytest.raises(dualwrite.ConfigError, match="oracle"):
        dualwrite.init_database()


def test_get_db_interface_is_init_database_first_item(clean_env, monkeypatch):
    monkeypatch.setenv("DB_PATH", "iface.sqlite3")
    db = dualwrite.get_db_interface()
    assert type(db) is dualwrite.ExtendedDatabase and db.db_path == "iface.sqlite3"
