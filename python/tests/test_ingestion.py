"""An ingestion-shaped workload through the embedded dual write, then
`dualwrite verify` (the binary) compares both sides and says EQUAL."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import dualwrite


def ingest(db, n_docs: int = 12) -> None:
    for d in range(n_docs):
        art = str(uuid.uuid4())
        db.add_artifact({"id": art, "filename": f"report-{d}.pdf", "filepath": f"uploads/{art}_report-{d}.pdf",
                         "filetype": ".pdf", "report_week": "", "status": "processing"})
        db.update_artifact(art, extras={"media": {"kind": "pdf", "pages": d + 1}})
        db.update_artifact(art, extras={"web": {"status": "processed", "preview": "Ünïcödé ✓ 数据"}})
        db.update_artifact(art, status="processed")
        db.add_document({"id": art, "path": f"uploads/{art}.pdf", "type": "pdf", "title": f"Report {d}",
                         "source": "watch|upload"})
        for s in range(3):
            db.add_section({"id": f"{art}-s{s}", "document_id": art, "order": s, "text": f"Section {s}",
                            "page": s + 1, "bbox_json": json.dumps([72.0, 700.0 - s, 540.0, 720.0])})
        db.add_table({"id": f"{art}-t0", "document_id": art, "order": 0,
                      "table_content_json": json.dumps({"columns": ["Region", "Revenue"], "rows": [["EMEA", 1200]]})})
        ev = str(uuid.uuid4())
        db.add_evidence({"id": ev, "artifact_id": art, "locator": f"report-{d}.pdf#table0", "preview": "EMEA 1200",
                         "content_type": "table", "coordinates": [{"page": 1, "bbox": [50.0, 300.0, 560.0, 420.0]}],
                         "full_data": {"rows": [{"Region": "EMEA", "Revenue": 1200}], "merged": False}})
        db.add_fact({"id": str(uuid.uuid4()), "artifact_id": art, "report_week": "", "entity": "table",
                     "metrics": {"rows": 1, "columns": 2}, "evidence_id": ev})
        db.add_fact({"id": str(uuid.uuid4()), "artifact_id": art, "report_week": "", "entity": "document_summary",
                     "metrics": {"pages": d + 1}, "evidence_id": None})
        entities = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{art}|{i}")), "document_id": art, "label": "ORG",
                     "text": f"Acme {i}", "start_char": i, "end_char": i + 4, "page": 1, "context": "Acme rose",
                     "source_index": i} for i in range(4)]
        db.store_entities(art, entities)
        db.store_entities(art, entities[:2])  # reprocessing replaces the set
        db.store_structure(art, {"title": f"Report {d}", "sections": [{"level": 1, "title": "Overview",
                                                                       "content": ["x"], "subsections": []}]})
        db.store_metric_hits(art, [{"id": str(uuid.uuid4()), "document_id": art, "type": "revenue", "value": "2.5M",
                                    "context": "Revenue: $2.5M", "position": 9, "page": 1, "source_index": 0}])
        for tag in ("finance", "Finance ", "revenue"):
            if not db.has_tag(art, tag):
                db.add_tag({"id": str(uuid.uuid4()), "document_id": art, "tag": tag.strip(), "score": None,
                            "source_ptr": "langextract", "hrm_steps": None})
        db.save_tag_prompt(art, "Extract short tags", [{"text": "revenue grew", "extractions": []}], "analyst")
        xml = str(uuid.uuid4())
        db.add_document({"id": xml, "path": f"uploads/{xml}.xml", "type": "xml", "title": "errors.xml",
                         "source": "watch|upload"})
        for i in range(5):
            db.add_log({"id": str(uuid.uuid4()), "document_id": xml, "ts": f"2025-09-18T08:15:0{i}",
                        "level": "ERROR" if i % 2 else "INFO", "code": f"E{i}", "component": "svc",
                        "message": f"event {i}", "attrs_json": None})
        db.add_api({"id": str(uuid.uuid4()), "document_id": xml, "name": "listPets", "method": "GET",
                    "path": f"/pets/{d}", "summary": "List", "tags_json": '["pets"]',
                    "params_json": '[{"name": "limit"}]', "responses_json": '{"200": {"description": "ok"}}'})
        db.store_summary({"id": str(uuid.uuid4()), "scope": "artifact", "scope_key": f"artifact:{art}",
                          "style": "bullet", "provider": "heuristic", "prompt": "Summarise",
                          "summary_text": f"• report {d}", "artifact_ids": [art], "evidence_ids": [ev]})
        db.add_memory("team_memory", {"doc": art, "note": "reviewed"}, {"type": "team_memory"}, "dev_user")
        db.set_user_pref("dev_user", f"last_doc_{d % 3}", art)
    skill = db.register_skill("extract_tables", "Extract tables", {}, {"steps": ["upload", "extract"]})
    db.register_skill("extract_tables", "Extract tables from PDFs", {}, {"steps": ["upload", "extract"]}, True)
    db.update_skill(skill, False)


def test_ingestion_through_the_module_then_verify_says_equal(clean_env, monkeypatch, private_db, stack, dualwrite_bin):
    key = stack["SUPABASE_SERVICE_KEY"]
    monkeypatch.setenv("DUALWRITE_REST_URL", private_db.url)
    monkeypatch.setenv("SUPABASE_SERVICE_KEY", key)
    monkeypatch.setenv("SUPABASE_DUAL_WRITE", "true")
    monkeypatch.setenv("DB_PATH", str(clean_env / "dox.sqlite3"))
    db, meta = dualwrite.init_database()
    assert meta["active"] == "dual:sqlite+supabase"
    ingest(db)
    stats = db.dual_stats()
    assert stats["failed"] == 0 and stats["mirrored"] > 300, stats

    env = {k: v for k, v in os.environ.items()}
    out = subprocess.run(
        [str(dualwrite_bin), "verify", "--from-sqlite", str(clean_env / "dox.sqlite3"), "--format", "json"],
        capture_output=True, text=True, env=env, cwd=clean_env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "equal"
    assert report["totals"]["equal"] > 300
    text = subprocess.run(
        [str(dualwrite_bin), "verify", "--from-sqlite", str(clean_env / "dox.sqlite3")],
        capture_output=True, text=True, env=env, cwd=clean_env,
    )
    assert text.returncode == 0 and "EQUAL" in text.stdout, text.stdout

    # The check can fail: a row changed behind the module's back is found.
    private_db.sql("UPDATE log_entries SET message = 'tampered' WHERE id = (SELECT min(id) FROM log_entries)")
    out = subprocess.run(
        [str(dualwrite_bin), "verify", "--from-sqlite", str(clean_env / "dox.sqlite3"), "--format", "json"],
        capture_output=True, text=True, env=env, cwd=clean_env,
    )
    assert out.returncode == 3 and json.loads(out.stdout)["verdict"] != "equal"
