#!/usr/bin/env bash
# The test command: start (installing what is missing) the local Supabase stack,
# then run every test against it. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/stack.sh up
# The HTML verification report is rendered in headless Chromium by a test.
command -v chromium >/dev/null 2>&1 || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
# Without this variable the tests that need the stack skip themselves (see README.md, "Tests").
export DUALWRITE_TEST_STACK=1
cargo test --all-targets "$@"
# The crate's examples (`--all-targets` leaves doctests out).
cargo test --doc -q
# The Python package (python/): built into a venv under target/, tested with pytest.
scripts/python-test.sh
