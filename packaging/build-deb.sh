#!/usr/bin/env bash
# Builds the Debian package: the release binary, the systemd unit, the
# default config in /etc/airlock with the example policies, the shell
# completions and the man page (generated from the binary, so they match
# it). Installs cargo-deb if missing. Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
command -v cargo-deb >/dev/null || cargo install --quiet --locked cargo-deb
cargo build --quiet --release -p airlock
BIN="$CARGO_TARGET_DIR/release/airlock"
OUT=packaging/generated
rm -rf "$OUT" && mkdir -p "$OUT"
"$BIN" completions bash >"$OUT/airlock.bash"
"$BIN" completions zsh >"$OUT/_airlock"
"$BIN" completions fish >"$OUT/airlock.fish"
"$BIN" man | gzip -9n >"$OUT/airlock.1.gz"
cargo deb --no-build --strip -p airlock --quiet | tail -n 1
