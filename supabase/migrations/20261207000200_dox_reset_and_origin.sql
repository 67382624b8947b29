-- dualwrite: a reset in seconds, and dualwrite's own copies of the SQLite file
-- kept out of capture on Supabase.
--
-- Builds on 20261128000100_dox_capture.sql. Idempotent: it only creates or
-- replaces functions.
--
-- 1. `public.dualwrite_reset(tables)`: `backfill --reset` (and `import
--    --reset`) empties the chosen DoX tables with one TRUNCATE instead of
--    deleting row by row (a 1M-row target: about 50 s of deletes). Only the
--    service role may call it, and only on DoX tables. TRUNCATE takes an
--    ACCESS EXCLUSIVE lock on the tables for the moment it runs, and it does not
--    fire the DELETE triggers: capture on Supabase logs no change for it (a
--    reset is the start of a backfill from the file, which needs none).
-- 2. A write dualwrite makes as a copy of the SQLite file's rows (the backfill,
--    an import, the forward daemon, the background drainer, a forward repair,
--    an app's dual layer with SQLite primary) carries the request header
--    `X-Dualwrite-Origin: sqlite`. When it comes with the service role's key,
--    capture on Supabase does not log it: the reverse mirror would only send
--    the file its own rows back (and, during a transition with both directions
--    on, an older version of a row over a newer one). Any other writer, and a
--    writer without the service role that sets the header, is logged as before.

create or replace function public.dualwrite_reset(tables text[])
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  t text;
  n bigint;
  total bigint := 0;
begin
  if tables is null or pg_catalog.cardinality(tables) = 0 then
    return 0;
  end if;
  foreach t in array tables loop
    if not exists (select 1 from dualwrite_capture.tables() d where d.tbl = t) then
      raise exception using errcode = '22023',
        message = pg_catalog.format('dualwrite_reset: %s is not a DoX table', t);
    end if;
    execute pg_catalog.format('select pg_catalog.count(*) from public.%I', t) into n;
    total := total + n;
  end loop;
  execute 'truncate table '
    || (select pg_catalog.string_agg(pg_catalog.format('public.%I', x), ', ') from pg_catalog.unnest(tables) x);
  return total;
end;
$$;
revoke all on function public.dualwrite_reset(text[]) from public, anon, authenticated;
grant execute on function public.dualwrite_reset(text[]) to service_role;

-- The trigger function of 20261128000100, with the origin check first.
create or replace function dualwrite_capture.record()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  k text := tg_argv[0];
  headers text := nullif(pg_catalog.current_setting('request.headers', true), '');
  claims text := nullif(pg_catalog.current_setting('request.jwt.claims', true), '');
begin
  if headers is not null and claims is not null
     and (headers::json ->> 'x-dualwrite-origin') = 'sqlite'
     and (claims::json ->> 'role') = 'service_role' then
    return null;
  end if;
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
