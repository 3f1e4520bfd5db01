"""The team endpoints through the app's own functions (local host routing, real kube-apiserver):
validate (anonymous, the PR check), PUT/DELETE/GET with admin authentication, the 64 KiB limit,
and, end to end with the timer function and the ARM stand-in, a status that never shows a key."""

from __future__ import annotations

import base64
import json

import pytest

from shared import context
from tests.teams_fixtures import (
    API_IDS,
    AZURE_SUBSCRIPTION,
    RESOURCE_GROUP,
    SEED_EXAMPLE,
    StaticToken,
    per_model_file,
)

PASSWORD = "team-admin-password-42"
API_KEY = "ak-" + "t" * 40
ALPHA_PATH = "developer-requests/alpha/access.yaml"


def basic() -> dict[str, str]:
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


JSON = {"Content-Type": "application/json"}  # an admin change without a body still names this type


def change() -> dict[str, str]:
    return {**basic(), **JSON}


YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def client(http, monkeypatch, tmp_path):
    monkeypatch.setenv("ADMIN_USERNAME", "admin")
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("ADMIN_API_KEY", API_KEY)
    monkeypatch.setenv("APIM_TEAM_API_IDS", ",".join(API_IDS))
    monkeypatch.setenv("EMAIL_OUTBOX_DIR", str(tmp_path / "outbox"))
    context.reset()
    return http


# --- validate ------------------------------------------------------------------------------------


def test_validate_is_anonymous_and_returns_the_plan(client):
    response = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=SEED_EXAMPLE, headers=YAML)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["valid"] is True and body["team"] == "alpha"
    plan = body["plan"]
    assert plan["action"] == "create" and plan["compared_with"] is None and plan["shape"] == "documented"
    actions = {(c["kind"], c["name"]): c["action"] for c in plan["changes"]}
    assert actions == {
        ("APIM product", "product-alpha"): "create",
        ("APIM product policy", "product-alpha/policy"): "create",
        ("APIM product API link", "product-alpha/apis/azure-openai"): "create",
        ("APIM product API link", "product-alpha/apis/openai-v1"): "create",
        ("APIM subscription", "sub-alpha"): "create",
        ("Kubernetes Secret", "alpha-api-key"): "create",
    }
    assert plan["models"][0]["tokensPerMinute"] == 5000 and plan["models"][0]["counter"] == "team"
    assert any("shares the team-wide limits" in note for note in plan["notes"])
    assert "Team alpha (documented shape): create" in plan["text"]
    # Nothing was stored by validating.
    assert context.team_store().get("alpha") is None


def test_validate_takes_json_with_path_and_content(client):
    response = client.post("/api/teams/validate", json={"path": "developer-requests/beta/access.yaml",
                                                        "content": per_model_file()})
    assert response.status_code == 200
    assert {m["name"] for m in response.json["plan"]["models"]} == {"gpt-4o", "gpt-4o-mini", "phi-3-mini"}
    assert any(c["kind"] == "KAITO Workspace" and c["name"] == "beta-phi-3-mini-4k-instruct"
               for c in response.json["plan"]["changes"])


def test_validate_errors_are_422_with_one_line_each(client):
    bad = SEED_EXAMPLE.replace("5000", "-5").replace("- gpt-4o", "- gpt-5")
    response = client.post("/api/teams/validate", json={"path": "developer-requests/beta/access.yaml", "content": bad})
    assert response.status_code == 422
    body = response.json
    assert isinstance(body["message"], str) and body["message"].startswith("developer-requests/beta/access.yaml: ")
    lines = body["detail"]["lines"]
    assert "developer-requests/beta/access.yaml: limits.tokensPerMinute: must be greater than 0, not -5" in lines
    assert any(line.startswith("developer-requests/beta/access.yaml: models.foundry.models[0]: 'gpt-5' is not a model")
               for line in lines)
    assert body["detail"]["errors"][0].keys() == {"path", "field", "reason"}
    mismatch = client.post("/api/teams/validate?path=developer-requests/beta/access.yaml", data=SEED_EXAMPLE,
                           headers=YAML)
    assert mismatch.status_code == 422 and "the folder is 'beta'" in mismatch.json["message"]
    not_mapping = client.post("/api/teams/validate", data="- a\n- b\n", headers=YAML)
    assert not_mapping.status_code == 422
    assert not_mapping.json["message"] == "(body): (top level): must be a mapping with team and models, not a list"


