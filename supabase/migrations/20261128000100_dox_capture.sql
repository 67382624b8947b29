-- Change capture on Supabase: the reverse direction (Supabase primary, the
-- SQLite file kept current as the rollback copy).
--
-- Statement-level AFTER INSERT / UPDATE / DELETE triggers on every DoX table
-- append (table, keys, operation) to dualwrite_capture.changes inside the
-- writer's own transaction (one entry per statement, holding every key it
-- touched), whoever the writer is (the app through PostgREST,
-- DoX's Supabase code, psql): the row and its change record commit or vanish
-- together. The drainer (`dualwrite serve --direction reverse`) reads the log in
-- seq order, reads the rows as they are now, writes them to SQLite, and only
-- then deletes the seqs it read (a change committed meanwhile keeps its entry).
--
-- The log lives in a schema of its own with RLS on and no policy: anon and
-- authenticated have no grant on the schema, the table or the functions. The
-- service role reaches it only through the rpc functions below
-- (public.dualwrite_capture, public.dualwrite_changes,
-- public.dualwrite_changes_ack), which are executable by service_role only.
--
-- The triggers are installed when the recorded state says so: capture is OFF
-- after the first run (while SQLite is primary, backfill and the forward mirror
-- write every row to Supabase, and logging those would only fill the log).
-- Turn it on at cutover with `dualwrite capture install --target supabase`
-- (or in psql: select public.dualwrite_capture(true);).
--
-- Re-runnable: the recorded state survives (a re-run applies it again).

create schema if not exists dualwrite_capture;
revoke all on schema dualwrite_capture from public, anon, authenticated;

create table if not exists dualwrite_capture.changes (
  seq bigint generated always as identity primary key, -- the index draining walks, in order
  tbl text not null,
  keys text[] not null,
  op text not null check (op in ('I', 'U', 'D')),
  at timestamptz not null default clock_timestamp()
);
alter table dualwrite_capture.changes enable row level security;
revoke all on dualwrite_capture.changes from public, anon, authenticated;

create table if not exists dualwrite_capture.state (
  singleton boolean primary key default true check (singleton),
  enabled boolean not null,
  changed_at timestamptz not null default now()
);
alter table dualwrite_capture.state enable row level security;
revoke all on dualwrite_capture.state from public, anon, authenticated;
insert into dualwrite_capture.state (enabled) values (false) on conflict (singleton) do nothing;

-- The DoX tables and their keys (src/catalogue.rs, TABLES).
create or replace function dualwrite_capture.tables()
returns table (tbl text, key text)
language sql
immutable
set search_path = ''
as $$
  values ('artifacts', 'id'), ('documents', 'id'), ('document_sections', 'id'),
         ('document_tables', 'id'), ('api_endpoints', 'id'), ('log_entries', 'id'),
         ('tags', 'id'), ('facts', 'id'), ('evidence', 'id'), ('tag_prompts', 'id'),
         ('summaries', 'id'), ('document_entities', 'id'), ('document_structure', 'document_id'),
         ('document_metric_hits', 'id'), ('cipher_memory', 'id'), ('user_prefs', 'user_id'),
         ('skills_registry', 'id')
$$;
revoke all on function dualwrite_capture.tables() from public, anon, authenticated;

-- The trigger function; TG_ARGV[0] is the key column. SECURITY DEFINER: the
-- writer (e.g. authenticated in the primary access state) has no grant on the log.
create or replace function dualwrite_capture.record()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  k text := tg_argv[0];
begin
  if tg_op = 'INSERT' then
    execute format(
      'insert into dualwrite_capture.changes (tbl, keys, op) '
      'select %L, pg_catalog.array_agg(n.%I::text), ''I'' from new_rows n where n.%I is not null '
      'having pg_catalog.count(*) > 0',
      tg_table_name, k, k);
  elsif tg_op = 'UPDATE' then
    -- A key-changing update records the old key (gone) and the new one.
    -- (EXCEPT hashes: transition tables have no index, a NOT EXISTS would be quadratic.)
    execute format(
      'insert into dualwrite_capture.changes (tbl, keys, op) '
      'select %L, pg_catalog.array_agg(d.k), ''D'' from (select o.%I::text as k from old_rows o '
      'where o.%I is not null except select n.%I::text from new_rows n) d having pg_catalog.count(*) > 0 '
      'union all select %L, pg_catalog.array_agg(n.%I::text), ''U'' from new_rows n '
      'where n.%I is not null having pg_catalog.count(*) > 0',
      tg_table_name, k, k, k, tg_table_name, k, k);
  else
    execute format(
      'insert into dualwrite_capture.changes (tbl, keys, op) '
      'select %L, pg_catalog.array_agg(o.%I::text), ''D'' from old_rows o where o.%I is not null '
      'having pg_catalog.count(*) > 0',
      tg_table_name, k, k);
  end if;
  return null;
end;
$$;
revoke all on function dualwrite_capture.record() from public, anon, authenticated;

-- (Re)create or drop the triggers of the recorded state; returns the state.
create or replace function dualwrite_capture.apply()
returns boolean
language plpgsql
security definer
set search_path = ''
set client_min_messages = warning
as $$
declare
  on_ boolean;
  r record;
begin
  select s.enabled into on_ from dualwrite_capture.state s;
  for r in select * from dualwrite_capture.tables() loop
    execute format('drop trigger if exists dualwrite_capture_ins on public.%I', r.tbl);
    execute format('drop trigger if exists dualwrite_capture_upd on public.%I', r.tbl);
    execute format('drop trigger if exists dualwrite_capture_del on public.%I', r.tbl);
    if on_ then
      execute format('create trigger dualwrite_capture_ins after insert on public.%I '
                     'referencing new table as new_rows for each statement '
                     'execute function dualwrite_capture.record(%L)', r.tbl, r.key);
      execute format('create trigger dualwrite_capture_upd after update on public.%I '
                     'referencing old table as old_rows new table as new_rows for each statement '
                     'execute function dualwrite_capture.record(%L)', r.tbl, r.key);
      execute format('create trigger dualwrite_capture_del after delete on public.%I '
                     'referencing old table as old_rows for each statement '
                     'execute function dualwrite_capture.record(%L)', r.tbl, r.key);
    end if;
  end loop;
  return on_;
end;
$$;
revoke all on function dualwrite_capture.apply() from public, anon, authenticated;

-- The switch and the status, for the service role through the Data API:
-- POST /rest/v1/rpc/dualwrite_capture {"set_enabled": true | false}; {} reads.
-- Turning capture off also empties the log (its entries would go stale).
create or replace function public.dualwrite_capture(set_enabled boolean default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  on_ boolean;
  missing text[];
begin
  if set_enabled is not null then
    update dualwrite_capture.state set enabled = set_enabled, changed_at = now();
    perform dualwrite_capture.apply();
    if not set_enabled then
      delete from dualwrite_capture.changes;
    end if;
  end if;
  select s.enabled into on_ from dualwrite_capture.state s;
  select coalesce(array_agg(t.tbl order by t.tbl), '{}') into missing
    from dualwrite_capture.tables() t
   where on_ and (select count(*) from pg_catalog.pg_trigger g
                   where g.tgrelid = pg_catalog.format('public.%I', t.tbl)::pg_catalog.regclass
                     and g.tgname in ('dualwrite_capture_ins', 'dualwrite_capture_upd',
                                      'dualwrite_capture_del')) < 3;
  return pg_catalog.jsonb_build_object(
    'enabled', on_,
    'missing', missing,
    'pending', (select coalesce(sum(pg_catalog.cardinality(c.keys)), 0) from dualwrite_capture.changes c),
    'oldest_at', (select min(c.at) from dualwrite_capture.changes c));
end;
$$;
revoke all on function public.dualwrite_capture(boolean) from public, anon, authenticated;
grant execute on function public.dualwrite_capture(boolean) to service_role;

-- The oldest pending changes, in seq order, one row per key (the drainer
-- always reads the head: a transaction that took a lower seq but committed
-- later is still found). Whole entries only, about max_rows keys (at least one
-- entry): acknowledging a seq removes all of its keys.
create or replace function public.dualwrite_changes(max_rows integer default 1000)
returns table (seq bigint, tbl text, key text, op text, at timestamptz)
language sql
stable
security definer
set search_path = ''
as $$
  select c.seq, c.tbl, k.key, c.op, c.at
    from (select h.*, coalesce(sum(pg_catalog.cardinality(h.keys)) over
                   (order by h.seq rows between unbounded preceding and 1 preceding), 0) as before
            from (select * from dualwrite_capture.changes e
                   order by e.seq limit greatest(max_rows, 1)) h) c
    cross join lateral unnest(c.keys) with ordinality as k(key, i)
   where c.before < greatest(max_rows, 1)
   order by c.seq, k.i
$$;
revoke all on function public.dualwrite_changes(integer) from public, anon, authenticated;
grant execute on function public.dualwrite_changes(integer) to service_role;

-- Acknowledge: delete exactly the seqs drained; returns how many were deleted.
create or replace function public.dualwrite_changes_ack(seqs bigint[])
returns bigint
language sql
security definer
set search_path = ''
as $$
  with d as (delete from dualwrite_capture.changes c where c.seq = any(seqs) returning 1)
  select count(*) from d
$$;
revoke all on function public.dualwrite_changes_ack(bigint[]) from public, anon, authenticated;
grant execute on function public.dualwrite_changes_ack(bigint[]) to service_role;

select dualwrite_capture.apply();
