"""Every DoX method: its signature (spec tables 4 and 5) and its return shape,
on each backend: SQLite, Supabase (a private database) and dual."""

from __future__ import annotations

import inspect
import uuid
from pathlib import Path

import pytest

import dualwrite

# DoX's signatures (spec dox-storage.md, sections 4 and 5), without annotations.
SIGNATURES = {
    "add_artifact": "(artifact)",
    "add_fact": "(fact)",
    "add_evidence": "(evidence)",
    "add_document": "(doc)",
    "add_section": "(section)",
    "add_table": "(table)",
    "add_api": "(api)",
    "add_log": "(log)",
    "add_tag": "(tag)",
    "save_tag_prompt": "(document_id, prompt_text, examples=None, author=None)",
    "reset": "()",
    "reset_search_chunks": "()",
    "store_search_chunks": "(chunks)",
    "store_entities": "(document_id, entities)",
    "store_structure": "(document_id, structure)",
    "store_metric_hits": "(document_id, metrics)",
    "store_summary": "(summary)",
    "add_memory": "(category, content, context=None, user_id=None)",
    "set_user_pref": "(user_id, key, value)",
    "register_skill": "(name, description, parameters, workflow_def, enabled=True)",
    "update_skill": "(skill_id, enabled)",
    "update_artifact": "(artifact_id, **fields)",
    "get_artifacts": "()",
    "get_facts": "(report_week=None)",
    "get_evidence": "(evidence_id)",
    "get_all_evidence": "()",
    "get_summary": "(scope_key, style)",
    "list_summaries": "(*, scope=None, style=None)",
    "list_documents": "(type=None)",
    "list_entities": "(document_id=None, label=None)",
    "get_structure": "(document_id)",
    "list_metric_hits": "(document_id=None, metric_type=None)",
    "list_logs": "(level=None, code=None, q=None, ts_from=None, ts_to=None, document_id=None)",
    "list_apis": "(tag=None, method=None, path_like=None)",
    "list_tags": "(document_id=None, q=None)",
    "has_tag": "(document_id, tag)",
    "get_latest_tag_prompt": "(document_id)",
    "list_tag_prompt_history": "(document_id, limit=20)",
    "list_log_messages": "(document_id)",
    "search_memory": "(category=None, limit=10, q=None, user_id=None)",
    "get_user_prefs": "(user_id)",
    "list_skills": "(enabled_only=True)",
}

CLASSES = [dualwrite.ExtendedDatabase, dualwrite.SupabaseDatabase, dualwrite.DualDatabase]


def plain(sig: inspect.Signature) -> str:
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def test_the_method_table_is_every_method_of_the_core():
    assert set(SIGNATURES) == set(dualwrite.WRITE_METHODS) | set(dualwrite.READ_METHODS)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signatures_are_doxs(cls):
    for name, expected in SIGNATURES.items():
        method = getattr(cls, name)
        sig = inspect.signature(method)
        # Unbound: drop `self`.
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
        assert plain(sig) == expected, name
        assert method.__doc__, f"{name} has no docstring"


def test_constructors_and_factory_have_doxs_signatures():
    assert plain(inspect.signature(dualwrite.ExtendedDatabase)) == "(db_path=None)"
    assert plain(inspect.signature(dualwrite.SupabaseDatabase)) == "()"
    # DoX's positional parameters; `drain` is this package's, keyword-only (README, "Python").
    assert plain(inspect.signature(dualwrite.DualDatabase)) == "(primary, secondary, *, drain=None)"
    assert plain(inspect.signature(dualwrite.init_database)) == "()"


def test_the_stub_declares_every_method_with_the_same_parameters():
    import ast

    stub = Path(dualwrite.__file__).with_name("__init__.pyi")
    tree = ast.parse(stub.read_text())
    storage = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Storage")
    declared = {f.name: f for f in storage.body if isinstance(f, ast.FunctionDef)}
    for name, expected in SIGNATURES.items():
        assert name in declared, f"{name} missing from the stub"
        a = declared[name].args
        names = [p.arg for p in a.posonlyargs + a.args][1:] + [p.arg for p in a.kwonlyargs]
        if a.kwarg:
            names.append("**" + a.kwarg.arg)
        got = [n for n in names]
        want = [p.split("=")[0] for p in expected.strip("()").split(", ") if p and p != "*"]
        assert got == want, name