def test_body_limits_and_content_types(client):
    huge = SEED_EXAMPLE + "#" * (5 * 1024 * 1024)
    response = client.post("/api/teams/validate", data=huge, headers=YAML)
    assert response.status_code == 413 and "64 KiB" in response.json["message"]
    wrapped = client.post("/api/teams/validate", json={"content": SEED_EXAMPLE + "#" * 70_000})
    assert wrapped.status_code == 413
    assert client.post("/api/teams/validate", data=SEED_EXAMPLE,
                       headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post("/api/teams/validate", data="{", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.post("/api/teams/validate", json={"content": 1}).status_code == 422
    assert client.put("/api/teams/alpha", data=huge, headers={**YAML, **basic()}).status_code == 413
    assert context.team_store().get("alpha") is None


# --- PUT, DELETE, GET ---------------------------------------------------------------------------------


def test_write_and_read_endpoints_require_admin_authentication(client):
    assert client.put("/api/teams/alpha", data=SEED_EXAMPLE, headers=YAML).status_code == 401
    assert client.delete("/api/teams/alpha").status_code == 401
    assert client.get("/api/teams/alpha").status_code == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
    assert client.put("/api/teams/alpha", data=SEED_EXAMPLE, headers={**YAML, **wrong}).status_code == 401
    assert context.team_store().get("alpha") is None


def test_put_creates_updates_and_is_idempotent(client):
    created = client.put(f"/api/teams/alpha?path={ALPHA_PATH}", data=SEED_EXAMPLE, headers={**YAML, **basic()})
    assert created.status_code == 201, created.json
    assert created.json["generation"] == 1 and created.json["outcome"] == "created"
    assert created.headers["Location"] == "/api/teams/alpha"

    again = client.put("/api/teams/alpha", json={"path": ALPHA_PATH, "content": SEED_EXAMPLE},
                       headers={"x-functions-key": API_KEY})
    assert again.status_code == 200 and again.json["outcome"] == "unchanged" and again.json["generation"] == 1
    assert again.json["plan"]["action"] == "unchanged"

    # validate now compares with what is stored
    changed = SEED_EXAMPLE.replace("tokensPerMinute: 5000", "tokensPerMinute: 2500")
    plan = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=changed, headers=YAML).json["plan"]
    assert plan["action"] == "update" and plan["compared_with"]["generation"] == 1
    [policy_change] = [c for c in plan["changes"] if c["kind"] == "APIM product policy"]
    assert policy_change["action"] == "update"
    assert policy_change["details"] == ["gpt-4o: 5,000 tokens/min, 1,000,000 tokens/day, team-wide counter -> "
                                        "2,500 tokens/min, 1,000,000 tokens/day, team-wide counter"]
    assert {c["action"] for c in plan["changes"] if c["kind"] != "APIM product policy"} == {"unchanged"}

    updated = client.put("/api/teams/alpha", data=changed, headers={**YAML, **basic()})
    assert updated.status_code == 202 and updated.json["generation"] == 2
    status = client.get("/api/teams/alpha", headers=basic()).json
    assert status["generation"] == 2 and status["observed_generation"] == 0 and status["phase"] == "pending"
    assert status["submitted_by"] == "basic:admin" and status["source"] == ALPHA_PATH


def test_put_refuses_a_file_for_another_team_and_bad_names(client):
    response = client.put("/api/teams/beta", data=SEED_EXAMPLE, headers={**YAML, **basic()})
    assert response.status_code == 422
    assert response.json["message"] == "(body): team.name: is 'alpha' but the URL names team 'beta'"
    assert client.get("/api/teams/Not_A_Team", headers=basic()).status_code == 404
    assert client.get("/api/teams/nobody", headers=basic()).status_code == 404
    assert client.delete("/api/teams/nobody", headers=change()).status_code == 404


def test_delete_marks_the_team_for_removal(client):
    client.put("/api/teams/alpha", data=SEED_EXAMPLE, headers={**YAML, **basic()})
    response = client.delete("/api/teams/alpha", headers=change())
    assert response.status_code == 202 and response.json["generation"] == 2
    status = client.get("/api/teams/alpha", headers=basic()).json
    assert status["deleting"] is True and status["phase"] == "deleting"
    # Validating the file again says the deletion would be cancelled.
    plan = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=SEED_EXAMPLE, headers=YAML).json["plan"]
    assert plan["action"] == "create" and any("being deleted" in w for w in plan["warnings"])


