"""A key's whole life through the timer: reminders, expiry, renewal, rotation without downtime,
self-service revoke, and no plain key kept once delivered. Real kube-apiserver, real SMTP server,
the LiteLLM key API stand-in and the ARM stand-in with the real SDKs; time from the processor's
injected clock (tests/clock.py), never waited out."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from datetime import datetime, timedelta

import pytest

from shared import context
from shared.adapters.apim import ApimProvisioner
from shared.domain.request import KeyRequest, State
from shared.services import lifecycle
from shared.services.processor import Processor, ProcessorOptions
from shared.store.codec import request_name
from tests.clock import Clock
from tests.standins import leaks, logged_text
from tests.standins.arm_server import ArmStandin
from tests.test_processor import write_config
from tests.test_provision_apim import AZURE_SUBSCRIPTION, RESOURCE_GROUP, StaticToken

ADMIN = "admin@example.com"
PRODUCT = "life-product"
CONFIG = {
    "models": [
        {"id": "auto-model", "title": "Auto", "auto_approve": True,
         "provisioning": {"backends": ["litellm"], "litellm": {"models": ["gpt-4o-mini"], "duration": "30d"}}},
        {"id": "reviewed-model", "title": "Reviewed", "auto_approve": False,
         "provisioning": {"backends": ["litellm"], "litellm": {"models": ["gpt-4o"], "duration": "30d"}}},
        {"id": "apim-model", "title": "APIM", "auto_approve": True,
         "provisioning": {"backends": ["apim"], "apim": {"product_id": PRODUCT, "expires_after_days": 30}}},
    ],
    "notifications": {"product_name": "Key Desk", "admins": [ADMIN], "expiry_reminders_days": [14, 3]},
    "provisioning": {"rotation_grace": "24h"},
}
KEY = re.compile(r"sk-[A-Za-z0-9_-]{20,}")


class Life:
    def __init__(self, namespace: str, processor: Processor, mailbox) -> None:
        self.namespace = namespace
        self.clock = Clock()
        self.processor = self.clock.install(processor)
        processor.key_life.clock = self.clock
        self.mailbox = mailbox

    @property
    def store(self):
        return context.request_store()

    def submit(self, email: str, model: str = "auto-model") -> KeyRequest:
        return self.store.submit(KeyRequest.new(email, model))[0]

    def get(self, request: KeyRequest) -> KeyRequest:
        return self.store.get(request.id)

    def tick(self):
        return self.processor.run_tick()

    def at(self, moment) -> None:
        """Move the processor's clock to `moment` (never back)."""
        ahead = moment - self.clock()
        if ahead > timedelta():
            self.clock.offset += ahead

    def mails(self, address: str, subject: str = "") -> list:
        return [m for m in self.mailbox.to(address) if subject.lower() in m["Subject"].lower()]


def body(message) -> str:
    return message.get_body(("plain",)).get_content()


@pytest.fixture(scope="module")
def arm():
    server = ArmStandin().start()
    yield server
    server.close()


@pytest.fixture
def life(app_env, tmp_path, monkeypatch, litellm_standin, smtp_server, arm, caplog):
    caplog.set_level(logging.INFO)
    service = f"apim-{uuid.uuid4().hex[:8]}"
    arm.add_product(arm.add_service(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service), PRODUCT)
    monkeypatch.setenv("CONFIG_FILE", write_config(tmp_path, CONFIG))
    monkeypatch.setenv("LITELLM_BASE_URL", litellm_standin.url)
    monkeypatch.setenv("LITELLM_API_KEY", litellm_standin.master_key)
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("SMTP_USE_TLS", "none")
    context.reset()
    smtp_server.mailbox.clear()
    litellm_standin.reset_calls()
    built = context.processor()
    provisioners = {**built.provisioners,
                    "apim": ApimProvisioner(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service, base_url=arm.url,
                                            credential=StaticToken(arm.token), ca_bundle=arm.ca_pem_path)}
    processor = Processor(context.request_store(), context.config(), provisioners, built.notifier,
                          built.ask_webhook, ProcessorOptions(backoff_base_seconds=0.05, max_attempts=3),
                          links=context.link_maker())
    harness = Life(app_env, processor, smtp_server.mailbox)
    litellm_standin.clock = harness.clock  # LiteLLM counts a key's duration on the same clock
    harness.service = arm.services[(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service)]
    yield harness
    litellm_standin.reset()
    delivered = " ".join(str(message) for _, message in smtp_server.mailbox.messages)
    keys = set(KEY.findall(delivered)) | set(arm.issued_keys)
    assert not leaks(keys | {litellm_standin.master_key}, logged_text(caplog))


