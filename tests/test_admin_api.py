"""The admin API against the real kube-apiserver: the earlier admin panel's contract, the three
ways to authenticate, paging, decisions with their audit trail, and never a key."""

from __future__ import annotations

import base64
import json
import logging
import uuid

import pytest

from shared import context
from shared.domain.request import KeyRequest, State
from shared.http import auth
from tests.conftest import FRONTEND_ORIGIN

PASSWORD = "correct horse battery staple"
API_KEY = "ak-" + "k" * 40


def basic(username: str = "admin", password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json",
            "X-Forwarded-For": f"10.0.0.{uuid.uuid4().int % 250}:5555"}


@pytest.fixture
def admin(http, monkeypatch):
    monkeypatch.setenv("ADMIN_USERNAME", "admin")
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("ADMIN_API_KEY", API_KEY)
    context.reset()
    return http


def submit(email: str, model: str = "gpt-4o") -> KeyRequest:
    return context.request_store().submit(KeyRequest.new(email, model))[0]


def set_state(request: KeyRequest, state: State, **changes) -> KeyRequest:
    store = context.request_store()
    return store.update(store.get(request.id).enter(state, **changes))


# --- authentication -----------------------------------------------------------------------------


def test_verify_with_basic_credentials(admin):
    response = admin.post("/api/admin/verify", headers=basic())
    assert response.status_code == 200
    assert response.json["authenticated"] is True and response.json["username"] == "admin"


def test_wrong_credentials_are_401_without_a_basic_challenge(admin, caplog):
    # No WWW-Authenticate: the panel has its own form, and a challenge makes browsers cache credentials.
    for headers in (basic(password="wrong-password-123"), basic(username="root"), {}, {"x-functions-key": "nope"}):
        response = admin.post("/api/admin/verify", headers=headers)
        assert response.status_code == 401
        assert "WWW-Authenticate" not in response.headers
        assert isinstance(response.json["message"], str)
    assert "wrong-password-123" not in caplog.text and PASSWORD not in caplog.text


def test_without_a_password_basic_auth_is_off_and_says_so(http, monkeypatch):
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    context.reset()
    response = http.post("/api/admin/verify", headers=basic())
    assert response.status_code == 401
    assert "ADMIN_PASSWORD is not set" in response.json["message"]


def test_failed_logins_are_limited_per_client(admin):
    # The client is the address the platform appends (the local host: the socket's), never an
    # X-Forwarded-For hop the caller wrote: a new spoofed hop per try does not dodge the limit.
    at = {"REMOTE_ADDR": "203.0.113.77"}
    codes = [admin.post("/api/admin/verify", environ_base=at,
                        headers={**basic(password="guess"), "X-Forwarded-For": f"198.51.100.{i}"}).status_code
             for i in range(11)]
    assert codes == [401] * 10 + [429]
    limited = admin.post("/api/admin/verify", headers=basic(), environ_base=at)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    other = admin.post("/api/admin/verify", headers=basic(), environ_base={"REMOTE_ADDR": "203.0.113.78"})
    assert other.status_code == 200


def test_api_key(admin):
    assert admin.post("/api/admin/verify", headers={"x-functions-key": API_KEY}).json["method"] == "api-key"
    assert admin.post("/api/admin/verify", headers={"x-functions-key": "nope"}).status_code == 401


def principal(*roles: str) -> dict[str, str]:
    claims = [{"typ": "roles", "val": role} for role in roles] + [{"typ": "name", "val": "Rita"}]
    payload = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"}
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(payload).encode()).decode(),
            "X-MS-CLIENT-PRINCIPAL-NAME": "rita@contoso.com"}


def test_app_service_authentication_needs_trust_and_the_role(admin, monkeypatch):
    assert admin.post("/api/admin/verify", headers=principal("KeyRequestor.Admin")).status_code == 401
    monkeypatch.setenv("ADMIN_TRUST_APP_SERVICE_AUTH", "true")
    context.reset()
    ok = admin.post("/api/admin/verify", headers=principal("KeyRequestor.Admin"))
    assert ok.status_code == 200 and ok.json["username"] == "rita@contoso.com"
    assert admin.post("/api/admin/verify", headers=principal("Reader")).status_code == 403


def test_every_admin_route_requires_authentication(admin):
    request = submit("auth@example.com")
    for method, path in [("GET", "/api/admin/requests"), ("GET", f"/api/admin/requests/{request.id}"),
                         ("POST", f"/api/admin/requests/{request.id}/approve"),
                         ("POST", f"/api/admin/requests/{request.id}/deny"),
                         ("POST", f"/api/admin/requests/{request.id}/revoke")]:
        assert admin.open(path, method=method).status_code == 401, path
    assert context.request_store().get(request.id).state == State.PENDING


# --- the panel's contract ---------------------------------------------------------------------


