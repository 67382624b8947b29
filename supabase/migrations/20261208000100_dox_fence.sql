-- dualwrite: the rollback's fence on Supabase (docs/design/cutover.md, "Rollback
-- is the same steps reversed").
--
-- Once Supabase is the primary, the app writes through PostgREST with the
-- service key: neither RLS nor the access state holds it back. What every
-- writer honours is a table lock. The fence is a request of its own:
--
--   POST /rpc/dualwrite_fence {"token": T, "seconds": S}
--     takes SHARE ROW EXCLUSIVE on the DoX tables and holds it until
--     dualwrite_fence_release(T) is committed or S seconds have passed since
--     the call began; answers {"ended": "released"|"expired", "held_seconds",
--     "waited_seconds"}. INSERT, UPDATE and DELETE (ROW EXCLUSIVE) wait behind
--     it, held, not failed; SELECT (ACCESS SHARE) does not.
--   POST /rpc/dualwrite_fence_held {"token": T}
--     true while the fence T holds every lock: the caller polls it before going on.
--   POST /rpc/dualwrite_fence_release {"token": T}
--     commits the release; the fence's own call then returns within a few ms.
--     Returns whether the fence T was holding at that moment.
--
-- Only the service role may call them. Choices, each measured by the tests
-- (src/cutover/fence.rs, tests/it/fence.rs):
--
-- * One fence at a time: a second call while one holds fails at once (55P03),
--   whatever its token, so two fences can never wait on each other.
-- * The locks are taken NOWAIT, all at once, retried every 2 ms until they are
--   free or S has passed (then 55P03): the fence never waits while it holds a
--   lock, so a writer that holds one table and wants another can never
--   deadlock with it (a queued LOCK could, and PostgreSQL would then cancel
--   one of the two, possibly the app's write).
-- * "Held" is a transaction-level advisory lock on the token, taken once the
--   table locks are, checked with the table locks of the same backend in
--   pg_locks: both end with the fence's transaction, however it ends.
-- * The hold loop re-reads dualwrite.fence_release every 5 ms: the function is
--   VOLATILE and PostgREST runs an rpc in READ COMMITTED, so each statement
--   sees what was committed before it.
-- * It cannot outlive S: the loop ends at S from the call's start (the wait
--   for the locks included), nothing inside waits unbounded (NOWAIT, try-locks,
--   a 1 s lock_timeout for the final delete), and the session's
--   statement_timeout (the authenticator's 8 s on Supabase and on the stack)
--   cuts it otherwise. A statement_timeout set
--   inside a function does not apply to the statement already running, so it
--   cannot be the backstop; instead the fence refuses to start (22023) when the
--   statement timeout would cut it before S, rather than end early unseen.
-- * A token is for one fence: a release committed before its fence starts
--   (a caller that gave up while its request was still on the way) ends that
--   fence as soon as it holds.
-- * Housekeeping: the fence deletes its release row when it returns, and any
--   release row older than a day (a release for a fence that had already
--   expired). A fence whose caller vanished expires by S.
--
-- Idempotent: it creates what is missing and replaces the functions.

create schema if not exists dualwrite;
revoke all on schema dualwrite from public, anon, authenticated;

create table if not exists dualwrite.fence_release (
  token text primary key,
  released_at timestamptz not null default pg_catalog.clock_timestamp()
);
revoke all on dualwrite.fence_release from public, anon, authenticated;

-- The tables the fence locks: the DoX tables the file holds too, as the
-- catalogue lists them (src/catalogue.rs TABLES; a unit test compares the two),
-- in its order. search_chunks is Supabase's alone (the file has no such table,
-- a rollback carries none of it), so its writers are not held.
create or replace function dualwrite.fence_tables()
returns text[]
language sql
immutable
set search_path = ''
as $$
  select array['artifacts', 'documents', 'document_sections', 'document_tables',
               'api_endpoints', 'log_entries', 'tags', 'facts', 'evidence',
               'tag_prompts', 'summaries', 'document_entities',
               'document_structure', 'document_metric_hits',
               'cipher_memory', 'user_prefs', 'skills_registry']
$$;
revoke all on function dualwrite.fence_tables() from public, anon, authenticated;

-- The advisory lock keys (two int4 keys: pg_locks shows them as classid, objid
-- with objsubid 2). 0x64770000 ("dw") + 1: one fence at a time; + 2: the token's.
create or replace function dualwrite.fence_key(token text)
returns integer
language sql
immutable
set search_path = ''
as $$
  select pg_catalog.hashtext(token) & 2147483647
$$;
revoke all on function dualwrite.fence_key(text) from public, anon, authenticated;

create or replace function public.dualwrite_fence(token text, seconds double precision)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
  started timestamptz := pg_catalog.clock_timestamp();
  deadline timestamptz;
  held_at timestamptz;
  ended text;
  timeout_ms bigint;
  locks text;