def live_tokens(litellm_standin, request: KeyRequest) -> set[str]:
    return {token for token, row in litellm_standin.keys.items()
            if (row.get("metadata") or {}).get("request_id") == request.id}


def issued(life: Life, email: str, model: str = "auto-model") -> KeyRequest:
    request = life.submit(email, model)
    life.tick()
    active = life.get(request)
    assert active.state == State.ACTIVE and active.secrets == {}, "delivered: no plain key kept"
    assert active.expires_at is not None and active.due_at is not None
    return active


def test_reminders_then_expiry_revokes_releases_the_claim_and_says_how_to_ask_again(life, litellm_standin, core_api):
    active = issued(life, "ann@example.com")
    assert active.due_at == active.expires_at - timedelta(days=14)
    labels = core_api.read_namespaced_secret(request_name(active.id), life.namespace).metadata.labels
    assert labels["request-due-day"] == active.due_at.strftime("%Y-%m-%d"), "the sweep finds it by day"
    assert life.tick().due == 0, "nothing is due for 16 days: no write, no backend call"

    life.at(active.expires_at - timedelta(days=13))
    life.tick()
    reminder = life.mails("ann@example.com", "expires")
    assert len(reminder) == 1 and "/api/links/" in body(reminder[0]), "a renewal link"
    life.tick()
    assert len(life.mails("ann@example.com", "expires")) == 1, "each reminder is sent once"

    life.at(active.expires_at - timedelta(days=2))
    life.tick()
    assert len(life.mails("ann@example.com", "expires")) == 2

    life.at(active.expires_at + timedelta(minutes=1))
    life.tick()
    expired = life.get(active)
    assert expired.state == State.EXPIRED and expired.settled == State.EXPIRED
    assert live_tokens(litellm_standin, active) == set(), "zero live keys after expiry"
    notice = life.mails("ann@example.com", "expired")
    assert len(notice) == 1 and "/api/links/" in body(notice[0]), "one click to ask again"
    again, created = life.store.submit(KeyRequest.new("ann@example.com", "auto-model"))
    assert created and again.id != active.id, "the claim is released"


def test_renewal_extends_the_same_key_and_arms_the_reminders_again(life, litellm_standin):
    active = issued(life, "bo@example.com")
    (token,) = live_tokens(litellm_standin, active)
    life.at(active.expires_at - timedelta(days=10))
    life.tick()  # the 14-day reminder
    lifecycle.ask(life.store, active.id, "renew", "link:requester", life.clock())
    life.tick()
    renewed = life.get(active)
    assert renewed.state == State.ACTIVE and renewed.renew_requested_at is None
    assert live_tokens(litellm_standin, active) == {token}, "no new key, no downtime"
    update = litellm_standin.calls_to("POST", "/key/update")[-1].body
    assert update["key"] == token and update["duration"] == "30d", "the model's whole lifetime again"
    assert renewed.expires_at == datetime.fromisoformat(litellm_standin.keys[token]["expires"])
    assert renewed.expires_at > active.expires_at + timedelta(days=19), "30 days from the renewal"
    assert len(life.mails("bo@example.com", "renew")) == 1
    assert not any(k.startswith("reminded-") for k in renewed.steps), "reminders armed for the new expiry"


