//! The DoX storage interface as data.
//!
//! Every named write method is a variant of [`Write`], every read a variant of
//! [`Read`]. The dual layer mirrors a `Write` value, a later outbox can record it
//! in the primary's transaction and replay it, and the command line builds one
//! from `METHOD --json ARGS`. The typed methods of [`crate::db::Dox`] are thin
//! wrappers that build these values.
//!
//! Records deserialise from the dicts the DoX application passes (spec section 4).
//! As the original SQLite layer did, record keys that are not columns are
//! ignored; the method's own arguments, however, are checked strictly.

mod reads;
mod records;
mod steps;
mod writes;

pub use reads::{Read, READ_METHODS};
pub use records::{
    ApiEndpoint, Artifact, DocTable, Document, Entity, Evidence, Fact, JsonText, LogEntry,
    LooseString, MetricHit, SearchChunk, Section, Summary, TagRow,
};
pub(crate) use steps::skill_row;
pub use steps::Step;
pub use writes::{Write, WRITE_METHODS};

use serde_json::Value;

use crate::error::{Error, Result};

/// Python truthiness of a JSON value.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A write or a read, as named on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Write(Write),
    Read(Read),
}

impl Call {
    pub fn parse(method: &str, args: Value) -> Result<Call> {
        if WRITE_METHODS.contains(&method) {
            Write::from_call(method, args).map(Call::Write)
        } else if READ_METHODS.contains(&method) {
            Read::from_call(method, args).map(Call::Read)
        } else {
            Err(Error::invalid(format!(
                "unknown method `{method}`; writes: {}; reads: {}",
                WRITE_METHODS.join(", "),
                READ_METHODS.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_merges_preferences_and_extras_and_keeps_an_existing_skill() {
        let mut w = Write::from_call(
            "set_user_pref",
            serde_json::json!({"user_id": "u", "key": "b", "value": 2}),
        )
        .unwrap();
        assert!(w.steps().is_none(), "unresolved: no steps yet");
        let current = serde_json::json!({"user_id": "u", "preferences": {"a": 1, "b": 0}});
        w.resolve(current.as_object());
        let Write::SetUserPref { preferences, .. } = &w else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(preferences.clone().unwrap()),
            serde_json::json!({"a": 1, "b": 2})
        );
        assert!(w.steps().is_some(), "resolved: a plain upsert");
        assert!(w.current_row().is_none(), "resolved once");

        let mut w = Write::from_call(
            "update_artifact",
            serde_json::json!({"artifact_id": "a1", "fields": {"extras": {"n": 1}}}),
        )
        .unwrap();
        // Extras stored as a JSON string are decoded (DoX does).
        let current = serde_json::json!({"id": "a1", "extras": "{\"m\": 0, \"n\": 0}"});
        w.resolve(current.as_object());
        let Write::UpdateArtifact {
            fields,
            merge_extras,
            ..
        } = &w
        else {
            unreachable!()
        };
        assert_eq!(fields["extras"], serde_json::json!({"m": 0, "n": 1}));
        assert!(!merge_extras, "a mirror writes the merged object as is");

        let args = serde_json::json!({"name": "s", "description": "d", "parameters": {},
            "workflow_def": {}, "id": "new", "created_at": "2026-01-01T00:00:00Z"});
        let mut w = Write::from_call("register_skill", args.clone()).unwrap();
        w.resolve(None);
        let Write::RegisterSkill { id, .. } = &w else {
            unreachable!()
        };
        assert_eq!(id.as_deref(), Some("new"), "a new skill keeps its own id");
        let mut w = Write::from_call("register_skill", args).unwrap();
        let current =
            serde_json::json!({"id": "old", "name": "s", "created_at": "2020-01-01T00:00:00Z"});
        w.resolve(current.as_object());
        let Write::RegisterSkill { id, created_at, .. } = &w else {
            unreachable!()
        };
        assert_eq!(id.as_deref(), Some("old"));
        assert_eq!(created_at.as_deref(), Some("2020-01-01T00:00:00Z"));
    }
    use serde_json::json;

    #[test]
    fn every_method_name_round_trips() {
        for m in WRITE_METHODS {
            let err = Write::from_call(m, json!({})).err();
            // Methods without required arguments parse; the others name a missing field.
            if let Some(e) = err {
                assert!(e.to_string().contains("missing field"), "{m}: {e}");
            }
        }
        for m in READ_METHODS {
            if let Err(e) = Read::from_call(m, json!({})) {
                assert!(e.to_string().contains("missing field"), "{m}: {e}");
            }
        }
    }

    #[test]
    fn bad_calls_get_clear_errors() {
        let e = Call::parse("add_artifcat", json!({}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown method `add_artifcat`"), "{e}");
        let e = Call::parse("add_artifact", json!({"artifact": {"id": "a"}}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add_artifact") && e.contains("missing field `filename`"),
            "{e}"
        );
        let e = Call::parse(
            "add_memory",
            json!({"category": "x", "content": {}, "bogus": 1}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = Call::parse(
            "update_artifact",
            json!({"artifact_id": "a", "colour": "red"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = Call::parse("add_fact", json!([1])).unwrap_err().to_string();
        assert!(e.contains("must be a JSON object"), "{e}");
    }
}
