"""The anonymous team-file check against hostile input: no YAML anchors or aliases (an expansion
bomb), no APIM named-value markers in policy text, and no stored owner, cost centre or last error
for a caller who is not authenticated."""

from __future__ import annotations

import base64
import json

import pytest

from shared import context
from tests.teams_fixtures import SEED_EXAMPLE

PASSWORD = "team-admin-password-42"
ALPHA_PATH = "developer-requests/alpha/access.yaml"
YAML = {"Content-Type": "application/yaml"}


def basic(password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


@pytest.fixture
def client(http, monkeypatch, tmp_path):
    monkeypatch.setenv("ADMIN_USERNAME", "admin")
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("EMAIL_OUTBOX_DIR", str(tmp_path / "outbox"))
    context.reset()
    return http


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))


def test_a_yaml_expansion_bomb_is_refused_naming_the_line(client):
    assert len(BOMB) < 700
    response = client.post("/api/teams/validate", data=BOMB, headers=YAML)
    assert response.status_code == 422, response.json
    assert "line 1" in response.json["message"] and "YAML anchors (&a) are not accepted" in response.json["message"]
    assert len(response.get_data()) < 2000


@pytest.mark.parametrize("text,line,what", [
    (SEED_EXAMPLE.replace("  owner: alpha-lead@contoso.com", "  owner: &o alpha-lead@contoso.com"), 5, "anchors (&o)"),
    (SEED_EXAMPLE.replace("limits:\n  tokensPerMinute: 5000", "limits: *l\nx:\n  tokensPerMinute: 5000"), 16,
     "aliases (*l)"),
])
def test_anchors_and_aliases_are_refused_in_any_place(client, text, line, what):
    response = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=text, headers=YAML)
    assert response.status_code == 422
    message = response.json["message"]
    assert f"at line {line}," in message and f"YAML {what} are not accepted" in message
    assert response.json["detail"]["errors"][0]["field"] == "(file)"


@pytest.mark.parametrize("name", ['"A {{openai-backend-key}}"', '"Team }} x"', '"{{x"'])
def test_named_value_markers_never_reach_a_policy(client, name):
    text = SEED_EXAMPLE.replace('"AI Access - Team Alpha"', name)
    response = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=text, headers=YAML)
    assert response.status_code == 422, response.json
    errors = response.json["detail"]["errors"]
    assert [e["field"] for e in errors] == ["team.displayName"] and "{{ or }}" in errors[0]["reason"]
    put = client.put(f"/api/teams/alpha?path={ALPHA_PATH}", data=text, headers={**YAML, **basic()})
    assert put.status_code == 422 and context.team_store().get("alpha") is None


def test_the_renderer_refuses_named_value_markers_too():
    from shared.config import load_config
    from shared.domain import policy
    from shared.domain.team import TeamCatalog, parse
    from tests.conftest import ROOT

    spec = parse(SEED_EXAMPLE, ALPHA_PATH, TeamCatalog.from_config(load_config(ROOT / "config.yaml")))
    with pytest.raises(ValueError, match="named value"):
        policy.render(spec.model_copy(update={"display_name": "A {{secret}}"}))


def test_validate_shows_the_stored_owner_cost_centre_and_error_only_when_authenticated(client):
    stored = client.put(f"/api/teams/alpha?path={ALPHA_PATH}", data=SEED_EXAMPLE, headers={**YAML, **basic()})
    assert stored.status_code == 201
    store = context.team_store()
    record = store.get("alpha")
    import dataclasses

    store.update(dataclasses.replace(record, phase="failed", last_error="ARM 403 for /subscriptions/secret-sub-id"))
    changed = SEED_EXAMPLE.replace("alpha-lead@contoso.com", "new-lead@contoso.com").replace("CC-12345", "CC-999")

    anonymous = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=changed, headers=YAML)
    assert anonymous.status_code == 200
    text = json.dumps(anonymous.json)
    for private in ("alpha-lead@contoso.com", "CC-12345", "secret-sub-id"):
        assert private not in text, private
    warnings = anonymous.json["plan"]["warnings"]
    assert "the stored team's last reconcile failed (authenticate to see why)" in warnings
    assert any("compared with the stored team for authenticated callers only" in w for w in warnings)
    # Neither the diff nor the action says whether a guess of the stored owner is right.
    assert anonymous.json["plan"]["action"] == "unchanged"
    guess = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=SEED_EXAMPLE, headers=YAML).json["plan"]
    assert (guess["action"], guess["changes"]) == (anonymous.json["plan"]["action"], anonymous.json["plan"]["changes"])
    # A real change of the grant is still shown.
    more = client.post(f"/api/teams/validate?path={ALPHA_PATH}", headers=YAML,
                       data=changed.replace("tokensPerMinute: 5000", "tokensPerMinute: 2500")).json["plan"]
    assert more["action"] == "update" and "alpha-lead@contoso.com" not in json.dumps(more)

    admin = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=changed, headers={**YAML, **basic()})
    assert admin.status_code == 200
    [product] = [c for c in admin.json["plan"]["changes"] if c["kind"] == "APIM product"]
    assert "owner: alpha-lead@contoso.com -> new-lead@contoso.com" in product["details"]
    assert "costCenter: CC-12345 -> CC-999" in product["details"]
    assert any("secret-sub-id" in w for w in admin.json["plan"]["warnings"])
    wrong = client.post(f"/api/teams/validate?path={ALPHA_PATH}", data=changed, headers={**YAML, **basic("nope")})
    assert wrong.status_code == 401
