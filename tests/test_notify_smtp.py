"""SmtpNotifier against a real SMTP server (aiosmtpd) with a trustme certificate, STARTTLS and AUTH
required, as a corporate relay is set up: delivery, and each way it fails, mapped to the app's
transient or permanent errors with messages that never hold the password."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from shared.adapters.email_smtp import SmtpNotifier
from shared.services.ports import Email, PermanentError, TransientError

USER = "mailer"
PASSWORD = "s3cret-Pa55word"
SENDER = "noreply@example.com"
REFUSED = "nobody@example.com"  # the server answers 550 for this recipient


@dataclasses.dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def parsed(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


class Recorder:
    """aiosmtpd handler: keeps what arrives, refuses REFUSED with 550."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == REFUSED:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() \
        and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 on failure


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclasses.dataclass
class SmtpServer:
    port: int
    recorder: Recorder
    ca_file: Path

    @property
    def received(self) -> list[Received]:
        return self.recorder.received

    def notifier(self, **overrides) -> SmtpNotifier:
        options = dict(mode="starttls", user=USER, password=PASSWORD, ca_bundle=self.ca_file, timeout=5.0)
        options.update(overrides)
        return SmtpNotifier("127.0.0.1", self.port, SENDER, **options)


@pytest.fixture(scope="session")
def smtp_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def smtp_ca_file(smtp_ca, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    smtp_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def smtp_server_context(smtp_ca) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    smtp_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def _serve(context: ssl.SSLContext, ca_file: Path, implicit_tls: bool) -> Iterator[SmtpServer]:
    recorder = Recorder()
    port = free_port()
    # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; an implicit-TLS session is TLS anyway.
    tls = ({"ssl_context": context, "auth_require_tls": False} if implicit_tls
           else {"tls_context": context, "require_starttls": True, "auth_require_tls": True})
    controller = Controller(recorder, hostname="127.0.0.1", port=port, authenticator=_authenticate, **tls)
    controller.start()
    try:
        yield SmtpServer(port, recorder, ca_file)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server(smtp_server_context, smtp_ca_file) -> Iterator[SmtpServer]:
    """STARTTLS required before AUTH, AUTH required (535 on a bad password)."""
    yield from _serve(smtp_server_context, smtp_ca_file, implicit_tls=False)


@pytest.fixture
def smtps_server(smtp_server_context, smtp_ca_file) -> Iterator[SmtpServer]:
    """Implicit TLS (port 465 style)."""
    yield from _serve(smtp_server_context, smtp_ca_file, implicit_tls=True)


def app_log(caplog) -> str:
    """What the app and its libraries logged, without the test server's own trace (`mail.log`)."""
    return "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail."))


def sample(to: tuple[str, ...] = ("alice@example.com",), key: str = "req-1-approved") -> Email:
    return Email(to=to, subject="Your key", text="plain part: sk-test-key-0001",
                 html="<p>html part: <code>sk-test-key-0001</code></p>", idempotency_key=key)


def test_starttls_and_login_deliver_both_parts(smtp_server):
    smtp_server.notifier().send(sample())

    [got] = smtp_server.received
    assert (got.mail_from, got.rcpt_tos) == (SENDER, ["alice@example.com"])
    message = got.parsed()
    assert message["Subject"] == "Your key"
    assert message["To"] == "alice@example.com" and message["From"] == SENDER
    assert message["Message-ID"] == "<req-1-approved@example.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    assert "sk-test-key-0001" in message.get_body(("plain",)).get_content()
    assert "<code>sk-test-key-0001</code>" in message.get_body(("html",)).get_content()


def test_resend_keeps_the_message_id(smtp_server):
    notifier = smtp_server.notifier()
    notifier.send(sample())
    notifier.send(sample())
    ids = {r.parsed()["Message-ID"] for r in smtp_server.received}
    assert ids == {"<req-1-approved@example.com>"}  # receivers can drop the duplicate


def test_bad_password_is_transient_and_never_shows_the_password(smtp_server, caplog):
    caplog.set_level(logging.DEBUG)
    notifier = smtp_server.notifier(password="wrong-Pa55word")
    with pytest.raises(TransientError) as caught:
        notifier.send(sample())
    text = str(caught.value)
    assert f"SMTP login failed for user {USER}" in text and "535" in text
    assert "wrong-Pa55word" not in text + repr(notifier) + app_log(caplog)
    assert smtp_server.received == []


def test_server_down_is_transient(smtp_ca_file):
    notifier = SmtpNotifier("127.0.0.1", free_port(), SENDER, ca_bundle=smtp_ca_file, timeout=2.0)
    with pytest.raises(TransientError, match="unreachable"):
        notifier.send(sample())


def test_silent_server_times_out_as_transient():
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never greets
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        notifier = SmtpNotifier("127.0.0.1", listener.getsockname()[1], SENDER, timeout=0.5)
        with pytest.raises(TransientError, match="did not answer within 0.5 s"):
            notifier.send(sample())


def test_refused_recipient_is_permanent(smtp_server):
    with pytest.raises(PermanentError) as caught:
        smtp_server.notifier().send(sample(to=(REFUSED,)))
    assert "550" in str(caught.value) and REFUSED in str(caught.value)
    assert "sk-test-key-0001" not in str(caught.value)


def test_one_refused_recipient_of_several_still_delivers_to_the_others(smtp_server, caplog):
    smtp_server.notifier().send(sample(to=("rev1@example.com", REFUSED)))
    [got] = smtp_server.received
    assert got.rcpt_tos == ["rev1@example.com"]
    assert REFUSED in app_log(caplog)  # logged, not raised: a re-send would duplicate rev1's copy


def test_implicit_tls_delivers(smtps_server):
    smtps_server.notifier(mode="tls").send(sample())
    assert len(smtps_server.received) == 1


def test_verification_rejects_an_untrusted_certificate_unless_its_ca_is_given(smtp_server):
    with pytest.raises(TransientError, match="certificate not trusted"):
        smtp_server.notifier(ca_bundle=None).send(sample())
    assert smtp_server.received == []

    smtp_server.notifier().send(sample())  # CA bundle given: verified and delivered
    smtp_server.notifier(ca_bundle=None, verify=False).send(sample(key="k2"))  # explicitly off
    assert len(smtp_server.received) == 2


def test_login_without_tls_against_a_starttls_server_is_refused(smtp_server):
    with pytest.raises(TransientError, match="does not support"):
        smtp_server.notifier(mode="none").send(sample())
    assert smtp_server.received == []


def test_bad_recipient_or_sender_never_reaches_the_server(smtp_server):
    with pytest.raises(PermanentError, match="not a deliverable email address"):
        smtp_server.notifier().send(sample(to=("x@example.com\r\nBcc: evil@example.com",)))
    with pytest.raises(ValueError, match="SMTP_FROM"):
        SmtpNotifier("127.0.0.1", smtp_server.port, "Mailer <x@example.com>")
    assert smtp_server.received == []