# ----- behaviour and return shapes on every backend ----------------------------------

ARTIFACT_KEYS = {"id", "filename", "filepath", "filetype", "report_week", "status", "source_url", "extras"}
FACT_KEYS = {"id", "artifact_id", "report_week", "entity", "metrics", "evidence_id"}
EVIDENCE_KEYS = {"id", "artifact_id", "locator", "preview", "content_type", "coordinates", "full_data"}
DOCUMENT_KEYS = {"id", "path", "type", "title", "source", "created_at"}
ENTITY_KEYS = {"id", "document_id", "label", "text", "start_char", "end_char", "page", "context", "source_index"}
METRIC_KEYS = {"id", "document_id", "type", "value", "context", "position", "page", "source_index"}
LOG_KEYS = {"id", "document_id", "ts", "level", "code", "component", "message", "attrs"}
API_KEYS = {"id", "document_id", "name", "method", "path", "summary", "tags"}
PROMPT_KEYS = {"id", "document_id", "prompt_text", "examples", "created_at", "author"}
MEMORY_KEYS = {"id", "category", "content", "context", "user_id", "created_at"}
SKILL_KEYS = {"id", "name", "description", "parameters", "workflow_def", "enabled", "created_at"}
SUMMARY_KEYS = {
    "id", "scope", "scope_key", "style", "provider", "prompt", "summary_text",
    "artifact_ids", "evidence_ids", "created_at",
}


@pytest.fixture(params=["sqlite", "supabase", "dual"])
def db(request, clean_env, monkeypatch, stack):
    if request.param == "sqlite":
        return dualwrite.ExtendedDatabase(str(clean_env / "dox.sqlite3"))
    pg = request.getfixturevalue("private_db")
    monkeypatch.setenv("DUALWRITE_REST_URL", pg.url)
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", stack["SUPABASE_SERVICE_KEY"])
    sb = dualwrite.SupabaseDatabase()
    if request.param == "supabase":
        return sb
    return dualwrite.DualDatabase(dualwrite.ExtendedDatabase(str(clean_env / "dox.sqlite3")), sb)


