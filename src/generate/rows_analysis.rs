//! Rows of `summaries`, `document_entities`, `document_structure` and
//! `document_metric_hits`.

use rand::Rng;

use crate::catalogue as cat;
use crate::normalise::{SqlRow, SqlValue};

use super::generator::{Generator, Pool};
use super::ids::salt;
use super::text::{json, long_text, obj, pick, row, sentence, strs, text, timestamp, J};

impl Generator {
    pub(super) fn summary(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("summaries"), i, 4);
        let n_artifacts = self.rng.gen_range(0..=5);
        let mut artifact_ids: Vec<String> = (0..n_artifacts)
            .map(|_| {
                let a = self.artifact_ref();
                self.artifact_id(a)
            })
            .collect();
        let n_evidence = if self.n_evidence == 0 {
            0
        } else {
            self.rng.gen_range(0..=3)
        };
        let evidence_ids: Vec<String> = (0..n_evidence)
            .map(|_| {
                let e = self.rng.gen_range(0..self.n_evidence);
                self.evidence_id(e)
            })
            .collect();
        let r = &mut self.rng;
        let (scope, scope_key) = if artifact_ids.is_empty() || r.gen_bool(0.4) {
            ("workspace", "workspace".to_owned())
        } else {
            artifact_ids.sort();
            artifact_ids.dedup();
            ("artifact", format!("artifact:{}", artifact_ids.join(",")))
        };
        let style = pick(r, &["bullet", "executive", "action_items", "detailed"]);
        let provider = match r.gen_range(0..100) {
            0..25 => SqlValue::Null,
            _ => text(pick(r, &["heuristic", "langextract", "ollama", "openai"])),
        };
        let prompt = if r.gen_bool(0.5) {
            SqlValue::Null
        } else {
            text(sentence(r, 4, 16))
        };
        let body = if r.gen_range(0..40) == 0 {
            long_text(r)
        } else {
            let n = r.gen_range(1..=6);
            (0..n)
                .map(|_| format!("• {}", sentence(r, 3, 14)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let created_at = text(timestamp(r));
        row(
            &cat::SUMMARIES,
            [
                ("id", text(id)),
                ("scope", text(scope)),
                ("scope_key", text(scope_key)),
                ("style", text(style)),
                ("provider", provider),
                ("prompt", prompt),
                ("summary_text", text(body)),
                ("artifact_ids_json", json(&strs(&artifact_ids), false)),
                ("evidence_ids_json", json(&strs(&evidence_ids), false)),
                ("created_at", created_at),
            ],
        )
    }

    pub(super) fn entity(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("document_entities"), i, 5);
        let document_id = self.doc_ref(Pool::Pdf);
        let r = &mut self.rng;
        let label = pick(
            r,
            &[
                "ORG", "MONEY", "DATE", "GPE", "PERSON", "PRODUCT", "EVENT", "PERCENT",
            ],
        );
        let entity = sentence(r, 1, 3);
        let start = r.gen_range(0..40_000);
        let end = start + entity.chars().count() as i64;
        let page = self.maybe(0.18, |g| SqlValue::Integer(g.rng.gen_range(1..300)));
        let context = self.maybe(0.2, |g| text(sentence(&mut g.rng, 4, 18)));
        row(
            &cat::DOCUMENT_ENTITIES,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("label", text(label)),
                ("text", text(entity)),
                ("start_char", SqlValue::Integer(start)),
                ("end_char", SqlValue::Integer(end)),
                ("page", page),
                ("entity_context", context),
                ("source_index", SqlValue::Integer(self.rng.gen_range(0..20))),
            ],
        )
    }

    pub(super) fn heading(&mut self, level: i64, depth: u32) -> J {
        let n_children = if depth == 0 {
            0
        } else {
            self.rng.gen_range(0..3)
        };
        let children: Vec<J> = (0..n_children)
            .map(|_| self.heading(level + 1, depth - 1))
            .collect();
        let r = &mut self.rng;
        let n_content = r.gen_range(0..3);
        obj(vec![
            ("level", J::Int(level)),
            ("title", sentence(r, 1, 6).into()),
            (
                "content",
                J::Arr((0..n_content).map(|_| sentence(r, 4, 14).into()).collect()),
            ),
            ("subsections", J::Arr(children)),
        ])
    }

    pub(super) fn structure(&mut self, i: u64) -> SqlRow {
        // One row per document; rows past the documents are orphans.
        let document_id = self.doc_id(i);
        let hierarchy = if self.rng.gen_range(0..100) < 3 {
            SqlValue::Null
        } else {
            let big = self.rng.gen_range(0..50) == 0;
            let n = if big {
                self.rng.gen_range(60..350)
            } else {
                self.rng.gen_range(1..5)
            };
            let sections: Vec<J> = (0..n).map(|_| self.heading(1, 2)).collect();
            let title = if i < self.n_artifact {
                self.artifact_filename(i)
            } else {
                sentence(&mut self.rng, 2, 5)
            };
            json(
                &obj(vec![
                    ("title", title.into()),
                    ("sections", J::Arr(sections)),
                ]),
                false,
            )
        };
        row(
            &cat::DOCUMENT_STRUCTURE,
            [
                ("document_id", text(document_id)),
                ("hierarchy_json", hierarchy),
            ],
        )
    }

    pub(super) fn metric_hit(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("document_metric_hits"), i, 5);
        let document_id = self.doc_ref(Pool::Pdf);
        let r = &mut self.rng;
        let kind = pick(
            r,
            &["revenue", "growth", "margin", "profit", "date", "ratio"],
        );
        let value = match r.gen_range(0..100) {
            0..17 => SqlValue::Null,
            17..50 => text(format!("{:.1}M", r.gen_range(0.1..900.0_f64))),
            50..80 => text(format!("{:.1}", r.gen_range(0.0..100.0_f64))),
            _ => text(r.gen_range(0..1_000_000).to_string()),
        };
        let context = text(sentence(r, 3, 16));
        let position = SqlValue::Integer(r.gen_range(0..40_000));
        let page = self.maybe(0.2, |g| SqlValue::Integer(g.rng.gen_range(1..300)));
        row(
            &cat::DOCUMENT_METRIC_HITS,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("type", text(kind)),
                ("value", value),
                ("metric_context", context),
                ("position", position),
                ("page", page),
                ("source_index", SqlValue::Integer(self.rng.gen_range(0..20))),
            ],
        )
    }
}
