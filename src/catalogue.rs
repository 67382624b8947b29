//! The one table catalogue: which SQLite table maps to which Supabase table, its
//! key, and how each column converts. The writer, the readers, the exporter and
//! the verifier all use it, so they cannot disagree.
//!
//! Column order matters: the key is always the first column, and rows
//! ([`crate::normalise::SqlRow`]) hold their values in this order.

use crate::error::{Error, Result};

/// How a column's value is represented on the Supabase side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// text on both sides.
    Text,
    /// SQLite INTEGER, PostgreSQL bigint.
    Integer,
    /// SQLite REAL, PostgreSQL double precision.
    Float,
    /// SQLite 0/1, PostgreSQL boolean.
    Bool,
    /// JSON text in SQLite, a jsonb value in PostgreSQL.
    Json,
    /// ISO-8601 text in SQLite, timestamptz in PostgreSQL.
    Timestamp,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Name in the SQLite table written by DoX (the ORM schema).
    pub sqlite: &'static str,
    /// Name in the Supabase table.
    pub supabase: &'static str,
    pub kind: Kind,
    /// SQLite declares the column NOT NULL (the Supabase side never does: see the migrations).
    pub not_null: bool,
}

/// No table has more columns (a test checks): scans hold a row's values in an
/// array of this size instead of allocating for every row.
pub(crate) const MAX_COLUMNS: usize = 16;

#[derive(Debug)]
pub struct Table {
    /// SQLite table name; also the name users give on the command line.
    pub sqlite: &'static str,
    pub supabase: &'static str,
    /// Columns, key first.
    pub columns: &'static [Column],
    /// Older SQLite files (built by Alembic) may name a column differently:
    /// (ORM name, legacy name).
    pub legacy_names: &'static [(&'static str, &'static str)],
    /// Part of the DoX document data that `reset()` clears.
    pub document_data: bool,
}

impl PartialEq for Table {
    fn eq(&self, other: &Table) -> bool {
        self.sqlite == other.sqlite
    }
}

impl Table {
    pub fn key(&self) -> &'static Column {
        &self.columns[0]
    }

    /// The Supabase column names, comma-separated (PostgREST's `columns=`).
    pub fn supabase_columns(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.supabase).collect();
        names.join(",")
    }

    pub fn column(&self, sqlite_name: &str) -> Option<(usize, &'static Column)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.sqlite == sqlite_name)
    }

    pub fn index_of(&self, sqlite_name: &str) -> usize {
        self.column(sqlite_name)
            .unwrap_or_else(|| panic!("catalogue: {} has no column {sqlite_name}", self.sqlite))
            .0
    }
}

const fn col(sqlite: &'static str, supabase: &'static str, kind: Kind, not_null: bool) -> Column {
    Column {
        sqlite,
        supabase,
        kind,
        not_null,
    }
}

use Kind::*;

