"""Airlock's Python client: check an action, wait for its approval, consume
the grant for exactly that action, and report how it went.

Standard library only. Every call fails closed: anything but a clear
"go ahead" from the server raises, so the guarded block does not run.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Mapping, Optional, Union

__all__ = [
    "Airlock",
    "AirlockError",
    "ApprovalTimeout",
    "Denied",
    "Permit",
]

Json = Dict[str, Any]
Resource = Union[str, Mapping[str, Any]]

# One long-poll asks for at most this long; the server caps it too
# (`server.max_wait_seconds`).
_MAX_WAIT_CALL = 30.0


class AirlockError(Exception):
    """The server refused a call, or could not be reached (`status` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Denied(Exception):
    """Policy or a reviewer said no (or the request ended without approval:
    cancelled, expired, revoked)."""

    def __init__(self, message: str, request: Optional[Json] = None) -> None:
        super().__init__(message)
        self.request = request


class ApprovalTimeout(Exception):
    """Nobody decided in time. The request stays pending: asking again for
    the same action finds it."""

    def __init__(self, request: Json) -> None:
        super().__init__(f"request {request['id']} is still pending")
        self.request = request


@dataclass
class Permit:
    """What `guard` yields: the go-ahead for one run of the action.

    `grant_id` is None when policy allowed the action outright (no approval,
    nothing to consume or complete)."""

    decision: str
    grant_id: Optional[str] = None
    request: Optional[Json] = None
    uses_left: Optional[int] = None
    detail: Json = field(default_factory=dict)


def _resource(resource: Resource) -> Json:
    """`"TYPE:ID"` split at the first single colon, as the CLI does: a
    namespaced type (`Db::Table:prod.x`) keeps its `::`, so a policy on
    `Db::Table` is not dodged by a resource read as type `Db`."""
    if isinstance(resource, str):
        i = 0
        while i < len(resource):
            if resource.startswith("::", i):
                i += 2
            elif resource[i] == ":":
                break
            else:
                i += 1
        kind, ident = resource[:i], resource[i + 1 :]
        if i >= len(resource) or not kind or not ident:
            raise ValueError(f'resource must be "TYPE:ID", not {resource!r}')
        return {"type": kind, "id": ident}
    return dict(resource)


class Airlock:
    """A client for one Airlock server and one API key."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # -- the API calls -------------------------------------------------

    def _call(
        self, method: str, path: str, body: Optional[Json] = None, timeout: Optional[float] = None
    ) -> Json:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                err = json.loads(raw)["error"]
                raise AirlockError(e.code, err.get("code", "unknown"), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise AirlockError(e.code, "unknown", raw[:200].decode(errors="replace")) from None
        except (urllib.error.URLError, OSError) as e:
            raise AirlockError(0, "unreachable", str(e)) from None
        return json.loads(raw) if raw else {}

    def check(
        self,
        action: str,
        resource: Resource,
        params: Optional[Mapping[str, Any]] = None,
        context: Optional[Mapping[str, Any]] = None,
        reason: Optional[str] = None,
        principal: Optional[str] = None,
    ) -> Json:
        """`POST /v1/check`: the decision as the API answers it
        (`decision` is `allow`, `deny` or `approval_required`)."""
        body: Json = {"action": action, "resource": _resource(resource)}
        if params is not None:
            body["params"] = dict(params)
        if context is not None:
            body["context"] = dict(context)
        if reason is not None:
            body["reason"] = reason
        if principal is not None:
            body["principal"] = principal
        return self._call("POST", "/v1/check", body)

    def request(self, request_id: str) -> Json:
        """`GET /v1/requests/{id}`."""
        return self._call("GET", f"/v1/requests/{urllib.parse.quote(request_id)}")

    def wait(self, request_id: str, timeout: Optional[float] = None) -> Json:
        """The request once it leaves `pending`, or as it is when `timeout`
        seconds have passed (None: the server's longest wait, once).
        Woken by the decision: no polling."""
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/v1/requests/{urllib.parse.quote(request_id)}"
        while True:
            left = _MAX_WAIT_CALL if deadline is None else max(0.0, deadline - time.monotonic())
            seconds = min(left, _MAX_WAIT_CALL)
            req = self._call("GET", f"{path}?wait={seconds:.3f}", timeout=seconds + self.timeout)
            if req.get("status") != "pending" or deadline is None or time.monotonic() >= deadline:
                return req

    def consume(self, request: Json, action: Optional[Json] = None) -> Json:
        """`POST /v1/grants/consume`: spend one use of an approved request's
        grant for exactly the action it was asked for (or `action`, which
        must be the same action)."""
        token = (request.get("grant") or {}).get("token")
        if not token:
            raise Denied(f"request {request.get('id')} has no usable grant", request)
        if action is None:
            action = {
                "principal": request["principal"],
                "action": request["action"],
                "resource": {k: request["resource"][k] for k in ("type", "id")},
                "params": request.get("params") or {},
                "context": request.get("context") or {},
            }
        return self._call("POST", "/v1/grants/consume", {"token": token, "action": action})

    def complete(self, grant_id: str, outcome: str, detail: Optional[Mapping[str, Any]] = None) -> Json:
        """`POST /v1/grants/{id}/complete` with `success` or `failure`."""
        if outcome not in ("success", "failure"):
            raise ValueError("outcome is 'success' or 'failure'")
        body: Json = {"outcome": outcome}
        if detail:
            body["detail"] = dict(detail)
        return self._call("POST", f"/v1/grants/{urllib.parse.quote(grant_id)}/complete", body)

    # -- the three-line way ---------------------------------------------

    @contextlib.contextmanager
    def guard(
        self,
        action: str,
        resource: Resource,
        params: Optional[Mapping[str, Any]] = None,
        context: Optional[Mapping[str, Any]] = None,
        reason: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[Permit]:
        """Check, wait for approval (up to `timeout` seconds; None: one
        long-poll, as long as the server allows), consume the
        grant, run the block once, and report its outcome: `success`, or
        `failure` when the block raises (the exception goes on).

        Raises `Denied` or `ApprovalTimeout` instead of running the block."""
        decided = self.check(action, resource, params=params, context=context, reason=reason)
        kind = decided.get("decision")
        if kind == "allow":
            yield Permit(decision="allow")
            return
        if kind == "deny":
            raise Denied(decided.get("message") or "denied by policy")
        if kind != "approval_required":
            raise AirlockError(0, "unexpected", f"unknown decision {kind!r}")
        req = decided["request"]
        if req.get("status") == "pending":
            req = self.wait(req["id"], timeout)
        status = req.get("status")
        if status == "pending":
            raise ApprovalTimeout(req)
        if status != "approved":
            raise Denied(f"request {req['id']} is {status}", req)
        consumed = self.consume(req)
        permit = Permit(
            decision="approved",
            grant_id=consumed["grant_id"],
            request=req,
            uses_left=consumed.get("uses_left"),
        )
        try:
            yield permit
        except BaseException as e:
            self.complete(permit.grant_id or "", "failure", {"error": type(e).__name__, **permit.detail})
            raise
        self.complete(permit.grant_id or "", "success", permit.detail)
