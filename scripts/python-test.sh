#!/usr/bin/env bash
# The Python package's tests: build `python/` into a venv kept under target/
# (maturin develop: an editable install that reuses cargo's target dir), then run
# its pytest suite against the running local stack. Called by scripts/test.sh;
# arguments go to pytest (e.g. `scripts/python-test.sh -k fork`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
VENV=$(realpath -m "${DUALWRITE_PY_VENV:-$TARGET/py-venv}")
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "maturin>=1.9.4,<2" "pytest>=7" "sqlalchemy>=2"
(cd python && VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop -q)
cargo build -q --bin dualwrite
set +e
DUALWRITE_BIN="$TARGET/debug/dualwrite" "$VENV/bin/python" -m pytest -q python/tests "$@"
code=$?
set -e
case $code in
  0) ;;
  5) echo "python-test: pytest collected no test" >&2; exit 1 ;;
  *) echo "python-test: pytest failed (exit $code)" >&2; exit "$code" ;;
esac
