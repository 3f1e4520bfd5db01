"""LiteLLM provisioning against the stand-in that validates with LiteLLM's own models:
idempotence across crashes, revocation, throttling and faults, and no key in any message."""

from __future__ import annotations

import email.utils
import logging
import socket
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from shared.adapters.http_retry import parse_retry_after
from shared.adapters.litellm import REF_ALIAS, REF_EXPIRES, SECRET_KEY, LiteLLMProvisioner, token_id
from shared.config import CatalogModel
from shared.domain.request import KeyRequest
from shared.services.ports import Credentials, PermanentError, TransientError
from tests.standins import exception_texts, leaks, logged_text
from tests.standins.faults import hang, status
from tests.standins.litellm_server import LiteLLMStandin

TIMEOUT = 0.5


@pytest.fixture(scope="module")
def standin():
    server = LiteLLMStandin().start()  # imports litellm's models once (a few seconds)
    yield server
    server.stop()


@pytest.fixture
def litellm(standin, caplog):
    """A clean stand-in; after the test, no issued key and no master key in any log record."""
    standin.reset()
    caplog.set_level(logging.DEBUG)
    yield standin
    called = bool(standin.calls)
    issued = {c.body["key"] for c in standin.calls_to("POST", "/key/generate")
              if isinstance(c.body, dict) and c.body.get("key")}
    text = logged_text(caplog)
    assert text or not called  # the capture works (httpx and httpcore log every call at DEBUG/INFO)
    leaked = leaks(issued | {standin.master_key}, text)
    assert not leaked


class Sleeps(list):
    """The adapter's sleeper: records each planned in-call wait instead of waiting it out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def provisioner(litellm, sleeps):
    client = LiteLLMProvisioner(litellm.url, litellm.master_key, timeout_seconds=TIMEOUT, sleep=sleeps)
    yield client
    client.close()


@pytest.fixture
def model() -> CatalogModel:
    return CatalogModel.model_validate({
        "id": "gpt-4o", "title": "GPT-4o",
        "provisioning": {"litellm": {"models": ["gpt-4o", "gpt-4o-mini"], "duration": "30d", "max_budget": 25.0,
                                     "budget_duration": "30d", "soft_budget": 20.0, "tpm_limit": 100000,
                                     "rpm_limit": 60}}})


def assert_clean(exc: BaseException, *secrets: str) -> None:
    assert not leaks(set(secrets), *exception_texts(exc))


def test_issue_is_idempotent_and_sends_what_config_grants(litellm, provisioner, model):
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    prepared = provisioner.prepare(request, model)
    key = prepared.secrets[SECRET_KEY]
    assert key.startswith("sk-") and len(key) >= 35
    assert prepared.references == {REF_ALIAS: f"llm-key-request-{request.id}"}

    first = provisioner.issue(request, model, prepared)
    second = provisioner.issue(request, model, prepared)

    assert first.secrets == second.secrets == {SECRET_KEY: key}
    assert first.references[REF_ALIAS] == second.references[REF_ALIAS] == f"llm-key-request-{request.id}"
    assert first.references[REF_EXPIRES] == second.references[REF_EXPIRES]
    assert len(litellm.keys) == 1
    row = litellm.keys[token_id(key)]
    assert row["models"] == ["gpt-4o", "gpt-4o-mini"] and row["user_id"] == "ann@example.com"
    assert (row["max_budget"], row["soft_budget"], row["budget_duration"]) == (25.0, 20.0, "30d")
    assert (row["tpm_limit"], row["rpm_limit"]) == (100000, 60)
    assert row["metadata"] == {"request_id": request.id, "email": "ann@example.com", "requested_model": "gpt-4o"}
    # The second issue met its own key under the alias, and asked by the key's hash, not the key.
    info = litellm.calls_to("GET", "/key/info")
    assert len(info) == 1 and info[0].query == {"key": token_id(key)}
    assert key not in str(info[0].query)


def test_unset_limits_are_omitted_and_models_default_to_the_catalog_id(litellm, provisioner):
    bare = CatalogModel.model_validate({"id": "llama-3", "title": "Llama", "provisioning": {"litellm": {"duration": None}}})
    request = KeyRequest.new("bo@example.com", "llama-3")
    credentials = provisioner.issue(request, bare, provisioner.prepare(request, bare))
    body = litellm.calls_to("POST", "/key/generate")[0].body
    assert body["models"] == ["llama-3"]
    assert not {"duration", "max_budget", "budget_duration", "soft_budget", "tpm_limit", "rpm_limit"} & set(body)
    assert REF_EXPIRES not in credentials.references  # no duration: a key that does not expire


def test_crash_after_the_backend_call_leaves_one_key(litellm, provisioner, model):
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    prepared = provisioner.prepare(request, model)  # recorded on the Secret before issue
    provisioner.issue(request, model, prepared)  # ... and the process dies before recording this
    recovered = provisioner.issue(request, model, prepared)  # the next tick, from the recorded values
    assert recovered.secrets == prepared.secrets
    assert len(litellm.keys) == 1


class LoseFirstAnswer(httpx.HTTPTransport):
    """Delivers the first /key/generate, then loses LiteLLM's answer (a proxy's reset, a 504)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == "/key/generate" and not self.lost:
            self.lost += 1
            response.close()
            raise httpx.RemoteProtocolError("connection reset before the answer", request=request)
        return response


