"""The approval processor end to end: real kube-apiserver, real SMTP server, the LiteLLM key API
stand-in (validating with LiteLLM's own models), and the real adapters in between."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from shared import context
from shared.domain.request import KeyRequest, State
from shared.store.codec import request_name
from tests.clock import Clock
from tests.standins import leaks, logged_text
from tests.standins.faults import status

CONFIG = {
    "models": [
        {"id": "auto-model", "title": "Auto", "auto_approve": True,
         "provisioning": {"backends": ["litellm"],
                          "litellm": {"models": ["gpt-4o-mini"], "duration": "30d", "max_budget": 10,
                                      "budget_duration": "30d", "tpm_limit": 1000, "rpm_limit": 10}}},
        {"id": "ruled-model", "title": "Ruled"},
        {"id": "reviewed-model", "title": "Reviewed", "auto_approve": False},
    ],
    "approval": {"default": "approve", "rules": [
        {"kind": "match", "decision": "deny", "domains": ["blocked.example"],
         "reason": "contractors use the shared pool"},
        {"kind": "match", "decision": "review", "emails": ["vip-*@example.com"]},
    ]},
    "notifications": {"product_name": "Key Desk", "reviewers": ["reviewer@example.com"],
                      "admins": ["admin@example.com"]},
}


def write_config(tmp_path, config: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def processing(app_env, tmp_path, monkeypatch, litellm_standin, smtp_server, kube_api_client, caplog):
    """The app's settings pointed at the stand-ins; returns a helper to run ticks and submit.
    Afterwards, no key delivered by email appears in any captured log line."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CONFIG_FILE", write_config(tmp_path, CONFIG))
    monkeypatch.setenv("LITELLM_BASE_URL", litellm_standin.url)
    monkeypatch.setenv("LITELLM_API_KEY", litellm_standin.master_key)
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("SMTP_USE_TLS", "none")
    monkeypatch.setenv("PROCESSOR_BACKOFF_SECONDS", "0.05")
    monkeypatch.setenv("PROCESSOR_MAX_ATTEMPTS", "3")
    context.reset()
    smtp_server.mailbox.clear()
    yield Harness(app_env)
    delivered = " ".join(str(message) for _, message in smtp_server.mailbox.messages)
    keys = set(re.findall(r"sk-[A-Za-z0-9_-]{20,}", delivered))
    assert not leaks(keys | {litellm_standin.master_key}, logged_text(caplog))


class Harness:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.clock = Clock()

    @property
    def store(self):
        return context.request_store()

    def submit(self, email: str, model: str) -> KeyRequest:
        return self.store.submit(KeyRequest.new(email, model))[0]

    def tick(self, times: int = 1, pause: float = 0.0):
        """Run `times` ticks, moving the processor's clock on by `pause` seconds after each."""
        report = None
        for _ in range(times):
            report = self.clock.install(context.processor()).run_tick()
            self.clock.advance(pause)
        return report

    def get(self, request: KeyRequest) -> KeyRequest:
        return self.store.get(request.id)


def test_auto_approved_request_gets_one_key_and_one_email(processing, litellm_standin, smtp_server, core_api):
    request = processing.submit("ann@example.com", "auto-model")
    report = processing.tick()
    assert report.processed == 1

    done = processing.get(request)
    assert done.state == State.ACTIVE and done.settled == State.ACTIVE
    assert done.decided_by == "auto-approve" and done.decision == "approve"
    assert done.secrets == {}, "no key is kept after delivery"
    assert done.expires_at is not None and done.due_at is not None, "its life is scheduled"

    row = litellm_standin.key_by_alias(f"llm-key-request-{request.id}")
    assert row is not None and row["models"] == ["gpt-4o-mini"]
    assert row["tpm_limit"] == 1000 and row["rpm_limit"] == 10 and row["max_budget"] == 10
    assert row["metadata"]["request_id"] == request.id
    assert len(litellm_standin.calls_to("POST", "/key/generate")) >= 1

    mail = smtp_server.mailbox.to("ann@example.com")
    assert len(mail) == 1
    key = re.search(r"sk-[A-Za-z0-9_-]{20,}", mail[0].get_body(("plain",)).get_content()).group(0)
    assert row["token"] == hashlib.sha256(key.encode()).hexdigest(), "the emailed key is the live one"

    secret = core_api.read_namespaced_secret(request_name(request.id), processing.namespace)
    assert secret.metadata.labels["request-state"] == "active"
    assert key not in json.dumps(secret.metadata.annotations)
    assert not secret.data, "the plain key left the Secret once its email was recorded"

    assert processing.tick().due == 0, "a settled request is not swept again"


