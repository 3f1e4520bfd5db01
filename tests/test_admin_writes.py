"""Admin changes are never simple cross-site requests: Content-Type: application/json (an empty
body is {}), a present Origin one of CORS_ALLOWED_ORIGINS or the app's own, and no Basic
challenge on a 401. Against the real apiserver, with the exact inputs a browser or curl sends."""

from __future__ import annotations

import base64
import json

import pytest

from local_host.settings import load_local_settings
from shared import context
from shared.domain.request import KeyRequest, State
from shared.settings import Settings, SettingsError
from tests.conftest import FRONTEND_ORIGIN
from tests.teams_fixtures import SEED_EXAMPLE

PASSWORD = "correct horse battery staple"
ADMIN_ORIGIN = "http://127.0.0.1:5174"  # the earlier admin panel, as scripts/browser_check.sh serves it
AUTH = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def admin(http, monkeypatch):
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", f"{FRONTEND_ORIGIN}, {ADMIN_ORIGIN}/")
    context.reset()
    return http


def pending() -> KeyRequest:
    return context.request_store().submit(KeyRequest.new("ann@example.com", "gpt-4o"))[0]


def state_of(request: KeyRequest) -> State:
    return context.request_store().get(request.id).state


@pytest.mark.parametrize("headers, body", [
    ({}, None),  # fetch(url, {method: "POST", mode: "no-cors", credentials: "include"})
    ({"Content-Type": "application/x-www-form-urlencoded"}, "reason=ok"),  # a cross-site <form>
    ({"Content-Type": "text/plain"}, '{"reason": "ok"}'),  # fetch with a JSON text as text/plain
    ({"Content-Type": "multipart/form-data; boundary=x"}, "--x--"),
])
def test_a_change_a_cross_site_page_could_send_is_415(admin, headers, body):
    request = pending()
    response = admin.post(f"/api/admin/requests/{request.id}/approve", headers={**AUTH, **headers}, data=body)
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json["message"]
    assert response.json["detail"]["header"] == "Content-Type"
    assert "cross-site" in response.json["detail"]["reason"]
    assert state_of(request) == State.PENDING, "nothing is written"


def test_the_earlier_panels_calls_go_through(admin):
    """admin/src/services/api.js: Authorization and Content-Type: application/json on every call,
    approve with no body, deny with JSON.stringify({reason}), from the panel's own origin."""
    first, second = pending(), context.request_store().submit(KeyRequest.new("bo@example.com", "gpt-4o"))[0]
    panel = {**AUTH, **JSON, "Origin": ADMIN_ORIGIN}
    approved = admin.post(f"/api/admin/requests/{first.id}/approve", headers=panel)
    assert approved.status_code == 200 and approved.json["state"] == "approved"
    denied = admin.post(f"/api/admin/requests/{second.id}/deny", headers=panel, data=json.dumps({"reason": "no"}))
    assert denied.status_code == 200 and denied.json["state"] == "denied"
    assert admin.post("/api/admin/verify", headers=panel).status_code == 200


def test_an_empty_json_body_is_an_empty_object(admin):
    request = pending()
    response = admin.post(f"/api/admin/requests/{request.id}/approve", headers={**AUTH, **JSON}, data="")
    assert response.status_code == 200 and state_of(request) == State.APPROVED


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:5173.evil.example",
                                    "http://127.0.0.1:5175"])
def test_a_foreign_origin_is_403_naming_the_header(admin, origin):
    request = pending()
    response = admin.post(f"/api/admin/requests/{request.id}/approve", headers={**AUTH, **JSON, "Origin": origin})
    assert response.status_code == 403
    assert "Origin" in response.json["message"] and "CORS_ALLOWED_ORIGINS" in response.json["message"]
    assert response.json["detail"] == {"header": "Origin", "received": origin,
                                       "reason": "not one of the CORS origins (CORS_ALLOWED_ORIGINS) or the app's own"}
    assert state_of(request) == State.PENDING


@pytest.mark.parametrize("origin", [FRONTEND_ORIGIN, ADMIN_ORIGIN.upper() + "/", "http://localhost",
                                    "http://127.0.0.1:7071"])
def test_a_listed_origin_or_the_apps_own_is_accepted(admin, origin):
    # http://localhost: the call's own host (the test client's), as the API page sends it;
    # http://127.0.0.1:7071: PUBLIC_BASE_URL's default.
    request = pending()
    response = admin.post(f"/api/admin/requests/{request.id}/approve", headers={**AUTH, **JSON, "Origin": origin})
    assert response.status_code == 200, response.json