def test_a_lost_answer_is_retried_and_finds_its_own_key(litellm, provisioner, model):
    provisioner._client._transport = LoseFirstAnswer()  # the key was made; the caller never heard
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    prepared = provisioner.prepare(request, model)
    credentials = provisioner.issue(request, model, prepared)
    assert credentials.secrets == prepared.secrets
    assert len(litellm.calls_to("POST", "/key/generate")) == 2  # the quick retry met the taken alias
    assert len(litellm.calls_to("GET", "/key/info")) == 1 and len(litellm.keys) == 1


def test_an_alias_held_by_another_key_is_permanent(litellm, provisioner, model):
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    provisioner.issue(request, model, provisioner.prepare(request, model))
    other = provisioner.prepare(request, model)  # a different key under the same alias
    with pytest.raises(PermanentError, match="belongs to another key") as raised:
        provisioner.issue(request, model, other)
    assert_clean(raised.value, other.secrets[SECRET_KEY], litellm.master_key)
    assert len(litellm.keys) == 1


def test_revoke_deletes_and_revoking_again_is_fine(litellm, provisioner, model):
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    credentials = provisioner.issue(request, model, provisioner.prepare(request, model))
    provisioner.revoke(request, credentials)
    assert litellm.keys == {}
    provisioner.revoke(request, credentials)  # LiteLLM answers 404 "No keys found": already gone
    provisioner.revoke(request, Credentials())  # nothing was ever prepared
    deletes = litellm.calls_to("POST", "/key/delete")
    assert len(deletes) == 2
    assert deletes[0].body == {"keys": [token_id(credentials.secrets[SECRET_KEY])]}


def test_throttled_then_served_honours_retry_after(litellm, provisioner, model, sleeps):
    litellm.faults.plan("POST /key/generate", status(429, retry_after=1))
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    provisioner.issue(request, model, provisioner.prepare(request, model))
    assert len(litellm.calls_to("POST", "/key/generate")) == 2
    assert sleeps == [1.0], "the second try waited out the Retry-After"
    assert len(litellm.keys) == 1


def test_a_long_retry_after_goes_back_to_the_processor_at_once(litellm, provisioner, model, sleeps):
    litellm.faults.plan("POST /key/generate", status(429, retry_after=30))
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(TransientError) as raised:
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert raised.value.retry_after == 30 and not raised.value.in_flight
    assert sleeps == [], "no in-call wait: the processor reschedules"
    assert len(litellm.calls_to("POST", "/key/generate")) == 1


def test_server_errors_become_transient_after_two_quick_retries(litellm, provisioner, model, sleeps):
    litellm.faults.plan("POST /key/generate", status(500), status(503), status(500))
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    prepared = provisioner.prepare(request, model)
    with pytest.raises(TransientError, match=r"LiteLLM POST /key/generate answered 500: .*\(3 tries\)") as raised:
        provisioner.issue(request, model, prepared)
    assert len(litellm.calls_to("POST", "/key/generate")) == 3
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] <= 0.3 and 0.2 <= sleeps[1] <= 0.6, "0.2 s doubling, jittered"
    assert raised.value.reached and not raised.value.in_flight, "answered: nothing is still running there"
    assert litellm.keys == {}
    assert_clean(raised.value, prepared.secrets[SECRET_KEY], litellm.master_key)


def test_a_hanging_server_times_out_and_the_call_counts_as_in_flight(litellm, provisioner, model, sleeps):
    litellm.faults.plan("POST /key/generate", hang(10))
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(TransientError, match="timed out after 0.5 s") as raised:
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert raised.value.in_flight, "LiteLLM may still create the key after we gave up"
    assert len(litellm.calls_to("POST", "/key/generate")) == 1 and sleeps == []  # a timeout is not retried in-call


