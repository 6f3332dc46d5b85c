"""The client against a real `airlock serve` (the `server` fixture in
conftest.py)."""

from __future__ import annotations

import threading
import time

import pytest

from airlock_client import Airlock, AirlockError, ApprovalTimeout, Denied
from airlock_client import _resource


def test_allowed_action_runs_without_a_grant(server):
    alice = Airlock(server["url"], server["alice"])
    ran = []
    with alice.guard("read", "Table:orders") as permit:
        ran.append(permit)
    assert ran and ran[0].decision == "allow" and ran[0].grant_id is None
    assert alice.check("read", {"type": "Table", "id": "orders"})["decision"] == "allow"


def test_denied_action_does_not_run(server):
    alice = Airlock(server["url"], server["alice"])
    with pytest.raises(Denied):
        with alice.guard("drop", "Table:orders"):
            pytest.fail("the block ran")


def review_when_asked(reviewer: Airlock, params: dict, verdict: str) -> threading.Thread:
    """Another user reviewing, from another thread, as soon as the request
    with `params` is pending."""

    def review() -> None:
        for _ in range(200):
            pending = reviewer._call("GET", "/v1/requests?status=pending")["requests"]
            mine = [r for r in pending if r["params"] == params]
            if mine:
                body = {"verdict": verdict, "reason": "from the test"}
                reviewer._call("POST", f"/v1/requests/{mine[0]['id']}/reviews", body)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=review)
    thread.start()
    return thread


def test_approval_by_another_user_while_waiting(server):
    alice = Airlock(server["url"], server["alice"])
    bob = Airlock(server["url"], server["bob"])
    params = {"sql": "select * from customers", "run": "approve"}
    reviewer = review_when_asked(bob, params, "approve")
    with alice.guard("export", "Table:customers", params=params, timeout=20) as permit:
        assert permit.decision == "approved" and permit.grant_id
        grant = permit.grant_id
    reviewer.join()
    done = alice.request(permit.request["id"])
    assert done["status"] == "completed"
    assert done["grant"]["grant_id"] == grant and done["grant"]["outcome"] == "success"


def test_denied_by_a_reviewer_while_waiting(server):
    alice = Airlock(server["url"], server["alice"])
    bob = Airlock(server["url"], server["bob"])
    params = {"run": "deny"}
    reviewer = review_when_asked(bob, params, "deny")
    with pytest.raises(Denied) as raised:
        with alice.guard("export", "Table:customers", params=params, timeout=20):
            pytest.fail("the block ran")
    reviewer.join()
    assert raised.value.request["status"] == "denied"


def test_timeout_leaves_the_request_pending(server):
    alice = Airlock(server["url"], server["alice"])
    started = time.monotonic()
    with pytest.raises(ApprovalTimeout) as raised:
        with alice.guard("export", "Table:customers", params={"run": "timeout"}, timeout=0.5):
            pytest.fail("the block ran")
    assert time.monotonic() - started < 10
    assert alice.request(raised.value.request["id"])["status"] == "pending"


def test_an_exception_in_the_block_is_recorded_as_failure(server):
    alice = Airlock(server["url"], server["alice"])
    bob = Airlock(server["url"], server["bob"])
    params = {"run": "fail"}
    reviewer = review_when_asked(bob, params, "approve")
    with pytest.raises(RuntimeError):
        with alice.guard("export", "Table:customers", params=params, timeout=20) as permit:
            raise RuntimeError("the export broke")
    reviewer.join()
    grant = alice.request(permit.request["id"])["grant"]
    assert grant["outcome"] == "failure"


def test_server_errors_carry_their_code(server):
    nobody = Airlock(server["url"], "alk_not-a-key")
    with pytest.raises(AirlockError) as raised:
        nobody.check("read", "Table:orders")
    assert raised.value.status == 401 and raised.value.code == "unauthenticated"
    with pytest.raises(ValueError):
        nobody.check("read", "no-colon")
    unreachable = Airlock("http://127.0.0.1:9", server["alice"], timeout=2)
    with pytest.raises(AirlockError) as raised:
        unreachable.check("read", "Table:orders")
    assert raised.value.status == 0


def test_a_namespaced_type_keeps_its_colons():
    assert _resource("Db::Table:prod.x") == {"type": "Db::Table", "id": "prod.x"}
    assert _resource("Table:a::b") == {"type": "Table", "id": "a::b"}
    assert _resource("Table:prod.orders") == {"type": "Table", "id": "prod.orders"}
    for bad in ("Db::Table", "Table:", ":x", "no-colon"):
        with pytest.raises(ValueError):
            _resource(bad)
