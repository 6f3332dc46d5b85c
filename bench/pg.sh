#!/usr/bin/env bash
# The PostgreSQL proxy side by side, in one run (issue 12): `pgbench -S`
# (simple protocol, read-only) at 1, 8 and 32 clients straight to the
# server, through PgBouncer (transaction pooling) and through Airlock's
# proxy, where every statement is parsed, decided and durably audited
# (SQLite, group commit) before the server sees it.
# Usage: bench/pg.sh [seconds] [scale]
# Needs the local server (postgres@127.0.0.1:5432, trust) and pgbouncer.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
SCALE="${2:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || apt-get install -y pgbouncer >/dev/null
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
cargo build --release -p airlock >/dev/null
BIN="$CARGO_TARGET_DIR/release/airlock"
DB=airlock_bench

DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" 2>/dev/null
pgbench -h 127.0.0.1 -U postgres -i -s "$SCALE" -q "$DB" >/dev/null 2>&1

# PgBouncer, transaction pooling, as many server connections as clients.
chmod 777 "$DIR"
cat >"$DIR/pgbouncer.ini" <<INI
[databases]
$DB = host=127.0.0.1 port=5432 dbname=$DB user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 16432
auth_type = trust
auth_file = $DIR/users.txt
pool_mode = transaction
default_pool_size = 32
max_client_conn = 200
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
unix_socket_dir =
INI
echo '"postgres" ""' >"$DIR/users.txt"
if [ "$(id -u)" -eq 0 ]; then
  chown -R postgres "$DIR" 2>/dev/null || true
  su postgres -s /bin/sh -c "$PGBOUNCER -d $DIR/pgbouncer.ini"
else
  "$PGBOUNCER" -d "$DIR/pgbouncer.ini"
fi
sleep 1
PIDS+=("$(cat "$DIR/pgbouncer.pid")")

mkdir -p "$DIR/airlock/policies"
cat >"$DIR/airlock/policies/bench.cedar" <<'CEDAR'
permit(principal, action == Action::"sql.select", resource)
when { [Table::"public.pgbench_accounts", Table::"public.pgbench_branches"].contains(resource) };
CEDAR
cat >"$DIR/airlock/airlock.toml" <<TOML
[server]
listen = "127.0.0.1:19080"
checks_per_second_per_key = 1000000
check_burst_per_key = 1000000
[storage]
url = "sqlite://airlock.db"
[policy]
dir = "policies"
[[users]]
name = "alice"
groups = ["engineering"]

[[proxies.postgres]]
name = "bench"
listen = "127.0.0.1:16543"
upstream = "postgres://postgres@127.0.0.1:5432/$DB"
TOML
KEY=$("$BIN" keys create --config "$DIR/airlock/airlock.toml" --user alice --role user | tail -1)
AIRLOCK_LOG=warn "$BIN" serve --config "$DIR/airlock/airlock.toml" >"$DIR/airlock.out" 2>"$DIR/airlock.err" &
PIDS+=($!)
for _ in $(seq 50); do
  grep -q "postgres bench listening" "$DIR/airlock.out" 2>/dev/null && break
  sleep 0.2
done

tps() { # label port user password clients
  local out
  out=$(PGPASSWORD="$4" pgbench -h 127.0.0.1 -p "$2" -U "$3" -S -n -c "$5" -j 2 -T "$SECS" "$DB" 2>&1)
  local t lat
  t=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  echo "$1 $5 ${t:-0} ${lat:-0}"
}

echo "pgbench -S, ${SECS}s per run, scale $SCALE, $(nproc) cores"
printf '%-10s %8s %10s %12s %10s\n' path clients tps "latency ms" "x bouncer"
for c in 1 8 32; do
  direct=$(tps direct 5432 postgres "" "$c")
  bouncer=$(tps pgbouncer 16432 postgres "" "$c")
  airlock=$(tps airlock 16543 alice "$KEY" "$c")
  b=$(echo "$bouncer" | awk '{print $3}')
  for row in "$direct" "$bouncer" "$airlock"; do
    echo "$row" | awk -v b="$b" '{printf "%-10s %8s %10.0f %12.3f %10.2f\n", $1, $2, $3, $4, (b > 0 ? $3 / b : 0)}'
  done
done
