"""APIM provisioning with the real azure-mgmt-apimanagement client against the ARM stand-in:
idempotence across crashes, revocation, renewal and rotation, ARM errors mapped by status,
throttling and faults, no key or token in any message, and no Azure SDK import on the app's
cold-start path."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from shared.adapters.apim import (
    REF_EXPIRES,
    REF_LIVE_KEY,
    REF_PRODUCT,
    REF_ROTATED_AT,
    REF_SUBSCRIPTION,
    SECRET_PRIMARY,
    SECRET_SECONDARY,
    ApimProvisioner,
)
from shared.adapters.azure_clients import apim_client
from shared.adapters.tls import ssl_context
from shared.config import CatalogModel
from shared.domain.request import KeyRequest
from shared.services.ports import Credentials, PermanentError, TransientError
from tests.standins import exception_texts, leaks, logged_text
from tests.standins.arm_server import API_VERSION, ArmStandin
from tests.standins.faults import hang, status

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 0.5
AZURE_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "rg-llm"
PRODUCT = "gpt-4o-product"


class StaticToken:
    """A TokenCredential with a fixed token (what the stand-in accepts), or one that fails like
    an unreachable managed identity endpoint."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        if self.token is None:
            raise ClientAuthenticationError("ManagedIdentityCredential: the identity endpoint did not answer")
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def arm():
    server = ArmStandin().start()
    yield server
    server.close()


@pytest.fixture
def service_name(arm, caplog) -> str:
    """A fresh APIM service with one published product; after the test, no subscription key
    and no token in any log record."""
    arm.reset_calls()
    caplog.set_level(logging.DEBUG)
    name = f"apim-{uuid.uuid4().hex[:8]}"
    service = arm.add_service(AZURE_SUBSCRIPTION, RESOURCE_GROUP, name)
    arm.add_product(service, PRODUCT)
    yield name
    leaked = leaks(arm.issued_keys | {arm.token}, logged_text(caplog))
    assert not leaked


@pytest.fixture
def service(arm, service_name):
    return arm.services[(AZURE_SUBSCRIPTION, RESOURCE_GROUP.lower(), service_name)]