begin
  if token is null or token = '' or pg_catalog.length(token) > 200 then
    raise exception using errcode = '22023',
      message = 'dualwrite_fence: token must be a non-empty text of at most 200 characters';
  end if;
  if seconds is null or not (seconds > 0 and seconds <= 600) then
    raise exception using errcode = '22023',
      message = pg_catalog.format('dualwrite_fence: seconds must be more than 0 and at most 600, not %s', seconds);
  end if;
  deadline := started + pg_catalog.make_interval(secs => seconds);
  -- The statement timeout this request runs under (the role's or the session's).
  timeout_ms := (extract(epoch from pg_catalog.current_setting('statement_timeout')::interval) * 1000)::bigint;
  if timeout_ms > 0 and timeout_ms < seconds * 1000 + 1000 then
    raise exception using errcode = '22023',
      message = pg_catalog.format(
        'dualwrite_fence: the statement timeout (%s) would cut a fence of %s s before it ends',
        pg_catalog.current_setting('statement_timeout'), seconds),
      hint = 'ask for a shorter fence, or raise the service role''s statement_timeout '
             '(alter role service_role set statement_timeout = ''…''; notify pgrst, ''reload config'')';
  end if;
  -- One fence at a time: a second one fails at once instead of queueing.
  if not pg_catalog.pg_try_advisory_xact_lock(1685520385, 1) then
    raise exception using errcode = '55P03',
      message = 'dualwrite_fence: another fence is up on this database';
  end if;
  locks := 'lock table '
    || (select pg_catalog.string_agg(pg_catalog.format('public.%I', t), ', ')
        from pg_catalog.unnest(dualwrite.fence_tables()) t)
    || ' in share row exclusive mode nowait';
  loop
    begin
      execute locks;
      exit;
    exception when lock_not_available then
      if pg_catalog.clock_timestamp() >= deadline then
        raise exception using errcode = '55P03',
          message = pg_catalog.format(
            'dualwrite_fence: the DoX tables were never all free of writers within %s s', seconds);
      end if;
      perform pg_catalog.pg_sleep(0.002);
    end;
  end loop;
  if not pg_catalog.pg_try_advisory_xact_lock(1685520386, dualwrite.fence_key(token)) then
    raise exception using errcode = '55P03',
      message = 'dualwrite_fence: a fence with this token is already up';
  end if;
  held_at := pg_catalog.clock_timestamp();
  loop
    if exists (select 1 from dualwrite.fence_release r where r.token = dualwrite_fence.token) then
      ended := 'released';
      exit;
    end if;
    if pg_catalog.clock_timestamp() >= deadline then
      ended := 'expired';
      exit;
    end if;
    perform pg_catalog.pg_sleep(0.005);
  end loop;
  -- Housekeeping; a release upsert of the same token is the only thing it can
  -- wait on, briefly.
  perform pg_catalog.set_config('lock_timeout', '1000', true);
  delete from dualwrite.fence_release r
   where r.token = dualwrite_fence.token
      or r.released_at < pg_catalog.clock_timestamp() - interval '1 day';
  return pg_catalog.jsonb_build_object(
    'ended', ended,
    'held_seconds', extract(epoch from pg_catalog.clock_timestamp() - held_at),
    'waited_seconds', extract(epoch from held_at - started));
end;
$$;
revoke all on function public.dualwrite_fence(text, double precision) from public, anon, authenticated;
grant execute on function public.dualwrite_fence(text, double precision) to service_role;

create or replace function public.dualwrite_fence_held(token text)
returns boolean
language sql
stable
security definer
set search_path = ''
as $$
  select exists (
    select 1
      from pg_catalog.pg_locks a
     where a.locktype = 'advisory'
       and a.database = (select d.oid from pg_catalog.pg_database d
                          where d.datname = pg_catalog.current_database())
       and a.classid = 1685520386::oid
       and a.objid = dualwrite.fence_key(token)::oid
       and a.objsubid = 2
       and a.granted
       and (select pg_catalog.count(*)
              from pg_catalog.pg_locks l
             where l.pid = a.pid
               and l.locktype = 'relation'
               and l.mode = 'ShareRowExclusiveLock'
               and l.granted
               and l.relation in (select pg_catalog.to_regclass(pg_catalog.format('public.%I', t))::oid
                                    from pg_catalog.unnest(dualwrite.fence_tables()) t))
           = pg_catalog.cardinality(dualwrite.fence_tables()))
$$;
revoke all on function public.dualwrite_fence_held(text) from public, anon, authenticated;
grant execute on function public.dualwrite_fence_held(text) to service_role;

create or replace function public.dualwrite_fence_release(token text)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
  if token is null or token = '' then
    raise exception using errcode = '22023',
      message = 'dualwrite_fence_release: token must be a non-empty text';
  end if;
  insert into dualwrite.fence_release as r (token) values (dualwrite_fence_release.token)
    on conflict on constraint fence_release_pkey do update set released_at = pg_catalog.clock_timestamp();
  delete from dualwrite.fence_release r
   where r.released_at < pg_catalog.clock_timestamp() - interval '1 day';
  return public.dualwrite_fence_held(token);
end;
$$;
revoke all on function public.dualwrite_fence_release(text) from public, anon, authenticated;
grant execute on function public.dualwrite_fence_release(text) to service_role;

notify pgrst, 'reload schema';
