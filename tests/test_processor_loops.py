"""Loops end: every failure path of a request settles, tells whom it should once, and then costs
nothing more. Real kube-apiserver, real SMTP server, the LiteLLM key API stand-in; the
processor's clock is the test's, so backoffs and in-flight windows pass without sleeping."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from datetime import timedelta

import pytest

from shared import context
from shared.domain.request import KeyRequest, State
from shared.services import review
from shared.store.codec import request_name
from tests.clock import Clock
from tests.conftest import free_port
from tests.standins import leaks, logged_text
from tests.standins.faults import latency, status
from tests.test_processor import CONFIG, write_config

ADMIN = "admin@example.com"


class Loops:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.clock = Clock()

    @property
    def processor(self):
        return self.clock.install(context.processor())

    @property
    def store(self):
        return context.request_store()

    def submit(self, email: str, model: str = "auto-model") -> KeyRequest:
        return self.store.submit(KeyRequest.new(email, model))[0]

    def get(self, request: KeyRequest) -> KeyRequest:
        return self.store.get(request.id)

    def until_settled(self, request: KeyRequest, ticks: int = 20) -> KeyRequest:
        """Tick, moving the clock to each planned retry, until the request is settled."""
        for _ in range(ticks):
            current = self.get(request)
            if current.settled == current.state:
                return current
            if current.next_attempt_at and current.next_attempt_at > self.clock():
                self.clock.offset += current.next_attempt_at - self.clock() + timedelta(milliseconds=1)
            self.processor.run_tick()
        raise AssertionError(f"request {request.id} did not settle: {self.get(request)}")

    def quiet(self, request: KeyRequest, ticks: int = 3) -> None:
        """A settled request is never written again, however many ticks pass."""
        version = self.get(request).resource_version
        for _ in range(ticks):
            self.clock.advance(3600)
            assert self.processor.run_tick().due == 0
        assert self.get(request).resource_version == version


@pytest.fixture
def loops(app_env, tmp_path, monkeypatch, litellm_standin, smtp_server, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("CONFIG_FILE", write_config(tmp_path, CONFIG))
    monkeypatch.setenv("LITELLM_BASE_URL", litellm_standin.url)
    monkeypatch.setenv("LITELLM_API_KEY", litellm_standin.master_key)
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(smtp_server.port))
    monkeypatch.setenv("SMTP_USE_TLS", "none")
    monkeypatch.setenv("PROCESSOR_MAX_ATTEMPTS", "3")
    context.reset()
    smtp_server.mailbox.clear()
    litellm_standin.reset_calls()
    yield Loops(app_env)
    litellm_standin.faults.clear()
    delivered = " ".join(str(message) for _, message in smtp_server.mailbox.messages)
    keys = set(re.findall(r"sk-[A-Za-z0-9_-]{20,}", delivered))
    assert not leaks(keys | {litellm_standin.master_key}, logged_text(caplog))


def active(loops: Loops, email: str) -> KeyRequest:
    request = loops.submit(email)
    loops.processor.run_tick()
    assert loops.get(request).state == State.ACTIVE
    return request


def test_with_no_litellm_a_request_fails_once_keeps_its_reason_and_deletes_nothing(loops, monkeypatch, caplog,
                                                                                  smtp_server):
    """The README's first request with no LiteLLM running: failed after the attempts, no cleanup
    call for a key that was never created, and then nothing more, tick after tick."""
    monkeypatch.setenv("LITELLM_BASE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    context.reset()
    request = loops.submit("newcomer@example.com")
    failed = loops.until_settled(request)
    assert failed.state == State.FAILED
    assert "gave up after 3 attempts" in failed.reason and "ConnectError" in failed.reason
    assert "delete" not in failed.reason and "delete" not in (failed.last_error or "")
    assert not any(k.startswith("litellm-") for k in failed.references) and failed.secrets == {}
    assert "litellm was never reached; nothing to revoke" in caplog.text
    assert len(smtp_server.mailbox.to(ADMIN)) == 1
    loops.quiet(request)


def test_a_revoke_refused_for_good_settles_failed_and_tells_the_admins_once(loops, litellm_standin, smtp_server):
    request = active(loops, "leaky@example.com")
    review.act(loops.store, request.id, "revoke", "basic:admin", "the key leaked")
    litellm_standin.faults.plan("POST /key/delete", *[status(401, body={"error": "Authentication Error"})] * 10)
    failed = loops.until_settled(request)
    assert failed.state == State.FAILED and failed.reason == "the key leaked"
    assert "revoking litellm access failed" in failed.last_error and "401" in failed.last_error
    assert failed.references.get("litellm-revoke-failed"), "what is left is recorded for the admins"
    assert len(litellm_standin.calls_to("POST", "/key/delete")) == 1, "a refusal is not retried"
    notice = smtp_server.mailbox.to(ADMIN)
    assert len(notice) == 1 and "401" in notice[0].get_body(("plain",)).get_content()
    loops.quiet(request)
    assert len(litellm_standin.calls_to("POST", "/key/delete")) == 1


def test_a_revoke_that_keeps_failing_gives_up_after_the_attempts(loops, litellm_standin, smtp_server):
    request = active(loops, "flaky-revoke@example.com")
    review.act(loops.store, request.id, "revoke", "basic:admin", None)
    litellm_standin.faults.plan("POST /key/delete", *[status(503)] * 30)
    failed = loops.until_settled(request)
    assert failed.state == State.FAILED and "gave up after 3 attempts" in failed.last_error
    assert len(smtp_server.mailbox.to(ADMIN)) == 1
    calls = len(litellm_standin.calls_to("POST", "/key/delete"))
    loops.quiet(request)
    assert len(litellm_standin.calls_to("POST", "/key/delete")) == calls


def kubectl(cluster, namespace: str, *args: str) -> None:
    subprocess.run([shutil.which("kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n", namespace, *args],
                   check=True, capture_output=True, timeout=60)


def test_a_denial_whose_revoke_fails_is_still_emailed(loops, litellm_standin, smtp_server, kube_cluster):
    request = active(loops, "denied-later@example.com")
    litellm_standin.faults.plan("POST /key/delete", *[status(401)] * 10)
    kubectl(kube_cluster, loops.namespace, "label", "secret", request_name(request.id), "request-state=denied",
            "--overwrite")
    failed = loops.until_settled(request)
    assert failed.state == State.FAILED and failed.decided_by == "kubectl"
    mails = smtp_server.mailbox.to("denied-later@example.com")
    assert len(mails) == 2 and "denied" in mails[1]["Subject"].lower()
    assert "decided by hand with kubectl" in mails[1].get_body(("plain",)).get_content()
    assert len(smtp_server.mailbox.to(ADMIN)) == 1
    loops.quiet(request)


def test_kubectl_decisions_are_recorded_with_who_when_and_why(loops, smtp_server, kube_cluster, caplog):
    denied = loops.submit("hand-denied@example.com", "reviewed-model")
    approved = loops.submit("hand-approved@example.com", "reviewed-model")
    loops.processor.run_tick()
    assert loops.get(denied).state == State.IN_REVIEW
    name = request_name(denied.id)
    kubectl(kube_cluster, loops.namespace, "annotate", "secret", name,
            "llm-key-requestor/reason=contractors use the shared pool", "--overwrite")
    kubectl(kube_cluster, loops.namespace, "label", "secret", name, "request-state=denied", "--overwrite")
    kubectl(kube_cluster, loops.namespace, "label", "secret", request_name(approved.id), "request-state=approved",
            "--overwrite")
    with caplog.at_level(logging.INFO, logger="shared.audit"):
        loops.processor.run_tick()
    by_hand = loops.get(denied)
    assert (by_hand.state, by_hand.decision, by_hand.decided_by) == (State.DENIED, "deny", "kubectl")
    assert by_hand.reason == "contractors use the shared pool" and by_hand.decided_at is not None
    mail = smtp_server.mailbox.to("hand-denied@example.com")
    assert len(mail) == 1 and "contractors use the shared pool" in mail[0].get_body(("plain",)).get_content()
    assert "sent to review" not in mail[0].get_body(("plain",)).get_content()
    yes = loops.get(approved)
    assert (yes.state, yes.decided_by, yes.reason) == (State.ACTIVE, "kubectl", "decided by hand with kubectl")
    lines = [r.getMessage() for r in caplog.records if r.name == "shared.audit"]
    assert any(line.startswith("audit: kubectl denied request " + denied.id) for line in lines)
    assert any(line.startswith("audit: kubectl approved request " + approved.id) for line in lines)


def test_without_admins_the_requester_is_not_told_the_platform_team_knows(loops, monkeypatch, tmp_path, http):
    config = {**CONFIG, "notifications": {**CONFIG["notifications"], "admins": []}}
    monkeypatch.setenv("CONFIG_FILE", write_config(tmp_path, config))
    monkeypatch.setenv("LITELLM_BASE_URL", f"http://127.0.0.1:{free_port()}")
    context.reset()
    request = loops.submit("alone@example.com")
    assert loops.until_settled(request).state == State.FAILED
    answer = http.get(f"/api/requests/{request.id}").get_json()
    assert answer["state"] == "failed" and "has been told" not in answer["message"]
    assert "request id" in answer["message"]


def test_a_key_created_after_its_caller_gave_up_is_deleted_by_the_second_look(loops, monkeypatch, litellm_standin,
                                                                              smtp_server):
    """Every /key/generate is served 2 s late, the client gives up after 0.5 s, one attempt: all
    five requests fail while LiteLLM is still creating their keys. The revoke finds nothing, looks
    again once no call can still be in flight, and deletes what appeared: no live key is left."""
    monkeypatch.setenv("LITELLM_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("PROCESSOR_MAX_ATTEMPTS", "1")
    context.reset()
    litellm_standin.faults.plan("POST /key/generate", *[latency(2.0)] * 5)
    requests = [loops.submit(f"late-{n}@example.com") for n in range(5)]
    loops.processor.run_tick()
    for request in requests:
        waiting = loops.get(request)
        assert waiting.state == State.FAILED and waiting.references.get("litellm-reached") == "maybe"
        assert waiting.next_attempt_at is not None, "waits for the second look"
    aliases = {f"llm-key-request-{r.id}" for r in requests}
    litellm_standin.wait_for(lambda: all(litellm_standin.key_by_alias(a) for a in aliases), timeout=15)
    for request in requests:
        loops.until_settled(request)
    assert [a for a in aliases if litellm_standin.key_by_alias(a)] == [], "no key outlives its revoke"
    assert len(smtp_server.mailbox.to(ADMIN)) == 5
