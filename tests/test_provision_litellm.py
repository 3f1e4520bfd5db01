"""LiteLLM provisioning against the stand-in that validates with LiteLLM's own models:
idempotence across crashes, revocation, renewal and rotation, throttling and faults, and no key in
any message."""

from __future__ import annotations

import email.utils
import logging
import socket
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared.adapters.http_retry import parse_retry_after
from shared.adapters.litellm import (
    REF_ALIAS,
    REF_EXPIRES,
    REF_GENERATION,
    REF_NEXT_ALIAS,
    REF_NEXT_EXPIRES,
    REF_NEXT_GENERATION,
    REF_NEXT_TOKEN,
    REF_TOKEN,
    SECRET_KEY,
    SECRET_NEXT_KEY,
    LiteLLMProvisioner,
    token_id,
)
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
    assert prepared.references == {REF_ALIAS: f"llm-key-request-{request.id}", REF_TOKEN: token_id(key)}

    first = provisioner.issue(request, model, prepared)
    second = provisioner.issue(request, model, prepared)

    assert first.secrets == second.secrets == {SECRET_KEY: key}
    assert first.references[REF_ALIAS] == second.references[REF_ALIAS] == f"llm-key-request-{request.id}"
    assert first.references[REF_EXPIRES] == second.references[REF_EXPIRES]
    assert first.references[REF_TOKEN] == token_id(key) and token_id(key) in litellm.keys
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
    bare = CatalogModel.model_validate({"id": "llama-3", "title": "Llama",
                                        "provisioning": {"litellm": {"duration": None}}})
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
    in_a_minute = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
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


# --- the key's life: revoke from references, renewal, rotation ---------------------------------------


def delivered(credentials: Credentials) -> Credentials:
    """What the Secret keeps once the key email is recorded: the references, no key."""
    return Credentials(references=credentials.references)


def merged(*parts: Credentials) -> Credentials:
    secrets: dict[str, str] = {}
    references: dict[str, str] = {}
    for part in parts:
        secrets.update(part.secrets)
        references.update(part.references)
    return Credentials(secrets=secrets, references=references)


