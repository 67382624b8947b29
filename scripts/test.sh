#!/usr/bin/env bash
# The test command: start (installing what is missing) the local Supabase stack,
# then run every test against it. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/stack.sh up
cargo test --all-targets "$@"
