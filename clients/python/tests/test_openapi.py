"""The API document at `GET /v1/openapi.json`, checked by tools that are not
ours: `openapi-spec-validator` says it is valid OpenAPI 3.1, and `jsonschema`
checks real answers of a real server (successes and errors) against the
schemas it gives for their path, method and status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from airlock_client import Airlock


def call(server, method: str, path: str, key: str | None, body=None):
    """(status, content type, parsed body) of one call, errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server["url"] + path, data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            status, ctype, raw = res.status, res.headers["Content-Type"], res.read()
    except urllib.error.HTTPError as e:
        status, ctype, raw = e.code, e.headers["Content-Type"], e.read()
    if ctype and ctype.startswith("application/json"):
        return status, ctype, json.loads(raw)
    return status, ctype, raw.decode()


@pytest.fixture(scope="module")
def document(server):
    status, ctype, doc = call(server, "GET", "/v1/openapi.json", None)
    assert status == 200 and ctype.startswith("application/json")
    return doc


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)


class Conformance:
    """Checks answers against the document and remembers which documented
    (path, method, status) were seen."""

    def __init__(self, server, document):
        self.server, self.doc, self.seen = server, document, set()

    def response_schema(self, template: str, method: str, status: int):
        op = self.doc["paths"][template][method.lower()]
        assert str(status) in op["responses"], f"{method} {template} answered {status}, undocumented"
        res = op["responses"][str(status)]
        if "$ref" in res:
            res = self.doc["components"]["responses"][res["$ref"].rsplit("/", 1)[-1]]
        return res

    def check(self, method: str, template: str, path: str, key, body=None, status=None):
        got, ctype, answer = call(self.server, method, path, key, body)
        if status is not None:
            assert got == status, (method, path, got, answer)
        res = self.response_schema(template, method, got)
        (media,) = res["content"].keys()
        assert ctype.split(";")[0] == media, (method, path, ctype)
        schema = res["content"][media].get("schema")
        if schema is not None and media == "application/json":
            # The document's components, so its $refs resolve.
            rooted = {**schema, "components": self.doc["components"]}
            jsonschema.Draft202012Validator(rooted).validate(answer)
        if got >= 400:
            code = answer["error"]["code"]
            assert f"`{code}`" in res["description"], (code, res["description"])
        self.seen.add((template, method.lower(), got))
        return answer