class Sleeps(list):
    """The adapter's sleeper: records each planned in-call wait instead of waiting it out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def provisioner_for(arm: ArmStandin, service_name: str, token: str | None = "",
                    sleeps: Sleeps | None = None) -> ApimProvisioner:
    credential = StaticToken(arm.token if token == "" else token)
    return ApimProvisioner(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service_name, base_url=arm.url,
                           credential=credential, ca_bundle=arm.ca_pem_path, timeout_seconds=TIMEOUT,
                           sleep=sleeps if sleeps is not None else Sleeps())


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def provisioner(arm, service_name, sleeps) -> ApimProvisioner:
    return provisioner_for(arm, service_name, sleeps=sleeps)


def catalog_model(product: str = PRODUCT, expires_after_days: int | None = 30) -> CatalogModel:
    return CatalogModel.model_validate({
        "id": "gpt-4o", "title": "GPT-4o",
        "provisioning": {"backends": ["apim"],
                         "apim": {"product_id": product, "expires_after_days": expires_after_days}}})


def assert_clean(exc: BaseException, arm: ArmStandin) -> None:
    assert not leaks(arm.issued_keys | {arm.token}, *exception_texts(exc))


def test_issue_is_idempotent_active_scoped_and_expiring(arm, service, provisioner):
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    prepared = provisioner.prepare(request, model)
    sid = f"llmkr-{request.id}"
    assert prepared.references == {REF_SUBSCRIPTION: sid} and not prepared.secrets

    first = provisioner.issue(request, model, prepared)
    second = provisioner.issue(request, model, prepared)

    assert list(service.subscriptions) == [sid]
    stored = service.subscriptions[sid].properties
    assert first.secrets == second.secrets == {SECRET_PRIMARY: stored["primaryKey"],
                                               SECRET_SECONDARY: stored["secondaryKey"]}
    assert stored["state"] == "active" and stored["scope"] == f"/products/{PRODUCT}"
    assert stored["displayName"] == "ann@example.com (gpt-4o)"
    # Dated from the request, not from the call: every retry sets the same expiry.
    assert first.references[REF_EXPIRES] == (request.created_at + timedelta(days=30)).isoformat()
    assert stored["expirationDate"].startswith(first.references[REF_EXPIRES][:19])
    assert first.references[REF_PRODUCT] == PRODUCT
    puts = arm.calls_to("PUT", "/subscriptions/")
    assert len(puts) == 2 and all(c.query == {"notify": "false", "api-version": API_VERSION} for c in puts)
    patches = arm.calls_to("PATCH")
    assert len(patches) == 2 and all(c.headers["if-match"] == "*" for c in patches)
    # The token asked for is ARM's own audience (here: the stand-in's URL).
    assert provisioner._credential.scopes[0] == (f"{arm.url}/.default",)


def test_without_expiry_no_patch_is_sent(arm, service, provisioner):
    model = catalog_model(expires_after_days=None)
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    credentials = provisioner.issue(request, model, provisioner.prepare(request, model))
    assert REF_EXPIRES not in credentials.references
    assert arm.calls_to("PATCH") == []


def test_crash_after_the_backend_call_leaves_one_subscription(arm, service, provisioner):
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    prepared = provisioner.prepare(request, model)
    # Created, but reading its keys fails for good this tick ...
    arm.faults.plan("POST subscription/listSecrets", status(500), status(500), status(500))
    with pytest.raises(TransientError, match="read keys of subscription"):
        provisioner.issue(request, model, prepared)
    provisioner.issue(request, model, prepared)  # ... then issued, and the process dies before recording
    recovered = provisioner.issue(request, model, prepared)  # the next tick, from the recorded values
    assert len(service.subscriptions) == 1
    assert recovered.secrets[SECRET_PRIMARY] == service.subscriptions[f"llmkr-{request.id}"].properties["primaryKey"]


def test_revoke_deletes_and_revoking_again_is_fine(arm, service, provisioner):
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    credentials = provisioner.issue(request, model, provisioner.prepare(request, model))
    provisioner.revoke(request, credentials)
    assert service.subscriptions == {}
    provisioner.revoke(request, credentials)  # ARM answers 204 for what is not there
    deletes = arm.calls_to("DELETE")
    assert len(deletes) == 2 and all(c.headers["if-match"] == "*" for c in deletes)


def test_revoke_in_a_service_that_answers_404_counts_as_gone(arm, service_name):
    gone = provisioner_for(arm, "apim-deleted")
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    gone.revoke(request, gone.prepare(request, catalog_model()))
    assert len(arm.calls_to("DELETE")) == 1


def test_throttled_then_served_honours_retry_after(arm, service, provisioner, sleeps):
    arm.faults.plan("PUT subscription", status(429, retry_after=1))
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    provisioner.issue(request, model, provisioner.prepare(request, model))
    puts = arm.calls_to("PUT", "/subscriptions/")
    assert len(puts) == 2 and sleeps == [1.0], "the second try waited out the Retry-After"
    assert len(service.subscriptions) == 1


def test_a_long_retry_after_goes_back_to_the_processor_at_once(arm, service, provisioner, sleeps):
    arm.faults.plan("PUT subscription", status(429, retry_after=120))
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(TransientError) as raised:
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert raised.value.retry_after == 120 and sleeps == []
    assert len(arm.calls_to("PUT")) == 1


def test_server_errors_become_transient_after_two_quick_retries(arm, service, provisioner):
    arm.faults.plan("PUT subscription", status(500), status(502), status(503))
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(TransientError, match=r"APIM create subscription .* ARM answered 503: .*\(3 tries\)") as raised:
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert len(arm.calls_to("PUT")) == 3 and service.subscriptions == {}
    assert raised.value.in_flight, "a gateway's 502 answers for an APIM that may still be working"
    assert_clean(raised.value, arm)


def test_a_hanging_arm_times_out_and_the_call_counts_as_in_flight(arm, service, provisioner, sleeps):
    arm.faults.plan("PUT subscription", hang(10))
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(TransientError, match="timed out after 0.5 s") as raised:
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert raised.value.in_flight, "APIM may still create the subscription after we gave up"
    assert len(arm.calls_to("PUT")) == 1 and sleeps == []  # a timeout is not retried in-call


def test_a_missing_product_is_permanent_and_says_which(arm, service_name, provisioner):
    model = catalog_model(product="no-such-product")
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(PermanentError,
                       match=f"product no-such-product not found in APIM service {service_name}") as raised:
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert len(arm.calls_to("PUT")) == 1
    assert_clean(raised.value, arm)


def test_a_missing_service_is_permanent(arm, service_name):
    wrong = provisioner_for(arm, "apim-typo")
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(PermanentError, match="not found in APIM service apim-typo .*ResourceNotFound"):
        wrong.issue(request, model, wrong.prepare(request, model))


def test_forbidden_is_permanent_with_arms_message(arm, service, provisioner):
    arm.faults.plan("PUT subscription", status(403, body={"error": {
        "code": "AuthorizationFailed", "message": "The client does not have authorization to perform action "
                                                  "'Microsoft.ApiManagement/service/subscriptions/write'."}}))
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(PermanentError, match="ARM answered 403: AuthorizationFailed: The client does not have"):
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert len(arm.calls_to("PUT")) == 1


@pytest.mark.parametrize("code", [409, 412])
def test_conflicts_are_transient_without_a_quick_retry(arm, service, provisioner, code):
    arm.faults.plan("PATCH subscription", status(code, body={"error": {"code": "Conflict", "message": "changed"}}))
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    with pytest.raises(TransientError, match=f"ARM answered {code}"):
        provisioner.issue(request, model, provisioner.prepare(request, model))
    assert len(arm.calls_to("PATCH")) == 1


def test_token_failures_are_transient(arm, service_name):
    model = catalog_model()
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    no_identity = provisioner_for(arm, service_name, token=None)
    with pytest.raises(TransientError, match="could not get a token"):
        no_identity.issue(request, model, no_identity.prepare(request, model))
    assert arm.calls == []
    refused = provisioner_for(arm, service_name, token="a-token-arm-does-not-know")
    with pytest.raises(TransientError, match="ARM refused the token .*AuthenticationFailed") as raised:
        refused.issue(request, model, refused.prepare(request, model))
    assert not leaks({"a-token-arm-does-not-know"}, *exception_texts(raised.value))


# --- the key's life: renewal and rotation --------------------------------------------------------------


def issued(provisioner: ApimProvisioner, model: CatalogModel) -> tuple[KeyRequest, Credentials]:
    request = KeyRequest.new("ann@example.com", "gpt-4o")
    return request, provisioner.issue(request, model, provisioner.prepare(request, model))


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


def keys_of(service, request: KeyRequest) -> tuple[str, str]:
    stored = service.subscriptions[f"llmkr-{request.id}"].properties
    return stored["primaryKey"], stored["secondaryKey"]


def test_revoke_works_from_references_alone(arm, service, provisioner):
    request, credentials = issued(provisioner, catalog_model())
    provisioner.revoke(request, delivered(credentials))
    assert service.subscriptions == {}


def test_extend_sets_the_expiry_from_the_renewal_request_idempotently(arm, service, provisioner):
    model = catalog_model(expires_after_days=30)
    request, credentials = issued(provisioner, model)
    keys = keys_of(service, request)
    renewal = dataclasses.replace(request, renew_requested_at=request.created_at + timedelta(days=25))

    first = provisioner.extend(renewal, model, delivered(credentials))
    second = provisioner.extend(renewal, model, delivered(credentials))  # a retry sets the same date

    expected = (renewal.renew_requested_at + timedelta(days=30)).isoformat()
    assert first == second == Credentials(references={REF_EXPIRES: expected})
    stored = service.subscriptions[f"llmkr-{request.id}"].properties
    assert stored["expirationDate"].startswith(expected[:19])
    assert keys_of(service, request) == keys, "the same keys: no downtime"
    patches = arm.calls_to("PATCH")[1:]  # after issue's own
    assert len(patches) == 2 and all(c.headers["if-match"] == "*" for c in patches)
    assert all(set(c.body["properties"]) == {"expirationDate"} for c in patches)


def test_extend_without_expiry_changes_nothing(arm, service, provisioner):
    model = catalog_model(expires_after_days=None)
    request, credentials = issued(provisioner, model)
    renewal = dataclasses.replace(request, renew_requested_at=request.created_at)
    assert provisioner.extend(renewal, model, delivered(credentials)) == Credentials()
    assert arm.calls_to("PATCH") == []


def test_extend_of_a_missing_subscription_or_without_a_renewal_is_permanent(arm, service, provisioner):
    model = catalog_model()
    request, credentials = issued(provisioner, model)
    with pytest.raises(PermanentError, match="no renewal requested"):
        provisioner.extend(request, model, delivered(credentials))
    service.subscriptions.clear()  # deleted outside the app
    renewal = dataclasses.replace(request, renew_requested_at=request.created_at)
    with pytest.raises(PermanentError, match=f"subscription llmkr-{request.id} not found .*ResourceNotFound") as raised:
        provisioner.extend(renewal, model, delivered(credentials))
    assert_clean(raised.value, arm)


def test_rotation_regenerates_the_unused_key_then_retires_the_used_one(arm, service, provisioner):
    model = catalog_model()
    request, credentials = issued(provisioner, model)
    primary, secondary = keys_of(service, request)
    own = {"apim-prepared": "true", "apim-reached": "yes"}  # the processor's bookkeeping
    current = Credentials(references={**credentials.references, **own})

    calls = len(arm.calls)
    assert provisioner.prepare_rotation(request, model, current) == Credentials()
    assert len(arm.calls) == calls, "nothing to choose, no call"

    rotated = provisioner.rotate(request, model, current)
    new_primary, new_secondary = keys_of(service, request)
    assert new_primary == primary, "the key in use keeps working through the grace"
    assert new_secondary != secondary and rotated.secrets == {SECRET_SECONDARY: new_secondary}
    assert datetime.fromisoformat(rotated.references[REF_ROTATED_AT]).tzinfo is not None
    [regenerate] = arm.calls_to("POST", f"{_service_path(service_name_of(provisioner))}/subscriptions/"
                                        f"llmkr-{request.id}/regenerateSecondaryKey")
    assert regenerate.query == {"api-version": API_VERSION} and regenerate.body is None

    # Recorded: a repeated rotate (a retry after the email went out) never regenerates again.
    during = merged(current, rotated)
    again = provisioner.rotate(request, model, delivered(during))
    assert again == rotated and keys_of(service, request) == (new_primary, new_secondary)

    retired = provisioner.retire(request, delivered(during))
    assert not retired.secrets
    assert retired.references == {**own, REF_SUBSCRIPTION: f"llmkr-{request.id}", REF_PRODUCT: PRODUCT,
                                  REF_EXPIRES: credentials.references[REF_EXPIRES], REF_LIVE_KEY: "secondary"}
    final_primary, final_secondary = keys_of(service, request)
    assert final_primary not in (primary, new_primary) and final_secondary == new_secondary, \
        "after the grace only the delivered key works"
    assert provisioner.retire(request, delivered(during)) == retired, "a retry regenerates a key nobody knows"
    assert keys_of(service, request)[1] == new_secondary

    # The next rotation takes the other turn: a new primary, then the secondary is retired.
    second = provisioner.rotate(request, model, retired)
    assert keys_of(service, request)[1] == new_secondary, "the key in use keeps working"
    assert second.secrets == {SECRET_PRIMARY: keys_of(service, request)[0]}
    last = provisioner.retire(request, merged(retired, delivered(second)))
    assert last.references[REF_LIVE_KEY] == "primary" and REF_ROTATED_AT not in last.references
    assert keys_of(service, request)[0] == second.secrets[SECRET_PRIMARY]
    assert keys_of(service, request)[1] != new_secondary
    with pytest.raises(PermanentError, match="no rotation in progress"):
        provisioner.retire(request, last)


def service_name_of(provisioner: ApimProvisioner) -> str:
    return provisioner._service


def _service_path(name: str) -> str:
    return (f"/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"Microsoft.ApiManagement/service/{name}")


def test_rotate_run_twice_before_it_was_recorded_returns_the_last_key(arm, service, provisioner):
    model = catalog_model()
    request, credentials = issued(provisioner, model)
    primary, _ = keys_of(service, request)
    provisioner.rotate(request, model, delivered(credentials))  # ... the process dies before recording
    rerun = provisioner.rotate(request, model, delivered(credentials))  # the next tick
    assert rerun.secrets == {SECRET_SECONDARY: keys_of(service, request)[1]}
    assert keys_of(service, request)[0] == primary
    assert len([c for c in arm.calls if c.path.endswith("/regenerateSecondaryKey")]) == 2


def test_rotation_errors_are_mapped_and_never_show_a_key(arm, service, provisioner, sleeps):
    model = catalog_model()
    request, credentials = issued(provisioner, model)
    arm.faults.plan("POST subscription/regenerateSecondaryKey", status(429, retry_after=1))
    provisioner.rotate(request, model, delivered(credentials))
    assert sleeps == [1.0]
    arm.faults.plan("POST subscription/regenerateSecondaryKey", status(500), status(502), status(503))
    with pytest.raises(TransientError,
                       match=r"regenerate the secondary key .* ARM answered 503: .*\(3 tries\)") as busy:
        provisioner.rotate(request, model, delivered(credentials))
    arm.faults.plan("POST subscription/regeneratePrimaryKey", hang(10))
    with pytest.raises(TransientError, match="timed out after 0.5 s") as hung:
        provisioner.retire(request, Credentials(references={**credentials.references, REF_ROTATED_AT: "x"}))
    assert hung.value.in_flight
    arm.faults.plan("POST subscription/regenerateSecondaryKey", status(403, body={"error": {
        "code": "AuthorizationFailed", "message": "no regenerateSecondaryKey/action"}}))
    with pytest.raises(PermanentError, match="ARM answered 403: AuthorizationFailed") as forbidden:
        provisioner.rotate(request, model, delivered(credentials))
    service.subscriptions.clear()
    with pytest.raises(PermanentError, match="not found in service .* cannot be rotated") as missing:
        provisioner.rotate(request, model, delivered(credentials))
    for raised in (busy, hung, forbidden, missing):
        assert_clean(raised.value, arm)


def test_the_standin_regenerates_keys_with_the_real_wire_shape(arm, service, provisioner, service_name):
    request, credentials = issued(provisioner, catalog_model())
    base = f"{arm.url}{_service_path(service_name)}/subscriptions/llmkr-{request.id}"
    auth = {"Authorization": f"Bearer {arm.token}"}
    verify = ssl_context(arm.ca_pem_path)
    primary, secondary = keys_of(service, request)
    answer = httpx.post(f"{base}/regeneratePrimaryKey?api-version={API_VERSION}", headers=auth, verify=verify)
    assert answer.status_code == 204 and answer.content == b""
    assert keys_of(service, request)[0] != primary and keys_of(service, request)[1] == secondary
    assert keys_of(service, request)[0] in arm.issued_keys
    assert httpx.get(f"{base}/regenerateSecondaryKey?api-version={API_VERSION}", headers=auth,
                     verify=verify).status_code == 405
    missing = httpx.post(f"{base}-x/regenerateSecondaryKey?api-version={API_VERSION}", headers=auth, verify=verify)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ResourceNotFound"
    assert httpx.post(f"{base}/regenerateSecondaryKey?api-version={API_VERSION}",
                      verify=verify).status_code == 401
    bad_date = httpx.patch(f"{base}?api-version={API_VERSION}", json={"properties": {"expirationDate": "soon"}},
                           headers={**auth, "If-Match": "*"}, verify=verify)
    assert bad_date.status_code == 400 and bad_date.json()["error"]["details"][0]["target"] == "expirationDate"
    later = datetime.now(UTC) + timedelta(days=3)
    moved = httpx.patch(f"{base}?api-version={API_VERSION}",
                        json={"properties": {"expirationDate": later.isoformat()}},
                        headers={**auth, "If-Match": "*"}, verify=verify)
    assert moved.status_code == 200 and moved.json()["properties"]["expirationDate"] == later.isoformat()


# --- the stand-in: what ARM refuses, and the team-access resources ---------------------------------


def test_the_standin_refuses_what_arm_would(arm, service_name):
    base = (f"{arm.url}/subscriptions/{AZURE_SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"Microsoft.ApiManagement/service/{service_name}/subscriptions/s1?api-version={API_VERSION}")
    auth = {"Authorization": f"Bearer {arm.token}"}

    def put(body: object, headers: dict[str, str] = auth, url: str = base) -> httpx.Response:
        return httpx.put(url, json=body, headers=headers, verify=ssl_context(arm.ca_pem_path), timeout=5)

    assert put({"properties": {"scope": "/products/x", "displayName": "d"}}, headers={}).status_code == 401
    bad_scope = put({"properties": {"scope": "/product/x", "displayName": "d"}})
    assert bad_scope.status_code == 400 and bad_scope.json()["error"]["details"][0]["target"] == "scope"
    misspelt = put({"properties": {"scope": f"/products/{PRODUCT}", "displayName": "d", "expiryDate": "x"}})
    assert misspelt.status_code == 400 and "expiryDate" in misspelt.json()["error"]["details"][0]["message"]
    old_api = put({"properties": {"scope": f"/products/{PRODUCT}", "displayName": "d"}},
                  url=base.replace(API_VERSION, "2021-08-01"))
    assert old_api.status_code == 400 and old_api.json()["error"]["code"] == "InvalidApiVersionParameter"
    created = put({"properties": {"scope": f"/products/{PRODUCT}", "displayName": "d"}})
    assert created.status_code == 201 and created.json()["properties"]["state"] == "submitted"
    assert created.json()["properties"]["primaryKey"] is None  # keys only through listSecrets
    stale = put({"properties": {"scope": f"/products/{PRODUCT}", "displayName": "d"}},
                headers={**auth, "If-Match": '"stale"'})
    assert stale.status_code == 412


def test_products_policies_and_api_links_through_the_sdk(arm, service, service_name):
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.mgmt.apimanagement.models import PolicyContract, ProductContract, SubscriptionCreateParameters

    client = apim_client(AZURE_SUBSCRIPTION, arm.url, StaticToken(arm.token), arm.ca_pem_path, timeout_seconds=2)
    rg = RESOURCE_GROUP
    product = client.product.create_or_update(rg, service_name, "product-team-a", ProductContract(
        display_name="Team A", subscription_required=True, approval_required=False, state="published"))
    assert product.name == "product-team-a" and product.state == "published"

    # A policy with @(...) expressions is not valid XML: it goes as rawxml, and comes back as sent.
    policy = ('<policies><inbound><base /><llm-token-limit counter-key="@(context.Subscription.Id)" '
              'tokens-per-minute="1000" token-quota="100000" token-quota-period="Daily" '
              'estimate-prompt-tokens="true" /><set-variable name="x" value="@(1 < 2)" /></inbound>'
              '<backend><base /></backend><outbound><base /></outbound><on-error><base /></on-error></policies>')
    client.product_policy.create_or_update(rg, service_name, "product-team-a", "policy",
                                           PolicyContract(value=policy, format="rawxml"))
    read = client.product_policy.get(rg, service_name, "product-team-a", "policy")
    assert (read.format, read.value) == ("rawxml", policy)
    with pytest.raises(HttpResponseError) as not_xml:  # the same text as "xml" does not parse
        client.product_policy.create_or_update(rg, service_name, "product-team-a", "policy",
                                               PolicyContract(value=policy, format="xml"))
    assert not_xml.value.status_code == 400

    service.apis["azure-openai"] = {"displayName": "Azure OpenAI", "path": "openai", "protocols": ["https"]}
    client.product_api.create_or_update(rg, service_name, "product-team-a", "azure-openai")
    assert [a.name for a in client.product_api.list_by_product(rg, service_name, "product-team-a")] == ["azure-openai"]
    with pytest.raises(ResourceNotFoundError):
        client.product_api.create_or_update(rg, service_name, "product-team-a", "no-such-api")

    client.subscription.create_or_update(rg, service_name, "sub-team-a", SubscriptionCreateParameters(
        scope="/products/product-team-a", display_name="Team A", state="active"))
    with pytest.raises(HttpResponseError, match="existing subscriptions"):
        client.product.delete(rg, service_name, "product-team-a", if_match="*")
    client.product.delete(rg, service_name, "product-team-a", if_match="*", delete_subscriptions=True)
    assert "product-team-a" not in service.products and "sub-team-a" not in service.subscriptions
    assert "product-team-a" not in service.policies


def test_cold_start_imports_no_azure_sdk():
    """Building both provisioners (as the composition root does) loads no Azure SDK; only a call does."""
    probe = (
        "import sys\n"
        "from shared.adapters.apim import ApimProvisioner\n"
        "from shared.adapters.litellm import LiteLLMProvisioner\n"
        "ApimProvisioner('s', 'rg', 'svc', managed_identity_client_id='id')\n"
        "LiteLLMProvisioner('http://127.0.0.1:9', 'sk-master')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('azure.mgmt', 'azure.identity')))\n"
        "print(','.join(loaded))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