def issued(provisioner, model, email: str = "ann@example.com") -> tuple[KeyRequest, Credentials]:
    request = KeyRequest.new(email, model.id)
    return request, provisioner.issue(request, model, provisioner.prepare(request, model))


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def test_revoke_works_from_references_alone(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    provisioner.revoke(request, delivered(credentials))
    assert litellm.keys == {}
    provisioner.revoke(request, delivered(credentials))  # 404: already gone
    deletes = litellm.calls_to("POST", "/key/delete")
    assert [c.body for c in deletes] == [{"keys": [credentials.references[REF_TOKEN]]}] * 2


def test_extend_updates_the_same_key_by_its_token_with_the_models_duration(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    before = at(credentials.references[REF_EXPIRES])
    longer = model.model_copy(update={"provisioning": model.provisioning.model_copy(
        update={"litellm": model.provisioning.litellm.model_copy(update={"duration": "90d"})})})

    first = provisioner.extend(request, longer, delivered(credentials))
    second = provisioner.extend(request, longer, delivered(credentials))  # a retry: the same key again

    assert set(first.references) == {REF_EXPIRES} and not first.secrets
    moved = at(first.references[REF_EXPIRES]) - before
    assert timedelta(days=59, hours=23) < moved < timedelta(days=60, minutes=1), "30d -> 90d from (about) now"
    assert at(second.references[REF_EXPIRES]) - at(first.references[REF_EXPIRES]) < timedelta(minutes=1)
    assert list(litellm.keys) == [credentials.references[REF_TOKEN]], "no new key"
    assert litellm.keys[credentials.references[REF_TOKEN]]["expires"] == second.references[REF_EXPIRES]
    updates = litellm.calls_to("POST", "/key/update")
    assert [u.body for u in updates] == [{"key": credentials.references[REF_TOKEN], "duration": "90d"}] * 2
    assert litellm.calls_to("POST", "/key/generate")[1:] == []


def test_extend_without_a_duration_makes_the_key_never_expire(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    forever = model.model_copy(update={"provisioning": model.provisioning.model_copy(
        update={"litellm": model.provisioning.litellm.model_copy(update={"duration": None})})})
    assert provisioner.extend(request, forever, delivered(credentials)) == Credentials()
    assert litellm.keys[credentials.references[REF_TOKEN]]["expires"] is None


def test_extend_of_a_key_litellm_no_longer_has_is_permanent(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    litellm.reset()  # deleted outside the app
    with pytest.raises(PermanentError, match="/key/update answered 404"):
        provisioner.extend(request, model, delivered(credentials))
    with pytest.raises(PermanentError, match="no key recorded"):
        provisioner.extend(request, model, Credentials())


def test_extend_is_throttled_and_retried_inside_the_call(litellm, provisioner, model, sleeps):
    request, credentials = issued(provisioner, model)
    litellm.faults.plan("POST /key/update", status(429, retry_after=2))
    assert REF_EXPIRES in provisioner.extend(request, model, delivered(credentials)).references
    assert sleeps == [2.0] and len(litellm.calls_to("POST", "/key/update")) == 2


def test_prepare_rotation_chooses_the_next_key_of_the_next_generation_without_io(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    calls = len(litellm.calls)
    nxt = provisioner.prepare_rotation(request, model, delivered(credentials))
    key = nxt.secrets[SECRET_NEXT_KEY]
    assert key.startswith("sk-") and len(key) >= 35 and key != credentials.secrets[SECRET_KEY]
    assert nxt.references == {REF_NEXT_ALIAS: f"llm-key-request-{request.id}-g2", REF_NEXT_TOKEN: token_id(key),
                              REF_NEXT_GENERATION: "2"}
    third = provisioner.prepare_rotation(request, model, Credentials(references={REF_GENERATION: "2"}))
    assert third.references[REF_NEXT_ALIAS].endswith("-g3") and third.references[REF_NEXT_GENERATION] == "3"
    assert len(litellm.calls) == calls, "no call to LiteLLM"
    assert key not in repr(nxt)


def test_rotate_issues_the_next_key_beside_the_current_one_idempotently(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    recorded = merged(delivered(credentials), provisioner.prepare_rotation(request, model, delivered(credentials)))
    key = recorded.secrets[SECRET_NEXT_KEY]

    first = provisioner.rotate(request, model, recorded)
    second = provisioner.rotate(request, model, recorded)  # a crash before recording: the same key again

    assert first.secrets == second.secrets == {SECRET_NEXT_KEY: key}
    assert first.references[REF_NEXT_ALIAS] == f"llm-key-request-{request.id}-g2"
    assert first.references[REF_NEXT_TOKEN] == token_id(key) and first.references[REF_NEXT_GENERATION] == "2"
    assert first.references[REF_NEXT_EXPIRES] == second.references[REF_NEXT_EXPIRES]
    # Both keys live during the grace, with the same grant; the new one ends when the old one does.
    assert set(litellm.keys) == {credentials.references[REF_TOKEN], token_id(key)}
    old, new = litellm.keys[credentials.references[REF_TOKEN]], litellm.keys[token_id(key)]
    for name in ("models", "user_id", "metadata", "max_budget", "soft_budget", "budget_duration", "tpm_limit",
                 "rpm_limit"):
        assert new[name] == old[name], name
    assert abs(at(new["expires"]) - at(old["expires"])) < timedelta(seconds=5), "rotation is no renewal"
    generate = litellm.calls_to("POST", "/key/generate")[1]
    assert generate.body["key_alias"].endswith("-g2") and generate.body["duration"].endswith("s")
    info = litellm.calls_to("GET", "/key/info")
    assert len(info) == 1 and info[0].query == {"key": token_id(key)}


def test_rotate_without_a_recorded_expiry_uses_the_models_duration(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    recorded = Credentials(references={k: v for k, v in credentials.references.items() if k != REF_EXPIRES})
    recorded = merged(recorded, provisioner.prepare_rotation(request, model, recorded))
    provisioner.rotate(request, model, recorded)
    assert litellm.calls_to("POST", "/key/generate")[1].body["duration"] == "30d"


def test_rotate_once_the_next_key_was_erased_only_checks_it_is_live(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    recorded = merged(delivered(credentials), provisioner.prepare_rotation(request, model, delivered(credentials)))
    rotated = provisioner.rotate(request, model, recorded)
    again = provisioner.rotate(request, model, delivered(merged(recorded, rotated)))
    assert again.secrets == {} and again.references == rotated.references
    assert len(litellm.calls_to("POST", "/key/generate")) == 2
    litellm.keys.pop(rotated.references[REF_NEXT_TOKEN])
    with pytest.raises(PermanentError, match="neither recorded nor live"):
        provisioner.rotate(request, model, delivered(merged(recorded, rotated)))


def test_rotating_an_expired_key_is_refused(litellm, model, sleeps):
    late = LiteLLMProvisioner(litellm.url, litellm.master_key, timeout_seconds=TIMEOUT, sleep=sleeps,
                              clock=lambda: datetime.now(UTC) + timedelta(days=31))
    try:
        request, credentials = issued(late, model)
        recorded = merged(delivered(credentials), late.prepare_rotation(request, model, delivered(credentials)))
        with pytest.raises(PermanentError, match="renew it instead") as raised:
            late.rotate(request, model, recorded)
        assert_clean(raised.value, recorded.secrets[SECRET_NEXT_KEY], litellm.master_key)
        assert len(litellm.keys) == 1
    finally:
        late.close()


def test_retire_deletes_the_old_key_and_returns_the_new_record(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    own = {"litellm-prepared": "true", "litellm-reached": "yes"}  # the processor's bookkeeping
    current = Credentials(references={**credentials.references, **own})
    recorded = merged(current, provisioner.prepare_rotation(request, model, current))
    rotated = provisioner.rotate(request, model, recorded)
    during = delivered(merged(recorded, rotated))  # the new key's email was recorded: erased

    first = provisioner.retire(request, during)
    second = provisioner.retire(request, during)  # a crash before recording: already gone is fine

    assert first == second and not first.secrets
    assert first.references == {**own, REF_ALIAS: f"llm-key-request-{request.id}-g2",
                                REF_TOKEN: rotated.references[REF_NEXT_TOKEN], REF_GENERATION: "2",
                                REF_EXPIRES: rotated.references[REF_NEXT_EXPIRES]}
    assert list(litellm.keys) == [rotated.references[REF_NEXT_TOKEN]], "exactly one key after the grace"
    deletes = litellm.calls_to("POST", "/key/delete")
    assert [d.body for d in deletes] == [{"keys": [credentials.references[REF_TOKEN]]}] * 2

    # The next rotation starts from the new record: generation 3, and the g2 key goes.
    nxt = merged(first, provisioner.prepare_rotation(request, model, first))
    assert nxt.references[REF_NEXT_ALIAS].endswith("-g3")
    third = provisioner.retire(request, delivered(merged(nxt, provisioner.rotate(request, model, nxt))))
    assert third.references[REF_GENERATION] == "3" and list(litellm.keys) == [third.references[REF_TOKEN]]
    with pytest.raises(PermanentError, match="no rotation in progress"):
        provisioner.retire(request, third)


def test_revoke_during_a_rotation_deletes_both_keys(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    recorded = merged(delivered(credentials), provisioner.prepare_rotation(request, model, delivered(credentials)))
    rotated = provisioner.rotate(request, model, recorded)
    provisioner.revoke(request, delivered(merged(recorded, rotated)))
    assert litellm.keys == {}
    assert len(litellm.calls_to("POST", "/key/delete")) == 2
    # Revoked before the next key was generated: its token was recorded, LiteLLM has nothing (404).
    other, issued_only = issued(provisioner, model, "bo@example.com")
    provisioner.revoke(other, merged(delivered(issued_only),
                                     provisioner.prepare_rotation(other, model, delivered(issued_only))))
    assert litellm.keys == {}


def test_rotation_failures_are_mapped_and_never_show_a_key(litellm, provisioner, model, sleeps):
    request, credentials = issued(provisioner, model)
    recorded = merged(delivered(credentials), provisioner.prepare_rotation(request, model, delivered(credentials)))
    key = recorded.secrets[SECRET_NEXT_KEY]
    litellm.faults.plan("POST /key/generate", status(500), status(502), status(503))
    with pytest.raises(TransientError, match=r"/key/generate answered 503: .*\(3 tries\)") as transient:
        provisioner.rotate(request, model, recorded)
    assert len(sleeps) == 2
    # The alias of the next generation taken by a key that is not ours.
    other = Credentials(secrets={SECRET_NEXT_KEY: "sk-" + "o" * 40}, references=recorded.references)
    litellm.faults.plan("POST /key/generate", status(400, body={"detail": f"no: {key}"}))
    with pytest.raises(PermanentError, match=r"no: \*\*\*") as refused:
        provisioner.rotate(request, model, recorded)
    provisioner.rotate(request, model, recorded)
    with pytest.raises(PermanentError, match="belongs to another key") as foreign:
        provisioner.rotate(request, model, other)
    litellm.faults.plan("POST /key/delete", status(401))
    with pytest.raises(PermanentError, match="refused the master key") as unauthorised:
        provisioner.retire(request, recorded)
    for raised in (transient, refused, foreign, unauthorised):
        assert_clean(raised.value, key, credentials.secrets[SECRET_KEY], "sk-" + "o" * 40, litellm.master_key)
    with pytest.raises(PermanentError, match="no next key prepared"):
        provisioner.rotate(request, model, delivered(credentials))


def test_the_standin_moves_expires_on_update_with_duration(litellm, provisioner, model):
    request, credentials = issued(provisioner, model)
    token = credentials.references[REF_TOKEN]
    shorter = _post(litellm, "/key/update", {"key": token, "duration": "1h"})
    assert shorter.status_code == 200
    moved = at(litellm.keys[token]["expires"])
    assert at(credentials.references[REF_EXPIRES]) - moved > timedelta(days=29), "30d -> 1h"
    assert _post(litellm, "/key/update", {"key": token, "duration": None}).status_code == 200
    assert litellm.keys[token]["expires"] is None
    assert _post(litellm, "/key/update", {"key": token, "durations": "1h"}).status_code == 422
    from tests.standins.litellm_server import litellm_models

    litellm_models().UpdateKeyRequest.model_validate({"key": token, "duration": "90d"})  # what extend sends