def test_list_is_an_array_with_the_panel_fields_and_filters(admin):
    pending = submit("p@example.com")
    in_review = set_state(submit("r@example.com"), State.IN_REVIEW)
    approved = set_state(submit("a@example.com"), State.APPROVED)

    listed = admin.get("/api/admin/requests?filter=pending", headers=basic())
    assert listed.status_code == 200 and isinstance(listed.json, list)
    assert [r["request_id"] for r in listed.json] == [pending.id]
    assert set(listed.json[0]) == {"request_id", "email", "model", "state", "created_at", "updated_at",
                                   "expires_at"}
    assert listed.json[0]["created_at"].endswith("+00:00")

    listed = admin.get("/api/admin/requests?filter=review", headers=basic()).json
    assert [r["request_id"] for r in listed] == [in_review.id]
    everything = {r["request_id"] for r in admin.get("/api/admin/requests?filter=all", headers=basic()).json}
    assert everything == {pending.id, in_review.id, approved.id}
    by_state = admin.get("/api/admin/requests?state=approved", headers=basic()).json
    assert [r["request_id"] for r in by_state] == [approved.id]

    bad = admin.get("/api/admin/requests?filter=everything", headers=basic())
    assert bad.status_code == 422 and "filter" in bad.json["message"]
    assert admin.get("/api/admin/requests?state=aproved", headers=basic()).status_code == 422


def test_paging_keeps_the_body_an_array(admin):
    ids = {submit(f"page{i}@example.com").id for i in range(5)}
    seen, token, pages = [], None, 0
    while True:
        query = "filter=all&limit=2" + (f"&continue={token}" if token else "")
        response = admin.get(f"/api/admin/requests?{query}", headers=basic())
        assert response.status_code == 200 and isinstance(response.json, list)
        seen += [r["request_id"] for r in response.json]
        pages += 1
        token = response.headers.get("X-Continue-Token")
        if not token:
            break
    assert pages == 3 and set(seen) == ids and len(seen) == 5
    assert admin.get("/api/admin/requests?continue=garbage", headers=basic()).status_code == 422
    assert admin.get("/api/admin/requests?limit=100000", headers=basic()).status_code == 422


def test_detail_never_carries_a_key(admin):
    request = submit("detail@example.com")
    store = context.request_store()
    active = store.update(store.get(request.id).enter(State.ACTIVE, secrets={"litellm-api-key": "sk-" + "x" * 40},
                                                     references={"litellm-key-alias": "alias-1"}))
    response = admin.get(f"/api/admin/requests/{active.id}", headers=basic())
    assert response.status_code == 200
    body = response.json
    assert body["request_id"] == request.id and body["state"] == "active"
    assert {"decision", "reason", "decided_by", "decided_at", "attempts", "last_error"} <= set(body)
    assert "api_key" not in body and "sk-" + "x" * 40 not in response.get_data(as_text=True)
    assert body["references"] == {"litellm-key-alias": "alias-1"}
    listed = admin.get("/api/admin/requests?filter=all", headers=basic()).get_data(as_text=True)
    assert "sk-" + "x" * 40 not in listed
    assert admin.get(f"/api/admin/requests/{uuid.uuid4()}", headers=basic()).status_code == 404


def test_approve_and_deny_as_the_panel_sends_them(admin, core_api, app_env, caplog):
    caplog.set_level(logging.INFO, logger="shared")
    to_approve = set_state(submit("ok@example.com"), State.IN_REVIEW)
    to_deny = submit("no@example.com")

    # The panel's approve: POST with Content-Type: application/json and no body at all.
    approved = admin.post(f"/api/admin/requests/{to_approve.id}/approve", headers=basic())
    assert approved.status_code == 200
    assert approved.json["success"] is True and isinstance(approved.json["message"], str)
    denied = admin.post(f"/api/admin/requests/{to_deny.id}/deny", headers=basic(),
                        data=json.dumps({"reason": "use the team key"}))
    assert denied.status_code == 200 and denied.json["state"] == "denied"

    stored = context.request_store().get(to_approve.id)
    assert stored.state == State.APPROVED and stored.decided_by == "basic:admin" and stored.decision == "approve"
    notes = core_api.read_namespaced_secret(f"llm-key-request-{to_deny.id}", app_env).metadata
    assert notes.labels["request-state"] == "denied"
    assert notes.annotations["llm-key-requestor/reason"] == "use the team key"
    assert notes.annotations["llm-key-requestor/decided-by"] == "basic:admin"
    assert "audit: basic:admin denied request" in caplog.text

    again = admin.post(f"/api/admin/requests/{to_approve.id}/approve", headers=basic())
    assert again.status_code == 409 and "approved" in again.json["message"]
    assert admin.post(f"/api/admin/requests/{to_deny.id}/approve", headers=basic()).status_code == 409


def test_deny_needs_a_reason(admin):
    request = submit("reason@example.com")
    for body in ("{}", json.dumps({"reason": ""}), ""):
        response = admin.post(f"/api/admin/requests/{request.id}/deny", headers=basic(), data=body)
        assert response.status_code in (400, 422) and "reason" in response.json["message"].lower() or \
            response.json["message"].startswith("The body")
    assert context.request_store().get(request.id).state == State.PENDING


def test_revoke_is_only_for_issued_access(admin):
    request = submit("rev@example.com")
    assert admin.post(f"/api/admin/requests/{request.id}/revoke", headers=basic()).status_code == 409
    set_state(request, State.ACTIVE)
    response = admin.post(f"/api/admin/requests/{request.id}/revoke", headers=basic(),
                          data=json.dumps({"reason": "left the company"}))
    assert response.status_code == 200 and response.json["state"] == "revoking"


def test_preflight_for_the_admin_panel(admin):
    response = admin.open("/api/admin/requests", method="OPTIONS", headers={
        "Origin": FRONTEND_ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert response.status_code in (200, 204)
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


@pytest.fixture(autouse=True)
def _fresh_login_limits():
    auth.failed_logins.__init__()
    yield
