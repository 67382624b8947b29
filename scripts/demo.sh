#!/usr/bin/env bash
# The main job on a fresh machine: start (installing what is missing) the local
# Supabase stack, then write the sample DoX records through DualDatabase
# (SQLite primary, Supabase mirror) and show them on both sides.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/stack.sh up
eval "$(scripts/stack.sh env)"
cargo run --release --quiet -- demo "$@"
