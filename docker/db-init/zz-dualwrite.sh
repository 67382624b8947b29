#!/bin/bash
# dualwrite's database setup inside the supabase/postgres container (docker-compose.yml).
#
# Mounted as /docker-entrypoint-initdb.d/zz-dualwrite.sh, so it runs once, when the container
# initialises an empty data directory, after the image's own migrate.sh (roles, auth schema,
# extensions, pgrst event triggers). The postgres entrypoint executes it if it is executable
# and sources it otherwise: everything runs in a subshell so both ways behave the same.
#
# It mirrors what scripts/stack.sh does for the Docker-less stack:
#   * authenticator gets POSTGRES_PASSWORD (PostgREST logs in with it);
#   * new public tables are not granted to the API roles by default (Supabase's behaviour for
#     every project from 2026-10-30), so a missing GRANT in a migration shows up locally;
#   * scripts/sql/supabase-bootstrap.sql, then every supabase/migrations/*.sql in name order,
#     each in one transaction, into the served database ($POSTGRES_DB, "postgres" like hosted
#     Supabase) and into dox_template, which the tests clone with CREATE DATABASE ... TEMPLATE.
#     The bootstrap adds what the image lacks without GoTrue, notably auth.jwt().

dualwrite_init() (
  set -euo pipefail
  # Same connection settings as the image's migrate.sh (temporary server, unix socket).
  export PGHOST="${POSTGRES_HOST:-/var/run/postgresql}"
  export PGPORT="${PGPORT:-5432}"
  export PGUSER=supabase_admin
  export PGPASSWORD="${POSTGRES_PASSWORD:-}"
  export PGOPTIONS='-c client_min_messages=warning'
  local served_db="${POSTGRES_DB:-postgres}" template_db=dox_template db f
  run_psql() { psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc -q "$@"; }

  echo "zz-dualwrite: authenticator password, default privileges"
  run_psql -d "$served_db" -v pgpass="$POSTGRES_PASSWORD" <<'SQL'
alter role authenticator with password :'pgpass';
alter default privileges for role postgres in schema public
  revoke all on tables from anon, authenticated, service_role;
alter default privileges for role supabase_admin in schema public
  revoke all on tables from anon, authenticated, service_role;
SQL

  if [ -z "$(run_psql -d "$served_db" -tAc "select 1 from pg_database where datname = '$template_db'")" ]; then
    run_psql -d "$served_db" -c "create database $template_db"
  fi

  for db in "$served_db" "$template_db"; do
    echo "zz-dualwrite: bootstrap + migrations into $db"
    run_psql -d "$db" -1 -f /dualwrite/supabase-bootstrap.sql
    for f in /dualwrite/migrations/*.sql; do
      [ -e "$f" ] || continue
      echo "zz-dualwrite:   $(basename "$f")"
      run_psql -d "$db" -1 -f "$f"
    done
  done
  run_psql -d "$served_db" -c "alter database $template_db is_template true"
)

dualwrite_init
