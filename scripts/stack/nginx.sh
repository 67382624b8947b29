# shellcheck shell=bash
# scripts/stack/nginx.sh: the /rest/v1 gateway (what Kong does for Supabase), rendered from
# deploy/nginx/stack.conf.template (pid, logs, temp dirs) around deploy/nginx/gateway.conf.template
# (the rules, shared with docker-compose.yml), with its own config/pid/logs/temp dirs.

nginx_running() { [[ -f $NGINX_PID ]] && pid_matches "$(<"$NGINX_PID")" "$NGINX_CONF"; }

nginx_cmd() { "$NGINX_BIN" -p "$NGINX_DIR/" -e "$LOG_DIR/nginx-error.log" -c "$NGINX_CONF" "$@"; }

# Returns 0 if the config changed.
nginx_write_conf() {
  local main gateway rc=1
  install -d -m 755 "$NGINX_DIR"
  install -d -o www-data -g www-data -m 700 "$NGINX_DIR/tmp" \
    "$NGINX_DIR/tmp/client_body" "$NGINX_DIR/tmp/proxy" "$NGINX_DIR/tmp/fastcgi" \
    "$NGINX_DIR/tmp/uwsgi" "$NGINX_DIR/tmp/scgi"
  main=$(render_template "$NGINX_MAIN_TEMPLATE" \
    SB_RUN_DIR="$RUN_DIR" SB_LOG_DIR="$LOG_DIR" SB_NGINX_DIR="$NGINX_DIR") || exit 1
  gateway=$(render_template "$NGINX_GATEWAY_TEMPLATE" \
    SB_LISTEN="127.0.0.1:$API_PORT" SB_UPSTREAM="127.0.0.1:$PGRST_PORT" \
    SB_SECRET_KEY="$SECRET_KEY" SB_PUBLISHABLE_KEY="$PUBLISHABLE_KEY" \
    SB_SERVICE_ROLE_KEY="$SERVICE_ROLE_KEY" SB_ANON_KEY="$ANON_KEY") || exit 1
  # The gateway holds the API keys: 0600 (the master, root, reads it).
  write_if_changed "$NGINX_DIR/gateway.conf" "$gateway" 600 && rc=0
  write_if_changed "$NGINX_CONF" "$main" 600 && rc=0
  return "$rc"
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

nginx_answers() {
  [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$API_PORT/rest/v1/" || true) == 401 ]]
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
    nginx_answers && return 0
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
