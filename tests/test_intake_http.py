"""The requester's HTTP API, end to end against the real kube-apiserver."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from werkzeug.test import Client

from tests.conftest import FRONTEND_ORIGIN, secret_names

REQUESTS = "app.kubernetes.io/component=llm-key-request"
CLAIMS = "app.kubernetes.io/component=llm-key-request-claim"


def post_key(http: Client, body, content_type: str = "application/json", raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    return http.post("/api/request-key", data=data, headers={"Content-Type": content_type})


def test_health_reports_the_store(http, app_env):
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "healthy", "store": "ok", "namespace": app_env}


def test_health_is_unhealthy_when_the_store_does_not_answer(http, tmp_path, monkeypatch, kube_cluster):
    from shared import context

    dead = tmp_path / "kubeconfig"
    dead.write_text(kube_cluster.kubeconfig.read_text().replace(kube_cluster.server, "https://127.0.0.1:9"))
    monkeypatch.setenv("KUBECONFIG", str(dead))
    monkeypatch.setenv("KUBERNETES_TIMEOUT_SECONDS", "2")
    context.reset()
    response = http.get("/health")
    assert response.status_code == 503
    assert response.json["status"] == "unhealthy"
    assert "Traceback" not in response.get_data(as_text=True)


def test_models_are_wrapped_and_public(http):
    response = http.get("/api/models", headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    models = response.json["models"]
    assert [m["id"] for m in models][:2] == ["gpt-4o", "gpt-4o-mini"]
    for model in models:
        assert set(model) == {"id", "title", "description", "icon", "color"}


def test_featured_models_have_the_frontend_fields(http):
    response = http.get("/api/featured-models")
    assert response.status_code == 200
    featured = response.json["models"]
    assert featured, "config.yaml features at least one model"
    for model in featured:
        assert set(model) == {"id", "title", "subtitle", "description", "documentation_link", "icon", "color"}


def test_request_key_creates_one_secret_with_the_contract(http, core_api, app_env):
    response = post_key(http, {"llm": "gpt-4o", "email": "  Alice@Example.COM "})
    assert response.status_code == 201
    body = response.json
    assert body["success"] is True and body["state"] == "pending"
    assert isinstance(body["message"], str) and "gpt-4o" in body["message"]
    assert response.headers["Location"] == f"/api/requests/{body['request_id']}"

    secret = core_api.read_namespaced_secret(f"llm-key-request-{body['request_id']}", app_env)
    assert secret.metadata.labels == {
        "app.kubernetes.io/name": "llm-key-requestor",
        "app.kubernetes.io/component": "llm-key-request",
        "request-state": "pending",
    }
    notes = secret.metadata.annotations
    assert notes["llm-key-requestor/email"] == "alice@example.com"
    assert notes["llm-key-requestor/model"] == "gpt-4o"
    assert notes["llm-key-requestor/created-at"].endswith("+00:00")
    assert notes["llm-key-requestor/attempts"] == "0"
    assert not secret.data, "no key before one is issued"


def test_same_email_and_model_returns_the_open_request(http, core_api, app_env):
    first = post_key(http, {"llm": "gpt-4o", "email": "bob@example.com"})
    again = post_key(http, {"llm": "gpt-4o", "email": " BOB@example.com"})
    other_model = post_key(http, {"llm": "gpt-4o-mini", "email": "bob@example.com"})
    # A repeat answers exactly as a new request does: an anonymous caller cannot tell them apart.
    assert first.status_code == again.status_code == 201
    assert set(again.json) == set(first.json) and again.headers["Location"] == first.headers["Location"]
    assert again.json["request_id"] == first.json["request_id"]
    assert other_model.status_code == 201 and other_model.json["request_id"] != first.json["request_id"]
    assert len(secret_names(core_api, app_env, REQUESTS)) == 2


def test_twenty_identical_requests_at_once_make_one_secret(wsgi_app, app_env, core_api):
    barrier = threading.Barrier(20)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def ask():
        client = Client(wsgi_app)
        barrier.wait()
        response = post_key(client, {"llm": "gpt-4o", "email": "race@example.com"})
        with lock:
            answers.append((response.status_code, response.json["request_id"]))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 20
    assert sorted(code for code, _ in answers) == [201] * 20  # one created, 19 returned: the same answer
    assert len({request_id for _, request_id in answers}) == 1
    assert len(secret_names(core_api, app_env, REQUESTS)) == 1
    assert secret_names(core_api, app_env, CLAIMS) == [], "the request's own name settles it: no claim"


# A denial sticks for requests.deny_cooldown: tests/test_intake_abuse.py.
@pytest.mark.parametrize("finished", ["revoked", "failed", "expired"])
def test_a_finished_request_does_not_block_a_new_one(http, core_api, app_env, finished):
    first = post_key(http, {"llm": "gpt-4o", "email": "carol@example.com"}).json["request_id"]
    core_api.patch_namespaced_secret(f"llm-key-request-{first}", app_env,
                                     {"metadata": {"labels": {"request-state": finished}}})
    second = post_key(http, {"llm": "gpt-4o", "email": "carol@example.com"})
    assert second.status_code == 201
    assert second.json["request_id"] != first
    third = post_key(http, {"llm": "gpt-4o", "email": "carol@example.com"})
    assert third.status_code == 201 and third.json["request_id"] == second.json["request_id"]
    assert len(secret_names(core_api, app_env, REQUESTS)) == 2


def test_status_endpoint(http, core_api, app_env):
    request_id = post_key(http, {"llm": "gpt-4o-mini", "email": "dan@example.com"}).json["request_id"]
    response = http.get(f"/api/requests/{request_id}")
    assert response.status_code == 200
    status = response.json
    assert status["request_id"] == request_id and status["state"] == "pending"
    assert status["model"] == "gpt-4o-mini" and status["reason"] is None
    assert "email" not in status

    core_api.patch_namespaced_secret(f"llm-key-request-{request_id}", app_env, {"metadata": {
        "labels": {"request-state": "denied"},
        "annotations": {"llm-key-requestor/reason": "not for contractors"}}})
    status = http.get(f"/api/requests/{request_id}").json
    assert status["state"] == "denied" and status["reason"] == "not for contractors"


@pytest.mark.parametrize("request_id", [str(uuid.uuid4()), "not-an-id", "..%2F..%2Fkube-root-ca.crt"])
def test_status_of_unknown_or_malformed_id_is_404(http, request_id):
    response = http.get(f"/api/requests/{request_id}")
    assert response.status_code == 404
    assert isinstance(response.json["message"], str)


BAD_INPUT = [
    # (body, expected status, field named in the answer)
    ({"llm": "gpt-4o"}, 422, "email"),
    ({"email": "eve@example.com"}, 422, "llm"),
    ({"llm": "gpt-4o", "email": "not-an-email"}, 422, "email"),
    ({"llm": "gpt-4o", "email": "eve@@example.com"}, 422, "email"),
    ({"llm": "gpt-4o", "email": ""}, 422, "email"),
    ({"llm": "gpt-4o", "email": 42}, 422, "email"),
    ({"llm": ["gpt-4o"], "email": "eve@example.com"}, 422, "llm"),
    ({"llm": "no-such-model", "email": "eve@example.com"}, 422, "llm"),
    ({"llm": "gpt-4o", "email": "a" * 300 + "@example.com"}, 422, "email"),
    ([{"llm": "gpt-4o", "email": "eve@example.com"}], 422, "(body)"),
]


@pytest.mark.parametrize("body,status,field", BAD_INPUT)
def test_bad_fields_name_the_field(http, core_api, app_env, body, status, field):
    response = post_key(http, body)
    assert response.status_code == status
    answer = response.json
    assert isinstance(answer["message"], str) and field in answer["message"]
    assert any(item["field"] == field for item in answer["detail"])
    assert secret_names(core_api, app_env, "app.kubernetes.io/name=llm-key-requestor") == []


def test_malformed_json_is_400(http, core_api, app_env):
    response = post_key(http, None, raw=b'{"llm": "gpt-4o", "email": ')
    assert response.status_code == 400
    assert response.json["message"].startswith("The body is not valid JSON")
    assert secret_names(core_api, app_env, REQUESTS) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(http, content_type):
    response = post_key(http, {"llm": "gpt-4o", "email": "eve@example.com"}, content_type=content_type)
    assert response.status_code == 415
    assert "application/json" in response.json["message"]


def test_body_over_16_kib_is_413(http, core_api, app_env):
    body = {"llm": "gpt-4o", "email": "eve@example.com", "padding": "x" * 17000}
    response = post_key(http, body)
    assert response.status_code == 413
    assert secret_names(core_api, app_env, REQUESTS) == []


def test_allowed_domains_restrict_who_may_ask(http, tmp_path, monkeypatch, core_api, app_env):
    from shared import context
    from tests.conftest import ROOT

    config = (ROOT / "config.yaml").read_text().replace(
        "allowed_email_domains: [example.com]", "allowed_email_domains: [contoso.com]")
    (tmp_path / "config.yaml").write_text(config)
    monkeypatch.setenv("CONFIG_FILE", str(tmp_path / "config.yaml"))
    context.reset()
    assert post_key(http, {"llm": "gpt-4o", "email": "x@fabrikam.com"}).status_code == 422
    assert post_key(http, {"llm": "gpt-4o", "email": "x@eu.contoso.com"}).status_code == 201
    assert post_key(http, {"llm": "gpt-4o", "email": "x@contoso.com"}).status_code == 201


def test_store_outage_is_503_with_retry_after(http, tmp_path, monkeypatch, kube_cluster, core_api, app_env):
    from shared import context

    dead = tmp_path / "kubeconfig"
    dead.write_text(kube_cluster.kubeconfig.read_text().replace(kube_cluster.server, "https://127.0.0.1:9"))
    monkeypatch.setenv("KUBECONFIG", str(dead))
    monkeypatch.setenv("KUBERNETES_TIMEOUT_SECONDS", "2")
    context.reset()
    response = post_key(http, {"llm": "gpt-4o", "email": "eve@example.com"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "Traceback" not in response.get_data(as_text=True)


def test_cors_preflight_for_the_frontend(http):
    response = http.open("/api/request-key", method="OPTIONS", headers={
        "Origin": FRONTEND_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert response.status_code in (200, 204)
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN
    assert "content-type" in response.headers["Access-Control-Allow-Headers"].lower()
    actual = http.get("/api/models", headers={"Origin": FRONTEND_ORIGIN})
    assert actual.headers["Access-Control-Allow-Origin"] == FRONTEND_ORIGIN


def test_openapi_document_describes_the_api(http):
    response = http.get("/api/openapi.json")
    assert response.status_code == 200
    doc = response.json
    assert doc["openapi"].startswith("3.")
    assert {"/health", "/api/models", "/api/featured-models", "/api/request-key",
            "/api/requests/{request_id}"} <= set(doc["paths"])
    body_schema = doc["components"]["schemas"]["KeyRequestBody"]
    assert set(body_schema["required"]) == {"llm", "email"}
