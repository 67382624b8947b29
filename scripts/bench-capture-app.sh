#!/usr/bin/env bash
# What change capture costs the app's own writes (benches/capture_app.py):
# builds the release `dualwrite` (its `capture install`), a venv under target/
# with SQLAlchemy and SQLModel (DoX's write path), and prints the table
# BENCHMARKS.md records. No stack needed (the variant capture-serve needs it). Env: see the script's header.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=$(realpath -m "${DUALWRITE_PY_VENV:-target/py-venv}")
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "sqlalchemy>=2" "sqlmodel"
cargo build --release -q --bin dualwrite
"$VENV/bin/python" benches/capture_app.py
