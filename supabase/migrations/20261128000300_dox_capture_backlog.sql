-- dualwrite: the backlog of the Supabase change log, read cheaply.
--
-- Builds on 20261128000100_dox_capture.sql (applied first). Idempotent: it only
-- creates or replaces functions. `public.dualwrite_changes_backlog` answers the
-- pending count and the oldest change's time without scanning a large log, and
-- `public.dualwrite_capture` now reports its figures through it. Both are
-- `security definer` with an empty `search_path`, executable by service_role only.
-- A database without this migration still works: the daemon falls back to
-- `dualwrite_capture` (which then counts the whole log).

-- The backlog, cheaply (the daemon asks after its batches, `dualwrite status
-- --direction reverse` on demand): the oldest entry and the newest seq come
-- from the primary key's index; the keys are summed exactly while the log spans
-- fewer than exact_up_to seqs, and estimated beyond (seqs spanned times the keys
-- per entry of the oldest 1,000 entries; acks remove the head, so the span is
-- about the number of entries). Never a scan of a large log.
create or replace function public.dualwrite_changes_backlog(exact_up_to integer default 10000)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  lo bigint;
  hi bigint;
  oldest timestamptz;
  n numeric;
  estimated boolean := false;
begin
  select c.seq, c.at into lo, oldest from dualwrite_capture.changes c order by c.seq limit 1;
  if lo is null then
    return pg_catalog.jsonb_build_object('pending', 0, 'estimated', false, 'oldest_at', null);
  end if;
  select c.seq into hi from dualwrite_capture.changes c order by c.seq desc limit 1;
  if hi - lo < greatest(exact_up_to, 1) then
    select sum(pg_catalog.cardinality(c.keys)) into n
      from dualwrite_capture.changes c where c.seq between lo and hi;
  else
    select avg(pg_catalog.cardinality(h.keys)) * (hi - lo + 1) into n
      from (select c.keys from dualwrite_capture.changes c order by c.seq limit 1000) h;
    estimated := true;
  end if;
  return pg_catalog.jsonb_build_object(
    'pending', pg_catalog.round(n)::bigint, 'estimated', estimated, 'oldest_at', oldest);
end;
$$;
revoke all on function public.dualwrite_changes_backlog(integer) from public, anon, authenticated;
grant execute on function public.dualwrite_changes_backlog(integer) to service_role;

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
  -- pending, estimated, oldest_at: the backlog, cheaply (see below).
  return pg_catalog.jsonb_build_object('enabled', on_, 'missing', missing)
         || public.dualwrite_changes_backlog();
end;
$$;
revoke all on function public.dualwrite_capture(boolean) from public, anon, authenticated;
grant execute on function public.dualwrite_capture(boolean) to service_role;
