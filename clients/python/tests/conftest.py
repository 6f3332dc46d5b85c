"""A real `airlock serve` (embedded SQLite) for each test module, with a
key for alice (engineering), bob (security), an admin and an enforcer."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]

POLICIES = """
@id("reads") permit(principal, action == Action::"read", resource);
@id("exports") @approvers("security")
permit(principal, action == Action::"export", resource);
@id("no-drops") forbid(principal, action == Action::"drop", resource);
@id("drops-otherwise") permit(principal, action == Action::"drop", resource);
"""


def _binary() -> str:
    if os.environ.get("AIRLOCK_BIN"):
        return os.environ["AIRLOCK_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or str(pathlib.Path.home() / ".cache/airlock-target")
    for candidate in (pathlib.Path(target) / "debug/airlock", ROOT / "target/debug/airlock"):
        if candidate.exists():
            return str(candidate)
    pytest.fail("no airlock binary: build it (cargo build -p airlock) or set AIRLOCK_BIN")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("airlock")
    (home / "policies").mkdir()
    (home / "policies" / "test.cedar").write_text(POLICIES)
    config = home / "airlock.toml"
    config.write_text(
        """
[server]
listen = "127.0.0.1:0"
[storage]
url = "sqlite://airlock.db"
[policy]
dir = "policies"
[[users]]
name = "alice"
groups = ["engineering"]
[[users]]
name = "bob"
groups = ["security"]
[[users]]
name = "ops"
groups = ["platform"]
"""
    )
    binary = _binary()
    proc = subprocess.Popen(
        [binary, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "AIRLOCK_LOG": "warn"},
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("Airlock listening on "), first
        url = first.removeprefix("Airlock listening on ").strip()

        def key(user: str, role: str = "user") -> str:
            out = subprocess.run(
                [binary, "keys", "create", "--config", str(config), "--user", user, "--role", role],
                capture_output=True,
                text=True,
                check=True,
            )
            return out.stdout.strip().splitlines()[-1]

        yield {"url": url, "alice": key("alice"), "bob": key("bob"), "admin": key("ops", "admin"),
               "enforcer": key("gate", "enforcer")}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
