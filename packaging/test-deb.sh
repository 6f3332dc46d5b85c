#!/usr/bin/env bash
# CI's package check: builds the .deb, installs it (as root), and checks
# what it ships: the binary answers --version, the shipped config and
# policies validate, the unit, the user, completions and man page are in
# place; then removes the package again.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
DEB=$(packaging/build-deb.sh | tail -n 1)
echo "built $DEB"
dpkg-deb --info "$DEB" | sed -n '/Package:/,/Description:/p'
as_root dpkg -i "$DEB" >/dev/null
trap 'as_root dpkg --purge airlock >/dev/null' EXIT
/usr/bin/airlock --version
/usr/bin/airlock policy validate /etc/airlock/policies --config /etc/airlock/airlock.toml
for f in /usr/lib/systemd/system/airlock.service /usr/share/man/man1/airlock.1.gz \
  /usr/share/bash-completion/completions/airlock /usr/share/zsh/vendor-completions/_airlock \
  /usr/share/fish/vendor_completions.d/airlock.fish; do
  [ -f "$f" ] || { echo "missing $f" >&2; exit 1; }
done
getent passwd airlock >/dev/null || { echo "no airlock user" >&2; exit 1; }
# The config is the service's to read, not everyone's.
perms=$(stat -c '%a %U:%G' /etc/airlock/airlock.toml)
[ "$perms" = "640 root:airlock" ] || { echo "airlock.toml is $perms, want 640 root:airlock" >&2; exit 1; }
as_root setpriv --reuid=airlock --regid=airlock --init-groups \
  /usr/bin/airlock policy validate /etc/airlock/policies --config /etc/airlock/airlock.toml
grep -q '^ProtectSystem=strict' /usr/lib/systemd/system/airlock.service
grep -q '^NoNewPrivileges=yes' /usr/lib/systemd/system/airlock.service
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /usr/lib/systemd/system/airlock.service
fi
echo "package ok"
