//! Rows of `logentry`, `tagrow`, `fact`, `evidence` and `tagprompt`.

use std::fmt::Write as _;

use rand::Rng;

use crate::catalogue as cat;
use crate::normalise::{SqlRow, SqlValue};

use super::generator::{FileKind, Generator, Pool};
use super::ids::salt;
use super::text::{
    amount, bbox, json, long_text, obj, paragraph, pick, ratio, report_week, row, sentence, strs,
    text, timestamp, J, WORDS,
};

impl Generator {
    pub(super) fn logentry(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("logentry"), i, 4);
        let document_id = self.doc_ref(Pool::Xml);
        let r = &mut self.rng;
        // Free-form text from the XML, in every format seen.
        let ts = match r.gen_range(0..100) {
            0..10 => SqlValue::Null,
            n => {
                let t = timestamp(r);
                text(match n {
                    10..40 => t[..19].to_owned(),
                    40..60 => t,
                    60..80 => t[..19].replace('T', " "),
                    80..88 => format!("{}.{:03}+02:00", &t[..19], r.gen_range(0..1000)),
                    88..95 => chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|d| d.format("%d/%b/%Y:%H:%M:%S +0000").to_string())
                        .unwrap_or(t),
                    _ => chrono::DateTime::parse_from_rfc3339(&t)
                        .map(|d| d.timestamp().to_string())
                        .unwrap_or(t),
                })
            }
        };
        let level = match r.gen_range(0..100) {
            0..11 => SqlValue::Null,
            11..50 => text("INFO"),
            50..70 => text("WARN"),
            70..88 => text("ERROR"),
            88..95 => text("DEBUG"),
            95..98 => text("warning"),
            _ => text("FATAL"),
        };
        let code = match r.gen_range(0..100) {
            0..5 => SqlValue::Null,
            n => text(match n % 4 {
                0 => format!("E{}", r.gen_range(1000..2000)),
                1 => format!("W{}", r.gen_range(100..400)),
                2 => r.gen_range(200..600).to_string(),
                _ => format!("LMS-{:03}", r.gen_range(0..50)),
            }),
        };
        let component = match r.gen_range(0..100) {
            0..11 => SqlValue::Null,
            _ => text(pick(
                r,
                &[
                    "payment-service",
                    "scheduler",
                    "auth",
                    "note",
                    "lms-sync",
                    "gateway",
                    "通知",
                ],
            )),
        };
        let message = match r.gen_range(0..1000) {
            0..30 => SqlValue::Null,
            // About one in 500: a stack trace of about 8 KB.
            30..32 => {
                let mut s = sentence(r, 4, 10);
                while s.len() < 8_000 {
                    let _ = write!(
                        s,
                        "\n    at com.example.{}.Service.handle(Service.java:{})",
                        pick(r, WORDS),
                        r.gen_range(1..2000)
                    );
                }
                text(s)
            }
            _ => text(sentence(r, 4, 22)),
        };
        let attrs = self.maybe(0.85, |g| {
            let r = &mut g.rng;
            json(
                &obj(vec![
                    (
                        "thread",
                        pick(r, &["main", "worker-1", "worker-2", "io"]).into(),
                    ),
                    ("pid", J::Int(r.gen_range(100..65_000))),
                    ("retry", r.gen_bool(0.2).into()),
                ]),
                true,
            )
        });
        row(
            &cat::LOGENTRY,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("ts", ts),
                ("level", level),
                ("code", code),
                ("component", component),
                ("message", message),
                ("attrs_json", attrs),
            ],
        )
    }

    pub(super) fn tagrow(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("tagrow"), i, 4);
        let document_id = self.doc_ref(Pool::Any);
        let r = &mut self.rng;
        let tag = match r.gen_range(0..10) {
            0..6 => pick(
                r,
                &[
                    "pet inventory",
                    "authentication",
                    "payments",
                    "Ledger",
                    "🚀 Launch",
                    "LMS Integration",
                    "Revenue Recognition",
                    "Выручка",
                    "決済",
                    "ضريبة",
                ],
            )
            .to_owned(),
            _ => sentence(r, 1, 3),
        };
        let score = if r.gen_bool(0.62) {
            SqlValue::Null
        } else {
            SqlValue::Real(ratio(r))
        };
        let (source_ptr, hrm_steps) = match r.gen_range(0..100) {
            0..23 => (SqlValue::Null, None),
            23..50 => (text("langextract"), None),
            50..62 => (text("mangle"), None),
            62..72 => (text("hrm-refined"), Some(r.gen_range(1..=8))),
            72..90 => {
                let n = r.gen_range(1..=12);
                (text(format!("hrm-refined:steps{n}")), Some(n))
            }
            _ => (text(pick(r, &["tag", "topic", "entity"])), None),
        };
        let hrm_steps = match hrm_steps {
            Some(n) => SqlValue::Integer(n),
            None if r.gen_bool(0.9) => SqlValue::Null,
            None => SqlValue::Integer(r.gen_range(1..=8)),
        };
        row(
            &cat::TAGROW,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("tag", text(tag)),
                ("score", score),
                ("source_ptr", source_ptr),
                ("hrm_steps", hrm_steps),
            ],
        )
    }

    pub(super) fn fact(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("fact"), i, 4);
        let artifact_id = if self.rng.gen_range(0..100) < 2 {
            // DoX's write method stores "" when the artifact is absent.
            String::new()
        } else {
            let a = self.artifact_ref();
            self.artifact_id(a)
        };
        let entity = match self.rng.gen_range(0..100) {
            0..40 => None,
            40..70 => Some("table"),
            70..80 => Some("chart"),
            80..88 => Some("formula"),
            _ => Some("document_summary"),
        };
        let metrics = match entity {
            None => {
                // Campaign metrics; ROAS of zero spend is an infinity, missing
                // values are NaN (Python writes both as bare tokens).
                let r = &mut self.rng;
                let spend = if r.gen_range(0..100) < 2 {
                    0.0
                } else {
                    amount(r).abs()
                };
                let revenue = if r.gen_range(0..100) < 2 {
                    f64::NAN
                } else {
                    amount(r).abs()
                };
                let roas = if spend == 0.0 {
                    f64::INFINITY
                } else {
                    (revenue / spend * 100.0).round() / 100.0
                };
                obj(vec![
                    ("spend", J::Float(spend)),
                    ("revenue", J::Float(revenue)),
                    ("roas", J::Float(roas)),
                ])
            }
            Some("table") => {
                let cols = self.columns(1, 7);
                obj(vec![
                    ("rows", J::Int(self.rng.gen_range(1..200))),
                    ("columns", J::Int(cols.len() as i64)),
                    ("column_names", strs(&cols)),
                ])
            }
            Some("chart") => obj(vec![
                ("type", pick(&mut self.rng, &["bar", "line", "pie"]).into()),
                ("series", J::Int(self.rng.gen_range(1..6))),
                ("title", sentence(&mut self.rng, 2, 6).into()),
            ]),
            Some("formula") => obj(vec![
                ("latex", "\\frac{a}{b} = c".into()),
                ("value", J::Float(ratio(&mut self.rng))),
            ]),
            Some(_) => {
                let r = &mut self.rng;
                obj(vec![
                    ("pages", J::Int(r.gen_range(1..400))),
                    ("text_sections", J::Int(r.gen_range(0..300))),
                    ("tables", J::Int(r.gen_range(0..40))),
                    ("charts", J::Int(r.gen_range(0..20))),
                    ("formulas", J::Int(r.gen_range(0..10))),
                    ("total_evidence", J::Int(r.gen_range(0..400))),
                    ("total_facts", J::Int(r.gen_range(0..60))),
                ])
            }
        };
        let evidence_id = if entity == Some("document_summary")
            || self.n_evidence == 0
            || self.rng.gen_range(0..100) < 5
        {
            SqlValue::Null
        } else {
            let e = self.rng.gen_range(0..self.n_evidence);
            text(self.evidence_id(e))
        };
        let report_week = report_week(&mut self.rng);
        row(
            &cat::FACT,
            [
                ("id", text(id)),
                ("artifact_id", text(artifact_id)),
                ("report_week", report_week),
                ("entity", SqlValue::opt_text(entity)),
                ("metrics_json", json(&metrics, false)),
                ("evidence_id", evidence_id),
            ],
        )
    }

    pub(super) fn evidence(&mut self, i: u64) -> SqlRow {
        let id = self.evidence_id(i);
        let (artifact_id, kind, filename) = if self.rng.gen_range(0..1000) < 5 {
            (String::new(), FileKind::Docx, "document.docx".to_owned())
        } else {
            let a = self.artifact_ref();
            (
                self.artifact_id(a),
                self.artifact_kind(a),
                self.artifact_filename(a),
            )
        };
        let r = &mut self.rng;
        let k: u32 = r.gen_range(0..200);
        let content_type = match kind {
            FileKind::Pdf => match r.gen_range(0..100) {
                0..55 => "text",
                55..75 => "table",
                75..83 => "financial_table",
                83..93 => "chart",
                _ => "formula",
            },
            FileKind::Csv => "csv",
            FileKind::Xlsx => "xlsx",
            FileKind::Audio if r.gen_bool(0.8) => "media_transcript",
            FileKind::Audio => "media_metadata",
            FileKind::Image => "image_ocr",
            FileKind::Url => "web_page",
            _ => "text",
        };
        let locator = match content_type {
            "csv" => format!("{filename}#data"),
            "xlsx" => format!("{filename}#{}", pick(r, &["Sheet1", "Лист1", "Q3 (final)"])),
            "media_transcript" | "media_metadata" => format!("{filename}#transcript"),
            "web_page" => filename.clone(),
            "image_ocr" => format!("{filename}#ocr"),
            "text" => format!("{filename}#section{k}"),
            other => format!("{filename}#{}{k}", other.trim_start_matches("financial_")),
        };
        let long = r.gen_range(0..1000) == 0;
        let preview = sentence(r, 6, 40);
        let page = r.gen_range(1..300);
        let coordinates = match (content_type, r.gen_range(0..100)) {
            (_, 0..16) => None,
            ("table" | "financial_table", n) if n < 90 => Some(J::Arr(vec![obj(vec![
                ("page", J::Int(page)),
                ("bbox", bbox(r)),
            ])])),
            ("text" | "chart" | "formula" | "table" | "financial_table", _) => {
                Some(obj(vec![("page", J::Int(page)), ("bbox", bbox(r))]))
            }
            ("media_transcript", _) => Some(J::Arr(vec![obj(vec![
                ("start", J::Float(f64::from(k))),
                ("end", J::Float(f64::from(k) + 4.5)),
            ])])),
            _ => Some(J::Arr(vec![])),
        };
        let full_data = if r.gen_range(0..100) < 3 {
            None
        } else if long {
            Some(obj(vec![
                ("text", long_text(r).into()),
                ("metrics", J::Obj(vec![])),
            ]))
        } else {
            Some(match content_type {
                "csv" | "xlsx" | "table" | "financial_table" => {
                    let cols = self.columns(2, 5);
                    let n = self.rng.gen_range(1..=4);
                    // pandas turns missing cells into NaN.
                    let rows: Vec<J> = (0..n)
                        .map(|_| {
                            J::Obj(cols.iter().map(|c| (c.clone(), self.cell(true))).collect())
                        })
                        .collect();
                    match content_type {
                        "csv" => J::Arr(rows),
                        "xlsx" => obj(vec![("sheets", obj(vec![("Sheet1", J::Arr(rows))]))]),
                        _ => obj(vec![
                            ("rows", J::Arr(rows)),
                            ("pages", J::Arr(vec![J::Int(page)])),
                            ("merged", self.rng.gen_bool(0.1).into()),
                            ("header_detected", self.rng.gen_bool(0.8).into()),
                            ("columns", strs(&cols)),
                        ]),
                    }
                }
                "media_transcript" => obj(vec![(
                    "segments",
                    J::Arr(vec![obj(vec![
                        ("start", J::Float(f64::from(k))),
                        ("end", J::Float(f64::from(k) + 4.5)),
                        ("text", preview.clone().into()),
                    ])]),
                )]),
                "media_metadata" => obj(vec![
                    ("duration_seconds", J::Float(f64::from(k) * 3.5)),
                    ("codec", "mp3".into()),
                    ("sample_rate", J::Int(44_100)),
                ]),
                "web_page" => obj(vec![
                    ("url", filename.clone().into()),
                    ("title", sentence(&mut self.rng, 2, 6).into()),
                    ("text", preview.clone().into()),
                ]),
                "chart" => obj(vec![
                    ("caption", preview.clone().into()),
                    (
                        "series",
                        J::Arr((0..4).map(|_| self.cell(true)).collect::<Vec<_>>()),
                    ),
                ]),
                _ => obj(vec![
                    ("text", preview.clone().into()),
                    (
                        "metrics",
                        if self.rng.gen_bool(0.3) {
                            obj(vec![("revenue", J::Float(ratio(&mut self.rng) * 10.0))])
                        } else {
                            J::Obj(vec![])
                        },
                    ),
                ]),
            })
        };
        row(
            &cat::EVIDENCE,
            [
                ("id", text(id)),
                ("artifact_id", text(artifact_id)),
                ("locator", text(locator)),
                ("preview", text(preview)),
                ("content_type", text(content_type)),
                (
                    "coordinates_json",
                    coordinates.map_or(SqlValue::Null, |c| json(&c, true)),
                ),
                (
                    "full_data_json",
                    full_data.map_or(SqlValue::Null, |d| json(&d, true)),
                ),
            ],
        )
    }

    pub(super) fn tagprompt(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("tagprompt"), i, 4);
        let document_id = self.doc_ref(Pool::Any);
        let r = &mut self.rng;
        let prompt = format!(
            "{}\n{}",
            pick(
                r,
                &[
                    "Extract concise domain tags.",
                    "Extract short domain tags for each endpoint.",
                    "Извлеки теги."
                ]
            ),
            paragraph(r, 2)
        );
        let examples = if r.gen_bool(0.3) {
            SqlValue::Null
        } else {
            let n = r.gen_range(1..=2);
            let ex: Vec<J> = (0..n)
                .map(|_| {
                    obj(vec![
                        ("text", sentence(r, 4, 14).into()),
                        (
                            "extractions",
                            J::Arr(vec![obj(vec![
                                ("extraction_class", "tag".into()),
                                ("extraction_text", sentence(r, 1, 2).into()),
                            ])]),
                        ),
                    ])
                })
                .collect();
            json(&J::Arr(ex), true)
        };
        let created_at = text(timestamp(r));
        let author = match r.gen_range(0..100) {
            0..22 => SqlValue::Null,
            _ => text(pick(
                r,
                &["analyst@example.com", "李雷", "bob", "dana", "Zoë O'Brien"],
            )),
        };
        row(
            &cat::TAGPROMPT,
            [
                ("id", text(id)),
                ("document_id", text(document_id)),
                ("prompt_text", text(prompt)),
                ("examples_json", examples),
                ("created_at", created_at),
                ("author", author),
            ],
        )
    }
}
