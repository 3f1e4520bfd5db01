"""AcsNotifier through the real `azure-communication-email` SDK to the ACS stand-in (HMAC checked):
delivery, idempotent re-sends, and each failure mapped to a transient or permanent error. Also
which backend the settings choose, and that none of this loads an Azure SDK at import time."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import trustme

from shared.adapters.email_acs import AcsNotifier, operation_id
from shared.adapters.email_factory import notifier_from_settings
from shared.adapters.email_outbox import OutboxNotifier
from shared.adapters.email_smtp import SmtpNotifier
from shared.services.ports import Email, PermanentError, TransientError
from shared.settings import Settings
from tests.conftest import ROOT
from tests.standins import faults
from tests.standins.acs_server import POLL, SEND, AcsStandIn

SENDER = "DoNotReply@mail.example.com"
KEY = "sk-acs-test-key-000111222"


def sample(to: tuple[str, ...] = ("alice@example.com",), key: str = "req-1-approved") -> Email:
    return Email(to=to, subject="Your key", text=f"key: {KEY}", html=f"<p>key: <code>{KEY}</code></p>",
                 idempotency_key=key)


@pytest.fixture
def acs():
    with AcsStandIn() as server:
        yield server


def notifier(acs: AcsStandIn, **overrides) -> AcsNotifier:
    options = dict(endpoint=acs.endpoint, access_key=acs.access_key, polling_interval=0, timeout=5.0)
    options.update(overrides)
    return AcsNotifier(SENDER, **options)


def test_delivers_through_the_sdk_with_a_signed_request(acs, caplog):
    caplog.set_level(logging.DEBUG)
    notifier(acs).send(sample())

    [sent] = acs.sent
    assert sent.message["senderAddress"] == SENDER
    assert sent.message["recipients"]["to"] == [{"address": "alice@example.com"}]
    assert sent.message["content"] == {"subject": "Your key", "plainText": f"key: {KEY}",
                                       "html": f"<p>key: <code>{KEY}</code></p>"}
    assert sent.operation_id == operation_id("req-1-approved")
    assert [c[0] for c in acs.calls] == ["POST", "GET"]  # sent, then polled to Succeeded
    assert KEY not in caplog.text  # the SDK logs headers, never the body


def test_connection_string_over_https_verifies_the_certificate(tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with AcsStandIn(tls_ca=ca) as server:
        untrusted = AcsNotifier(SENDER, connection_string=server.connection_string, polling_interval=0)
        with pytest.raises(TransientError, match="certificate not trusted"):
            untrusted.send(sample())
        assert server.sent == []

        trusted = AcsNotifier(SENDER, connection_string=server.connection_string, ca_bundle=ca_file,
                              polling_interval=0)
        trusted.send(sample())
        assert len(server.sent) == 1
        assert server.access_key not in repr(trusted)


def test_the_same_idempotency_key_is_one_message(acs):
    sender = notifier(acs)
    sender.send(sample())
    sender.send(sample())
    assert len(acs.sent) == 1
    op_ids = [headers.get("Operation-Id") for method, _, headers in acs.calls if method == "POST"]
    assert op_ids == [operation_id("req-1-approved")] * 2

    sender.send(sample(key="req-1-denied"))
    assert len(acs.sent) == 2


def test_bad_access_key_is_a_transient_credentials_error(acs):
    wrong = notifier(acs, access_key="d3Jvbmcta2V5LXdyb25nLWtleQ==")
    with pytest.raises(TransientError, match=r"ACS rejected the credentials \(401, access key\)") as caught:
        wrong.send(sample())
    assert "d3Jvbmcta2V5" not in str(caught.value) and KEY not in str(caught.value)
    assert acs.sent == []


def test_unsigned_request_is_refused_by_the_standin(acs):
    request = urllib.request.Request(f"{acs.endpoint}/emails:send?api-version=2025-09-01", method="POST",
                                     data=b"{}", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401


def test_throttled_send_reports_retry_after(acs):
    acs.faults.plan(SEND, faults.status(429, retry_after=7))
    sender = notifier(acs)
    with pytest.raises(TransientError) as caught:
        sender.send(sample())
    assert caught.value.retry_after == 7
    assert "429" in str(caught.value)
    assert acs.sent == []

    sender.send(sample())  # the processor's retry
    assert len(acs.sent) == 1


def test_server_errors_are_transient_until_they_stop(acs):
    acs.faults.plan(SEND, faults.status(503), faults.status(500))
    sender = notifier(acs)
    for _ in range(2):
        with pytest.raises(TransientError, match="answered 50"):
            sender.send(sample())
    sender.send(sample())
    assert len(acs.sent) == 1


def test_invalid_recipient_is_permanent(acs):
    with pytest.raises(PermanentError, match="InvalidEmailAddress") as caught:
        notifier(acs).send(sample(to=("not-an-address",)))
    assert "400" in str(caught.value) and KEY not in str(caught.value)


def test_failed_operation_is_permanent(acs):
    acs.suppress("bounced@example.com")
    with pytest.raises(PermanentError, match="EmailDroppedAllRecipientsSuppressed"):
        notifier(acs).send(sample(to=("bounced@example.com",)))


def test_conflict_on_the_operation_id_counts_as_already_sent(acs):
    acs.faults.plan(SEND, faults.status(409, body={"error": {"code": "Conflict", "message": "exists"}}))
    notifier(acs).send(sample())  # no error: ACS already has this operation


def test_hanging_send_times_out_as_transient(acs):
    acs.faults.plan(SEND, faults.hang(10))
    with pytest.raises(TransientError, match="did not answer"):
        notifier(acs, timeout=0.5).send(sample())


def test_polls_until_the_operation_succeeds(acs):
    acs.keep_running(2)
    notifier(acs).send(sample())
    assert [c[0] for c in acs.calls] == ["POST", "GET", "GET", "GET"]


def test_unconfirmed_operation_is_transient_and_the_resend_is_one_message(acs):
    acs.keep_running(10_000)
    sender = notifier(acs, timeout=0.5, polling_interval=0.05)
    with pytest.raises(TransientError, match="did not confirm it within 0.5 s"):
        sender.send(sample())
    acs.keep_running(0)
    sender.send(sample())  # the same operation: already accepted, still one message
    assert len(acs.sent) == 1


def test_slow_status_poll_times_out_as_transient(acs):
    acs.faults.plan(POLL, faults.latency(3))
    with pytest.raises(TransientError, match="did not answer"):
        notifier(acs, timeout=0.5).send(sample())


def test_unreachable_endpoint_is_transient():
    sender = AcsNotifier(SENDER, endpoint="http://127.0.0.1:9", access_key="QUJD", polling_interval=0,
                         timeout=2.0)
    with pytest.raises(TransientError, match="did not answer: ServiceRequestError"):
        sender.send(sample())


# --- choosing the backend ---------------------------------------------------------------------


def test_settings_choose_acs_then_smtp_then_the_outbox(caplog, tmp_path):
    caplog.set_level(logging.INFO)
    secret = "c2VjcmV0LWtleS1mb3ItYWNz"
    chosen = notifier_from_settings(Settings.from_env({
        "ACS_CONNECTION_STRING": f"endpoint=https://acs.example.com/;accesskey={secret}",
        "ACS_SENDER_ADDRESS": SENDER, "SMTP_HOST": "smtp.example.com",
    }))
    assert isinstance(chosen, AcsNotifier)
    assert (chosen.endpoint, chosen.sender, chosen.auth) == ("https://acs.example.com", SENDER, "connection string")

    chosen = notifier_from_settings(Settings.from_env({"ACS_ENDPOINT": "https://acs.example.com",
                                                       "AZURE_CLIENT_ID": "client-id-1",
                                                       "SMTP_FROM": "noreply@example.com"}))
    assert isinstance(chosen, AcsNotifier)
    assert (chosen.sender, chosen.auth) == ("noreply@example.com", "managed identity client-id-1")

    chosen = notifier_from_settings(Settings.from_env({
        "SMTP_HOST": "smtp.example.com", "SMTP_PORT": "465", "SMTP_USE_TLS": "ssl",
        "SMTP_USER": "mailer", "SMTP_PASSWORD": "smtp-Pa55word",
    }))
    assert isinstance(chosen, SmtpNotifier) and (chosen.mode, chosen.port) == ("tls", 465)

    chosen = notifier_from_settings(Settings.from_env({"EMAIL_OUTBOX_DIR": str(tmp_path / "out")}))
    assert isinstance(chosen, OutboxNotifier) and chosen.folder == tmp_path / "out"

    assert secret not in caplog.text and "smtp-Pa55word" not in caplog.text
    assert "Azure Communication Services" in caplog.text and "SMTP smtp.example.com:465" in caplog.text


def test_email_modules_load_no_azure_sdk_at_import():
    code = ("import sys, shared.adapters.email_factory, shared.services.messages; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('azure.communication', "
            "'azure.identity', 'azure.core')))))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == []
