"""The exception hierarchy, clear messages, nothing written on bad input, no secrets."""

from __future__ import annotations

import datetime
import sqlite3

import pytest

import dualwrite


def test_hierarchy():
    assert issubclass(dualwrite.InvalidInputError, ValueError)
    assert issubclass(dualwrite.InvalidInputError, dualwrite.Error)
    for cls in (dualwrite.ConfigError, dualwrite.SQLiteError, dualwrite.SupabaseError):
        assert issubclass(cls, dualwrite.Error) and not issubclass(cls, ValueError)
    assert issubclass(dualwrite.SupabaseUnavailable, dualwrite.ConfigError)


def test_bad_input_is_a_value_error_naming_the_problem_and_writes_nothing(clean_env):
    db = dualwrite.ExtendedDatabase("x.sqlite3")
    with pytest.raises(ValueError, match="missing field `document_id`"):
        db.add_log({"id": "l1", "message": "no document"})
    with pytest.raises(dualwrite.InvalidInputError, match="unknown field `colour`"):
        db.update_artifact("a1", colour="red")
    with pytest.raises(dualwrite.InvalidInputError, match="datetime"):
        db.add_memory("fact", {"when": datetime.datetime.now()})
    with pytest.raises(dualwrite.InvalidInputError, match="keys must be str"):
        db.add_memory("fact", {1: "x"})
    with pytest.raises(dualwrite.InvalidInputError, match="64 bits"):
        db.add_memory("fact", {"n": 2**70})
    with pytest.raises(ValueError):
        db.add_artifact({"id": "a", "filename": 3, "filepath": "p", "filetype": ".pdf"})
    con = sqlite3.connect("x.sqlite3")
    assert con.execute("select count(*) from logentry").fetchone() == (0,)
    assert con.execute("select count(*) from cipher_memory").fetchone() == (0,)
    assert con.execute("select count(*) from artifact").fetchone() == (0,)


def test_sqlite_errors_are_told_apart(clean_env):
    (clean_env / "not-a-db.sqlite3").write_text("this is not a database" * 100)
    with pytest.raises(dualwrite.SQLiteError):
        dualwrite.ExtendedDatabase("not-a-db.sqlite3")


def test_supabase_unavailable_without_configuration(clean_env):
    with pytest.raises(dualwrite.SupabaseUnavailable, match="SUPABASE_URL"):
        dualwrite.SupabaseDatabase()


def test_a_rejected_key_is_a_supabase_error_without_the_key(clean_env, monkeypatch, stack):
    bad = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2VjcmV0LXNpZ25hdHVyZS10aGF0LWlzLXdyb25n"
    monkeypatch.setenv("SUPABASE_URL", stack["SUPABASE_URL"])
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", bad)
    db = dualwrite.SupabaseDatabase()
    assert bad not in repr(db) and "signature" not in repr(db)
    with pytest.raises(dualwrite.SupabaseError) as e:
        db.list_tags(document_id="x")
    assert "401" in str(e.value) and bad not in str(e.value)
    assert e.value.transient is False


def test_repr_never_shows_a_key(shared_supabase, tmp_path):
    sb = dualwrite.SupabaseDatabase()
    dual = dualwrite.DualDatabase(dualwrite.ExtendedDatabase(str(tmp_path / "r.sqlite3")), sb)
    for obj in (sb, dual):
        text = repr(obj) + str(vars(obj))
        assert shared_supabase["SUPABASE_SERVICE_KEY"] not in text
        assert shared_supabase["SUPABASE_URL"] in text


def test_dual_database_refuses_other_objects(clean_env):
    lite = dualwrite.ExtendedDatabase("x.sqlite3")
    with pytest.raises(ValueError, match="secondary must be an ExtendedDatabase or a SupabaseDatabase"):
        dualwrite.DualDatabase(lite, object())


def test_engine_reads_the_same_file(clean_env):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    db = dualwrite.ExtendedDatabase("e.sqlite3")
    db.add_document({"id": "d1", "path": "p", "type": "openapi", "title": "Petstore"})
    # DoX's main.py reads one row through db.engine with SQLAlchemy.
    with db.engine.connect() as con:
        row = con.execute(sqlalchemy.text("select title from document where id = :i"), {"i": "d1"}).one()
    assert row.title == "Petstore"
