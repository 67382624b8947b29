-- Supabase as primary: DoX writes of several steps in one transaction.
--
-- Over plain PostgREST, store_entities / store_metric_hits (delete a document's
-- rows, insert the new ones) and reset (many DELETEs) are several requests, and
-- set_user_pref reads then writes: a failure in between loses the old rows
-- without the new ones, and two concurrent set_user_pref calls for different keys
-- lose one. These functions do each write in the server's one transaction.
-- SECURITY INVOKER (the caller's grants and RLS apply), empty search_path,
-- executable by service_role only. `SupabaseDatabase` calls them through
-- POST /rest/v1/rpc/...; re-runnable.

-- Steps, in order, all or nothing:
--   {"op": "upsert", "table": t, "columns": [key, ...], "rows": [{...}, ...]}
--   {"op": "delete_where", "table": t, "column": c, "value": "text"}
--   {"op": "delete_all", "table": t}
-- Returns the rows written or deleted.
create or replace function public.dualwrite_apply_steps(steps jsonb)
returns bigint
language plpgsql
security invoker
set search_path = ''
as $$
declare
  s jsonb;
  t text;
  cols text[];
  n bigint := 0;
  k bigint;
  allowed constant text[] := array['artifacts', 'documents', 'document_sections', 'document_tables',
                                   'api_endpoints', 'log_entries', 'tags', 'facts', 'evidence',
                                   'tag_prompts', 'summaries', 'document_entities',
                                   'document_structure', 'document_metric_hits', 'search_chunks',
                                   'cipher_memory', 'user_prefs', 'skills_registry'];
begin
  for s in select e from pg_catalog.jsonb_array_elements(steps) as e loop
    t := s->>'table';
    if t is null or not (t = any(allowed)) then
      raise exception using errcode = '22023',
        message = pg_catalog.format('dualwrite_apply_steps: %L is not a DoX table', t);
    end if;
    case s->>'op'
    when 'upsert' then
      select pg_catalog.array_agg(c.v order by c.i) into cols
        from pg_catalog.jsonb_array_elements_text(s->'columns') with ordinality as c(v, i);
      if cols is null or pg_catalog.array_length(cols, 1) < 2 then
        raise exception using errcode = '22023',
          message = 'dualwrite_apply_steps: an upsert names its key and at least one column';
      end if;
      execute pg_catalog.format(
        'insert into public.%I (%s) select %s from pg_catalog.jsonb_populate_recordset(null::public.%I, $1) '
        'on conflict (%I) do update set %s',
        t,
        (select pg_catalog.string_agg(pg_catalog.format('%I', c), ', ') from unnest(cols) as c),
        (select pg_catalog.string_agg(pg_catalog.format('%I', c), ', ') from unnest(cols) as c),
        t,
        cols[1],
        (select pg_catalog.string_agg(pg_catalog.format('%I = excluded.%I', c, c), ', ')
           from unnest(cols[2:]) as c))
        using s->'rows';
      get diagnostics k = row_count;
    when 'delete_where' then
      execute pg_catalog.format('delete from public.%I where %I = $1', t, s->>'column')
        using s->>'value';
      get diagnostics k = row_count;
    when 'delete_all' then
      execute pg_catalog.format('delete from public.%I where true', t);
      get diagnostics k = row_count;
    else
      raise exception using errcode = '22023',
        message = pg_catalog.format('dualwrite_apply_steps: unknown op %L', s->>'op');
    end case;
    n := n + k;
  end loop;
  return n;
end;
$$;
revoke all on function public.dualwrite_apply_steps(jsonb) from public, anon, authenticated;
grant execute on function public.dualwrite_apply_steps(jsonb) to service_role;

-- set_user_pref: merge one key into the preferences object under the row lock
-- (insert ... on conflict), so concurrent calls for different keys keep both.
-- Returns the whole preferences object after the change.
create or replace function public.dualwrite_set_user_pref(
  p_user_id text, p_key text, p_value jsonb, p_updated_at timestamptz default null)
returns jsonb
language sql
security invoker
set search_path = ''
as $$
  insert into public.user_prefs as u (user_id, preferences, updated_at)
  values (p_user_id, pg_catalog.jsonb_build_object(p_key, coalesce(p_value, 'null'::jsonb)), p_updated_at)
  on conflict (user_id) do update
    set preferences = (case when pg_catalog.jsonb_typeof(u.preferences) = 'object'
                            then u.preferences else '{}'::jsonb end)
                      || pg_catalog.jsonb_build_object(p_key, coalesce(p_value, 'null'::jsonb)),
        updated_at = excluded.updated_at
  returning u.preferences
$$;
revoke all on function public.dualwrite_set_user_pref(text, text, jsonb, timestamptz)
  from public, anon, authenticated;
grant execute on function public.dualwrite_set_user_pref(text, text, jsonb, timestamptz) to service_role;

-- update_artifact: set the given columns (Supabase names) of one artifact and,
-- with p_merge_extras, merge `extras` into the stored object, under the row
-- lock. Returns the stored extras after the change, or null when there is no
-- such artifact (nothing written).
create or replace function public.dualwrite_update_artifact(
  p_id text, p_fields jsonb, p_merge_extras boolean default false)
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  cur jsonb;
  f jsonb := coalesce(p_fields, '{}'::jsonb);
  sets text;
  out_extras jsonb;
begin
  select a.extras into cur from public.artifacts a where a.id = p_id for update;
  if not found then
    return null;
  end if;
  if p_merge_extras and f ? 'extras' then
    -- DoX decodes extras stored as a JSON string.
    if pg_catalog.jsonb_typeof(cur) = 'string' then
      begin
        cur := (cur #>> '{}')::jsonb;
      exception when others then
        cur := null;
      end;
    end if;
    if pg_catalog.jsonb_typeof(cur) is distinct from 'object' then
      cur := '{}'::jsonb;
    end if;
    f := pg_catalog.jsonb_set(f, '{extras}', cur || coalesce(
      case when pg_catalog.jsonb_typeof(f->'extras') = 'object' then f->'extras' end, '{}'::jsonb));
  end if;
  select pg_catalog.string_agg(pg_catalog.format('%I = r.%I', k, k), ', ')
    into sets from pg_catalog.jsonb_object_keys(f) as k;
  if sets is not null then
    execute pg_catalog.format(
      'update public.artifacts a set %s from pg_catalog.jsonb_populate_record(null::public.artifacts, $1) r '
      'where a.id = $2', sets)
      using f, p_id;
  end if;
  select a.extras into out_extras from public.artifacts a where a.id = p_id;
  return coalesce(out_extras, 'null'::jsonb);
end;
$$;
revoke all on function public.dualwrite_update_artifact(text, jsonb, boolean)
  from public, anon, authenticated;
grant execute on function public.dualwrite_update_artifact(text, jsonb, boolean) to service_role;
