#!/usr/bin/env bash
# The Python package's tests, run against the wheel a user installs: build it
# (`maturin build --release`: abi3, manylinux, stripped), install it into a fresh
# venv with no Rust on PATH, then run the pytest suite against the running local
# stack. Called by scripts/test.sh; arguments go to pytest (e.g.
# `scripts/python-test.sh -k fork`).
#
# DUALWRITE_PY_BUILD=editable builds a debug editable install instead (maturin
# develop into target/py-venv): seconds instead of minutes while working on the
# module.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
venv() {
  python3 -m venv "$1" 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$1"
  }
}
pip_q() { "$1/bin/pip" install -q --disable-pip-version-check "${@:2}"; }

if [ "${DUALWRITE_PY_BUILD:-wheel}" = editable ]; then
  VENV=$(realpath -m "${DUALWRITE_PY_VENV:-$TARGET/py-venv}")
  [ -x "$VENV/bin/python" ] || venv "$VENV"
  pip_q "$VENV" "maturin>=1.9.4,<2" "pytest>=7" "sqlalchemy>=2"
  (cd python && VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop -q)
else
  # The build tools live in a venv of their own; the test venv is new each run.
  BUILD=$TARGET/py-build-venv
  [ -x "$BUILD/bin/maturin" ] || { venv "$BUILD" && pip_q "$BUILD" "maturin>=1.9.4,<2"; }
  rm -rf "$TARGET/wheels"
  (cd python && "$BUILD/bin/maturin" build --release --quiet --out "$TARGET/wheels")
  WHEEL=$(ls "$TARGET"/wheels/dualwrite-*-cp39-abi3-manylinux_*.whl)
  VENV=$TARGET/py-wheel-venv
  rm -rf "$VENV" && venv "$VENV"
  pip_q "$VENV" "pytest>=7" "sqlalchemy>=2"
  # The install step: no Rust toolchain on PATH, no index (nothing to build or fetch).
  NO_RUST_PATH=$(tr ':' '\n' <<<"$PATH" | grep -v -e cargo -e rustup | paste -sd:)
  started=$EPOCHREALTIME
  PATH=$NO_RUST_PATH "$VENV/bin/pip" install -q --disable-pip-version-check --no-index --no-deps "$WHEEL"
  took=$(awk "BEGIN { print $EPOCHREALTIME - $started }")
  so=$(find "$VENV" -name '_native*.so')
  printf 'python-test: %s (%s KB; extension %s KB) installed without Rust in %.1f s\n' \
    "$(basename "$WHEEL")" $(($(stat -c %s "$WHEEL") / 1024)) $(($(stat -c %s "$so") / 1024)) "$took"
  # pytest must import the installed package, not the source folder.
  (cd python/tests && "$VENV/bin/python" -c \
    "import dualwrite, sys; p = dualwrite.__file__; sys.exit(0 if p.startswith('$VENV') else 'imports ' + p)")
fi
cargo build -q --bin dualwrite --example switch_primary
set +e
DUALWRITE_BIN="$TARGET/debug/dualwrite" DUALWRITE_SWITCH_BIN="$TARGET/debug/examples/switch_primary" \
  "$VENV/bin/python" -m pytest -q python/tests "$@"
code=$?
set -e
case $code in
  0) ;;
  5) echo "python-test: pytest collected no test" >&2; exit 1 ;;
  *) echo "python-test: pytest failed (exit $code)" >&2; exit "$code" ;;
esac
