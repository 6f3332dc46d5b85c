#!/usr/bin/env bash
# The crash loop (issue 16) at full length: CYCLES SIGKILLs under mixed load
# on SQLite, then on three PostgreSQL nodes (one killed per cycle, in
# turn), every acknowledged decision, approval and grant checked after
# each restart, no grant consumed twice, the log verified and proven
# consistent across the kill. Prints the totals and the time taken.
# Usage: bench/crashloop.sh [cycles=100]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
export AIRLOCK_TEST_POSTGRES="${AIRLOCK_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
export AIRLOCK_CRASH_CYCLES="${1:-100}"
echo "$(nproc) cores; $(date -u +%FT%TZ); $AIRLOCK_CRASH_CYCLES cycles per store"
start=$(date +%s)
cargo test -q -p airlock --test it -- crash:: --nocapture --test-threads=1 2>&1 \
  | grep -E "crash loop|test result|panicked|FAILED"
echo "took $(( $(date +%s) - start )) s"
