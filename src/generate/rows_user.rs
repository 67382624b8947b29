//! Rows of `cipher_memory`, `user_prefs` and `skills_registry`.

use rand::Rng;

use crate::catalogue as cat;
use crate::normalise::{SqlRow, SqlValue};

use super::generator::Generator;
use super::ids::{salt, uuid_like};
use super::text::{json, obj, pick, push_word, ratio, row, sentence, text, J};

impl Generator {
    pub(super) fn memory(&mut self, i: u64) -> SqlRow {
        let id = self.key(salt("cipher_memory"), i, 4);
        let user_id = if self.rng.gen_range(0..100) < 16 {
            SqlValue::Null
        } else {
            let u = self.rng.gen_range(0..self.n_users);
            text(self.user_id(u))
        };
        let r = &mut self.rng;
        // Free text: no CHECK constraint (spec S8).
        let category = pick(
            r,
            &[
                "fact",
                "preference",
                "team_memory",
                "skill_learned",
                "workflow",
                "other",
                "Custom category 🧪",
            ],
        );
        let content = match category {
            "team_memory" => obj(vec![
                (
                    "memory_id",
                    uuid_like(self.seed, salt("memory_id"), i, 4).into(),
                ),
                ("workspace_id", "ws-finance".into()),
                ("key", sentence(r, 1, 3).into()),
                // A JSON document inside a JSON string.
                (
                    "content",
                    obj(vec![("owner", pick(r, &["dana", "李雷", "bob"]).into())])
                        .dumps(false)
                        .into(),
                ),
            ]),
            "preference" => obj(vec![
                ("key", pick(r, &["theme", "language", "density"]).into()),
                (
                    "value",
                    pick(r, &["dark", "light", "de-DE", "ja-JP"]).into(),
                ),
            ]),
            "fact" => obj(vec![
                ("entity", sentence(r, 1, 3).into()),
                (
                    "value",
                    format!("${:.1} million", r.gen_range(0.1..90.0_f64)).into(),
                ),
                (
                    "period",
                    format!("Q{} {}", r.gen_range(1..=4), r.gen_range(2023..=2026)).into(),
                ),
            ]),
            _ => obj(vec![
                ("text", sentence(r, 4, 24).into()),
                ("confidence", J::Float(ratio(r))),
                (
                    "entities",
                    J::Arr(
                        (0..r.gen_range(0..3))
                            .map(|_| sentence(r, 1, 1).into())
                            .collect(),
                    ),
                ),
            ]),
        };
        let context = if r.gen_bool(0.27) {
            SqlValue::Null
        } else if category == "team_memory" {
            json(
                &obj(vec![
                    ("type", "team_memory".into()),
                    ("author", pick(r, &["dana", "李雷", "bob"]).into()),
                ]),
                false,
            )
        } else {
            json(
                &obj(vec![
                    (
                        "source",
                        pick(r, &["cli", "chat", "financial_report.pdf"]).into(),
                    ),
                    ("session", J::Int(r.gen_range(1..10_000))),
                ]),
                false,
            )
        };
        let created_at = self.maybe(0.02, Self::ts);
        row(
            &cat::CIPHER_MEMORY,
            [
                ("id", text(id)),
                ("category", text(category)),
                ("content_json", json(&content, false)),
                ("context_json", context),
                ("user_id", user_id),
                ("created_at", created_at),
            ],
        )
    }

    pub(super) fn user_pref(&mut self, i: u64) -> SqlRow {
        let user_id = self.user_id(i);
        let r = &mut self.rng;
        let keys = ["theme", "language", "timezone", "density", "default_model"];
        let n = r.gen_range(1..=keys.len());
        let prefs: Vec<(String, J)> = keys[..n]
            .iter()
            .map(|k| {
                let v = match r.gen_range(0..10) {
                    0 => J::Int(r.gen_range(0..100)),
                    1 => J::Bool(r.gen_bool(0.5)),
                    2 => obj(vec![(
                        "nested",
                        J::Arr(vec![J::Int(1), J::Int(2), J::Int(3)]),
                    )]),
                    _ => pick(
                        r,
                        &[
                            "dark",
                            "light",
                            "de-DE",
                            "ja-JP",
                            "Asia/Tokyo",
                            "gemini-2.5-flash",
                        ],
                    )
                    .into(),
                };
                ((*k).to_owned(), v)
            })
            .collect();
        let updated_at = self.maybe(0.05, Self::ts);
        row(
            &cat::USER_PREFS,
            [
                ("user_id", text(user_id)),
                ("preferences_json", json(&J::Obj(prefs), false)),
                ("updated_at", updated_at),
            ],
        )
    }

    pub(super) fn skill(&mut self, i: u64) -> SqlRow {
        const NAMES: &[&str] = &[
            "extract_tables",
            "web_search",
            "summarize_pdf",
            "tag_documents",
        ];
        let id = self.key(salt("skills_registry"), i, 4);
        let r = &mut self.rng;
        // `name` is UNIQUE: past the well-known names, the index makes it so.
        let name = match NAMES.get(usize::try_from(i).unwrap_or(usize::MAX)) {
            Some(n) => (*n).to_owned(),
            None => {
                let mut w = String::new();
                push_word(r, &mut w);
                format!("skill_{i}_{w}")
            }
        };
        let parameters = if r.gen_bool(0.3) {
            J::Obj(vec![])
        } else {
            obj(vec![
                (
                    "input",
                    obj(vec![("type", "string".into()), ("required", true.into())]),
                ),
                ("max_items", J::Int(r.gen_range(1..50))),
            ])
        };
        let n = r.gen_range(1..=5);
        let steps: Vec<J> = (0..n)
            .map(|_| {
                obj(vec![
                    (
                        "tool",
                        pick(r, &["search", "summarize", "extract_tags", "docling"]).into(),
                    ),
                    ("args", obj(vec![("k", J::Int(r.gen_range(1..10)))])),
                ])
            })
            .collect();
        let workflow = obj(vec![("steps", J::Arr(steps))]);
        let description = sentence(r, 4, 20);
        let enabled = SqlValue::Integer(i64::from(r.gen_bool(0.75)));
        let created_at = self.maybe(0.05, Self::ts);
        row(
            &cat::SKILLS_REGISTRY,
            [
                ("id", text(id)),
                ("name", text(name)),
                ("description", text(description)),
                ("parameters_json", json(&parameters, false)),
                ("workflow_def_json", json(&workflow, false)),
                ("enabled", enabled),
                ("created_at", created_at),
            ],
        )
    }
}
