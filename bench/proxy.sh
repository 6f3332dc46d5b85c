#!/usr/bin/env bash
# The HTTP proxy side by side, in one run (issue 11): the same 4 KiB CSV
# fetched directly from an nginx origin, through nginx as a reverse proxy
# (one worker per core), and through Airlock's proxy on the allow path with
# DLP off and with `response_dlp = "mask"`, and through nginx asking
# Airlock's authz endpoint (`auth_request`, docs/PROXIES.md). Every request
# through Airlock is identified (whoami), decided and durably audited before
# it is forwarded.
# Usage: bench/proxy.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
CONNS="${2:-64}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
command -v nginx >/dev/null || apt-get install -y nginx >/dev/null
cargo build --release -p airlock >/dev/null
BIN="$CARGO_TARGET_DIR/release/airlock"
NGINX=$(command -v nginx)

DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$DIR/nginx.pid" ] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# The origin's file: a CSV export with a little personal data in it.
mkdir -p "$DIR/www/exports" "$DIR/logs"
python3 - "$DIR/www/exports/report.csv" <<'PY'
import sys
rows = ["id,name,email,card,amount"]
for i in range(60):
    rows.append(f"{i},Customer {i},customer{i}@example.com,4111 1111 1111 1111,{i * 7}.00")
open(sys.argv[1], "w").write("\n".join(rows)[:4096] + "\n")
PY
# nginx's workers run as an unprivileged user: let them read the file.
chmod -R a+rX "$DIR"

cat >"$DIR/nginx.conf" <<NGINX
daemon on;
pid $DIR/nginx.pid;
error_log $DIR/logs/error.log warn;
worker_processes 2;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:19001; keepalive 64; }
  server { listen 127.0.0.1:19001; root $DIR/www; }
  server {
    listen 127.0.0.1:19002;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  # nginx in front, asking Airlock's [[proxies.authz]] (docs/PROXIES.md).
  upstream airlock_authz { server 127.0.0.1:19005; keepalive 64; }
  server {
    listen 127.0.0.1:19006;
    location / {
      auth_request /_airlock;
      proxy_set_header Airlock-Token "";
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    location = /_airlock {
      internal;
      proxy_pass http://airlock_authz/nginx;
      proxy_http_version 1.1;
      proxy_pass_request_body off;
      proxy_set_header Connection "";
      proxy_set_header Content-Length "";
      proxy_set_header X-Airlock-Method \$request_method;
      proxy_set_header X-Airlock-Uri \$request_uri;
      proxy_set_header X-Airlock-Host \$host;
      proxy_set_header X-Airlock-Body "\$content_length:\$http_transfer_encoding:\$server_protocol";
      proxy_set_header X-Airlock-Source-Ip \$remote_addr;
    }
  }
}
NGINX
"$NGINX" -p "$DIR" -c "$DIR/nginx.conf"

mkdir -p "$DIR/airlock/policies"
echo 'permit(principal, action == Action::"download", resource);' >"$DIR/airlock/policies/bench.cedar"
cat >"$DIR/airlock/airlock.toml" <<TOML
[server]
listen = "127.0.0.1:19080"
checks_per_second_per_key = 1000000
check_burst_per_key = 1000000
max_connections = 4096
[storage]
url = "sqlite://airlock.db"
[policy]
dir = "policies"
[[users]]
name = "alice"
groups = ["engineering"]

[[proxies.http]]
name = "plain"
listen = "127.0.0.1:19003"
upstream = "http://127.0.0.1:19001"
checks_per_second_per_user = 0   # one user drives the whole load
[[proxies.http.routes]]
method = "GET"
path = "/exports/{name}.csv"
action = "download"
resource = "File:{name}"
response_dlp = "off"

[[proxies.authz]]
name = "front"
listen = "127.0.0.1:19005"
checks_per_second_per_user = 0
[[proxies.authz.routes]]
method = "GET"
path = "/exports/{name}.csv"
action = "download"
resource = "File:{name}"

[[proxies.http]]
name = "masked"
listen = "127.0.0.1:19004"
upstream = "http://127.0.0.1:19001"
checks_per_second_per_user = 0   # one user drives the whole load
[[proxies.http.routes]]
method = "GET"
path = "/exports/{name}.csv"
action = "download"
resource = "File:{name}"
response_dlp = "mask"
TOML
AIRLOCK_LOG=warn "$BIN" serve --config "$DIR/airlock/airlock.toml" >"$DIR/logs/airlock.out" 2>"$DIR/logs/airlock.err" &
PIDS+=($!)
for _ in $(seq 50); do
  curl -s -o /dev/null http://127.0.0.1:19080/healthz && break
  sleep 0.2
done
KEY=$("$BIN" keys create --config "$DIR/airlock/airlock.toml" --user alice 2>/dev/null | tail -1)

run() {
  local name=$1 url=$2
  shift 2
  echo "== $name"
  curl -s -o /dev/null -w "  status %{http_code}, %{size_download} bytes\n" "$@" "$url"
  wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "$@" "$url" | grep -E "Requests/sec|50%|99%|Non-2xx"
}
run "direct (nginx origin)" http://127.0.0.1:19001/exports/report.csv
run "nginx reverse proxy" http://127.0.0.1:19002/exports/report.csv
run "airlock proxy, DLP off" http://127.0.0.1:19003/exports/report.csv -H "Airlock-Token: $KEY"
run "airlock proxy, DLP mask" http://127.0.0.1:19004/exports/report.csv -H "Airlock-Token: $KEY"
run "nginx + airlock auth_request" http://127.0.0.1:19006/exports/report.csv -H "Airlock-Token: $KEY"
echo "audit records: $(sqlite3 "$DIR/airlock/airlock.db" 'select count(*) from audit' 2>/dev/null || echo '?')"
