"""A model provisioned by both backends: LiteLLM (its key API stand-in) and APIM (the real SDK
against the ARM stand-in), driven by the processor against the real kube-apiserver and SMTP
server; revocation through the admin API; no key in any log line."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import uuid

import pytest

from shared import context
from shared.adapters.apim import ApimProvisioner
from shared.adapters.litellm import LiteLLMProvisioner
from shared.domain.request import KeyRequest, State
from shared.services.processor import Processor, ProcessorOptions
from shared.store.codec import request_name
from tests.clock import Clock
from tests.conftest import request_secret
from tests.standins import leaks, logged_text
from tests.standins.arm_server import ArmStandin
from tests.standins.faults import latency
from tests.test_processor import write_config
from tests.test_provision_apim import AZURE_SUBSCRIPTION, RESOURCE_GROUP, StaticToken

PRODUCT = "gpt-4o-product"
CONFIG = {
    "models": [{"id": "both", "title": "Both", "auto_approve": True,
                "provisioning": {"backends": ["litellm", "apim"],
                                 "litellm": {"models": ["gpt-4o"], "duration": "30d"},
                                 "apim": {"product_id": PRODUCT}}},
               {"id": "apim-only", "title": "APIM only", "auto_approve": True,
                "provisioning": {"backends": ["apim"], "apim": {"product_id": PRODUCT}}},
               {"id": "missing-product", "title": "Broken", "auto_approve": True,
                "provisioning": {"backends": ["litellm", "apim"], "apim": {"product_id": "no-such-product"}}}],
    "notifications": {"admins": ["admin@example.com"]},
}
PASSWORD = "s3cret-admin-password"


@pytest.fixture(scope="module")
def arm():
    server = ArmStandin().start()
    yield server
    server.close()


@pytest.fixture
def setup(app_env, tmp_path, monkeypatch, litellm_standin, smtp_server, arm, caplog):
    caplog.set_level(logging.DEBUG)
    service = f"apim-{uuid.uuid4().hex[:8]}"
    arm.add_product(arm.add_service(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service), PRODUCT)
    monkeypatch.setenv("CONFIG_FILE", write_config(tmp_path, CONFIG))
    monkeypatch.setenv("APIM_SUBSCRIPTION_ID", AZURE_SUBSCRIPTION)
    monkeypatch.setenv("APIM_RESOURCE_GROUP", RESOURCE_GROUP)
    monkeypatch.setenv("APIM_SERVICE_NAME", service)
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("SMTP_USE_TLS", "none")
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    context.reset()
    context.load()
    smtp_server.mailbox.clear()
    provisioners = {
        "litellm": LiteLLMProvisioner(litellm_standin.url, litellm_standin.master_key),
        "apim": ApimProvisioner(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service, base_url=arm.url,
                                credential=StaticToken(arm.token), ca_bundle=arm.ca_pem_path),
    }
    processor = Processor(context.request_store(), context.config(), provisioners,
                          context._processor().notifier, context._processor().ask_webhook,
                          ProcessorOptions(backoff_base_seconds=0.05, max_attempts=2))
    processor.service_name = service
    yield processor, arm.services[(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service)]
    issued = set(arm.issued_keys) | {r.get("key", "") for r in litellm_standin.keys.values()}
    assert not leaks(issued | {PASSWORD, litellm_standin.master_key}, logged_text(caplog))


def submit(email: str, model: str = "both") -> KeyRequest:
    return context.request_store().submit(KeyRequest.new(email, model))[0]


def test_both_backends_issue_once_and_revoke_cleanly(setup, litellm_standin, smtp_server, http, core_api, app_env):
    processor, service = setup
    request = submit("both@example.com")
    processor.run_tick()
    active = context.request_store().get(request.id)
    assert active.state == State.ACTIVE
    assert active.secrets == {}, "no key is kept after delivery"
    subscription_id = active.references["apim-subscription-id"]
    assert subscription_id in service.subscriptions
    assert service.subscriptions[subscription_id].properties["state"] == "active"
    assert service.subscriptions[subscription_id].properties["scope"].endswith(f"/products/{PRODUCT}")

    secret = core_api.read_namespaced_secret(request_name(request.id), app_env)
    annotations = json.dumps(secret.metadata.annotations)
    body = smtp_server.mailbox.to("both@example.com")[0].get_body(("plain",)).get_content()
    litellm_key = re.search(r"sk-[A-Za-z0-9_-]{20,}", body).group(0)
    row = litellm_standin.key_by_alias(f"llm-key-request-{request.id}")
    assert row["token"] == hashlib.sha256(litellm_key.encode()).hexdigest(), "the emailed key is the live one"
    primary = service.subscriptions[subscription_id].properties["primaryKey"]
    assert primary in body
    for key in (litellm_key, primary):
        assert key not in annotations
    assert not secret.data, "the plain keys left the Secret once their email was recorded"
    assert subscription_id in annotations, "the backend ids are in annotations for operators"

    processor.run_tick()  # nothing is due: no second subscription, no second key
    assert len(service.subscriptions) == 1
    assert len([r for r in litellm_standin.keys.values() if r["key_alias"] == f"llm-key-request-{request.id}"]) == 1

    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    response = http.post(f"/api/admin/requests/{request.id}/revoke", headers={
        "Authorization": f"Basic {token}", "Content-Type": "application/json"},
        data=json.dumps({"reason": "left the team"}))
    assert response.status_code == 200
    processor.run_tick()
    revoked = context.request_store().get(request.id)
    assert revoked.state == State.REVOKED and revoked.secrets == {}
    assert subscription_id not in service.subscriptions
    assert litellm_standin.key_by_alias(f"llm-key-request-{request.id}") is None
    assert not request_secret(core_api, app_env, request.id).data


def test_a_permanent_apim_error_fails_and_leaves_no_orphaned_litellm_key(setup, litellm_standin, smtp_server):
    processor, service = setup
    request = submit("broken@example.com", "missing-product")
    processor.run_tick()
    failed = context.request_store().get(request.id)
    assert failed.state == State.FAILED and failed.settled == State.FAILED
    assert "no-such-product" in failed.reason
    assert litellm_standin.key_by_alias(f"llm-key-request-{request.id}") is None, "the LiteLLM key was revoked"
    assert failed.secrets == {} and service.subscriptions == {}
    assert len(smtp_server.mailbox.to("admin@example.com")) == 1
    assert smtp_server.mailbox.to("broken@example.com") == []


def test_a_subscription_created_after_its_caller_gave_up_is_deleted_by_the_second_look(setup, arm, smtp_server):
    """APIM creates the subscription 2 s late, the client gives up after 0.5 s, one attempt: the
    request fails, its revoke deletes nothing yet, and once no PUT can still be in flight it
    deletes the subscription that appeared meanwhile. No subscription outlives its revoke."""
    processor, service = setup
    clock = Clock()
    late = ApimProvisioner(AZURE_SUBSCRIPTION, RESOURCE_GROUP, processor.service_name, base_url=arm.url,
                           credential=StaticToken(arm.token), ca_bundle=arm.ca_pem_path, timeout_seconds=0.5)
    patient = Processor(context.request_store(), context.config(), {"apim": late}, processor.notifier,
                        processor.ask_webhook, ProcessorOptions(max_attempts=1, lease_seconds=60), clock=clock)
    arm.faults.plan("PUT subscription", latency(2.0))
    request = submit("late-apim@example.com", "apim-only")
    patient.run_tick()
    waiting = context.request_store().get(request.id)
    assert waiting.state == State.FAILED and waiting.references["apim-reached"] == "maybe"
    sid = waiting.references["apim-subscription-id"]
    arm.wait_for(lambda: sid in service.subscriptions, timeout=15)  # the late PUT lands
    clock.advance(61)  # past the in-flight window (the lease)
    patient.run_tick()
    done = context.request_store().get(request.id)
    assert done.state == State.FAILED and done.settled == State.FAILED
    assert service.subscriptions == {}, "the subscription that appeared late is deleted"
    assert len(smtp_server.mailbox.to("admin@example.com")) == 1
