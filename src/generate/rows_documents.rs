//! Rows of `artifact`, `document`, `section`, `doctable` and `apiendpoint`.

use std::fmt::Write as _;

use rand::Rng;

use crate::catalogue as cat;
use crate::normalise::{SqlRow, SqlValue};

use super::generator::{DocType, FileKind, Generator, Pool};
use super::ids::salt;
use super::text::{
    amount, bbox, coordinate, json, long_text, obj, paragraph, pick, push_word, ratio, report_week,
    row, sentence, strs, text, J,
};

impl Generator {
    pub(super) fn artifact(&mut self, i: u64) -> SqlRow {
        let id = self.artifact_id(i);
        let kind = self.artifact_kind(i);
        let filename = self.artifact_filename(i);
        let r = &mut self.rng;
        let filepath = match kind {
            FileKind::Url => filename.clone(),
            _ if r.gen_bool(0.5) => format!("/app/uploads/{id}_{filename}"),
            _ => format!("uploads/{id}_{filename}"),
        };
        let status = match r.gen_range(0..100) {
            0 => SqlValue::Null,
            1..4 => text("error"),
            4..6 => text("queued"),
            6..16 => text("processing"),
            _ => text("processed"),
        };
        let extra = match kind {
            FileKind::Url => Some(obj(vec![(
                "web",
                obj(vec![
                    ("status", "processed".into()),
                    ("preview", sentence(r, 4, 12).into()),
                    ("metadata", obj(vec![("title", sentence(r, 2, 6).into())])),
                    ("artifacts", J::Arr(vec![])),
                    ("warnings", J::Arr(vec![])),
                    ("chars", J::Int(r.gen_range(200..40_000))),
                ]),
            )])),
            FileKind::Audio => Some(obj(vec![(
                "media",
                obj(vec![
                    ("kind", "audio".into()),
                    ("transcript_preview", sentence(r, 3, 10).into()),
                    ("artifacts", J::Obj(vec![])),
                    ("engine", "whisper".into()),
                    (
                        "metadata",
                        obj(vec![(
                            "duration_seconds",
                            J::Float((r.gen_range(5.0..4000.0_f64) * 10.0).round() / 10.0),
                        )]),
                    ),
                    ("status", "ok".into()),
                    ("warnings", J::Arr(vec![])),
                ]),
            )])),
            FileKind::Image if r.gen_bool(0.6) => Some(obj(vec![(
                "ocr",
                obj(vec![
                    ("text", sentence(r, 3, 12).into()),
                    ("confidence", J::Float(ratio(r))),
                    ("lang", pick(r, &["eng", "deu", "jpn", "ara", "rus"]).into()),
                ]),
            )])),
            _ if r.gen_bool(0.15) => Some(obj(vec![
                (
                    "uploaded_by",
                    pick(r, &["dana", "李雷", "bob", "Zoë"]).into(),
                ),
                ("labels", strs(&[sentence(r, 1, 2), sentence(r, 1, 2)])),
            ])),
            _ => None,
        };
        let source_url = match kind {
            FileKind::Url => text(filename.clone()),
            _ => SqlValue::Null,
        };
        let report_week = report_week(r);
        row(
            &cat::ARTIFACT,
            [
                ("id", text(id)),
                ("filename", text(filename)),
                ("filepath", text(filepath)),
                ("filetype", text(kind.filetype())),
                ("report_week", report_week),
                ("status", status),
                ("source_url", source_url),
                (
                    "extra_json",
                    extra.map_or(SqlValue::Null, |e| json(&e, false)),
                ),
            ],
        )
    }

