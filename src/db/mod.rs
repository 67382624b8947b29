//! The storage contract: the [`Database`] trait every backend implements, and
//! [`Dox`], the DoX interface of typed methods built on top of it.
//!
//! A backend implements two primitives: [`Database::apply`] (one [`Write`]) and
//! [`Database::fetch`] (canonical rows of one table, filtered by equality). The
//! read methods of DoX are written once, in `reads`, over `fetch`, so every
//! backend answers them identically.

use std::future::Future;

use serde_json::{Map, Value};

use crate::catalogue::Table;
use crate::error::{Error, Result};
use crate::model::{
    ApiEndpoint, Artifact, Call, DocTable, Document, Entity, Evidence, Fact, LogEntry, MetricHit,
    Read, SearchChunk, Section, Summary, TagRow, Write,
};

pub(crate) mod dual;
pub(crate) mod reads;
pub(crate) mod sqlite;
pub(crate) mod supabase;

/// Supabase's database reached directly (its connection string), for `--via postgres`.
pub use crate::postgres::{CopyMode, Postgres};
/// The PostgREST client a [`SupabaseDatabase`] is built on.
pub use crate::rest::{RestClient, RestConfig};
pub use dual::{Breaker, DualDatabase, DualStats, ReplayReport, SecondaryFailure};
pub use sqlite::{SqliteDatabase, SqliteOptions};
pub use supabase::SupabaseDatabase;

/// A canonical row: Supabase column names to canonical values (see [`crate::normalise`]).
pub type Row = Map<String, Value>;

/// An equality filter on a column, by SQLite column name, with a canonical value.
pub type Filter = (&'static str, Value);

/// What applying a write produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The method's return value (an id, the updated skill, or null).
    pub value: Value,
    /// The write as it was actually carried out: prepared (ids, timestamps) and,
    /// for read-modify-write methods, resolved to absolute values (the merged
    /// preferences, the existing skill id, the merged extras). This is what a
    /// mirror applies, so that both sides end up with the same row.
    pub resolved: Write,
}

/// What a primary that follows the recorded primary did with a write
/// ([`Database::apply_followed`]).
#[derive(Debug)]
pub enum Followed {
    /// Applied here; `captured`: the change log recorded it
    /// ([`Database::apply_captured`]).
    Here { applied: Applied, captured: bool },
    /// Not applied (nothing of it committed): this side is no longer the
    /// recorded primary (`_dualwrite_primary`, docs/design/cutover.md). The
    /// write, as it was given, goes to the other side.
    NotPrimary(Write),
}

/// A storage backend.
pub trait Database: Send + Sync {
    /// `sqlite`, `supabase`, or `dual:<primary>+<secondary>`.
    fn backend(&self) -> String;

    /// Apply one write. Implementations call [`Write::prepare`] first (it is idempotent).
    fn apply(&self, write: Write) -> impl Future<Output = Result<Applied>> + Send;

    /// Every row of `table` matching all `filters`, canonical, in key order.
    fn fetch(
        &self,
        table: &'static Table,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send;

    /// [`Database::apply`], and whether the write's own transaction recorded
    /// it in the change log (change capture installed on a SQLite file; never
    /// otherwise). The dual layer then leaves its mirror to the drainer.
    fn apply_captured(&self, write: Write) -> impl Future<Output = Result<(Applied, bool)>> + Send {
        async move { Ok((self.apply(write).await?, false)) }
    }

    /// [`Database::apply_captured`], unless this side is no longer the
    /// recorded primary, read inside the write's own transaction (a SQLite
    /// file after cutover). Every other backend applies.
    fn apply_followed(&self, write: Write) -> impl Future<Output = Result<Followed>> + Send {
        async move {
            let (applied, captured) = self.apply_captured(write).await?;
            Ok(Followed::Here { applied, captured })
        }
    }

    /// [`Database::fetch`], or `None` when this side is no longer the
    /// recorded primary (a SQLite file after cutover).
    fn fetch_followed(
        &self,
        table: &'static Table,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Option<Vec<Row>>>> + Send {
        async move { self.fetch(table, filters).await.map(Some) }
    }
}

impl<T: Database> Database for std::sync::Arc<T> {
    fn backend(&self) -> String {
        (**self).backend()
    }

    fn apply(&self, write: Write) -> impl Future<Output = Result<Applied>> + Send {
        (**self).apply(write)
    }

    fn fetch(
        &self,
        table: &'static Table,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<Row>>> + Send {
        (**self).fetch(table, filters)
    }

    fn apply_captured(&self, write: Write) -> impl Future<Output = Result<(Applied, bool)>> + Send {
        (**self).apply_captured(write)
    }

    fn apply_followed(&self, write: Write) -> impl Future<Output = Result<Followed>> + Send {
        (**self).apply_followed(write)
    }