def test_every_method_takes_doxs_arguments_and_returns_doxs_shapes(db):
    u = uuid.uuid4().hex[:8]
    art, doc, ev, fact = f"art-{u}", f"doc-{u}", f"ev-{u}", f"fact-{u}"

    # Writes: positional and keyword forms, DoX's input keys, DoX's return values.
    assert db.add_artifact(
        {"id": art, "filename": "a.pdf", "filepath": "uploads/a.pdf", "filetype": ".pdf",
         "report_week": "", "status": "processing", "extras": {"web": {"status": "queued"}}}
    ) == art
    assert db.update_artifact(art, status="processed", extras={"media": {"kind": "audio"}}) is None
    assert db.add_fact(fact={"id": fact, "artifact_id": art, "report_week": "2025-W38", "entity": "table",
                             "metrics": {"rows": 2, "ratio": 0.5}, "evidence_id": ev}) is None
    assert db.add_evidence({"id": ev, "artifact_id": art, "locator": "a.pdf#table0", "preview": "Région 1200",
                            "content_type": "table", "coordinates": [{"page": 4, "bbox": [1.0, 2.5]}],
                            "full_data": {"rows": [{"Revenue": float("nan")}]}}) is None
    assert db.add_document({"id": doc, "path": "uploads/x.xml", "type": "xml", "title": "x", "source": "watch|upload"}) == doc
    assert db.add_section({"id": f"sec-{u}", "document_id": doc, "order": 0, "text": "Letter", "page": 1,
                           "bbox_json": "[72.0, 700.0]"}) is None
    assert db.add_table({"id": f"tbl-{u}", "document_id": doc, "order": 0, "json": '{"rows": [[1, 2]]}'}) is None
    assert db.add_api({"id": f"api-{u}", "document_id": doc, "name": "listPets", "method": "GET", "path": "/pets",
                       "summary": "List", "tags_json": '["pets"]', "params_json": "[]", "responses_json": "{}"}) is None
    assert db.add_log({"id": f"log-{u}", "document_id": doc, "ts": "2025-09-18T08:15:02", "level": "ERROR",
                       "code": "E1001", "component": "pay", "message": "Payment failed", "attrs_json": None}) is None
    assert db.add_tag({"id": f"tag-{u}", "document_id": doc, "tag": "Payments", "score": None,
                       "source_ptr": "hrm-refined:steps3", "hrm_steps": None}) is None
    pid = db.save_tag_prompt(doc, "Extract tags", [{"text": "t", "extractions": []}], author="a@example.com")
    assert isinstance(pid, str) and uuid.UUID(pid)
    assert isinstance(db.save_tag_prompt(document_id=doc, prompt_text="Second"), str)
    assert db.store_entities(doc, [{"id": f"ent-{u}", "document_id": "ignored", "label": "ORG", "text": "Acme",
                                    "start_char": 0, "end_char": 4, "page": 1, "context": "Acme rose",
                                    "source_index": 0}]) is None
    assert db.store_structure(doc, {"title": "T", "sections": []}) is None
    assert db.store_metric_hits(doc, [{"id": f"met-{u}", "document_id": doc, "type": "revenue", "value": "2.5M",
                                       "context": "Revenue 2.5M", "position": 0, "page": 3,
                                       "source_index": 1}]) is None
    sid = db.store_summary({"id": f"sum-{u}", "scope": "workspace", "style": "bullet", "summary_text": "• x",
                            "artifact_ids": [art], "evidence_ids": []})
    assert sid == f"sum-{u}"
    mid = db.add_memory("team_memory", {"k": "v"}, {"source": "t"}, user_id=f"user-{u}")
    assert isinstance(mid, str) and mid
    assert db.set_user_pref(f"user-{u}", "theme", "dark") is None
    assert db.set_user_pref(f"user-{u}", key="size", value=2) is None
    skill = db.register_skill(f"skill-{u}", "Extract", {}, {"steps": ["a"]})
    assert isinstance(skill, str) and skill
    assert db.register_skill(f"skill-{u}", "Extract v2", {}, {"steps": ["a"]}, enabled=False) == skill
    assert db.store_search_chunks([]) is None
    assert db.reset_search_chunks() is None

    # Reads: DoX's keys and value types.
    arts = [a for a in db.get_artifacts() if a["id"] == art]
    assert len(arts) == 1 and set(arts[0]) == ARTIFACT_KEYS
    assert arts[0]["status"] == "processed"
    assert arts[0]["extras"] == {"web": {"status": "queued"}, "media": {"kind": "audio"}}
    facts = db.get_facts("2025-W38")
    assert [set(f) for f in facts if f["id"] == fact] == [FACT_KEYS]
    assert [f["metrics"] for f in facts if f["id"] == fact] == [{"rows": 2, "ratio": 0.5}]
    assert db.get_facts(report_week="no-such-week") == []
    e = db.get_evidence(ev)
    assert set(e) == EVIDENCE_KEYS and e["coordinates"] == [{"page": 4, "bbox": [1.0, 2.5]}]
    assert e["full_data"] == {"rows": [{"Revenue": None}]}  # NaN is stored as null (README)
    assert db.get_evidence("missing") is None
    assert any(x["id"] == ev for x in db.get_all_evidence())
    s = db.get_summary("workspace", "bullet")
    assert set(s) == SUMMARY_KEYS and s["artifact_ids"] == [art] and s["scope_key"] == "workspace"
    assert [x["id"] for x in db.list_summaries(scope="workspace", style="bullet")] == [f"sum-{u}"]
    with pytest.raises(TypeError):
        db.list_summaries("workspace")  # keyword-only, as in DoX
    docs = db.list_documents(type="xml")
    assert [set(d) for d in docs if d["id"] == doc] == [DOCUMENT_KEYS]
    ents = db.list_entities(document_id=doc, label="ORG")
    assert len(ents) == 1 and set(ents[0]) == ENTITY_KEYS and ents[0]["document_id"] == doc
    assert db.get_structure(doc) == {"title": "T", "sections": []}
    hits = db.list_metric_hits(doc, "revenue")
    assert len(hits) == 1 and set(hits[0]) == METRIC_KEYS
    logs = db.list_logs(level="ERROR", q="payment", document_id=doc)
    assert len(logs) == 1 and set(logs[0]) == LOG_KEYS and logs[0]["message"] == "Payment failed"
    assert db.list_logs(None, "E1001", None, "2025-09-18T00:00:00", "2025-09-19T00:00:00", doc)[0]["code"] == "E1001"
    apis = db.list_apis(tag="pets", method="get", path_like="pet")
    assert len(apis) == 1 and set(apis[0]) == API_KEYS and apis[0]["tags"] == ["pets"]
    tags = db.list_tags(doc, q="pay")
    assert len(tags) == 1 and set(tags[0]) == {"id", "document_id", "tag", "score", "source_ptr", "hrm_steps"}
    assert tags[0]["hrm_steps"] == 3  # derived from hrm-refined:steps3, as DoX's SQLite does
    assert db.has_tag(doc, "  payments ") is True and db.has_tag(doc, "other") is False
    latest = db.get_latest_tag_prompt(doc)
    assert set(latest) == PROMPT_KEYS
    history = db.list_tag_prompt_history(doc, limit=1)
    assert len(history) == 1 and set(history[0]) == PROMPT_KEYS
    assert len(db.list_tag_prompt_history(doc)) == 2
    assert db.list_log_messages(doc) == ["Payment failed"]
    mem = db.search_memory("team_memory", 10, None, f"user-{u}")
    assert len(mem) == 1 and set(mem[0]) == MEMORY_KEYS and mem[0]["id"] == mid
    assert mem[0]["content"] == {"k": "v"} and mem[0]["context"] == {"source": "t"}
    assert db.search_memory(q="nothing-like-this", user_id=f"user-{u}") == []
    assert db.get_user_prefs(f"user-{u}") == {"theme": "dark", "size": 2}
    assert db.get_user_prefs("nobody") == {}
    assert [s["id"] for s in db.list_skills() if s["name"] == f"skill-{u}"] == []  # disabled
    sk = [s for s in db.list_skills(enabled_only=False) if s["name"] == f"skill-{u}"]
    assert len(sk) == 1 and set(sk[0]) == SKILL_KEYS and sk[0]["enabled"] is False
    updated = db.update_skill(skill, True)
    assert set(updated) == SKILL_KEYS and updated["enabled"] is True
    assert db.update_skill("no-such-skill", enabled=True) is None

    # Replace-style writes replace.
    db.store_entities(doc, [])
    assert db.list_entities(document_id=doc) == []
    db.store_structure(doc, None)
    assert db.get_structure(doc) is None

    if isinstance(db, dualwrite.DualDatabase):
        stats = db.dual_stats()
        assert stats["failed"] == 0 and stats["mirrored"] >= 25, stats
        for read in ("get_artifacts", "get_all_evidence", "list_logs", "list_tags", "list_apis", "list_documents"):
            assert getattr(db.secondary, read)() == getattr(db.primary, read)(), read
        assert db.secondary.get_user_prefs(f"user-{u}") == {"theme": "dark", "size": 2}

    # reset clears document data and keeps the cipher tables.
    assert db.reset() is None
    assert db.get_artifacts() == [] and db.list_logs() == [] and db.list_documents() == []
    assert db.get_user_prefs(f"user-{u}") == {"theme": "dark", "size": 2}
