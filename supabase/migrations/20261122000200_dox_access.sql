-- Data API access: explicit grants and row level security for every DoX table.
--
-- Since 2026 new public tables are not exposed to the Data API automatically, so
-- every grant is spelled out. Policy:
--   * service_role: full access (it also has BYPASSRLS on Supabase);
--   * authenticated: reads the document tables; in the cipher tables it reads
--     only rows whose user_id is its JWT `sub` (text, so non-uuid subjects work)
--     and, once the access state is "primary", writes them too (see
--     20261127000300_dox_access_states.sql: while SQLite is the primary, clients
--     only read); it reads legacy cipher_memory rows without a user, and skills;
--   * anon: sees nothing (SELECT is granted so that a read answers with an empty
--     result instead of a permission error, but no policy lets a row through).
-- Re-runnable: every policy is dropped before it is created.

grant usage on schema public to anon, authenticated, service_role;

do $$
declare
  t text;
  doc_tables text[] := array['artifacts', 'documents', 'document_sections', 'document_tables',
                             'api_endpoints', 'log_entries', 'tags', 'facts', 'evidence',
                             'tag_prompts', 'summaries', 'document_entities',
                             'document_structure', 'document_metric_hits', 'search_chunks'];
  all_tables text[] := doc_tables || array['cipher_memory', 'user_prefs', 'skills_registry'];
begin
  foreach t in array all_tables loop
    execute format('alter table public.%I enable row level security', t);
    -- Older default privileges include TRUNCATE, REFERENCES and TRIGGER: start from nothing.
    execute format('revoke all on public.%I from anon, authenticated', t);
    execute format('grant select, insert, update, delete on public.%I to service_role', t);
    execute format('grant select on public.%I to anon, authenticated', t);
    execute format('drop policy if exists %I on public.%I', t || '_service_role_all', t);
    execute format('create policy %I on public.%I for all to service_role using (true) with check (true)',
                   t || '_service_role_all', t);
  end loop;

  foreach t in array doc_tables loop
    execute format('drop policy if exists %I on public.%I', t || '_authenticated_read', t);
    execute format('create policy %I on public.%I for select to authenticated using (true)',
                   t || '_authenticated_read', t);
  end loop;
end
$$;

-- Writes by authenticated (insert, update, delete on cipher_memory and user_prefs)
-- depend on the access state: granted by 20261127000300_dox_access_states.sql.

drop policy if exists cipher_memory_user_owned on public.cipher_memory;
create policy cipher_memory_user_owned on public.cipher_memory
  for all to authenticated
  using (user_id = (select auth.jwt() ->> 'sub'))
  with check (user_id = (select auth.jwt() ->> 'sub'));

drop policy if exists cipher_memory_legacy_read on public.cipher_memory;
create policy cipher_memory_legacy_read on public.cipher_memory
  for select to authenticated
  using (user_id is null);

drop policy if exists user_prefs_own on public.user_prefs;
create policy user_prefs_own on public.user_prefs
  for all to authenticated
  using (user_id = (select auth.jwt() ->> 'sub'))
  with check (user_id = (select auth.jwt() ->> 'sub'));

drop policy if exists skills_registry_authenticated_read on public.skills_registry;
create policy skills_registry_authenticated_read on public.skills_registry
  for select to authenticated
  using (true);

-- PostgREST caches the schema; ask it to reload (harmless where nobody listens).
notify pgrst, 'reload schema';
