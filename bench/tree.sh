#!/usr/bin/env bash
# What the audit Merkle tree costs on the allow path (issue 13): the same
# load as bench/load.sh (POST /v1/check, allowed, every decision durably
# audited) against this build and against a build from before the tree,
# alternated in one run (A B A B) so both see the same machine.
# Usage: BASELINE=path/to/airlock-before-the-tree bench/tree.sh [seconds] [connections]
# A baseline: git worktree add /tmp/base 738f116 && (cd /tmp/base &&
#   CARGO_TARGET_DIR=~/.cache/airlock-base cargo build --release -p airlock)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
CONNS="${2:-64}"
: "${BASELINE:?set BASELINE to an airlock binary built before the Merkle tree}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
cargo build --release -p airlock >/dev/null
NEW="$CARGO_TARGET_DIR/release/airlock"

run() { # binary label
  local dir pid
  dir=$(mktemp -d)
  cp -r examples/quickstart/. "$dir/"
  sed -i 's/127.0.0.1:8080/127.0.0.1:18080/' "$dir/airlock.toml"
  sed -i 's/^\[server\]$/[server]\nchecks_per_second_per_key = 1000000\ncheck_burst_per_key = 1000000/' "$dir/airlock.toml"
  AIRLOCK_LOG=warn "$1" serve --config "$dir/airlock.toml" >"$dir/out" 2>"$dir/err" &
  pid=$!
  sleep 1
  AIRLOCK_TOKEN=$("$1" keys create --config "$dir/airlock.toml" --user alice 2>/dev/null | tail -1) \
    wrk -t2 -c"$CONNS" -d"$SECS"s -s bench/check.lua http://127.0.0.1:18080/v1/check \
    | awk -v l="$2" '/Requests\/sec/ {print l, $2}'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}

{
  run "$BASELINE" before
  run "$NEW" tree
  run "$BASELINE" before
  run "$NEW" tree
} | tee /dev/stderr | awk '
  { sum[$1] += $2; n[$1]++ }
  END {
    b = sum["before"] / n["before"]; t = sum["tree"] / n["tree"];
    printf "allow path, mean of 2 runs each: before the tree %.0f/s, with the tree %.0f/s, ratio %.3f\n", b, t, t / b
  }'