    pub(super) fn document(&mut self, i: u64) -> SqlRow {
        let doc_type = self.doc_type(i);
        let file = if i < self.n_artifact {
            format!("{}_{}", self.artifact_id(i), self.artifact_filename(i))
        } else {
            format!("{:04x}_upload_{i}.{}", i & 0xffff, doc_type.as_str())
        };
        let r = &mut self.rng;
        let path = if r.gen_bool(0.5) {
            format!("/app/uploads/{file}")
        } else {
            format!("uploads/{file}")
        };
        let title = match (doc_type, r.gen_range(0..10)) {
            (_, 0) => SqlValue::Null,
            (DocType::OpenApi | DocType::Postman, 1..6) => text(pick(
                r,
                &[
                    "Swagger Petstore",
                    "Lending API",
                    "学习平台接口",
                    "API de facturación",
                ],
            )),
            _ => text(file.clone()),
        };
        let source = if r.gen_bool(0.95) {
            text("watch|upload")
        } else {
            SqlValue::Null
        };
        let created_at = self.maybe(0.65, Self::ts);
        row(
            &cat::DOCUMENT,
            [
                ("id", text(self.doc_id(i))),
                ("path", text(path)),
                ("type", text(doc_type.as_str())),
                ("title", title),
                ("source", source),
                ("created_at", created_at),
            ],
        )
    }