def test_rotate_needs_an_admin_a_known_team_and_a_ready_one(client):
    assert client.post("/api/teams/alpha/rotate").status_code == 401
    missing = client.post("/api/teams/nobody/rotate", headers=change())
    assert missing.status_code == 404 and missing.json["message"] == "No team named nobody"
    assert client.post("/api/teams/Not_A_Team/rotate", headers=change()).status_code == 404
    client.put("/api/teams/alpha", data=SEED_EXAMPLE, headers={**YAML, **basic()})
    pending = client.post("/api/teams/alpha/rotate", headers={"x-functions-key": API_KEY, **JSON})
    assert pending.status_code == 409 and pending.json["message"].startswith("Team alpha is not ready")
    client.delete("/api/teams/alpha", headers=change())
    deleting = client.post("/api/teams/alpha/rotate", headers=change())
    assert deleting.status_code == 409 and "being deleted" in deleting.json["message"]
    assert context.team_store().get("alpha").rotating is False


def test_without_apim_a_team_fails_with_the_reason_and_a_re_put_retries(client):
    assert client.put("/api/teams/alpha", data=SEED_EXAMPLE, headers={**YAML, **basic()}).status_code == 201
    assert context.team_reconciler().run_tick().outcomes == {"failed": 1}
    status = client.get("/api/teams/alpha", headers=basic()).json
    assert status["phase"] == "failed" and status["settled"] is True
    assert status["last_error"].startswith("APIM is not configured")
    retry = client.put("/api/teams/alpha", data=SEED_EXAMPLE, headers={**YAML, **basic()})
    assert retry.status_code == 202 and retry.json["outcome"] == "retried" and retry.json["generation"] == 1
    assert client.get("/api/teams/alpha", headers=basic()).json["settled"] is False


# --- end to end: PUT, the timer function, GET --------------------------------------------------------------