def test_real_answers_match_the_document(server, document):
    c = Conformance(server, document)
    alice, bob, admin = server["alice"], server["bob"], server["admin"]
    table = {"type": "Table", "id": "prod.customers"}

    allow = c.check("POST", "/v1/check", "/v1/check", alice, {"action": "read", "resource": table})
    assert allow["decision"] == "allow"
    deny = c.check("POST", "/v1/check", "/v1/check", alice, {"action": "drop", "resource": table})
    assert deny["decision"] == "deny"
    held = c.check(
        "POST", "/v1/check", "/v1/check", alice,
        {"action": "export", "resource": table, "params": {"rows": 10}, "reason": "report"},
    )
    assert held["decision"] == "approval_required"
    rid = held["request"]["id"]
    one = f"/v1/requests/{rid}"

    c.check("GET", "/v1/requests", "/v1/requests?status=pending", bob, status=200)
    c.check("GET", "/v1/requests/{id}", one + "?wait=0", alice, status=200)
    c.check("POST", "/v1/requests/{id}/reviews", one + "/reviews", alice,
            {"verdict": "approve"}, status=403)  # self_review
    approved = c.check("POST", "/v1/requests/{id}/reviews", one + "/reviews", bob,
                       {"verdict": "approve", "reason": "ok"}, status=200)
    assert approved["status"] == "approved"
    c.check("POST", "/v1/requests/{id}/reviews", one + "/reviews", bob,
            {"verdict": "approve"}, status=409)
    mine = c.check("GET", "/v1/requests/{id}", one, alice, status=200)
    token = mine["grant"]["token"]
    action = {"principal": "alice", "action": "export", "resource": table, "params": {"rows": 10}}
    wrong = {**action, "params": {"rows": 11}}
    c.check("POST", "/v1/grants/consume", "/v1/grants/consume", alice,
            {"token": token, "action": wrong}, status=403)  # action_mismatch
    used = c.check("POST", "/v1/grants/consume", "/v1/grants/consume", alice,
                   {"token": token, "action": action}, status=200)
    c.check("POST", "/v1/grants/{id}/complete", f"/v1/grants/{used['grant_id']}/complete", alice,
            {"outcome": "success", "detail": {"rows": 10}}, status=200)
    c.check("POST", "/v1/grants/consume", "/v1/grants/consume", alice,
            {"token": token, "action": action}, status=403)  # grant_spent

    # Another request to cancel, and one to revoke.
    other = c.check("POST", "/v1/check", "/v1/check", alice,
                    {"action": "export", "resource": table, "params": {"rows": 1}})
    c.check("POST", "/v1/requests/{id}/cancel", f"/v1/requests/{other['request']['id']}/cancel",
            alice, status=200)
    third = c.check("POST", "/v1/check", "/v1/check", alice,
                    {"action": "export", "resource": table, "params": {"rows": 2}})
    tid = third["request"]["id"]
    c.check("POST", "/v1/requests/{id}/reviews", f"/v1/requests/{tid}/reviews", bob,
            {"verdict": "approve"}, status=200)
    c.check("POST", "/v1/requests/{id}/revoke", f"/v1/requests/{tid}/revoke", bob,
            {"reason": "changed my mind"}, status=200)

    c.check("POST", "/v1/breakglass", "/v1/breakglass", alice,
            {"action": "export", "resource": table, "reason": "fire"}, status=403)  # off here
    c.check("GET", "/v1/whoami", "/v1/whoami", alice, status=200)
    c.check("GET", "/v1/keys", "/v1/keys", alice, status=200)
    c.check("GET", "/v1/audit", "/v1/audit?limit=5", admin, status=200)
    c.check("GET", "/v1/audit", "/v1/audit", alice, status=403)
    c.check("GET", "/v1/audit/proof/inclusion", "/v1/audit/proof/inclusion?seq=0&size=1", admin,
            status=400)
    c.check("GET", "/v1/outbox", "/v1/outbox", admin, status=200)
    c.check("GET", "/v1/outbox", "/v1/outbox?status=bogus", admin, status=400)
    c.check("POST", "/v1/outbox/{id}/retry", "/v1/outbox/nope/retry", admin, status=409)

    # Errors every authenticated call shares.
    c.check("GET", "/v1/whoami", "/v1/whoami", "alk_not-a-key", status=401)
    c.check("GET", "/v1/requests/{id}", "/v1/requests/req_nope", alice, status=404)
    c.check("POST", "/v1/check", "/v1/check", alice, {"action": "read"}, status=400)
    # Just over the 64 KiB limit, small enough to be sent whole before the
    # server answers 413 and closes: a larger body raced that close (the
    # client's write then failed with a broken pipe, and no answer).
    c.check("POST", "/v1/check", "/v1/check", alice,
            {"action": "read", "resource": {**table, "attrs": {"pad": "x" * 66_000}}}, status=413)

    # Whichever answer these give (a checkpoint is signed some time after
    # start), it must be a documented one.
    c.check("GET", "/v1/audit/checkpoint", "/v1/audit/checkpoint", alice)
    c.check("GET", "/v1/audit/proof/consistency", "/v1/audit/proof/consistency?from=1", admin)
    enforcer = server["enforcer"]
    live = c.check("POST", "/v1/auth/key", "/v1/auth/key", enforcer,
                   {"user": "alice", "key": "key_nope"}, status=200)
    assert live["live"] is False
    findings = {"principal": "alice", "proxy": "files", "disposition": "masked",
                "targets": [{"action": "download", "resource": table}],
                "decisions": [1], "counts": {"email": 2}}
    c.check("POST", "/v1/audit/findings", "/v1/audit/findings", alice, findings, status=403)
    c.check("POST", "/v1/audit/findings", "/v1/audit/findings", enforcer,
            {**findings, "counts": {"email": 0}}, status=400)
    c.check("POST", "/v1/audit/findings", "/v1/audit/findings", enforcer, findings, status=200)
    c.check("POST", "/v1/auth/scram", "/v1/auth/scram", enforcer,
            {"user": "alice", "auth_message": "n=alice,r=x,r=xy,s=c2FsdA==,i=4096,c=biws,r=xy",
             "proof": "cHJvb2Y="})
    c.check("GET", "/v1/openapi.json", "/v1/openapi.json", None, status=200)

    # Every documented operation was called.
    called = {(path, method) for path, method, _ in c.seen}
    documented = {(p, m) for p, ops in document["paths"].items() for m in ops}
    assert documented == called, sorted(documented - called)


def test_the_client_library_speaks_the_documented_shapes(server, document):
    # The Python client's own calls go through the same endpoints; one
    # round through it, checked by the schema of the answer it parsed.
    alice = Airlock(server["url"], server["alice"])
    answer = alice.check("read", {"type": "Table", "id": "orders"})
    schema = document["paths"]["/v1/check"]["post"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(
        answer
    )
