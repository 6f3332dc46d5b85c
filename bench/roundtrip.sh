#!/usr/bin/env bash
# The approval round trip (final approve call -> waiting client holds its
# grant) and, on PostgreSQL, the allow-path throughput of POST /v1/check.
#
#   bench/roundtrip.sh sqlite [rounds]     one node; wait and approve on it
#   bench/roundtrip.sh postgres [rounds]   two nodes on one database; wait on
#                                          one, approve on the other; then wrk
#
# PostgreSQL: AIRLOCK_BENCH_POSTGRES names the server (default the local
# one); a fresh database airlock_bench is made and dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="${1:-sqlite}"
ROUNDS="${2:-300}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
cargo build --release -p airlock --bins --example roundtrip >/dev/null
BIN="$CARGO_TARGET_DIR/release/airlock"
RT="$CARGO_TARGET_DIR/release/examples/roundtrip"
PG="${AIRLOCK_BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$STORE" = postgres ] && psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS airlock_bench WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT

case "$STORE" in
  sqlite) URL="sqlite://data/airlock.db" ;;
  postgres)
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS airlock_bench WITH (FORCE)" >/dev/null
    psql "$PG/postgres" -qc "CREATE DATABASE airlock_bench" >/dev/null
    URL="$PG/airlock_bench" ;;
  *) echo "usage: $0 sqlite|postgres [rounds]" >&2; exit 2 ;;
esac

node() { # $1 = node name; starts it, leaves its URL in $DIR/$1/url
  local d="$DIR/$1"
  mkdir -p "$d/policies"
  cat >"$d/policies/bench.cedar" <<'CEDAR'
@id("reads") permit(principal, action == Action::"read", resource);
@id("exports") @approvers("security") permit(principal, action == Action::"export", resource);
CEDAR
  cat >"$d/airlock.toml" <<TOML
[server]
listen = "127.0.0.1:0"
checks_per_second_per_key = 1000000
check_burst_per_key = 1000000
data_dir = "$DIR/shared"
[storage]
url = "$URL"
[policy]
dir = "policies"
[[users]]
name = "alice"
groups = ["engineering"]
[[users]]
name = "bob"
groups = ["security"]
TOML
  AIRLOCK_LOG=warn "$BIN" serve --config "$d/airlock.toml" >"$d/out" 2>"$d/err" &
  PIDS+=($!)
  for _ in $(seq 100); do
    if head -1 "$d/out" 2>/dev/null | grep -q listening; then break; fi
    sleep 0.05
  done
  head -1 "$d/out" | sed 's/Airlock listening on //' >"$d/url"
}

node a
A=$(cat "$DIR/a/url")
if [ "$STORE" = postgres ]; then node b; B=$(cat "$DIR/b/url"); else B=$A; fi
ALICE=$("$BIN" keys create --config "$DIR/a/airlock.toml" --user alice 2>/dev/null | tail -1)
BOB=$("$BIN" keys create --config "$DIR/a/airlock.toml" --user bob 2>/dev/null | tail -1)
echo "== round trip on $STORE: wait on $A, approve on $B"
"$RT" --wait "$A" --approve "$B" --requester "$ALICE" --approver "$BOB" --rounds "$ROUNDS"

if [ "$STORE" = postgres ] && command -v wrk >/dev/null; then
  echo "== POST /v1/check allow path on PostgreSQL, one node (wrk -t2 -c128 -d10s)"
  cat >"$DIR/read.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("AIRLOCK_TOKEN")
wrk.body = '{"action":"read","resource":{"type":"Table","id":"orders"}}'
LUA
  AIRLOCK_TOKEN="$ALICE" wrk -t2 -c128 -d10s --latency -s "$DIR/read.lua" "$A/v1/check"
  "$BIN" audit verify --config "$DIR/a/airlock.toml"
fi
