#!/usr/bin/env bash
# Offline audit verification speed (issue 13): a synthetic export of N
# chain-valid records (built here with Python's hashlib, the chain exactly
# as airlock_core::audit::chain_hash defines it), checked by
# `airlock audit verify --dir` (parse, export form, chain, Merkle tree),
# beside `sha256sum` over the same file as the floor (one hash per byte
# block, no parsing).
# Usage: bench/audit.sh [records]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
cargo build --release -p airlock >/dev/null
BIN="$CARGO_TARGET_DIR/release/airlock"
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
mkdir -p "$DIR/x/checkpoints"
python3 -c 'import cryptography' 2>/dev/null || pip install -q cryptography
# verify --dir wants the last record under a signed checkpoint: a fresh
# Ed25519 key signs a C2SP note of the export's Merkle tree (RFC 6962).
python3 - "$N" "$DIR/x" <<'PY'
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
n, out = int(sys.argv[1]), sys.argv[2]
path = out + "/records.jsonl"
prev = bytes(32)
frontier = []  # (level, hash), largest subtree first
def sha(*parts): return hashlib.sha256(b"".join(parts)).digest()
def push(leaf):
    node = (0, leaf)
    while frontier and frontier[-1][0] == node[0]:
        level, left = frontier.pop()
        node = (level + 1, sha(b"\x01", left, node[1]))
    frontier.append(node)
def s(v): return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
with open(path, "w") as f:
    for seq in range(1, n + 1):
        ts = "2026-11-26T07:%02d:%02d.%03dZ" % ((seq // 60000) % 60, (seq // 1000) % 60, seq % 1000)
        details = '{"outcome":"allow","principal":"alice","resource":{"id":"t%d","type":"Table"}}' % (seq % 97)
        body = '{"actor":%s,"details":%s,"kind":%s,"seq":%d,"subject":%s,"ts":%s}' % (
            s("alice"), details, s("decision"), seq, s(""), s(ts))
        h = hashlib.sha256(b"airlock-audit-v1\0" + prev + body.encode()).digest()
        line = '{"actor":%s,"details":%s,"hash":%s,"kind":%s,"prev_hash":%s,"seq":%d,"subject":%s,"ts":%s}' % (
            s("alice"), details, s(h.hex()), s("decision"), s(prev.hex()), seq, s(""), s(ts))
        f.write(line + "\n")
        push(sha(b"\x00", line.encode()))
        prev = h
root = frontier[-1][1]
for _, h in reversed(frontier[:-1]):
    root = sha(b"\x01", h, root)
key = Ed25519PrivateKey.generate()
pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
b64u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
open(out + "/public-key", "w").write("k4.public." + b64u(pub) + "\n")
origin = "bench.example/audit"
text = "%s\n%d\n%s\n" % (origin, n, base64.b64encode(root).decode())
blob = sha(origin.encode(), b"\n\x01", pub)[:4] + key.sign(text.encode())
note = text + "\n\u2014 %s %s\n" % (origin, base64.b64encode(blob).decode())
open(out + "/checkpoints/bench.example_audit-%d.note" % n, "w", encoding="utf-8").write(note)
PY
SIZE=$(du -h "$DIR/x/records.jsonl" | cut -f1)
t0=$(date +%s.%N)
${PERF:-} "$BIN" audit verify --dir "$DIR/x" --public-key "$DIR/x/public-key"
t1=$(date +%s.%N)
sha256sum "$DIR/x/records.jsonl" >/dev/null
t2=$(date +%s.%N)
python3 - "$N" "$t0" "$t1" "$t2" "$SIZE" <<'PY'
import sys
n, t0, t1, t2, size = int(sys.argv[1]), *map(float, sys.argv[2:5]), sys.argv[5]
v, h = t1 - t0, t2 - t1
print(f"{n} records ({size}): airlock audit verify --dir {v:.2f} s = {n / v:,.0f} records/s; "
      f"sha256sum {h:.2f} s = {n / h:,.0f} records/s; verify / sha256sum = {h / v:.2f}")
PY
