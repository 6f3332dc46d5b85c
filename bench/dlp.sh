#!/usr/bin/env bash
# DLP scanner throughput next to ripgrep, in one run, on the same file:
# `airlock dlp scan` (release; all built-in detectors, validated, exact
# offsets) against `rg -c` with the same raw patterns (no validation, one
# count per line). Usage: bench/dlp.sh [megabytes=200] [runs=5]
set -euo pipefail
cd "$(dirname "$0")/.."
MB="${1:-200}"
RUNS="${2:-5}"
command -v rg >/dev/null || apt-get install -y ripgrep >/dev/null
command -v hyperfine >/dev/null || apt-get install -y hyperfine >/dev/null || true
cargo build --release -p airlock --bin airlock -p airlock-dlp --example dlp_corpus >/dev/null
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET/release/airlock"
CORPUS="${DLP_CORPUS:-$TARGET/dlp-corpus-${MB}mb.txt}"
if [ ! -s "$CORPUS" ]; then
  "$TARGET/release/examples/dlp_corpus" "$CORPUS" "$MB"
fi
BYTES=$(stat -c %s "$CORPUS")
ARGS=()
while IFS= read -r p; do ARGS+=(-e "(?-u)$p"); done < <("$TARGET/release/examples/dlp_corpus" --patterns)
echo "corpus: $CORPUS ($BYTES bytes); $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rg: $(rg --version | head -1); patterns: $((${#ARGS[@]} / 2))"
cat "$CORPUS" >/dev/null # warm the page cache for both
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
{ printf 'exec %q dlp scan --json %q >/dev/null\n' "$BIN" "$CORPUS"; } >"$DIR/airlock.sh"
{ printf 'exec rg -c'; for a in "${ARGS[@]}"; do printf ' %q' "$a"; done; printf ' %q >/dev/null\n' "$CORPUS"; } >"$DIR/rg.sh"
if command -v hyperfine >/dev/null; then
  hyperfine -w 1 -r "$RUNS" --export-json "$DIR/h.json" -n "airlock dlp scan" "bash $DIR/airlock.sh" -n "rg -c (raw patterns)" "bash $DIR/rg.sh" >&2
  read -r a r < <(python3 -c 'import json,sys; x=json.load(open(sys.argv[1]))["results"]; print(*(int(min(t["times"])*1000) for t in x))' "$DIR/h.json")
else
  # Best of RUNS wall-clock runs each, interleaved so load changes hit both.
  ms() { local s e; s=$(date +%s%N); bash "$1"; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
  a=999999999; r=999999999
  for _ in $(seq "$RUNS"); do
    t=$(ms "$DIR/airlock.sh"); [ "$t" -lt "$a" ] && a=$t
    t=$(ms "$DIR/rg.sh"); [ "$t" -lt "$r" ] && r=$t
  done
fi
findings=$("$BIN" dlp scan --json "$CORPUS" | wc -l)
lines=$(rg -c "${ARGS[@]}" "$CORPUS" || true)
python3 - "$BYTES" "$a" "$r" "$findings" "$lines" <<'PY'
import sys
b, a, r, f, l = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
mb = b / 1e6
print(f"airlock dlp scan: best {a} ms  {mb / (a / 1000):7.1f} MB/s  ({f} findings)")
print(f"rg -c (raw):      best {r} ms  {mb / (r / 1000):7.1f} MB/s  ({l} matching lines)")
print(f"airlock / rg throughput: {r / a * 100:.0f}%  (target >= 30%)")
PY
