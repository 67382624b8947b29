# shellcheck shell=bash
# scripts/stack/postgrest.sh: the stack's PostgREST, run with deploy/postgrest/postgrest.conf (copied
# to <state>/postgrest.conf) and its values in <state>/postgrest.env (0600: it holds the JWT secret
# and the authenticator's password). PostgREST reads "$(NAME)" in the file from its environment.

postgrest_running() { [[ -f $PGRST_PID ]] && pid_matches "$(<"$PGRST_PID")" "$PGRST_CONF"; }

postgrest_ready() {
  [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$PGRST_ADMIN_PORT/ready" || true) == 200 ]]
}

# Returns 0 if the configuration or its values changed.
postgrest_write_conf() {
  local conf env rc=1
  [[ -r $PGRST_TEMPLATE ]] || die "$PGRST_TEMPLATE is missing"
  conf=$(<"$PGRST_TEMPLATE")
  env=$(printf 'DW_PGRST_%s=%q\n' \
    DB_URI "postgres://authenticator:$AUTHENTICATOR_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME" \
    JWT_SECRET "$JWT_SECRET" \
    DB_POOL 10 \
    SERVER_HOST 127.0.0.1 \
    SERVER_PORT "$PGRST_PORT" \
    ADMIN_PORT "$PGRST_ADMIN_PORT")
  write_if_changed "$PGRST_CONF" "$conf" 644 && rc=0
  write_if_changed "$PGRST_ENV" "# Written by scripts/stack.sh on every 'up' (contains secrets)."$'\n'"$env" 600 && rc=0
  return "$rc"
}

postgrest_start() {
  port_in_use "$PGRST_PORT" && die "port $PGRST_PORT is taken by another process (set DUALWRITE_PGRST_PORT)"
  port_in_use "$PGRST_ADMIN_PORT" && die "port $PGRST_ADMIN_PORT (PostgREST admin) is taken by another process"
  log "postgrest: starting on 127.0.0.1:$PGRST_PORT (admin :$PGRST_ADMIN_PORT)"
  printf '\n--- %s start\n' "$(date -u +%FT%TZ)" >>"$PGRST_LOG"
  # Clean environment (PGRST_* / PG* variables of the caller would override the file) holding only
  # the values of postgrest.env, read from the file so that no secret shows in a command line.
  # setsid: own session, so the server outlives this shell and its terminal.
  setsid env -i PATH=/usr/bin:/bin LANG=C.UTF-8 bash -c 'set -a && . "$1" && exec "$2" "$3"' \
    postgrest-env "$PGRST_ENV" "$PGRST_BIN" "$PGRST_CONF" >>"$PGRST_LOG" 2>&1 </dev/null &
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

postgrest_stop() {
  if postgrest_running; then
    log "postgrest: stopping"
    stop_pid postgrest "$(<"$PGRST_PID")"
  else
    log "postgrest: not running"
  fi
  rm -f "$PGRST_PID"
}