pub static ARTIFACT: Table = Table {
    sqlite: "artifact",
    supabase: "artifacts",
    columns: &[
        col("id", "id", Text, true),
        col("filename", "filename", Text, true),
        col("filepath", "filepath", Text, true),
        col("filetype", "filetype", Text, true),
        col("report_week", "report_week", Text, false),
        col("status", "status", Text, false),
        col("source_url", "source_url", Text, false),
        col("extra_json", "extras", Json, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static EVIDENCE: Table = Table {
    sqlite: "evidence",
    supabase: "evidence",
    columns: &[
        col("id", "id", Text, true),
        col("artifact_id", "artifact_id", Text, true),
        col("locator", "locator", Text, false),
        col("preview", "preview", Text, false),
        col("content_type", "content_type", Text, false),
        col("coordinates_json", "coordinates", Json, false),
        col("full_data_json", "full_data", Json, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static FACT: Table = Table {
    sqlite: "fact",
    supabase: "facts",
    columns: &[
        col("id", "id", Text, true),
        col("artifact_id", "artifact_id", Text, true),
        col("report_week", "report_week", Text, false),
        col("entity", "entity", Text, false),
        col("metrics_json", "metrics", Json, true),
        col("evidence_id", "evidence_id", Text, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static SUMMARIES: Table = Table {
    sqlite: "summaries",
    supabase: "summaries",
    columns: &[
        col("id", "id", Text, true),
        col("scope", "scope", Text, true),
        col("scope_key", "scope_key", Text, true),
        col("style", "style", Text, true),
        col("provider", "provider", Text, false),
        col("prompt", "prompt", Text, false),
        col("summary_text", "summary_text", Text, true),
        col("artifact_ids_json", "artifact_ids", Json, false),
        col("evidence_ids_json", "evidence_ids", Json, false),
        col("created_at", "created_at", Text, true),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static DOCUMENT: Table = Table {
    sqlite: "document",
    supabase: "documents",
    columns: &[
        col("id", "id", Text, true),
        col("path", "path", Text, true),
        col("type", "type", Text, true),
        col("title", "title", Text, false),
        col("source", "source", Text, false),
        col("created_at", "created_at", Text, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static SECTION: Table = Table {
    sqlite: "section",
    supabase: "document_sections",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("order", "order", Integer, true),
        col("text", "text", Text, true),
        col("page", "page", Integer, false),
        col("bbox_json", "bbox_json", Json, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static DOCTABLE: Table = Table {
    sqlite: "doctable",
    supabase: "document_tables",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("order", "order", Integer, true),
        col("table_content_json", "json", Json, true),
    ],
    legacy_names: &[("table_content_json", "json")],
    document_data: true,
};

pub static APIENDPOINT: Table = Table {
    sqlite: "apiendpoint",
    supabase: "api_endpoints",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("name", "name", Text, false),
        col("method", "method", Text, true),
        col("path", "path", Text, true),
        col("summary", "summary", Text, false),
        col("tags_json", "tags", Json, false),
        col("params_json", "params_json", Json, false),
        col("responses_json", "responses_json", Json, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static LOGENTRY: Table = Table {
    sqlite: "logentry",
    supabase: "log_entries",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("ts", "ts", Text, false),
        col("level", "level", Text, false),
        col("code", "code", Text, false),
        col("component", "component", Text, false),
        col("message", "message", Text, false),
        col("attrs_json", "attrs", Json, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static TAGROW: Table = Table {
    sqlite: "tagrow",
    supabase: "tags",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("tag", "tag", Text, true),
        col("score", "score", Float, false),
        col("source_ptr", "source_ptr", Text, false),
        col("hrm_steps", "hrm_steps", Integer, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static TAGPROMPT: Table = Table {
    sqlite: "tagprompt",
    supabase: "tag_prompts",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("prompt_text", "prompt_text", Text, true),
        col("examples_json", "examples", Json, false),
        col("created_at", "created_at", Text, false),
        col("author", "author", Text, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static DOCUMENT_ENTITIES: Table = Table {
    sqlite: "document_entities",
    supabase: "document_entities",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("label", "label", Text, true),
        col("text", "text", Text, true),
        col("start_char", "start_char", Integer, false),
        col("end_char", "end_char", Integer, false),
        col("page", "page", Integer, false),
        col("entity_context", "context", Text, false),
        col("source_index", "source_index", Integer, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static DOCUMENT_STRUCTURE: Table = Table {
    sqlite: "document_structure",
    supabase: "document_structure",
    columns: &[
        col("document_id", "document_id", Text, true),
        col("hierarchy_json", "hierarchy", Json, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static DOCUMENT_METRIC_HITS: Table = Table {
    sqlite: "document_metric_hits",
    supabase: "document_metric_hits",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, true),
        col("type", "type", Text, true),
        col("value", "value", Text, false),
        col("metric_context", "context", Text, false),
        col("position", "position", Integer, false),
        col("page", "page", Integer, false),
        col("source_index", "source_index", Integer, false),
    ],
    legacy_names: &[],
    document_data: true,
};

pub static CIPHER_MEMORY: Table = Table {
    sqlite: "cipher_memory",
    supabase: "cipher_memory",
    columns: &[
        col("id", "id", Text, true),
        col("category", "category", Text, true),
        col("content_json", "content", Json, true),
        col("context_json", "context", Json, false),
        col("user_id", "user_id", Text, false),
        col("created_at", "created_at", Timestamp, false),
    ],
    legacy_names: &[],
    document_data: false,
};

pub static USER_PREFS: Table = Table {
    sqlite: "user_prefs",
    supabase: "user_prefs",
    columns: &[
        col("user_id", "user_id", Text, true),
        col("preferences_json", "preferences", Json, true),
        col("updated_at", "updated_at", Timestamp, false),
    ],
    legacy_names: &[],
    document_data: false,
};

pub static SKILLS_REGISTRY: Table = Table {
    sqlite: "skills_registry",
    supabase: "skills_registry",
    columns: &[
        col("id", "id", Text, true),
        col("name", "name", Text, true),
        col("description", "description", Text, true),
        col("parameters_json", "parameters", Json, true),
        col("workflow_def_json", "workflow_def", Json, true),
        col("enabled", "enabled", Bool, true),
        col("created_at", "created_at", Timestamp, false),
    ],
    legacy_names: &[],
    document_data: false,
};

/// Supabase only: the search index. SQLite's methods for it are no-ops (spec 4, #12/#13).
pub static SEARCH_CHUNKS: Table = Table {
    sqlite: "search_chunks",
    supabase: "search_chunks",
    columns: &[
        col("id", "id", Text, true),
        col("document_id", "document_id", Text, false),
        col("source_type", "source_type", Text, false),
        col("chunk_index", "chunk_index", Integer, false),
        col("text", "text", Text, false),
        col("meta", "meta", Json, false),
        col("embedding", "embedding", Json, false),
    ],
    legacy_names: &[],
    document_data: false,
};

/// Every table that exists on both sides, parents before children (the order a
/// copy should follow).
pub static TABLES: [&Table; 17] = [
    &ARTIFACT,
    &DOCUMENT,
    &SECTION,
    &DOCTABLE,
    &APIENDPOINT,
    &LOGENTRY,
    &TAGROW,
    &FACT,
    &EVIDENCE,
    &TAGPROMPT,
    &SUMMARIES,
    &DOCUMENT_ENTITIES,
    &DOCUMENT_STRUCTURE,
    &DOCUMENT_METRIC_HITS,
    &CIPHER_MEMORY,
    &USER_PREFS,
    &SKILLS_REGISTRY,
];

/// The copied tables named in a `--tables` list (SQLite or Supabase names,
/// blanks ignored), in catalogue order: the one parser of table names for every
/// command. An unknown name, or a table that is not copied (`search_chunks`,
/// which Supabase derives), is an error listing the valid names. No names gives
/// an empty list, which the commands read as "every table".
pub fn tables_named<S: AsRef<str>>(names: &[S]) -> Result<Vec<&'static Table>> {
    let mut wanted = Vec::new();
    for n in names
        .iter()
        .map(|n| n.as_ref().trim())
        .filter(|n| !n.is_empty())
    {
        let t = table(n)?;
        if !TABLES.contains(&t) {
            return Err(Error::invalid(format!(
                "`{n}` is not copied (Supabase derives it); valid tables: {}",
                valid_names()
            )));
        }
        wanted.push(t);
    }
    Ok(TABLES
        .iter()
        .copied()
        .filter(|t| wanted.contains(t))
        .collect())
}

/// The copied tables' SQLite names, for error messages.
fn valid_names() -> String {
    TABLES
        .iter()
        .map(|t| t.sqlite)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Look a table up by its SQLite or its Supabase name.
pub fn table(name: &str) -> Result<&'static Table> {
    TABLES
        .iter()
        .copied()
        .chain(std::iter::once(&SEARCH_CHUNKS))
        .find(|t| t.sqlite == name || t.supabase == name)
        .ok_or_else(|| Error::invalid(format!("unknown table `{name}` (known: {})", valid_names())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_named_accepts_both_names_in_catalogue_order_and_rejects_the_rest() {
        let t = tables_named(&["tags", " artifact ", ""]).unwrap();
        assert_eq!(t, vec![&ARTIFACT, &TAGROW]);
        assert!(tables_named::<&str>(&[]).unwrap().is_empty());
        let e = tables_named(&["search_chunks"]).unwrap_err().to_string();
        assert!(
            e.contains("search_chunks") && e.contains("skills_registry"),
            "{e}"
        );
        let e = tables_named(&["nope"]).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("artifact"), "{e}");
    }

    #[test]
    fn no_table_has_more_than_max_columns() {
        for t in TABLES.iter().copied().chain([&SEARCH_CHUNKS]) {
            assert!(t.columns.len() <= MAX_COLUMNS, "{}", t.sqlite);
        }
    }

    #[test]
    fn names_are_unique_and_keys_are_not_null_text() {
        let mut seen = std::collections::HashSet::new();
        for t in TABLES.iter().copied().chain([&SEARCH_CHUNKS]) {
            assert!(seen.insert(t.sqlite), "duplicate {}", t.sqlite);
            assert_eq!(t.key().kind, Kind::Text, "{}", t.sqlite);
            assert!(t.key().not_null);
            let mut cols = std::collections::HashSet::new();
            for c in t.columns {
                assert!(cols.insert(c.supabase), "{}.{}", t.sqlite, c.supabase);
            }
        }
        assert_eq!(seen.len(), 18);
    }

    #[test]
    fn lookup_by_either_name() {
        assert_eq!(table("tagrow").unwrap().supabase, "tags");
        assert_eq!(table("tags").unwrap().sqlite, "tagrow");
        let err = table("nope").unwrap_err().to_string();
        assert!(err.contains("unknown table `nope`"), "{err}");
    }
}
