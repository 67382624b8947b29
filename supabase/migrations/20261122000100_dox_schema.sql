-- DoX document data and cipher tables, as dualwrite mirrors them from SQLite.
--
-- Fixes to the original application's Supabase schema (spec 3.2):
--   * every table the storage interface uses exists, including document_entities,
--     document_structure and document_metric_hits (S3) and facts.evidence_id (S2);
--   * every *_json value is a jsonb object/array, never a jsonb string (S6);
--   * ids and user ids are text, because real data holds non-uuid values such as
--     `dev_user` (S7); cipher_memory.category has no CHECK (S8);
--   * there are no foreign keys and no NOT NULL beyond the keys: SQLite accepted
--     orphans and its own nullability, and a mirror must not reject a row the
--     primary stored (S9, S10);
--   * integers are bigint, so any SQLite INTEGER fits;
--   * keys use the "C" collation, so PostgreSQL orders them byte-wise as SQLite does
--     and both sides can be read in the same key order (keyset pagination, verify).
-- Re-runnable: tables are created if missing, and a database built from the
-- original migrations is brought to this shape (types widened, FKs and the
-- category CHECK dropped, missing columns added).

create schema if not exists extensions;

create table if not exists public.artifacts (
  id text collate "C" primary key,
  filename text,
  filepath text,
  filetype text,
  report_week text,
  status text,
  source_url text,
  extras jsonb default '{}'::jsonb,
  table_evidence int default 0,
  chart_evidence int default 0,
  formula_evidence int default 0,
  media_transcripts int default 0,
  media_metadata int default 0,
  web_pages int default 0,
  image_ocr int default 0,
  created_at timestamptz default now()
);

create table if not exists public.documents (
  id text collate "C" primary key,
  path text,
  type text,
  title text,
  source text,
  created_at text
);

create table if not exists public.document_sections (
  id text collate "C" primary key,
  document_id text,
  "order" bigint,
  text text,
  page bigint,
  bbox_json jsonb
);

create table if not exists public.document_tables (
  id text collate "C" primary key,
  document_id text,
  "order" bigint,
  json jsonb
);

create table if not exists public.api_endpoints (
  id text collate "C" primary key,
  document_id text,
  name text,
  method text,
  path text,
  summary text,
  tags jsonb,
  params_json jsonb,
  responses_json jsonb
);

create table if not exists public.log_entries (
  id text collate "C" primary key,
  document_id text,
  ts text,
  level text,
  code text,
  component text,
  message text,
  attrs jsonb
);

create table if not exists public.tags (
  id text collate "C" primary key,
  document_id text,
  tag text,
  score double precision,
  source_ptr text,
  hrm_steps bigint
);

create table if not exists public.facts (
  id text collate "C" primary key,
  artifact_id text,
  report_week text,
  entity text,
  metrics jsonb default '{}'::jsonb,
  evidence_id text
);

create table if not exists public.evidence (
  id text collate "C" primary key,
  artifact_id text,
  locator text,
  preview text,
  content_type text,
  coordinates jsonb,
  full_data jsonb
);

create table if not exists public.tag_prompts (
  id text collate "C" primary key,
  document_id text,
  prompt_text text,
  examples jsonb,
  created_at text,
  author text
);

create table if not exists public.summaries (
  id text collate "C" primary key,
  scope text,
  scope_key text,
  style text,
  provider text,
  prompt text,
  summary_text text,
  artifact_ids jsonb default '[]'::jsonb,
  evidence_ids jsonb default '[]'::jsonb,
  created_at text
);

create table if not exists public.document_entities (
  id text collate "C" primary key,
  document_id text,
  label text,
  text text,
  start_char bigint,
  end_char bigint,
  page bigint,
  context text,
  source_index bigint
);

create table if not exists public.document_structure (
  document_id text collate "C" primary key,
  hierarchy jsonb
);

create table if not exists public.document_metric_hits (
  id text collate "C" primary key,
  document_id text,
  type text,
  value text,
  context text,
  position bigint,
  page bigint,
  source_index bigint
);

create table if not exists public.cipher_memory (
  id text collate "C" primary key,
  category text,
  content jsonb default '{}'::jsonb,
  context jsonb,
  user_id text,
  created_at timestamptz default now()
);

create table if not exists public.user_prefs (
  user_id text collate "C" primary key,
  preferences jsonb default '{}'::jsonb,
  updated_at timestamptz default now()
);

create table if not exists public.skills_registry (
  id text collate "C" primary key,
  name text,
  description text,
  parameters jsonb default '{}'::jsonb,
  workflow_def jsonb default '{}'::jsonb,
  enabled boolean default true,
  created_at timestamptz default now()
);

-- search_chunks: pgvector where the extension can be installed; otherwise the
-- embedding is kept as a jsonb array of floats (Debian's PostgreSQL 15 has no
-- pgvector package). Both accept a flat JSON array on insert. No fixed
-- dimension: the default DoX embedder is not 384-dimensional (S13).
create table if not exists public.search_chunks (
  id text collate "C" primary key,
  document_id text,
  source_type text,
  chunk_index bigint,
  text text,
  meta jsonb,
  created_at timestamptz default now()
);

do $$
begin
  if not exists (select 1 from information_schema.columns
                 where table_schema = 'public' and table_name = 'search_chunks'
                   and column_name = 'embedding') then
    if exists (select 1 from pg_available_extensions where name = 'vector') then
      create extension if not exists vector with schema extensions;
      execute 'alter table public.search_chunks add column embedding extensions.vector';
    else
      alter table public.search_chunks add column embedding jsonb;
    end if;
  end if;