def test_an_unreachable_server_is_transient_and_changed_nothing(model, sleeps):
    with socket.socket() as sock:  # a port nobody listens on: bound, read, released
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = LiteLLMProvisioner(f"http://127.0.0.1:{port}", "sk-master-unused", timeout_seconds=TIMEOUT,
                                sleep=sleeps)
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(TransientError, match=r"failed: ConnectError \(3 tries\)") as raised:
        client.issue(request, model, client.prepare(request, model))
    assert not raised.value.reached and len(sleeps) == 2


def test_a_refusal_is_permanent_and_names_the_reason(litellm, provisioner, model):
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    short = Credentials(secrets={SECRET_KEY: "sk-short"}, references={REF_ALIAS: f"llm-key-request-{request.id}"})
    with pytest.raises(PermanentError, match="must be at least 16 characters long") as raised:
        provisioner.issue(request, model, short)
    assert_clean(raised.value, "sk-short", litellm.master_key)
    assert len(litellm.calls_to("POST", "/key/generate")) == 1  # never retried


def test_a_wrong_master_key_is_permanent_and_never_shown(litellm, model):
    wrong = "sk-wrong-master-key-0123456789"
    client = LiteLLMProvisioner(litellm.url, wrong, timeout_seconds=TIMEOUT)
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(PermanentError, match="401: LiteLLM refused the master key") as raised:
        client.issue(request, model, client.prepare(request, model))
    assert_clean(raised.value, wrong)
    assert repr(client) == f"LiteLLMProvisioner(base_url={litellm.url!r})"


def test_error_bodies_that_echo_secrets_are_scrubbed(litellm, provisioner, model):
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    prepared = provisioner.prepare(request, model)
    key = prepared.secrets[SECRET_KEY]
    # FastAPI's 422 echoes the whole input; a careless proxy may echo a token in its detail.
    litellm.faults.plan("POST /key/generate",
                        status(422, body={"detail": [{"type": "x", "loc": ["body", "key"], "msg": "bad key",
                                                      "input": {"key": key}}]}),
                        status(400, body={"detail": f"token {litellm.master_key} may not create {key}"}))
    with pytest.raises(PermanentError, match="body.key: bad key") as first:
        provisioner.issue(request, model, prepared)
    with pytest.raises(PermanentError, match=r"token \*\*\* may not create \*\*\*") as second:
        provisioner.issue(request, model, prepared)
    for raised in (first, second):
        assert_clean(raised.value, key, litellm.master_key)


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.5") == 0.5
    in_a_minute = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    assert 55 <= parse_retry_after(in_a_minute) <= 60
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


# --- the stand-in refuses what LiteLLM's own models refuse ----------------------------------------


def _post(litellm, path: str, body: object) -> httpx.Response:
    return httpx.post(litellm.url + path, json=body, headers={"Authorization": f"Bearer {litellm.master_key}"})


def test_the_standin_refuses_bodies_litellm_would_refuse(litellm):
    mistyped = _post(litellm, "/key/generate", {"key_alias": "a", "tpm_limit": "lots"})
    assert mistyped.status_code == 422
    assert [e["loc"] for e in mistyped.json()["detail"]] == [["body", "tpm_limit"]]

    misspelt = _post(litellm, "/key/generate", {"key_alias": "b", "max_budgett": 5})
    assert misspelt.status_code == 422 and "max_budgett" in misspelt.json()["detail"][0]["msg"]

    empty_delete = _post(litellm, "/key/delete", {})  # KeyRequest needs keys or key_aliases
    assert empty_delete.status_code == 422

    bad_key = _post(litellm, "/key/generate", {"key": "not-sk-0123456789abcdef"})
    assert bad_key.status_code == 400 and "must start with 'sk-'" in bad_key.json()["error"]["message"]

    # LiteLLM's own duration parser: "1y" is not one of its units (config.yaml's pattern allows it).
    year = _post(litellm, "/key/generate", {"key_alias": "c", "duration": "1y"})
    assert year.status_code == 500 and "Unsupported duration unit" in year.json()["error"]["message"]

    unauthenticated = httpx.post(litellm.url + "/key/generate", json={})
    assert unauthenticated.status_code == 401
    assert litellm.keys == {}


def test_the_adapter_body_is_one_litellm_accepts_field_by_field(litellm, provisioner, model):
    from tests.standins.litellm_server import litellm_models

    request = KeyRequest.new("ann@example.com", "gpt-4o")
    provisioner.issue(request, model, provisioner.prepare(request, model))
    body = litellm.calls_to("POST", "/key/generate")[0].body
    parsed = litellm_models().GenerateKeyRequest.model_validate(body)
    assert set(body) <= set(type(parsed).model_fields)
    assert parsed.model_dump(include=set(body)) == body
