-- What a Supabase database has before any project migration runs, reduced to what
-- dualwrite's migrations and the Data API rely on (spec supabase-rest.md §3).
--
-- Applied by scripts/stack.sh to every database PostgREST may serve (dox and
-- dox_template) before supabase/migrations/*.sql, on every `up`; also applied by
-- docker/db-init/zz-dualwrite.sh in the Docker variant, where the supabase/postgres
-- image already has most of this (every statement below is then a no-op or an
-- identical replacement).
-- Must run as a superuser (event triggers, BYPASSRLS). Re-runnable.

-- API roles (cluster-wide; the DO blocks make the file safe to run in several
-- databases). Attributes as in supabase/postgres initial-schema.sql plus the later
-- switch of the three API roles to INHERIT. authenticator's password is set by the
-- caller (stack.sh / the Docker init script), never here.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin inherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin inherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin inherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

alter role service_role bypassrls;
alter role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;

-- Hosted timeouts: a request as anon is cut at 3 s, as authenticated at 8 s;
-- service_role has none of its own and keeps the authenticator's 8 s.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
alter role authenticator set lock_timeout = '8s';

create schema if not exists auth;
create schema if not exists extensions;

grant usage on schema public, auth, extensions to anon, authenticated, service_role;

-- Every function sets its search_path (empty: names are schema-qualified, and
-- pg_catalog is always searched), so a caller's search_path cannot substitute
-- an object of its own.
--
-- GoTrue's versions of the auth helpers (supabase/auth migrations
-- 20220224000811_update_auth_functions, 20220531120530_add_auth_jwt_function):
-- the legacy per-claim GUC first, then the request.jwt.claims JSON that
-- PostgREST >= 12 sets. The init-script versions read only the legacy GUCs,
-- which PostgREST 12 no longer sets.
create or replace function auth.uid()
returns uuid
language sql stable
set search_path = ''
as $$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.sub', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;

create or replace function auth.role()
returns text
language sql stable
set search_path = ''
as $$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.role', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$$;

create or replace function auth.email()
returns text
language sql stable
set search_path = ''
as $$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim.email', true), ''),
      (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
    )::text
$$;

create or replace function auth.jwt()
returns jsonb
language sql stable
set search_path = ''
as $$
  select
    coalesce(
      nullif(current_setting('request.jwt.claim', true), ''),
      nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;

comment on function auth.uid() is 'Deprecated. Use auth.jwt() -> ''sub'' instead.';
comment on function auth.role() is 'Deprecated. Use auth.jwt() -> ''role'' instead.';
comment on function auth.email() is 'Deprecated. Use auth.jwt() -> ''email'' instead.';

grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to anon, authenticated, service_role;

-- Schema-cache reload on DDL, as Supabase installs it
-- (supabase/postgres migrations 20220126121436_finer-postgrest-triggers and
-- 20260923021047_update_pgrst_watch_triggers). PostgREST listens on channel pgrst.
create or replace function extensions.pgrst_ddl_watch() returns event_trigger
language plpgsql
set search_path = ''
as $$
declare
  cmd record;
begin
  for cmd in select * from pg_event_trigger_ddl_commands()
  loop
    if cmd.command_tag in (
      'CREATE SCHEMA', 'ALTER SCHEMA'
    , 'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE'
    , 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE'
    , 'CREATE VIEW', 'ALTER VIEW'
    , 'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW'
    , 'CREATE FUNCTION', 'ALTER FUNCTION'
    , 'CREATE TYPE', 'ALTER TYPE'
    , 'CREATE RULE'
    , 'COMMENT'
    )
    -- nothing created in pg_temp or in the auth schema concerns the API
    and coalesce(cmd.schema_name, '') not in ('pg_temp', 'auth')
    or (cmd.command_tag = 'CREATE TRIGGER' and cmd.object_identity not like '% pg\_temp.%')
    then
      notify pgrst, 'reload schema';
    end if;
  end loop;
end; $$;

create or replace function extensions.pgrst_drop_watch() returns event_trigger
language plpgsql
set search_path = ''
as $$
declare
  obj record;
begin
  for obj in select * from pg_event_trigger_dropped_objects()
  loop
    if obj.object_type in (
      'schema'
    , 'table'
    , 'foreign table'
    , 'view'
    , 'materialized view'
    , 'function'
    , 'type'
    , 'rule'
    )
    and obj.is_temporary is false
    and coalesce(obj.schema_name, '') not in ('auth')
    or (obj.object_type = 'trigger' and obj.object_identity not like '% pg\_temp.%')
    then
      notify pgrst, 'reload schema';
    end if;
  end loop;
end; $$;

drop event trigger if exists pgrst_ddl_watch;
create event trigger pgrst_ddl_watch
  on ddl_command_end
  execute procedure extensions.pgrst_ddl_watch();

drop event trigger if exists pgrst_drop_watch;
create event trigger pgrst_drop_watch
  on sql_drop
  execute procedure extensions.pgrst_drop_watch();