def test_rules_deny_and_review(processing, litellm_standin, smtp_server):
    denied = processing.submit("x@blocked.example", "ruled-model")
    vip = processing.submit("vip-ceo@example.com", "ruled-model")
    reviewed = processing.submit("dev@example.com", "reviewed-model")
    approved = processing.submit("dev@example.com", "ruled-model")
    processing.tick()

    assert processing.get(denied).state == State.DENIED
    assert processing.get(denied).reason == "contractors use the shared pool"
    assert processing.get(denied).decided_by == "rule 1"
    assert processing.get(vip).state == State.IN_REVIEW and processing.get(vip).decided_by == "rule 2"
    assert processing.get(reviewed).state == State.IN_REVIEW
    assert processing.get(approved).state == State.ACTIVE and processing.get(approved).decided_by == "default"

    assert litellm_standin.key_by_alias(f"llm-key-request-{denied.id}") is None
    denial = smtp_server.mailbox.to("x@blocked.example")
    assert len(denial) == 1 and "contractors use the shared pool" in denial[0].get_body(("plain",)).get_content()
    assert len(smtp_server.mailbox.to("reviewer@example.com")) == 2
    assert processing.tick().due == 0, "in-review requests wait for a human once reviewers are told"


def test_an_undeliverable_denial_is_recorded_and_reported_to_the_admins(processing, smtp_server):
    request = processing.submit("bounce@blocked.example", "ruled-model")
    processing.tick()
    denied = processing.get(request)
    assert denied.state == State.DENIED and denied.settled == State.DENIED
    assert denied.last_error.startswith("denied email:") and "550" in denied.last_error
    notice = smtp_server.mailbox.to("admin@example.com")
    assert len(notice) == 1 and "could not be delivered" in notice[0]["Subject"]
    assert processing.tick().due == 0


