"""Delivers email through an SMTP server (smtplib), and builds the MIME message the outbox writes too.

One connection per message: the timer sends a handful per tick, and a fresh connection never
trips over a server that dropped an idle one. Certificates are verified unless explicitly turned
off, and every smtplib/socket failure becomes the app's `TransientError` or `PermanentError`, with
a message that names the server and the user but never the password or the body (it may hold a key).
"""

from __future__ import annotations

import hashlib
import logging
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Literal

from shared.adapters.tls import ssl_context
from shared.services.ports import Email, PermanentError, TransientError

log = logging.getLogger(__name__)

Mode = Literal["starttls", "tls", "none"]

# A plain addr-spec: anything else (display names, CR/LF, several addresses) is refused up front.
_ADDRESS = re.compile(r"^[^\s@<>,;:\"()\[\]\\]+@[^\s@<>,;:\"()\[\]\\]+$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def check_address(address: str) -> str:
    if not _ADDRESS.match(address):
        raise PermanentError(f"not a deliverable email address: {address!r}")
    return address


def message_id(idempotency_key: str, sender: str) -> str:
    """A Message-ID that is the same for every re-send of one message, so receivers can drop duplicates."""
    left = idempotency_key if _SAFE_ID.match(idempotency_key) else hashlib.sha256(
        idempotency_key.encode()).hexdigest()[:40]
    return f"<{left}@{sender.rsplit('@', 1)[-1]}>"


def build_message(email: Email, sender: str) -> EmailMessage:
    """RFC 5322 multipart/alternative (plain text first, so HTML-capable clients pick the HTML)."""
    if not email.to:
        raise PermanentError(f"message {email.idempotency_key} has no recipients")
    message = EmailMessage()
    message["From"] = check_address(sender)
    message["To"] = ", ".join(check_address(address) for address in email.to)
    # Subjects come flattened from the messages module; a CR/LF here is a bug, and
    # EmailMessage raises on it rather than letting it start a new header.
    try:
        message["Subject"] = email.subject
    except ValueError:
        raise PermanentError(f"message {email.idempotency_key} has a subject with a line break") from None
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id(email.idempotency_key, sender)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies to us
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message


def tls_context(verify: bool, ca_bundle: Path | None) -> ssl.SSLContext:
    """The public CAs plus `ca_bundle` (an extra, private CA); no checks only if verify=False."""
    context = ssl_context(ca_bundle)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpNotifier:
    """A `Notifier` over SMTP: `starttls` (usually port 587), `tls` (implicit, 465) or `none` (a local relay)."""

    def __init__(self, host: str, port: int, sender: str, *, mode: Mode = "starttls",
                 user: str | None = None, password: str | None = None, verify: bool = True,
                 ca_bundle: Path | None = None, timeout: float = 15.0) -> None:
        if mode not in ("starttls", "tls", "none"):
            raise ValueError(f"unknown SMTP TLS mode {mode!r}; use starttls, tls or none")
        if not _ADDRESS.match(sender):
            raise ValueError(f"sender {sender!r} is not a plain email address (SMTP_FROM)")
        self.host, self.port, self.sender, self.mode = host, port, sender, mode
        self.user = user
        self._password = password
        self.timeout = timeout
        self._context = tls_context(verify, ca_bundle) if mode != "none" else None
        if mode == "none" and user:
            log.warning("SMTP login to %s:%d without TLS sends the password in clear text", host, port)

    def __repr__(self) -> str:  # never the password
        return f"SmtpNotifier({self.host}:{self.port}, mode={self.mode}, user={self.user!r})"

    @property
    def _where(self) -> str:
        return f"SMTP server {self.host}:{self.port}"

    def send(self, email: Email) -> None:
        message = build_message(email, self.sender)
        try:
            with self._connect() as smtp:
                if self.user:
                    smtp.login(self.user, self._password or "")
                refused = smtp.send_message(message, from_addr=self.sender, to_addrs=list(email.to))
        except smtplib.SMTPAuthenticationError as exc:
            # The config may be fixed before the next attempt: transient, and clear about what failed.
            raise TransientError(f"SMTP login failed for user {self.user} at {self._where} "
                                 f"({exc.smtp_code}): check SMTP_USER and SMTP_PASSWORD") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TransientError(f"{self._where} does not support what SMTP_USE_TLS={self.mode} "
                                 f"needs: {exc}") from None
        except smtplib.SMTPConnectError as exc:  # a greeting other than 220: busy or not for us
            raise TransientError(f"{self._where} refused the connection: {exc.smtp_code}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise self._refused(exc.recipients) from None
        except smtplib.SMTPResponseException as exc:
            raise self._reply_error(exc.smtp_code, exc.smtp_error, "refused the message") from None
        except ssl.SSLCertVerificationError as exc:
            raise TransientError(f"{self._where}: certificate not trusted ({exc.verify_message}); "
                                 "set CA_BUNDLE to its CA, or SMTP_VERIFY_TLS=false for a test relay") from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, DNS, TLS handshake, timeout
            # smtplib reports a read timeout as SMTPServerDisconnected, with the timeout as context.
            if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
                raise TransientError(f"{self._where} did not answer within {self.timeout:g} s") from None
            raise TransientError(f"{self._where} unreachable: {type(exc).__name__}: {exc}") from None
        if refused:
            # Others got it: a re-send would duplicate theirs, so report the refusals and move on.
            log.warning("email %s: %s refused %s", email.idempotency_key, self._where, sorted(refused))
        log.info("email %s sent through %s to %d recipient(s)", email.idempotency_key, self._where,
                 len(email.to))

    def _connect(self) -> smtplib.SMTP:
        if self.mode == "tls":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        if self.mode == "starttls":
            try:
                smtp.starttls(context=self._context)
            except BaseException:
                smtp.close()
                raise
        return smtp

    def _reply_error(self, code: int, text: bytes | str, what: str) -> TransientError | PermanentError:
        reply = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        message = f"{self._where} {what}: {code} {reply}".strip()
        return PermanentError(message) if 500 <= code < 600 else TransientError(message)

    def _refused(self, recipients: dict[str, tuple[int, bytes]]) -> TransientError | PermanentError:
        details = "; ".join(f"{address}: {code} {text.decode(errors='replace')}"
                            for address, (code, text) in recipients.items())
        message = f"{self._where} refused every recipient: {details}"
        # Permanent only when every refusal is: a 4xx (mailbox busy, greylisting) may pass later.
        if all(500 <= code < 600 for code, _ in recipients.values()):
            return PermanentError(message)
        return TransientError(message)