def test_end_to_end_with_the_timer_and_status_never_shows_keys(client, arm, apim_service, workspace_crd,
                                                              functions, monkeypatch, core_api, app_env):
    from azure.functions.timer import TimerRequest

    from local_host.functions import invoke
    from shared.adapters import apim

    service_name, service = apim_service
    monkeypatch.setenv("APIM_SUBSCRIPTION_ID", AZURE_SUBSCRIPTION)
    monkeypatch.setenv("APIM_RESOURCE_GROUP", RESOURCE_GROUP)
    monkeypatch.setenv("APIM_SERVICE_NAME", service_name)
    monkeypatch.setenv("ARM_ENDPOINT", arm.url)
    monkeypatch.setenv("CA_BUNDLE", str(arm.ca_pem_path))
    monkeypatch.setattr(apim, "default_credential", lambda client_id=None: StaticToken(arm.token))
    context.reset()

    put = client.put("/api/teams/beta", json={"path": "developer-requests/beta/access.yaml",
                                              "content": per_model_file()}, headers=basic())
    assert put.status_code == 201
    invoke(functions["team_timer"], TimerRequest(past_due=False))

    keys = service.subscriptions["sub-beta"].properties
    status = client.get("/api/teams/beta", headers=basic())
    assert status.status_code == 200
    body = status.json
    assert body["phase"] == "ready" and body["observed_generation"] == 1 and body["settled"] is True
    assert body["resources"] == {"product": "product-beta", "subscription": "sub-beta", "secret": "beta-api-key",
                                 "secret_has_keys": True, "apis": list(API_IDS),
                                 "workspaces": ["beta-phi-3-mini-4k-instruct"]}
    text = status.get_data(as_text=True)
    assert keys["primaryKey"] not in text and keys["secondaryKey"] not in text
    for answer in (put, client.post("/api/teams/validate", json={"content": per_model_file()})):
        assert keys["primaryKey"] not in answer.get_data(as_text=True)
    secret = core_api.read_namespaced_secret("beta-api-key", f"{app_env}-keys")
    assert base64.b64decode(secret.data["primary-key"]).decode() == keys["primaryKey"]
    assert "product-beta" in service.policies

    # The owner's email went to the outbox (no ACS or SMTP here).
    assert len(list((context.settings().email_outbox_dir).glob("*.eml"))) == 1

    # A key rotation: recorded by the endpoint, done by the timer (the key not in use first).
    primary, secondary = keys["primaryKey"], keys["secondaryKey"]
    rotate = client.post("/api/teams/beta/rotate", headers=change())
    assert rotate.status_code == 202 and rotate.json["outcome"] == "requested"
    assert rotate.json["rotation_grace"] == context.config().provisioning.rotation_grace
    assert rotate.headers["Location"] == "/api/teams/beta"
    again = client.post("/api/teams/beta/rotate", headers=change())
    assert again.status_code == 409 and "rotation that is running" in again.json["message"]
    invoke(functions["team_timer"], TimerRequest(past_due=False))
    assert keys["primaryKey"] == primary and keys["secondaryKey"] != secondary
    status = client.get("/api/teams/beta", headers=basic())
    rotation = status.json["rotation"]
    assert rotation["new_key"] == "secondary-key" and rotation["requested_by"] == "basic:admin"
    assert set(rotation["steps"]) == {"rotate-new-key", "rotate-keys-new", "notified-rotated"}
    assert rotation["retire_at"] is not None and status.json["key_in_use"] == "primary-key"
    for answer in (rotate, status):
        assert all(key not in answer.get_data(as_text=True) for key in (primary, secondary, keys["secondaryKey"]))
    secret = core_api.read_namespaced_secret("beta-api-key", f"{app_env}-keys")
    assert base64.b64decode(secret.data["secondary-key"]).decode() == keys["secondaryKey"]
    assert len(list((context.settings().email_outbox_dir).glob("*.eml"))) == 2

    client.delete("/api/teams/beta", headers=change())
    invoke(functions["team_timer"], TimerRequest(past_due=False))
    assert client.get("/api/teams/beta", headers=basic()).status_code == 404
    assert service.products == {} and service.subscriptions == {}
    for where in (app_env, f"{app_env}-keys"):
        assert json.dumps(core_api.list_namespaced_secret(where).to_dict(), default=str).count("beta-api-key") == 0


def test_the_team_modules_stay_off_the_cold_start_path():
    import subprocess
    import sys

    from shared.domain.team import MAX_FILE_BYTES
    from shared.http import teams as endpoints
    from tests.conftest import ROOT

    assert endpoints.MAX_FILE_BYTES == MAX_FILE_BYTES
    code = ("import sys, function_app; print(sorted(m for m in sys.modules if m in ("
            "'shared.services.teams', 'shared.domain.team', 'shared.domain.policy', 'jinja2')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