def test_rotation_keeps_one_key_working_at_every_moment_and_exactly_one_after_the_grace(life, litellm_standin):
    active = issued(life, "cy@example.com")
    (old,) = live_tokens(litellm_standin, active)
    lifecycle.ask(life.store, active.id, "rotate", "link:requester", life.clock())
    life.tick()
    rotating = life.get(active)
    mail = life.mails("cy@example.com", "new key")
    assert len(mail) == 1
    new_key = KEY.search(body(mail[0])).group(0)
    new = hashlib.sha256(new_key.encode()).hexdigest()
    assert live_tokens(litellm_standin, active) == {old, new}, "both work during the grace"
    assert rotating.secrets == {}, "the new key left the Secret once its email was recorded"
    assert litellm_standin.keys[new]["key_alias"].endswith("-g2")

    life.at(life.clock() + timedelta(hours=23))
    life.tick()
    assert live_tokens(litellm_standin, active) == {old, new}
    life.at(life.clock() + timedelta(hours=2))
    life.tick()
    done = life.get(active)
    assert live_tokens(litellm_standin, active) == {new}, "after the grace exactly one"
    assert done.rotate_requested_at is None and done.state == State.ACTIVE
    assert done.references["litellm-key-token"] == new


def test_apim_rotation_regenerates_the_secondary_then_after_the_grace_the_primary(life):
    active = issued(life, "di@example.com", "apim-model")
    sid = active.references["apim-subscription-id"]
    first = dict(life.service.subscriptions[sid].properties)
    lifecycle.ask(life.store, active.id, "rotate", "basic:admin", life.clock())
    life.tick()
    during = life.service.subscriptions[sid].properties
    assert during["primaryKey"] == first["primaryKey"], "the delivered key still works"
    assert during["secondaryKey"] != first["secondaryKey"]
    mail = life.mails("di@example.com", "new key")
    assert len(mail) == 1 and during["secondaryKey"] in body(mail[0])
    life.at(life.clock() + timedelta(hours=25))
    life.tick()
    after = life.service.subscriptions[sid].properties
    assert after["primaryKey"] != first["primaryKey"], "the previous key stops working after the grace"
    assert after["secondaryKey"] == during["secondaryKey"], "the emailed key is the one that works"


def test_a_requester_who_revokes_their_own_key_tells_the_admins(life, litellm_standin):
    active = issued(life, "ed@example.com")
    lifecycle.ask(life.store, active.id, "revoke", "link:requester", life.clock())
    life.tick()
    revoked = life.get(active)
    assert revoked.state == State.REVOKED and live_tokens(litellm_standin, active) == set()
    notice = life.mails(ADMIN)
    assert len(notice) == 1 and active.id in body(notice[0])


def test_a_renewal_the_rules_send_to_review_keeps_the_key_working_until_an_admin_decides(life, litellm_standin):
    from shared.services import review

    request = life.submit("fi@example.com", "reviewed-model")
    life.tick()
    review.act(life.store, request.id, "approve", "basic:admin", "ok")
    life.tick()
    active = life.get(request)
    assert active.state == State.ACTIVE
    (token,) = live_tokens(litellm_standin, active)
    life.at(active.expires_at - timedelta(days=5))
    lifecycle.ask(life.store, active.id, "renew", "link:requester", life.clock())
    life.tick()
    waiting = life.get(active)
    assert waiting.state == State.IN_REVIEW and waiting.renew_requested_at is not None
    assert live_tokens(litellm_standin, active) == {token}, "the key works while a human decides"
    review.act(life.store, active.id, "approve", "basic:admin", "renewal ok")
    life.tick()
    renewed = life.get(active)
    assert renewed.state == State.ACTIVE and renewed.renew_requested_at is None
    assert live_tokens(litellm_standin, active) == {token}, "the same key, extended"
    assert renewed.expires_at > active.expires_at + timedelta(days=20)
    assert len(life.mails("fi@example.com", "is ready")) == 1, "no second key email"
    assert len(life.mails("fi@example.com", "renewed")) == 1