end
$$;

-- Bring a database created by the original application's migrations to this shape.
alter table public.facts add column if not exists evidence_id text;
alter table public.artifacts add column if not exists source_url text;
alter table public.artifacts add column if not exists extras jsonb default '{}'::jsonb;

-- The original cipher policies compare user_id with auth.uid() (uuid); they block the
-- type change below and are replaced by the next migration's policies.
drop policy if exists cipher_memory_authenticated_policy on public.cipher_memory;
drop policy if exists cipher_memory_user_owned_policy on public.cipher_memory;
drop policy if exists cipher_memory_service_role_policy on public.cipher_memory;
drop policy if exists cipher_memory_legacy_readonly on public.cipher_memory;
drop policy if exists user_prefs_own_policy on public.user_prefs;
drop policy if exists skills_registry_read_policy on public.skills_registry;
drop policy if exists skills_registry_write_policy on public.skills_registry;
-- Ours too, when a key's collation must change below; the next migration re-creates them.
drop policy if exists cipher_memory_user_owned on public.cipher_memory;
drop policy if exists cipher_memory_legacy_read on public.cipher_memory;
drop policy if exists user_prefs_own on public.user_prefs;

do $$
declare
  r record;
begin
  -- Foreign keys and CHECK constraints reject rows SQLite accepted (orphans, categories).
  for r in
    select c.conrelid::regclass as tbl, c.conname
    from pg_constraint c
    join pg_class t on t.oid = c.conrelid
    join pg_namespace n on n.oid = t.relnamespace
    where n.nspname = 'public' and c.contype in ('f', 'c')
      and t.relname in ('artifacts', 'documents', 'document_sections', 'document_tables',
                        'api_endpoints', 'log_entries', 'tags', 'facts', 'evidence',
                        'tag_prompts', 'summaries', 'document_entities', 'document_structure',
                        'document_metric_hits', 'cipher_memory', 'user_prefs',
                        'skills_registry', 'search_chunks')
  loop
    execute format('alter table %s drop constraint %I', r.tbl, r.conname);
  end loop;

  -- Widen uuid ids to text, int to bigint, and drop NOT NULL from non-key columns.
  for r in
    select c.table_name, c.column_name, c.data_type, c.is_nullable, c.collation_name,
           exists (select 1 from information_schema.key_column_usage k
                   join information_schema.table_constraints tc
                     on tc.constraint_name = k.constraint_name and tc.table_schema = k.table_schema
                   where tc.constraint_type = 'PRIMARY KEY' and k.table_schema = 'public'
                     and k.table_name = c.table_name and k.column_name = c.column_name) as is_key
    from information_schema.columns c
    where c.table_schema = 'public'
      and c.table_name in ('artifacts', 'documents', 'document_sections', 'document_tables',
                           'api_endpoints', 'log_entries', 'tags', 'facts', 'evidence',
                           'tag_prompts', 'summaries', 'document_entities', 'document_structure',
                           'document_metric_hits', 'cipher_memory', 'user_prefs',
                           'skills_registry', 'search_chunks')
  loop
    if r.data_type = 'uuid' then
      execute format('alter table public.%I alter column %I drop default', r.table_name, r.column_name);
      execute format('alter table public.%I alter column %I type text using %I::text',
                     r.table_name, r.column_name, r.column_name);
    elsif r.data_type = 'integer' and r.table_name <> 'artifacts' then
      execute format('alter table public.%I alter column %I type bigint', r.table_name, r.column_name);
    end if;
    if r.is_key and r.data_type = 'text' and coalesce(r.collation_name, '') <> 'C' then
      execute format('alter table public.%I alter column %I type text collate "C"',
                     r.table_name, r.column_name);
    end if;
    if r.is_nullable = 'NO' and not r.is_key then
      execute format('alter table public.%I alter column %I drop not null', r.table_name, r.column_name);
    end if;
  end loop;
end
$$;

create unique index if not exists skills_registry_name_key on public.skills_registry (name);
create index if not exists idx_log_entries_code on public.log_entries (code);
create index if not exists idx_log_entries_ts on public.log_entries (ts);
create index if not exists idx_log_entries_document on public.log_entries (document_id);
create index if not exists idx_tags_doc on public.tags (document_id);
create index if not exists idx_tags_tag on public.tags (tag);
create index if not exists idx_facts_artifact on public.facts (artifact_id);
create index if not exists idx_evidence_artifact on public.evidence (artifact_id);
create index if not exists idx_sections_document on public.document_sections (document_id);
create index if not exists idx_tables_document on public.document_tables (document_id);
create index if not exists idx_api_endpoints_document on public.api_endpoints (document_id);
create index if not exists idx_tag_prompts_document on public.tag_prompts (document_id, created_at);
create index if not exists idx_summaries_scope_key on public.summaries (scope_key);
create index if not exists idx_summaries_style on public.summaries (style);
create index if not exists idx_entities_document on public.document_entities (document_id);
create index if not exists idx_metric_hits_document on public.document_metric_hits (document_id);
create index if not exists idx_search_chunks_document on public.search_chunks (document_id);
create index if not exists idx_cipher_memory_category on public.cipher_memory (category);
create index if not exists idx_cipher_memory_created_at on public.cipher_memory (created_at);
create index if not exists idx_cipher_memory_user_id on public.cipher_memory (user_id);
create index if not exists idx_user_prefs_updated_at on public.user_prefs (updated_at);
