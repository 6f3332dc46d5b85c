#!/usr/bin/env bash
# Load and memory (issue 16): a release build with the quickstart config,
# its idle RSS; then 1,000 concurrent `?wait` long-polls (re-asked as each
# times out) held open for the whole run while wrk drives POST /v1/check
# on the allow path (every decision durably audited) for SECONDS; RSS
# sampled each second; errors counted on both sides; then, with the load
# gone, open file descriptors, threads and RSS again, next to before.
# Usage: bench/waits.sh [seconds=300] [waiters=1000] [wrk connections=16]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-300}"
WAITERS="${2:-1000}"
CONNS="${3:-16}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
cargo build --release -p airlock >/dev/null
BIN="$CARGO_TARGET_DIR/release/airlock"
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; kill $WPID 2>/dev/null || true; rm -rf "$DIR"' EXIT
cp -r examples/quickstart/. "$DIR/"
sed -i 's/127.0.0.1:8080/127.0.0.1:18081/' "$DIR/airlock.toml"
sed -i "s/^\[server\]$/[server]\nchecks_per_second_per_key = 1000000\ncheck_burst_per_key = 1000000\nmax_waits_per_user = $((WAITERS + 100))\nmax_connections = $((WAITERS + CONNS + 200))/" "$DIR/airlock.toml"
AIRLOCK_LOG=warn "$BIN" serve --config "$DIR/airlock.toml" >"$DIR/out" 2>"$DIR/err" &
PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:18081/healthz >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
fds() { ls /proc/$PID/fd | wc -l; }
threads() { awk '/Threads/ {print $2}' /proc/$PID/status; }
sleep 2
echo "$(nproc) cores; $(date -u +%FT%TZ)"
echo "idle: RSS $(( $(rss) / 1024 )) MB, $(fds) fds, $(threads) threads"
IDLE_FDS=$(fds); IDLE_THREADS=$(threads)
ALICE=$("$BIN" keys create --config "$DIR/airlock.toml" --user alice 2>/dev/null | tail -1)
export AIRLOCK_TOKEN=$ALICE
# One request waiting for data-owners: the long-polls wait on it.
RID=$(curl -sf -H "Authorization: Bearer $ALICE" -H 'content-type: application/json' \
  -d '{"action":"export","resource":{"type":"Table","id":"prod.orders"},"params":{"sql":"select * from orders"},"context":{"rows":50000}}' \
  http://127.0.0.1:18081/v1/check | python3 -c 'import json,sys; print(json.load(sys.stdin)["request"]["id"])')
python3 - "$WAITERS" "$RID" "$ALICE" "$SECS" >"$DIR/waiters" <<'PY' &
import asyncio, sys, time
n, rid, key, secs = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
ok = err = 0
req = (f"GET /v1/requests/{rid}?wait=30 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n").encode()
async def one(stop):
    global ok, err
    r, w = await asyncio.open_connection("127.0.0.1", 18081)
    while time.monotonic() < stop:
        w.write(req); await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
        await r.readexactly(length)
        if status == 200: ok += 1
        else: err += 1
    w.close()
async def main():
    stop = time.monotonic() + secs + 5
    res = await asyncio.gather(*(one(stop) for _ in range(n)), return_exceptions=True)
    broken = sum(1 for x in res if isinstance(x, Exception))
    print(f"waiters: {n} open for {secs:.0f}s: {ok} answers 200, {err} other answers, {broken} broken connections")
asyncio.run(main())
PY
WPID=$!
sleep 5
echo "with $WAITERS waits open: RSS $(( $(rss) / 1024 )) MB, $(fds) fds, $(threads) threads"
MAX=0
( while kill -0 $PID 2>/dev/null; do r=$(rss); [ "$r" -gt "$MAX" ] && MAX=$r && echo "$MAX" >"$DIR/maxrss"; sleep 1; done ) &
SPID=$!
wrk -t2 -c"$CONNS" -d"${SECS}"s --latency -s bench/check.lua http://127.0.0.1:18081/v1/check | tee "$DIR/wrk"
kill $SPID 2>/dev/null || true
echo "max RSS under load (waits + checks): $(( $(cat "$DIR/maxrss") / 1024 )) MB"
wait $WPID || true
cat "$DIR/waiters"
sleep 12
echo "after: RSS $(( $(rss) / 1024 )) MB, $(fds) fds (idle $IDLE_FDS), $(threads) threads (idle $IDLE_THREADS)"
grep -E "Non-2xx|Socket errors" "$DIR/wrk" || echo "wrk: no errors"
echo "audit records: $(sqlite3 "$DIR/airlock.db" 'select count(*) from audit' 2>/dev/null || echo '?')"
"$BIN" audit verify --config "$DIR/airlock.toml"
