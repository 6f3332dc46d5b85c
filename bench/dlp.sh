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
ARGS=()
while IFS= read -r p; do ARGS+=(-e "(?-u)$p"); done < <("$TARGET/release/examples/dlp_corpus" --patterns)
# The corpora live in a scratch folder removed at exit (they are cheap to
# regenerate, and disks here are shared).
DIR=$(mktemp -d "${TMPDIR:-/tmp}/dlp-bench.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
CORPUS="$DIR/dense.txt"
"$TARGET/release/examples/dlp_corpus" "$CORPUS" "$MB"
echo "$(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg); rg: $(rg --version | head -1); patterns: $((${#ARGS[@]} / 2))"

measure() {
CORPUS=$1
BYTES=$(stat -c %s "$CORPUS")
echo
echo "== $2: $CORPUS ($BYTES bytes)"
cat "$CORPUS" >/dev/null # warm the page cache for both
{ printf 'exec %q dlp scan --json %q >/dev/null\n' "$BIN" "$CORPUS"; } >"$DIR/airlock.sh"
{ printf 'exec rg -c'; for a in "${ARGS[@]}"; do printf ' %q' "$a"; done; printf ' %q >/dev/null\n' "$CORPUS"; } >"$DIR/rg.sh"
# Every match, as the scanner finds them (rg -c stops at a line's first).
sed 's/^exec rg -c/exec rg --count-matches/' "$DIR/rg.sh" >"$DIR/rgm.sh"
if command -v hyperfine >/dev/null; then
  hyperfine -i -w 1 -r "$RUNS" --export-json "$DIR/h.json" -n "airlock dlp scan" "bash $DIR/airlock.sh" -n "rg -c (raw patterns)" "bash $DIR/rg.sh" -n "rg --count-matches (raw patterns)" "bash $DIR/rgm.sh" >&2
  read -r a r m < <(python3 -c 'import json,sys; x=json.load(open(sys.argv[1]))["results"]; print(*(int(min(t["times"])*1000) for t in x))' "$DIR/h.json")
else
  # Best of RUNS wall-clock runs each, interleaved so load changes hit both.
  ms() { local s e; s=$(date +%s%N); bash "$1"; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
  a=999999999; r=999999999; m=999999999
  for _ in $(seq "$RUNS"); do
    t=$(ms "$DIR/airlock.sh"); [ "$t" -lt "$a" ] && a=$t
    t=$(ms "$DIR/rg.sh"); [ "$t" -lt "$r" ] && r=$t
    t=$(ms "$DIR/rgm.sh"); [ "$t" -lt "$m" ] && m=$t
  done
fi
findings=$("$BIN" dlp scan --json "$CORPUS" | wc -l)
lines=$(rg -c "${ARGS[@]}" "$CORPUS" || true)
matches=$(rg --count-matches "${ARGS[@]}" "$CORPUS" || true)
python3 - "$BYTES" "$a" "$r" "$m" "$findings" "$lines" "$matches" <<'PY'
import sys
b, a, r, m = (int(x) for x in sys.argv[1:5])
f, l, n = sys.argv[5:8]
mb = b / 1e6
print(f"airlock dlp scan --json:       best {a:6d} ms  {mb / (a / 1000):7.1f} MB/s  ({f} findings)")
print(f"rg -c (raw):                   best {r:6d} ms  {mb / (r / 1000):7.1f} MB/s  ({l} matching lines)")
print(f"rg --count-matches (raw):      best {m:6d} ms  {mb / (m / 1000):7.1f} MB/s  ({n} matches)")
print(f"airlock / rg -c: {r / a * 100:.0f}%  (target >= 30%);  airlock / rg --count-matches: {m / a * 100:.0f}%")
PY
}

measure "$CORPUS" "dense: the generated corpus (a finding every ~80 bytes)"
# Sparse: this repository's own tracked text files, repeated to the same size.
rm -f "$CORPUS"
SPARSE="$DIR/sparse.txt"
git ls-files -z | grep -zvE '\.(png|ico|woff2?|gz)$' | xargs -0 cat >"$DIR/src.txt"
: >"$SPARSE"
while [ "$(stat -c %s "$SPARSE")" -lt $((MB << 20)) ]; do cat "$DIR/src.txt" >>"$SPARSE"; done
measure "$SPARSE" "sparse: source code and docs"
