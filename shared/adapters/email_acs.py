"""Delivers email through Azure Communication Services Email (`azure-communication-email`).

The SDK (and azure-identity) are imported on first send, never at import time, to keep them off
the Functions cold start. Each message is sent with an operation id derived from its idempotency
key, so a re-send after a crash or a timeout is the same ACS operation rather than a second email.
The SDK's own retries are off, and its poller too: a Retry-After can be many seconds, which must not
stall a timer tick; the processor retries on its own schedule, from the `retry_after` reported here.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from shared.adapters.azure_clients import default_credential, trust_bundle
from shared.services.ports import BackendError, Email, PermanentError, TransientError

log = logging.getLogger(__name__)

# The version this adapter and its stand-in speak (the SDK 1.1.0 default), for the send and the poll.
API_VERSION = "2025-09-01"
# uuid5 namespace of this app's email operation ids (any fixed UUID works; it must never change).
OPERATION_NAMESPACE = uuid.UUID("3f0a6c0e-5d0b-4f43-9b7e-6a1f2c9d8e11")


def operation_id(idempotency_key: str) -> str:
    return str(uuid.uuid5(OPERATION_NAMESPACE, idempotency_key))


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` / `x-ms-retry-after-ms` / `Retry-After` (seconds or an HTTP date)."""
    if headers is None:
        return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) / 1000, 0.0)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


class AcsNotifier:
    """A `Notifier` for ACS Email. Authenticates with a connection string, or an endpoint and an
    access key, or an endpoint and `DefaultAzureCredential` (managed identity in Azure; pass
    `managed_identity_client_id` for a user-assigned one). `ca_bundle` is trusted on top of the
    public CAs (a private CA, a TLS-inspecting proxy)."""

    def __init__(self, sender: str, *, connection_string: str | None = None, endpoint: str | None = None,
                 access_key: str | None = None, managed_identity_client_id: str | None = None,
                 ca_bundle: Path | None = None, timeout: float = 30.0, polling_interval: float = 2.0) -> None:
        if bool(connection_string) == bool(endpoint):
            raise ValueError("ACS needs exactly one of a connection string or an endpoint")
        self.sender = sender
        self.endpoint = endpoint or _endpoint_of(connection_string or "")
        self._connection_string = connection_string
        self._access_key = access_key
        self._client_id = managed_identity_client_id
        self._ca_bundle = ca_bundle
        self.timeout = timeout
        self.polling_interval = polling_interval
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the connection string or key
        return f"AcsNotifier({self.endpoint!r}, sender={self.sender!r})"

    @property
    def auth(self) -> str:
        if self._connection_string:
            return "connection string"
        if self._access_key:
            return "access key"
        return f"managed identity {self._client_id}" if self._client_id else "DefaultAzureCredential"

    def _email_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> Any:
        from azure.communication.email import EmailClient

        options: dict[str, Any] = {
            "api_version": API_VERSION, "retry_total": 0,
            "connection_timeout": min(self.timeout, 10.0), "read_timeout": self.timeout,
            "connection_verify": trust_bundle(str(self._ca_bundle)) if self._ca_bundle else True,
        }
        if self._connection_string:
            return EmailClient.from_connection_string(self._connection_string, **options)
        if self._access_key:
            from azure.core.credentials import AzureKeyCredential

            return EmailClient(self.endpoint, AzureKeyCredential(self._access_key), **options)
        return EmailClient(self.endpoint, default_credential(self._client_id), **options)

    def send(self, email: Email) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError

        if not email.to:
            raise PermanentError(f"message {email.idempotency_key} has no recipients")
        message = {
            "senderAddress": self.sender,
            "recipients": {"to": [{"address": address} for address in email.to]},
            "content": {"subject": email.subject, "plainText": email.text, "html": email.html},
            "userEngagementTrackingDisabled": True,  # no tracking pixel or rewritten links around a key
        }
        op_id = operation_id(email.idempotency_key)
        deadline = time.monotonic() + self.timeout
        try:
            client = self._email_client()
            # polling=False: the SDK's poller sleeps out the 202's Retry-After in a thread that
            # outlives any timeout; polling here keeps the whole send within `timeout`.
            client.begin_send(message, operation_id=op_id, polling=False).result()
            status = self._poll(client, op_id, deadline)
        except ResourceExistsError:
            # ACS already holds an operation with this id: this message was accepted before.
            log.info("email %s: ACS already has operation %s", email.idempotency_key, op_id)
            return
        except AzureError as exc:
            raise self._map(exc, email.idempotency_key) from None
        except ValueError as exc:  # a status answer that is not JSON
            raise TransientError(f"ACS {self.endpoint}: unexpected answer to the status poll: {exc}") from None
        if status.get("status") != "Succeeded":
            raise TransientError(f"ACS accepted email {email.idempotency_key} but did not confirm it "
                                 f"within {self.timeout:g} s; a re-send reuses operation {op_id}")
        log.info("email %s sent through ACS %s as operation %s to %d recipient(s)",
                 email.idempotency_key, self.endpoint, op_id, len(email.to))

    def _poll(self, client: Any, op_id: str, deadline: float) -> dict[str, Any]:
        """The operation's status once final, or its last status when the deadline comes first."""
        from azure.core.rest import HttpRequest

        while True:
            response = client.send_request(HttpRequest(
                "GET", f"/emails/operations/{op_id}", params={"api-version": API_VERSION}))
            response.raise_for_status()
            status = response.json()
            if status.get("status") in ("Succeeded", "Failed", "Canceled"):
                if status["status"] != "Succeeded":
                    error = status.get("error") or {}
                    raise PermanentError(f"ACS {self.endpoint} {status['status'].lower()} operation {op_id}: "
                                         f"{error.get('code', '')} {error.get('message', '')}".strip())
                return status
            if time.monotonic() + self.polling_interval >= deadline:
                return status
            time.sleep(self.polling_interval)

    def _map(self, exc: Any, key: str) -> BackendError:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        status = getattr(exc, "status_code", None)
        response = getattr(exc, "response", None)
        error = getattr(exc, "error", None)
        detail = f"{getattr(error, 'code', None) or ''} {getattr(error, 'message', None) or ''}".strip()
        where = f"ACS {self.endpoint}"
        if isinstance(exc, ClientAuthenticationError) and status is None:
            return TransientError(f"{where}: could not get a token ({self.auth}): {exc.message}")
        if "CERTIFICATE_VERIFY_FAILED" in str(exc.message):  # requests wraps ssl's error in text only
            return TransientError(f"{where}: certificate not trusted; set CA_BUNDLE to its CA")
        if not isinstance(exc, HttpResponseError) or status is None:  # connection, timeout
            return TransientError(f"{where} did not answer: {type(exc).__name__}: {exc.message}")
        if status in (401, 403):
            # Not the message's fault: the credentials or the role may be fixed before the next try.
            return TransientError(f"ACS rejected the credentials ({status}, {self.auth}) at "
                                  f"{self.endpoint}: {detail or exc.reason}")
        if status == 404:
            return TransientError(f"{where}: no Email API here (404); check ACS_ENDPOINT: {detail}")
        if status in (408, 429) or status >= 500:
            retry_after = _retry_after(response.headers if response is not None else None)
            return TransientError(f"{where} answered {status}: {detail or exc.reason}", retry_after)
        return PermanentError(f"{where} refused email {key} ({status}): {detail or exc.reason}")


def _endpoint_of(connection_string: str) -> str:
    """The `endpoint=` part, for logs and messages (the access key stays private)."""
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() == "endpoint":
            return value.strip().rstrip("/")
    raise ValueError("the ACS connection string has no endpoint=... part")
