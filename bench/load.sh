#!/usr/bin/env bash
# Load run of POST /v1/check on the allow path against a release build with
# the quickstart policies, every decision durably audited (SQLite WAL,
# synchronous=FULL, group commit). Usage: bench/load.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
cargo build --release -p airlock >/dev/null
BIN="$CARGO_TARGET_DIR/release/airlock"
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
cp -r examples/quickstart/. "$DIR/"
sed -i 's/127.0.0.1:8080/127.0.0.1:18080/' "$DIR/airlock.toml"
# One key drives the whole load: lift its check rate limit (default 200/s)
# so the run measures the decision path, not the limiter's refusals.
sed -i 's/^\[server\]$/[server]\nchecks_per_second_per_key = 1000000\ncheck_burst_per_key = 1000000/' "$DIR/airlock.toml"
AIRLOCK_LOG=warn "$BIN" serve --config "$DIR/airlock.toml" >"$DIR/out" 2>"$DIR/err" &
PID=$!
sleep 1
export AIRLOCK_TOKEN=$("$BIN" keys create --config "$DIR/airlock.toml" --user alice 2>/dev/null | tail -1)
wrk -t2 -c"${2:-64}" -d"${1:-10}"s --latency -s bench/check.lua http://127.0.0.1:18080/v1/check
echo "audit records: $(sqlite3 "$DIR/airlock.db" 'select count(*) from audit')"
"$BIN" audit verify --config "$DIR/airlock.toml"