def kubectl(cluster, namespace: str, *args: str) -> None:
    subprocess.run([shutil.which("kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n", namespace, *args],
                   check=True, capture_output=True, timeout=60)


def test_kubectl_label_approves_and_denies(processing, litellm_standin, smtp_server, kube_cluster):
    request = processing.submit("kim@example.com", "reviewed-model")
    processing.tick()
    assert processing.get(request).state == State.IN_REVIEW

    kubectl(kube_cluster, processing.namespace, "label", "secret", request_name(request.id),
            "request-state=approved", "--overwrite")
    processing.tick()
    active = processing.get(request)
    assert active.state == State.ACTIVE
    alias = f"llm-key-request-{request.id}"
    assert litellm_standin.key_by_alias(alias) is not None
    assert len(smtp_server.mailbox.to("kim@example.com")) == 1

    # Denied after the key was issued: the key is revoked at LiteLLM and removed from the Secret.
    kubectl(kube_cluster, processing.namespace, "label", "secret", request_name(request.id),
            "request-state=denied", "--overwrite")
    processing.tick()
    denied = processing.get(request)
    assert denied.state == State.DENIED and denied.settled == State.DENIED
    assert denied.secrets == {} and litellm_standin.key_by_alias(alias) is None
    assert len(smtp_server.mailbox.to("kim@example.com")) == 2


def test_transient_failures_retry_then_approve_never_deny(processing, litellm_standin):
    request = processing.submit("flaky@example.com", "auto-model")
    litellm_standin.faults.plan("POST /key/generate", status(500), status(500), status(500))
    processing.tick()
    waiting = processing.get(request)
    assert waiting.state == State.APPROVED
    assert waiting.attempts == 1 and "500" in waiting.last_error and waiting.next_attempt_at is not None

    for _ in range(20):
        processing.tick(pause=1.0)
        if processing.get(request).state == State.ACTIVE:
            break
    done = processing.get(request)
    assert done.state == State.ACTIVE and done.attempts == 0 and done.last_error is None
    rows = [r for r in litellm_standin.keys.values() if r["key_alias"] == f"llm-key-request-{request.id}"]
    assert len(rows) == 1


def test_gives_up_after_the_configured_attempts_as_failed(processing, litellm_standin, smtp_server):
    request = processing.submit("doomed@example.com", "auto-model")
    litellm_standin.faults.plan("POST /key/generate", *[status(503)] * 40)
    for _ in range(20):
        processing.tick(pause=1.0)
        if processing.get(request).state == State.FAILED and processing.get(request).settled:
            break
    failed = processing.get(request)
    litellm_standin.faults.clear()
    assert failed.state == State.FAILED and failed.decision == "approve"
    assert "gave up after 3 attempts" in failed.reason and "503" in failed.reason
    assert failed.secrets == {}, "the prepared key is revoked and dropped"
    assert len(smtp_server.mailbox.to("admin@example.com")) == 1
    assert smtp_server.mailbox.to("doomed@example.com") == []


class Webhook:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.answers: list = []
        self.seen: list = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(webhook.secret.encode(),
                                                self.headers["X-Request-Timestamp"].encode() + b"." + body,
                                                hashlib.sha256).hexdigest()
                webhook.seen.append((json.loads(body), hmac.compare_digest(expected, self.headers["X-Signature-256"])))
                code, answer = webhook.answers.pop(0) if webhook.answers else (200, {"decision": "approve"})
                payload = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/decide"


@pytest.fixture
def webhook(processing, tmp_path, monkeypatch):
    hook = Webhook("whsec-" + "s" * 20)
    config = {**CONFIG, "approval": {"default": "deny", "rules": [
        {"kind": "webhook", "url": hook.url, "secret_setting": "TEST_WEBHOOK_SECRET", "timeout_seconds": 1}]}}
    monkeypatch.setenv("CONFIG_FILE", write_config(tmp_path, config))
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", hook.secret)
    context.reset()
    yield hook
    hook.server.shutdown()


def test_webhook_decides_with_a_signed_call(webhook, processing):
    webhook.answers = [(200, {"decision": "deny", "reason": "budget exhausted"})]
    request = processing.submit("wh@example.com", "ruled-model")
    processing.tick()
    assert processing.get(request).state == State.DENIED
    assert processing.get(request).reason == "budget exhausted"
    body, signed = webhook.seen[0]
    assert body == {"request_id": request.id, "email": "wh@example.com", "model": "ruled-model"} and signed


def test_a_failing_webhook_never_approves_and_ends_in_review(webhook, processing):
    webhook.answers = [(500, {}), (200, {"decision": "maybe"}), (502, {})]
    request = processing.submit("wh2@example.com", "ruled-model")
    states = []
    for _ in range(10):
        processing.tick(pause=1.0)
        states.append(processing.get(request).state)
        if states[-1] != State.PENDING:
            break
    assert states[-1] == State.IN_REVIEW and State.APPROVED not in states
    assert "could not decide" in processing.get(request).reason


def test_two_processors_at_once_provision_each_request_exactly_once(processing, litellm_standin, smtp_server):
    requests = [processing.submit(f"pair{i}@example.com", "auto-model") for i in range(24)]
    first, second = context.processor(), context._processor.__wrapped__()
    assert first.options.holder != second.options.holder
    threads = [threading.Thread(target=p.run_tick) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    processing.tick()  # anything skipped by both (changed under them) is finished now

    for request in requests:
        assert processing.get(request).state == State.ACTIVE
        alias = f"llm-key-request-{request.id}"
        generated = [c for c in litellm_standin.calls_to("POST", "/key/generate")
                     if c.body["key_alias"] == alias]
        assert len(generated) == 1, alias
        assert len(smtp_server.mailbox.to(request.email)) == 1


def test_the_timer_function_runs_a_tick(processing, functions, litellm_standin):
    from azure.functions.timer import TimerRequest

    request = processing.submit("timer@example.com", "auto-model")
    functions["approval_timer"].user_function(TimerRequest(past_due=False))
    assert processing.get(request).state == State.ACTIVE


def test_the_timer_bindings(functions):
    for name, schedule in (("approval_timer", "%APPROVAL_SCHEDULE%"), ("team_timer", "%TEAM_SCHEDULE%")):
        assert functions[name].trigger == {"direction": "IN", "type": "timerTrigger", "name": "timer",
                                           "schedule": schedule, "runOnStartup": False, "useMonitor": True}