    fn fetch_followed(
        &self,
        table: &'static Table,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Option<Vec<Row>>>> + Send {
        (**self).fetch_followed(table, filters)
    }
}

fn id_of(v: Value) -> String {
    match v {
        Value::String(s) => s,
        _ => String::new(),
    }
}

fn list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

fn optional(v: Value) -> Option<Value> {
    (!v.is_null()).then_some(v)
}

/// The DoX storage interface: every named write and each of the 20 reads as a
/// typed method.
/// Implemented for every [`Database`]; each method builds a [`Write`] or
/// [`Read`] value and hands it over.
pub trait Dox: Database {
    /// Apply a write and return the method's value.
    fn write(&self, w: Write) -> impl Future<Output = Result<Value>> + Send {
        async move { Ok(self.apply(w).await?.value) }
    }

    fn read(&self, r: Read) -> impl Future<Output = Result<Value>> + Send {
        async move { reads::run(self, &r).await }
    }

    fn call(&self, call: Call) -> impl Future<Output = Result<Value>> + Send {
        async move {
            match call {
                Call::Write(w) => self.write(w).await,
                Call::Read(r) => self.read(r).await,
            }
        }
    }

    fn add_artifact(&self, artifact: Artifact) -> impl Future<Output = Result<String>> + Send {
        async move { self.write(Write::AddArtifact { artifact }).await.map(id_of) }
    }
    fn add_fact(&self, fact: Fact) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::AddFact { fact }).await.map(drop) }
    }
    fn add_evidence(&self, evidence: Evidence) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::AddEvidence { evidence }).await.map(drop) }
    }
    fn add_document(&self, doc: Document) -> impl Future<Output = Result<String>> + Send {
        async move { self.write(Write::AddDocument { doc }).await.map(id_of) }
    }
    fn add_section(&self, section: Section) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::AddSection { section }).await.map(drop) }
    }
    fn add_table(&self, table: DocTable) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::AddTable { table }).await.map(drop) }
    }
    fn add_api(&self, api: ApiEndpoint) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::AddApi { api }).await.map(drop) }
    }
    fn add_log(&self, log: LogEntry) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::AddLog { log }).await.map(drop) }
    }
    fn add_tag(&self, tag: TagRow) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::AddTag { tag }).await.map(drop) }
    }
    fn save_tag_prompt(
        &self,
        document_id: &str,
        prompt_text: &str,
        examples: Option<Value>,
        author: Option<&str>,
    ) -> impl Future<Output = Result<String>> + Send {
        let w = Write::SaveTagPrompt {
            document_id: document_id.into(),
            prompt_text: prompt_text.into(),
            examples,
            author: author.map(Into::into),
            id: None,
            created_at: None,
        };
        async move { self.write(w).await.map(id_of) }
    }
    fn reset(&self) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::Reset {}).await.map(drop) }
    }
    fn reset_search_chunks(&self) -> impl Future<Output = Result<()>> + Send {
        async move { self.write(Write::ResetSearchChunks {}).await.map(drop) }
    }
    fn store_search_chunks(
        &self,
        chunks: Vec<SearchChunk>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            self.write(Write::StoreSearchChunks { chunks })
                .await
                .map(drop)
        }
    }
    fn store_entities(
        &self,
        document_id: &str,
        entities: Vec<Entity>,
    ) -> impl Future<Output = Result<()>> + Send {
        let w = Write::StoreEntities {
            document_id: document_id.into(),
            entities,
        };
        async move { self.write(w).await.map(drop) }
    }
    fn store_structure(
        &self,
        document_id: &str,
        structure: Option<Value>,
    ) -> impl Future<Output = Result<()>> + Send {
        let w = Write::StoreStructure {
            document_id: document_id.into(),
            structure,
        };
        async move { self.write(w).await.map(drop) }
    }
    fn store_metric_hits(
        &self,
        document_id: &str,
        metrics: Vec<MetricHit>,
    ) -> impl Future<Output = Result<()>> + Send {
        let w = Write::StoreMetricHits {
            document_id: document_id.into(),
            metrics,
        };
        async move { self.write(w).await.map(drop) }
    }
    fn store_summary(&self, summary: Summary) -> impl Future<Output = Result<String>> + Send {
        async move { self.write(Write::StoreSummary { summary }).await.map(id_of) }
    }
    fn add_memory(
        &self,
        category: &str,
        content: Value,
        context: Option<Value>,
        user_id: Option<&str>,
    ) -> impl Future<Output = Result<String>> + Send {
        let w = Write::AddMemory {
            category: category.into(),
            content,
            context,
            user_id: user_id.map(Into::into),
            id: None,
            created_at: None,
        };
        async move { self.write(w).await.map(id_of) }
    }
    fn set_user_pref(
        &self,
        user_id: &str,
        key: &str,
        value: Value,
    ) -> impl Future<Output = Result<()>> + Send {
        let w = Write::SetUserPref {
            user_id: user_id.into(),
            key: key.into(),
            value,
            updated_at: None,
            preferences: None,
        };
        async move { self.write(w).await.map(drop) }
    }
    fn register_skill(
        &self,
        name: &str,
        description: &str,
        parameters: Value,
        workflow_def: Value,
        enabled: bool,
    ) -> impl Future<Output = Result<String>> + Send {
        let w = Write::RegisterSkill {
            name: name.into(),
            description: description.into(),
            parameters,
            workflow_def,
            enabled,
            id: None,
            created_at: None,
        };
        async move { self.write(w).await.map(id_of) }
    }
    fn update_skill(
        &self,
        skill_id: &str,
        enabled: bool,
    ) -> impl Future<Output = Result<Option<Value>>> + Send {
        let w = Write::UpdateSkill {
            skill_id: skill_id.into(),
            enabled,
        };
        async move { self.write(w).await.map(optional) }
    }
    fn update_artifact(
        &self,
        artifact_id: &str,
        fields: Map<String, Value>,
    ) -> impl Future<Output = Result<()>> + Send {
        let w = Write::UpdateArtifact {
            artifact_id: artifact_id.into(),
            fields,
            merge_extras: true,
        };
        async move {
            w.validate()?;
            self.write(w).await.map(drop)
        }
    }

    fn get_artifacts(&self) -> impl Future<Output = Result<Vec<Value>>> + Send {
        async move { self.read(Read::GetArtifacts {}).await.map(list) }
    }
    fn get_facts(
        &self,
        report_week: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::GetFacts {
            report_week: report_week.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn get_evidence(
        &self,
        evidence_id: &str,
    ) -> impl Future<Output = Result<Option<Value>>> + Send {
        let r = Read::GetEvidence {
            evidence_id: evidence_id.into(),
        };
        async move { self.read(r).await.map(optional) }
    }
    fn get_all_evidence(&self) -> impl Future<Output = Result<Vec<Value>>> + Send {
        async move { self.read(Read::GetAllEvidence {}).await.map(list) }
    }
    fn get_summary(
        &self,
        scope_key: &str,
        style: &str,
    ) -> impl Future<Output = Result<Option<Value>>> + Send {
        let r = Read::GetSummary {
            scope_key: scope_key.into(),
            style: style.into(),
        };
        async move { self.read(r).await.map(optional) }
    }
    fn list_summaries(
        &self,
        scope: Option<&str>,
        style: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListSummaries {
            scope: scope.map(Into::into),
            style: style.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn list_entities(
        &self,
        document_id: Option<&str>,
        label: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListEntities {
            document_id: document_id.map(Into::into),
            label: label.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn list_metric_hits(
        &self,
        document_id: Option<&str>,
        metric_type: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListMetricHits {
            document_id: document_id.map(Into::into),
            metric_type: metric_type.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    /// `list_logs`: every filter optional; `ts_from` / `ts_to` bound the time
    /// window (rows whose `ts` does not parse are then excluded, B7).
    fn list_logs(&self, filter: LogFilter<'_>) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListLogs {
            level: filter.level.map(Into::into),
            code: filter.code.map(Into::into),
            q: filter.q.map(Into::into),
            ts_from: filter.ts_from.map(Into::into),
            ts_to: filter.ts_to.map(Into::into),
            document_id: filter.document_id.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn list_apis(
        &self,
        tag: Option<&str>,
        method: Option<&str>,
        path_like: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListApis {
            tag: tag.map(Into::into),
            method: method.map(Into::into),
            path_like: path_like.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn get_latest_tag_prompt(
        &self,
        document_id: &str,
    ) -> impl Future<Output = Result<Option<Value>>> + Send {
        let r = Read::GetLatestTagPrompt {
            document_id: document_id.into(),
        };
        async move { self.read(r).await.map(optional) }
    }
    fn list_tag_prompt_history(
        &self,
        document_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListTagPromptHistory {
            document_id: document_id.into(),
            limit,
        };
        async move { self.read(r).await.map(list) }
    }
    fn list_log_messages(
        &self,
        document_id: &str,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListLogMessages {
            document_id: document_id.into(),
        };
        async move { self.read(r).await.map(list) }
    }
    fn list_documents(
        &self,
        kind: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListDocuments {
            kind: kind.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn list_tags(
        &self,
        document_id: Option<&str>,
        q: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::ListTags {
            document_id: document_id.map(Into::into),
            q: q.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn has_tag(&self, document_id: &str, tag: &str) -> impl Future<Output = Result<bool>> + Send {
        let r = Read::HasTag {
            document_id: document_id.into(),
            tag: tag.into(),
        };
        async move { Ok(self.read(r).await? == Value::Bool(true)) }
    }
    fn get_structure(
        &self,
        document_id: &str,
    ) -> impl Future<Output = Result<Option<Value>>> + Send {
        let r = Read::GetStructure {
            document_id: document_id.into(),
        };
        async move { self.read(r).await.map(optional) }
    }
    fn get_user_prefs(&self, user_id: &str) -> impl Future<Output = Result<Value>> + Send {
        let r = Read::GetUserPrefs {
            user_id: user_id.into(),
        };
        async move { self.read(r).await }
    }
    fn search_memory(
        &self,
        category: Option<&str>,
        limit: usize,
        q: Option<&str>,
        user_id: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Value>>> + Send {
        let r = Read::SearchMemory {
            category: category.map(Into::into),
            limit,
            q: q.map(Into::into),
            user_id: user_id.map(Into::into),
        };
        async move { self.read(r).await.map(list) }
    }
    fn list_skills(&self, enabled_only: bool) -> impl Future<Output = Result<Vec<Value>>> + Send {
        async move { self.read(Read::ListSkills { enabled_only }).await.map(list) }
    }
}

/// The filters of [`Dox::list_logs`], all optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFilter<'a> {
    pub level: Option<&'a str>,
    pub code: Option<&'a str>,
    /// A substring of the message.
    pub q: Option<&'a str>,
    pub ts_from: Option<&'a str>,
    pub ts_to: Option<&'a str>,
    pub document_id: Option<&'a str>,
}

impl<T: Database> Dox for T {}

/// A backend chosen at run time from the configuration.
pub enum AnyDatabase {
    Sqlite(SqliteDatabase),
    Supabase(SupabaseDatabase),
    /// Dual write with SQLite primary (before cutover).
    SqliteFirst(DualDatabase<SqliteDatabase, SupabaseDatabase>),
    /// Dual write with Supabase primary (after cutover; SQLite stays as the mirror).
    SupabaseFirst(DualDatabase<SupabaseDatabase, SqliteDatabase>),
}

macro_rules! delegate {
    ($self:ident, $db:ident => $e:expr) => {
        match $self {
            AnyDatabase::Sqlite($db) => $e,
            AnyDatabase::Supabase($db) => $e,
            AnyDatabase::SqliteFirst($db) => $e,
            AnyDatabase::SupabaseFirst($db) => $e,
        }
    };
}

impl Database for AnyDatabase {
    fn backend(&self) -> String {
        delegate!(self, db => db.backend())
    }

    async fn apply(&self, write: Write) -> Result<Applied> {
        delegate!(self, db => db.apply(write).await)
    }

    async fn fetch(&self, table: &'static Table, filters: &[Filter]) -> Result<Vec<Row>> {
        delegate!(self, db => db.fetch(table, filters).await)
    }

    async fn apply_captured(&self, write: Write) -> Result<(Applied, bool)> {
        delegate!(self, db => db.apply_captured(write).await)
    }

    async fn apply_followed(&self, write: Write) -> Result<Followed> {
        delegate!(self, db => db.apply_followed(write).await)
    }

    async fn fetch_followed(
        &self,
        table: &'static Table,
        filters: &[Filter],
    ) -> Result<Option<Vec<Row>>> {
        delegate!(self, db => db.fetch_followed(table, filters).await)
    }
}

impl AnyDatabase {
    /// Replay the recorded secondary failures, when dual writing.
    pub async fn replay_failures(&self) -> Option<dual::ReplayReport> {
        match self {
            AnyDatabase::SqliteFirst(d) => Some(d.replay_failures().await),
            AnyDatabase::SupabaseFirst(d) => Some(d.replay_failures().await),
            _ => None,
        }
    }

    /// The recorded secondary failures, when dual writing.
    pub fn failures(&self) -> Vec<SecondaryFailure> {
        match self {
            AnyDatabase::SqliteFirst(d) => d.failures(),
            AnyDatabase::SupabaseFirst(d) => d.failures(),
            _ => Vec::new(),
        }
    }

    /// Secondary-failure statistics, when dual writing.
    pub fn dual_stats(&self) -> Option<DualStats> {
        match self {
            AnyDatabase::SqliteFirst(d) => Some(d.stats()),
            AnyDatabase::SupabaseFirst(d) => Some(d.stats()),
            _ => None,
        }
    }
}

/// Reject a fetch filter on a column the table does not have (a programming error
/// in a read, surfaced clearly rather than as an SQL or PostgREST error).
pub(crate) fn check_filters(table: &Table, filters: &[Filter]) -> Result<()> {
    for (c, _) in filters {
        if table.column(c).is_none() {
            return Err(Error::invalid(format!(
                "{} has no column {c}",
                table.sqlite
            )));
        }
    }
    Ok(())
}
