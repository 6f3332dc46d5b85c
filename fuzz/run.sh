#!/usr/bin/env bash
# Builds the fuzz targets (nightly, sanitizers; cargo-fuzz installed when
# missing) and runs each for SECONDS (default 30: CI's smoke; 600 for the
# recorded runs in docs/RELIABILITY.md), JOBS targets at a time. Any crash,
# sanitizer report or failed assertion fails the run and leaves its input
# under fuzz/artifacts/TARGET/. Usage: fuzz/run.sh [seconds] [jobs] [target...]
set -euo pipefail
cd "$(dirname "$0")"
SECS="${1:-30}"
JOBS="${2:-2}"
shift $(( $# > 2 ? 2 : $# ))
# A cache of its own outside the clone (sanitizer builds share nothing with
# the workspace's), so CI rebuilds only what changed.
TD="${AIRLOCK_FUZZ_TARGET_DIR:-$HOME/.cache/airlock-fuzz-target}"
unset CARGO_TARGET_DIR
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
cargo +nightly fuzz build -O --target-dir "$TD" >/dev/null
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo +nightly fuzz list)
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
run_one() {
  local t=$1
  mkdir -p "corpus/$t"
  # Committed seeds and a dictionary, where a target has them: random
  # bytes seldom make valid SQL, and the C parser is not instrumented.
  local extra=()
  [ -d "seeds/$t" ] && extra+=("seeds/$t")
  local flags=(-max_total_time="$SECS" -rss_limit_mb=2048)
  [ -f "$t.dict" ] && flags+=(-dict="$t.dict")
  if cargo +nightly fuzz run -O --target-dir "$TD" "$t" "corpus/$t" "${extra[@]}" -- "${flags[@]}" >"$LOGS/$t" 2>&1; then
    echo "$t: $(grep -Eo '#[0-9]+' "$LOGS/$t" | tail -1 | tr -d '#') runs in ${SECS}s, no crash"
  else
    echo "$t: FAILED"; tail -40 "$LOGS/$t"; return 1
  fi
}
export -f run_one
export SECS LOGS TD
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