def test_blocks_need_the_json_type_and_a_listed_origin(admin):
    body = json.dumps({"address": "eve@example.com", "reason": "spam"})
    assert admin.put("/api/admin/blocks", headers={**AUTH, "Content-Type": "text/plain"}, data=body).status_code == 415
    foreign = admin.put("/api/admin/blocks", headers={**AUTH, **JSON, "Origin": "https://evil.example"}, data=body)
    assert foreign.status_code == 403
    assert context.block_store().list(10, None)[0] == [], "nothing is written"
    assert admin.put("/api/admin/blocks", headers={**AUTH, **JSON}, data=body).status_code == 201
    assert admin.delete("/api/admin/blocks?address=eve@example.com", headers=AUTH).status_code == 415
    assert admin.delete("/api/admin/blocks?address=eve@example.com", headers={**AUTH, **JSON}).status_code == 200


def test_team_changes_need_a_type_no_form_can_send(admin):
    yaml = {"Content-Type": "application/yaml"}
    assert admin.put("/api/teams/alpha", headers={**AUTH, "Content-Type": "text/plain"},
                     data=SEED_EXAMPLE).status_code == 415
    assert admin.put("/api/teams/alpha", headers={**AUTH, **yaml, "Origin": "https://evil.example"},
                     data=SEED_EXAMPLE).status_code == 403
    assert admin.get("/api/teams/alpha", headers=AUTH).status_code == 404, "nothing is written"
    assert admin.put("/api/teams/alpha", headers={**AUTH, **yaml}, data=SEED_EXAMPLE).status_code == 201
    assert admin.post("/api/teams/alpha/rotate", headers=AUTH).status_code == 415
    assert admin.delete("/api/teams/alpha", headers=AUTH).status_code == 415
    assert admin.delete("/api/teams/alpha?dryRun=true", headers={**AUTH, **JSON}).status_code == 200
    assert admin.delete("/api/teams/alpha", headers={**AUTH, **JSON, "Origin": FRONTEND_ORIGIN}).status_code == 202


def test_reads_and_verify_are_not_changes(admin):
    assert admin.post("/api/admin/verify", headers=AUTH).status_code == 200
    assert admin.get("/api/admin/requests", headers={**AUTH, "Origin": "https://evil.example"}).status_code == 200


def test_unauthenticated_changes_are_still_401_without_a_challenge(admin):
    response = admin.post(f"/api/admin/requests/{pending().id}/approve", headers={"Origin": "https://evil.example"})
    assert response.status_code == 401 and "WWW-Authenticate" not in response.headers


def test_the_origins_setting_is_checked():
    listed = Settings.from_env({"CORS_ALLOWED_ORIGINS": "https://keys.example.com, http://localhost:5173/"})
    assert listed.cors_origins == {"https://keys.example.com", "http://localhost:5173"}
    with pytest.raises(SettingsError, match="CORS_ALLOWED_ORIGINS.*'keys.example.com' is not an origin"):
        Settings.from_env({"CORS_ALLOWED_ORIGINS": "keys.example.com"})
    with pytest.raises(SettingsError, match="https://keys.example.com/admin"):
        Settings.from_env({"CORS_ALLOWED_ORIGINS": "https://keys.example.com/admin"})
    azure = {"WEBSITE_SITE_NAME": "app", "LINK_SIGNING_KEY": "k" * 40}
    with pytest.raises(SettingsError, match=r"CORS_ALLOWED_ORIGINS: \* is for local runs"):
        Settings.from_env({**azure, "CORS_ALLOWED_ORIGINS": "*"})


def test_the_local_host_hands_its_cors_list_to_the_app(tmp_path):
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"CORS_ALLOWED_ORIGINS": ""},  # blank, as in the sample
                                "Host": {"CORS": "http://localhost:5173, http://127.0.0.1:5174/"}}))
    environ: dict[str, str] = {}
    assert load_local_settings(path, environ).applied == ["CORS_ALLOWED_ORIGINS"]
    assert environ["CORS_ALLOWED_ORIGINS"] == "http://localhost:5173,http://127.0.0.1:5174"
    mine = {"CORS_ALLOWED_ORIGINS": "https://keys.example.com"}
    load_local_settings(path, mine)
    assert mine["CORS_ALLOWED_ORIGINS"] == "https://keys.example.com", "the environment wins"