    pub(super) fn section(&mut self, i: u64) -> SqlRow {
        let id = if i % 10 == 3 {
            format!("sec-{i:06}")
        } else {
            self.key(salt("section"), i, 4)
        };
        let document_id = self.doc_ref(Pool::Pdf);
        let r = &mut self.rng;
        let body = if r.gen_range(0..1000) == 0 {
            long_text(r)
        } else {
            let n = r.gen_range(1..=5);
            paragraph(r, n)
        };
        let page = self.maybe(0.14, |g| SqlValue::Integer(g.rng.gen_range(1..400)));
        let bbox = self.maybe(0.31, |g| {
            let r = &mut g.rng;
            let v = if r.gen_bool(0.7) {
                obj(vec![
                    ("l", coordinate(r)),
                    ("t", coordinate(r)),
                    ("r", coordinate(r)),
                    ("b", coordinate(r)),
                    ("coord_origin", "BOTTOMLEFT".into()),
                ])
            } else {
                bbox(r)
            };
            json(&v, true)
        });
        row(
            &cat::SECTION,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("order", SqlValue::Integer(self.rng.gen_range(0..80))),
                ("text", text(body)),
                ("page", page),
                ("bbox_json", bbox),
            ],
        )
    }

    /// A table cell as pandas hands it to `json.dumps`: numbers, text or None,
    /// and sometimes NaN or an infinity when `non_finite` is set.
    pub(super) fn cell(&mut self, non_finite: bool) -> J {
        let r = &mut self.rng;
        match r.gen_range(0..100) {
            0..40 => J::Float(amount(r)),
            40..60 => J::Int(r.gen_range(0..100_000)),
            60..80 => J::Str(sentence(r, 1, 4)),
            80..88 => J::Null,
            88..92 if non_finite => J::Float(f64::NAN),
            92 if non_finite => J::Float(if r.gen_bool(0.5) {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            }),
            _ => J::Float(ratio(r)),
        }
    }

    /// Distinct column names (object keys must not repeat).
    pub(super) fn columns(&mut self, lo: usize, hi: usize) -> Vec<String> {
        let n = self.rng.gen_range(lo..=hi);
        let mut cols: Vec<String> = Vec::with_capacity(n);
        while cols.len() < n {
            let mut w = String::new();
            push_word(&mut self.rng, &mut w);
            if cols.contains(&w) {
                let _ = write!(w, "_{}", cols.len());
            }
            cols.push(w);
        }
        cols
    }

    pub(super) fn doctable(&mut self, i: u64) -> SqlRow {
        let id = if i % 10 == 3 {
            format!("tbl-{i:06}")
        } else {
            self.key(salt("doctable"), i, 4)
        };
        let document_id = self.doc_ref(Pool::Pdf);
        let cols = self.columns(2, 6);
        let n_rows = self.rng.gen_range(1..=8);
        let as_objects = self.rng.gen_bool(0.6);
        let mut rows = Vec::with_capacity(n_rows);
        for _ in 0..n_rows {
            if as_objects {
                let mut o = Vec::with_capacity(cols.len());
                for c in &cols {
                    o.push((c.clone(), self.cell(false)));
                }
                rows.push(J::Obj(o));
            } else {
                rows.push(J::Arr((0..cols.len()).map(|_| self.cell(false)).collect()));
            }
        }
        let content = obj(vec![("columns", strs(&cols)), ("rows", J::Arr(rows))]);
        row(
            &cat::DOCTABLE,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("order", SqlValue::Integer(self.rng.gen_range(0..12))),
                ("table_content_json", json(&content, false)),
            ],
        )
    }

    pub(super) fn apiendpoint(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("apiendpoint"), i, 4);
        let document_id = self.doc_ref(Pool::Api);
        let r = &mut self.rng;
        let method = pick(
            r,
            &[
                "GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
            ],
        );
        let resource = pick(
            r,
            &["pets", "users", "loans", "grades", "courses", "invoices"],
        );
        let mut word = String::new();
        push_word(r, &mut word);
        let path = format!(
            "/v{}/{resource}/{{id}}/{}",
            r.gen_range(1..=3),
            word.replace(' ', "-")
        );
        let name = match r.gen_range(0..100) {
            0..22 => SqlValue::Null,
            22..40 => text(format!(
                "list{}",
                resource[..1].to_uppercase() + &resource[1..]
            )),
            40..60 => text(format!("{method} {}", sentence(r, 1, 3))),
            _ => text(format!("op_{i}_{word}")),
        };
        let summary = self.maybe(0.12, |g| text(sentence(&mut g.rng, 2, 14)));
        let r = &mut self.rng;
        let tags = strs(&match r.gen_range(0..4) {
            0 => vec![],
            1 => vec![resource.to_owned()],
            2 => vec![pick(r, &["🚀 Launch", "Webhooks", "Enrollment", "Платежи"]).to_owned()],
            _ => vec![resource.to_owned(), sentence(r, 1, 2)],
        });
        let postman = r.gen_bool(0.3);
        let params = if postman {
            obj(vec![
                ("raw", format!("{{{{base}}}}/v2/{resource}").into()),
                ("host", strs(&["{{base}}"])),
                ("path", strs(&["v2", resource])),
            ])
        } else {
            let n = r.gen_range(0..4);
            J::Arr(
                (0..n)
                    .map(|_| {
                        obj(vec![
                            (
                                "name",
                                pick(
                                    r,
                                    &["limit", "page", "id", "größe", "filter[name]", "courseId"],
                                )
                                .into(),
                            ),
                            ("in", pick(r, &["query", "path", "header"]).into()),
                            ("required", r.gen_bool(0.4).into()),
                            (
                                "schema",
                                obj(vec![(
                                    "type",
                                    pick(r, &["integer", "string", "boolean"]).into(),
                                )]),
                            ),
                        ])
                    })
                    .collect(),
            )
        };
        let responses = if postman {
            J::Arr(vec![])
        } else {
            let mut o = vec![(
                "200".to_owned(),
                obj(vec![("description", sentence(r, 2, 8).into())]),
            )];
            if r.gen_bool(0.5) {
                o.push((
                    pick(r, &["400", "401", "404", "409"]).to_owned(),
                    obj(vec![("description", sentence(r, 2, 8).into())]),
                ));
            }
            if r.gen_bool(0.3) {
                o.push((
                    "x_security".to_owned(),
                    obj(vec![("schemes", strs(&["bearerAuth"]))]),
                ));
            }
            J::Obj(o)
        };
        row(
            &cat::APIENDPOINT,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("name", name),
                ("method", text(method)),
                ("path", text(path)),
                ("summary", summary),
                ("tags_json", json(&tags, true)),
                ("params_json", json(&params, true)),
                ("responses_json", json(&responses, true)),
            ],
        )
    }
}
