-- dualwrite: a DoX table whose capture triggers were gone while capture was on
-- (dropped and re-created by a migration) is re-sent whole when they come back.
--
-- Builds on 20261128000100_dox_capture.sql. Nothing written to such a table
-- was logged; when `public.dualwrite_capture(true)` re-installs its triggers
-- (the reverse daemon calls it when its check finds them missing, and so does
-- `dualwrite capture install --target supabase`), the same transaction queues
-- every key the table holds, in entries of 1,000 keys, so the drainer writes
-- those rows to the SQLite file as they are. Turning capture on for the first
-- time queues nothing: the file was already equal (the forward mirror).
-- Left to `dualwrite verify --direction reverse --repair`: a row deleted from
-- such a table before its triggers came back (the file still holds it).
-- Idempotent: it only creates or replaces functions.

-- (Re)create or drop the triggers of the recorded state; with `resync`, queue
-- every key of each table that had none of its triggers. Returns the state.
create or replace function dualwrite_capture.apply(resync boolean)
returns boolean
language plpgsql
security definer
set search_path = ''
set client_min_messages = warning
as $$
declare
  on_ boolean;
  r record;
  had integer;
begin
  select s.enabled into on_ from dualwrite_capture.state s;
  for r in select * from dualwrite_capture.tables() loop
    select pg_catalog.count(*) into had from pg_catalog.pg_trigger g
     where g.tgrelid = pg_catalog.format('public.%I', r.tbl)::pg_catalog.regclass
       and g.tgname in ('dualwrite_capture_ins', 'dualwrite_capture_upd', 'dualwrite_capture_del');
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
      if resync and had = 0 then
        execute format(
          'insert into dualwrite_capture.changes (tbl, keys, op) '
          'select %L, pg_catalog.array_agg(k order by k), ''U'' from '
          '(select t.%I::text as k, (pg_catalog.row_number() over (order by t.%I) - 1) / 1000 as g '
          '   from public.%I t where t.%I is not null) s group by g order by g',
          r.tbl, r.key, r.key, r.tbl, r.key);
      end if;
    end if;
  end loop;
  return on_;
end;
$$;
revoke all on function dualwrite_capture.apply(boolean) from public, anon, authenticated;

-- The switch and the status (as in 20261128000100_dox_capture.sql, whose
-- figures 20261128000300_dox_capture_backlog.sql gives), now re-sending a
-- table whose triggers were gone when capture, already on, is switched on again.
create or replace function public.dualwrite_capture(set_enabled boolean default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  was_on boolean;
  on_ boolean;
  missing text[];
begin
  if set_enabled is not null then
    select s.enabled into was_on from dualwrite_capture.state s;
    update dualwrite_capture.state set enabled = set_enabled, changed_at = now();
    perform dualwrite_capture.apply(was_on and set_enabled);
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
  -- pending, estimated, oldest_at: the backlog, cheaply.
  return pg_catalog.jsonb_build_object('enabled', on_, 'missing', missing)
         || public.dualwrite_changes_backlog();
end;
$$;
revoke all on function public.dualwrite_capture(boolean) from public, anon, authenticated;
grant execute on function public.dualwrite_capture(boolean) to service_role;
