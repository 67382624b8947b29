# shellcheck shell=bash
# scripts/stack/postgres.sh: PostgreSQL 15, a cluster of the stack's own in <state>/pg, run by the
# postgres OS user (the server refuses root); its two databases (dox, and dox_template that tests clone),
# the bootstrap (scripts/sql/supabase-bootstrap.sql) and supabase/migrations/*.sql.

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

# postgres must be able to reach <state>/pg: add o+x (search only, no listing) on parents that lack it.
ensure_traversable() {
  local d=$STATE_DIR
  while [[ $d != / ]]; do
    if ! runuser -u postgres -- test -x "$d"; then
      log "chmod o+x $d (so the postgres user can reach $PGDATA)"
      chmod o+x "$d"
    fi
    d=$(dirname "$d")
  done
}

pg_running() { [[ -f $PGDATA/PG_VERSION ]] && as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

pg_init() {
  if [[ -f $PGDATA/PG_VERSION ]]; then
    [[ $(<"$PGDATA/PG_VERSION") == 15 ]] || die "$PGDATA holds a PostgreSQL $(<"$PGDATA/PG_VERSION") cluster, expected 15"
    return 0
  fi
  log "initdb $PGDATA"
  install -d -o postgres -g postgres -m 700 "$PGDATA"
  # Local socket: peer (only the postgres OS user, for bootstrapping). TCP: passwords (scram).
  as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >"$LOG_DIR/initdb.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/initdb.log" >&2; die "initdb failed"; }
  printf "\n# dualwrite: settings managed by scripts/stack.sh\ninclude_if_exists = 'dualwrite.conf'\n" \
    >>"$PGDATA/postgresql.conf"
}

# Returns 0 if the settings changed (a running server then needs a restart).
pg_write_conf() {
  local conf
  conf=$(cat <<EOF
# Written by scripts/stack.sh on every 'up'; edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK_DIR'
# Tests create databases and run private PostgRESTs (pool 10 each) next to the shared one.
max_connections = 200
shared_buffers = '256MB'
timezone = 'UTC'
log_timezone = 'UTC'
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
# fsync stays on: benchmarks should see real commit costs.
EOF
)
  local rc=1
  write_if_changed "$PGDATA/dualwrite.conf" "$conf" 600 && rc=0
  chown postgres:postgres "$PGDATA/dualwrite.conf"
  return "$rc"
}

pg_up() {
  ensure_traversable
  install -d -m 755 "$LOG_DIR" "$RUN_DIR"
  install -d -o postgres -g postgres -m 755 "$PG_SOCK_DIR"
  [[ -f $PG_LOG ]] || install -o postgres -g postgres -m 640 /dev/null "$PG_LOG"
  pg_init
  local changed=0
  pg_write_conf && changed=1
  if pg_running; then
    if (( changed )); then
      log "postgres: settings changed, restarting"
      as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -w -t 60 -m fast restart >/dev/null ||
        { tail -n 20 "$PG_LOG" >&2; die "postgres restart failed (log: $PG_LOG)"; }
    else
      log "postgres: already running on 127.0.0.1:$PG_PORT"
    fi
  else
    port_in_use "$PG_PORT" && die "port $PG_PORT is taken by another process (set DUALWRITE_PG_PORT)"
    log "postgres: starting on 127.0.0.1:$PG_PORT"
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -w -t 60 start >/dev/null ||
      { tail -n 20 "$PG_LOG" >&2; die "postgres did not start (log: $PG_LOG)"; }
  fi
}

pg_down() {
  if pg_running; then
    log "postgres: stopping"
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -w -t 60 -m fast stop >/dev/null
  else
    log "postgres: not running"
  fi
}

# psql as the postgres OS user over the unix socket (peer auth); SQL on stdin.
psql_local() {
  as_postgres env PGOPTIONS='-c client_min_messages=warning' \
    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres
}

# psql as dualwrite_admin over TCP; the password travels in the environment, never in argv.
psql_admin() {
  local db=$1; shift
  PGPASSWORD=$ADMIN_PASSWORD PGOPTIONS='-c client_min_messages=warning' PGAPPNAME=dualwrite-stack \
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$ADMIN_ROLE" -d "$db" "$@"
}

# Superuser for inspection (DATABASE_URL) and for tests that create databases. Passwords are sent
# on stdin so they never show up in a process list; re-set on every `up` to follow secrets.env.
pg_admin_role() {
  psql_local <<SQL
do \$\$ begin
  if not exists (select 1 from pg_roles where rolname = '$ADMIN_ROLE') then
    create role $ADMIN_ROLE login superuser;
  end if;
end \$\$;
alter role $ADMIN_ROLE login superuser password '$ADMIN_PASSWORD';
SQL
}

pg_databases() {
  local db
  for db in "$DB_NAME" "$TEMPLATE_DB"; do
    if [[ -z $(psql_admin postgres -tAc "select 1 from pg_database where datname = '$db'") ]]; then
      log "postgres: create database $db"
      psql_admin postgres -c "create database $db"
    fi
  done
}

# Bootstrap (roles, auth/extensions schemas, auth functions, pgrst event triggers) then every
# supabase/migrations/*.sql in name order, each in one transaction, into both databases.
pg_migrate() {
  local migrations=() f db
  while IFS= read -r f; do migrations+=("$f"); done < <(LC_ALL=C ls -1 "$REPO_DIR"/supabase/migrations/*.sql 2>/dev/null || true)
  # dox_template must accept connections to be migrated; it stays a template for CREATE DATABASE.
  for db in "$DB_NAME" "$TEMPLATE_DB"; do
    psql_admin "$db" -1 -f "$REPO_DIR/scripts/sql/supabase-bootstrap.sql" ||
      die "bootstrap failed on $db"
    for f in "${migrations[@]}"; do
      psql_admin "$db" -1 -f "$f" || die "migration $(basename "$f") failed on $db"
    done
  done
  log "postgres: bootstrap + ${#migrations[@]} migration(s) applied to $DB_NAME and $TEMPLATE_DB"
  # authenticator is created by the bootstrap; PostgREST logs in with this password.
  psql_admin postgres <<SQL
alter role authenticator password '$AUTHENTICATOR_PASSWORD';
alter database $TEMPLATE_DB is_template true;
SQL
}
