# shellcheck shell=bash
# scripts/stack/secrets.sh: the stack's secrets, generated once and kept in <state>/secrets.env (0600).
# The JWT secret and the JWTs (anon, service_role, and `scripts/stack.sh jwt`) come from the project's
# own `dualwrite keys` (src/keys.rs): HS256 is implemented once, in the library.

SECRET_NAMES=(JWT_SECRET ANON_KEY SERVICE_ROLE_KEY PUBLISHABLE_KEY SECRET_KEY AUTHENTICATOR_PASSWORD ADMIN_PASSWORD)
# The stack's anon and service_role keys live ten years (a loopback test stack, not a deployment);
# `up` signs them again when fewer than 30 days are left.
KEY_TTL_DAYS=3650
KEY_RENEW_SECS=$((30 * 86400))

# The dualwrite binary: $DUALWRITE_BIN if set, else the debug build of this checkout (`cargo build
# --bin dualwrite`: the build the test command makes anyway, so CI pays for it once). Built only when a
# key must be signed, i.e. on the first `up` of a state directory, and by `jwt`.
DW_BIN=
dualwrite_bin() {
  [[ -n $DW_BIN ]] && return 0
  if [[ -n ${DUALWRITE_BIN:-} ]]; then
    [[ -x $DUALWRITE_BIN ]] || die "DUALWRITE_BIN=$DUALWRITE_BIN is not an executable file"
    DW_BIN=$DUALWRITE_BIN
    return 0
  fi
  command -v cargo >/dev/null ||
    die "cargo is needed to build the dualwrite binary that signs the stack's keys (or set DUALWRITE_BIN)"
  log "building the dualwrite binary (cargo build --bin dualwrite) to sign the stack's keys"
  (cd "$REPO_DIR" && cargo build --quiet --bin dualwrite) || die "cargo build --bin dualwrite failed"
  local target=${CARGO_TARGET_DIR:-target}
  [[ $target == /* ]] || target=$REPO_DIR/$target
  DW_BIN=$target/debug/dualwrite
  [[ -x $DW_BIN ]] || die "no binary at $DW_BIN after cargo build"
}

# dualwrite_keys SECRET ARGS...: run `dualwrite keys ARGS` with SUPABASE_JWT_SECRET=SECRET in an
# otherwise empty environment, from / (no .env or config/ of the caller is read). The secret goes
# through stdin, never through a command line (which `ps` shows to every user).
dualwrite_keys() {
  local secret=$1
  shift
  [[ -n $DW_BIN ]] || dualwrite_bin
  (cd / && env -i PATH=/usr/bin:/bin bash -c \
    'IFS= read -r SUPABASE_JWT_SECRET; export SUPABASE_JWT_SECRET; exec "$0" keys "$@"' \
    "$DW_BIN" "$@" <<<"$secret")
}

# The `exp` claim of a JWT (empty if there is none). Reading a claim needs no key.
jwt_exp() {
  local p=${1#*.}
  p=${p%%.*}
  p=${p//-/+}
  p=${p//_//}
  while (( ${#p} % 4 )); do p+='='; done
  printf '%s' "$p" | base64 -d 2>/dev/null | grep -o '"exp":[0-9]*' | cut -d: -f2 || true
}

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# Fill in what secrets.env lacks: a new JWT secret means new anon/service_role keys; a key that is
# missing or expires within 30 days is signed again.
ensure_secrets() {
  local -A cur=()
  local k v line out
  if [[ -f $SECRETS_FILE ]]; then
    while IFS='=' read -r k v; do
      [[ -n $k && $k != \#* ]] && cur[$k]=$v
    done <"$SECRETS_FILE"
  fi
  if [[ -z ${cur[JWT_SECRET]:-} || -z ${cur[PUBLISHABLE_KEY]:-} || -z ${cur[SECRET_KEY]:-} ]]; then
    # The generator of docker-compose.yml's .env: JWT secret, keys signed with it, sb_ keys.
    dualwrite_bin # here, not in the $(...) subshell below, so that the path is remembered
    out=$(dualwrite_keys '' generate --compose --days "$KEY_TTL_DAYS" --service-days "$KEY_TTL_DAYS" \
      2>>"$LOG_DIR/keys.log") || die "dualwrite keys generate failed (log: $LOG_DIR/keys.log)"
    local -A gen=()
    while IFS='=' read -r k v; do gen[$k]=$v; done <<<"$out"
    if [[ -z ${cur[JWT_SECRET]:-} ]]; then
      cur[JWT_SECRET]=${gen[JWT_SECRET]}
      cur[ANON_KEY]=${gen[ANON_KEY]}
      cur[SERVICE_ROLE_KEY]=${gen[SERVICE_ROLE_KEY]}
    fi
    [[ -n ${cur[PUBLISHABLE_KEY]:-} ]] || cur[PUBLISHABLE_KEY]=${gen[PUBLISHABLE_KEY]}
    [[ -n ${cur[SECRET_KEY]:-} ]] || cur[SECRET_KEY]=${gen[SECRET_KEY]}
  fi
  local now exp role
  now=$(date +%s)
  for k in ANON_KEY SERVICE_ROLE_KEY; do
    exp=$(jwt_exp "${cur[$k]:-}")
    if [[ -z $exp ]] || (( exp - now < KEY_RENEW_SECS )); then
      [[ $k == ANON_KEY ]] && role=anon || role=service_role
      [[ -z ${cur[$k]:-} ]] || log "secrets: $k expires within 30 days, signing a new one"
      dualwrite_bin
      cur[$k]=$(dualwrite_keys "${cur[JWT_SECRET]}" sign --role "$role" --ttl $((KEY_TTL_DAYS * 86400)) \
        2>>"$LOG_DIR/keys.log") || die "dualwrite keys sign failed (log: $LOG_DIR/keys.log)"
    fi
  done
  [[ -n ${cur[AUTHENTICATOR_PASSWORD]:-} ]] || cur[AUTHENTICATOR_PASSWORD]=$(random_hex 24)
  [[ -n ${cur[ADMIN_PASSWORD]:-} ]] || cur[ADMIN_PASSWORD]=$(random_hex 24)
  out="# dualwrite local stack secrets (generated once by scripts/stack.sh; keep private)"
  for k in "${SECRET_NAMES[@]}"; do
    [[ -n ${cur[$k]:-} ]] || die "could not make $k"
    out+=$'\n'"$k=${cur[$k]}"
  done
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
  for req in "${SECRET_NAMES[@]}"; do
    [[ -n ${!req:-} ]] || die "$SECRETS_FILE lacks $req: run scripts/stack.sh up"
  done
  # The sb_ keys are matched by nginx regexes: keep them to URL-safe base64 characters.
  [[ $PUBLISHABLE_KEY =~ ^sb_publishable_[A-Za-z0-9_-]+$ && $SECRET_KEY =~ ^sb_secret_[A-Za-z0-9_-]+$ ]] ||
    die "unexpected sb_ key format in $SECRETS_FILE"
}

# `jwt ROLE [SUB]`: a token valid one hour, signed with the stack's secret.
mint_jwt() {
  local role=$1 sub=${2:-}
  if [[ -n $sub ]]; then
    dualwrite_keys "$JWT_SECRET" sign --role "$role" --sub "$sub" --ttl 3600
  else
    dualwrite_keys "$JWT_SECRET" sign --role "$role" --ttl 3600
  fi
}
