-- Access states, and grants that start from nothing.
--
-- While SQLite is the primary, Supabase is a mirror: a client's write there never
-- reaches SQLite, and the next repair overwrites it. So the access policy has two
-- states, kept in dualwrite.access_state:
--   * mirror  (the default): anon and authenticated may only read (RLS still
--     decides which rows);
--   * primary (after cutover): authenticated may also insert, update and delete
--     its own cipher_memory and user_prefs rows (the policies of
--     20261122000200_dox_access.sql).
-- Switch with `dualwrite access mirror|primary` (service key), which calls
-- public.dualwrite_access through the Data API, or in psql:
--   select public.dualwrite_access('primary');
--
-- Older projects' default privileges gave anon and authenticated everything,
-- TRUNCATE, REFERENCES and TRIGGER included, which RLS does not govern: every
-- grant below starts from `revoke all`.
--
-- Re-runnable: the recorded state survives (a re-run applies it again).

create schema if not exists dualwrite;
revoke all on schema dualwrite from public, anon, authenticated;

create table if not exists dualwrite.access_state (
  singleton boolean primary key default true check (singleton),
  state text not null check (state in ('mirror', 'primary')),
  changed_at timestamptz not null default now()
);
revoke all on dualwrite.access_state from public, anon, authenticated;
insert into dualwrite.access_state (state) values ('mirror') on conflict (singleton) do nothing;

-- Grants of the recorded state on every DoX table; returns the state.
create or replace function dualwrite.apply_access()
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  current_state text;
  t text;
  all_tables text[] := array['artifacts', 'documents', 'document_sections', 'document_tables',
                             'api_endpoints', 'log_entries', 'tags', 'facts', 'evidence',
                             'tag_prompts', 'summaries', 'document_entities',
                             'document_structure', 'document_metric_hits', 'search_chunks',
                             'cipher_memory', 'user_prefs', 'skills_registry'];
begin
  select s.state into current_state from dualwrite.access_state s;
  foreach t in array all_tables loop
    execute format('revoke all on public.%I from anon, authenticated', t);
    execute format('grant select on public.%I to anon, authenticated', t);
    execute format('grant select, insert, update, delete on public.%I to service_role', t);
  end loop;
  if current_state = 'primary' then
    grant insert, update, delete on public.cipher_memory, public.user_prefs to authenticated;
  end if;
  return current_state;
end;
$$;
revoke all on function dualwrite.apply_access() from public, anon, authenticated;

-- The switch, for the service role through the Data API
-- (POST /rest/v1/rpc/dualwrite_access {"set_state": "primary"}; {} reads the state).
create or replace function public.dualwrite_access(set_state text default null)
returns text
language plpgsql
security definer
set search_path = ''
as $$
begin
  if set_state is not null then
    if set_state not in ('mirror', 'primary') then
      raise exception using
        errcode = '22023',
        message = format('access state %L is neither mirror nor primary', set_state);
    end if;
    update dualwrite.access_state set state = set_state, changed_at = now();
  end if;
  return dualwrite.apply_access();
end;
$$;
revoke all on function public.dualwrite_access(text) from public, anon, authenticated;
grant execute on function public.dualwrite_access(text) to service_role;

select dualwrite.apply_access();

notify pgrst, 'reload schema';
