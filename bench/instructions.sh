#!/usr/bin/env bash
# User-space instructions per POST /v1/check on the allow path (SQLite),
# counted by valgrind's callgrind: repeatable to about 0.1% for one build,
# whatever else the machine is doing, where wrk's requests/s on a shared
# 2-core VM move by 20-30% from run to run. Use it to compare two builds
# of the same code path (issue 17, item 3); it does not count the kernel.
#
#   bench/instructions.sh [seconds=15] [binary]   # prints requests and Ir/check
#   KEEP=FILE bench/instructions.sh ...           # keeps the profile (callgrind_annotate FILE)
#
# Under valgrind, sha2 runs its portable code (no SHA-NI), so SHA-256 counts
# several times what it costs on the real CPU; compare builds, not parts.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-15}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
for tool in wrk valgrind; do
  command -v "$tool" >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$tool" >/dev/null
done
if [ -n "${2:-}" ]; then
  BIN="$2"
else
  cargo build --release -p airlock >/dev/null
  BIN="$CARGO_TARGET_DIR/release/airlock"
fi
DIR=$(mktemp -d "${TMPDIR:-/tmp}/instructions.XXXXXX")
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

cp -r examples/quickstart/. "$DIR/"
sed -i 's/127.0.0.1:8080/127.0.0.1:19103/' "$DIR/airlock.toml"
sed -i 's/^\[server\]$/[server]\nchecks_per_second_per_key = 1000000\ncheck_burst_per_key = 1000000/' "$DIR/airlock.toml"
AIRLOCK_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.out" \
  "$BIN" serve --config "$DIR/airlock.toml" >"$DIR/out" 2>"$DIR/err" &
PID=$!
for _ in $(seq 300); do curl -sf http://127.0.0.1:19103/healthz >/dev/null && break; sleep 0.2; done
AIRLOCK_TOKEN=$("$BIN" keys create --config "$DIR/airlock.toml" --user alice 2>/dev/null | tail -1)
export AIRLOCK_TOKEN
URL=http://127.0.0.1:19103/v1/check
# Warm up (first connections, statement caches, the policy index), then
# count from zero over a fixed load.
wrk -t1 -c16 -d5s -s bench/check.lua "$URL" >/dev/null
callgrind_control -z "$PID" >/dev/null 2>&1
out=$(wrk -t1 -c16 -d"${SECS}"s -s bench/check.lua "$URL")
if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
  echo "wrk reported errors:" >&2
  echo "$out" >&2
  exit 1
fi
callgrind_control -d "$PID" >/dev/null 2>&1
sleep 1
n=$(awk '/requests in/{print $1}' <<<"$out")
dump=$(ls "$DIR"/cg.out.* | head -1)
total=$(awk '/^summary:/{print $2}' "$dump")
[ -n "${KEEP:-}" ] && cp "$dump" "$KEEP"
echo "requests=$n instructions/check=$((total / n))"
