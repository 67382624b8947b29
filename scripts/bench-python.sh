#!/usr/bin/env bash
# The Python module's benchmark (python/bench/bench.py): builds the module in
# release into the venv under target/, installs SQLAlchemy and SQLModel (DoX's
# own write path, for comparison), and prints the figures BENCHMARKS.md records.
# Needs the local stack: scripts/stack.sh up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=$(realpath -m "${DUALWRITE_PY_VENV:-target/py-venv}")
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "maturin>=1.9.4,<2" "sqlalchemy>=2" "sqlmodel"
(cd python && VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop -q --release)
cargo bench --bench embedded --no-run -q
"$VENV/bin/python" python/bench/bench.py
# Leave the venv's module as the test suite builds it (debug, editable).
(cd python && VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop -q)
