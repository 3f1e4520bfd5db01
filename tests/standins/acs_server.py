"""A stand-in for Azure Communication Services Email, speaking its wire protocol to the real SDK.

There is no ACS emulator, so this serves the two calls `azure-communication-email` makes, and checks
them as the service does: `POST /emails:send` and the status poll `GET /emails/operations/{id}`,
each authenticated with the HMAC-SHA256 signature of (verb, path and query, x-ms-date, host,
content hash), 401 on a bad one. A send answers 202 with `Operation-Location`; the poll answers
`Running` as long as told to, then `Succeeded` (or `Failed` with
`EmailDroppedAllRecipientsSuppressed` for a suppressed address). The
SDK sends the caller's `Operation-Id` header: a repeated id is the same operation, not a second
message, as on ACS. Faults (429 with Retry-After, 5xx...) are planned through `tests/standins/faults.py`
under the keys `SEND` and `POLL`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import ssl
import threading
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.standins import faults as faultlib

SEND = "POST /emails:send"
POLL = "GET /emails/operations"
API_VERSIONS = {"2023-03-31", "2024-07-01-preview", "2025-09-01"}
MAX_CLOCK_SKEW = 15 * 60  # seconds, as ACS allows
_AUTH = re.compile(r"^HMAC-SHA256 SignedHeaders=(?P<signed>[^&]+)&Signature=(?P<signature>.+)$")
_ADDRESS = re.compile(r"^[^\s@<>,;:\"()\[\]\\]+@[^\s@<>,;:\"()\[\]\\]+\.[^\s@<>,;:\"()\[\]\\]+$")


@dataclasses.dataclass
class Sent:
    operation_id: str
    message: dict[str, Any]
    status: str = "Succeeded"
    running_polls: int = 0  # polls that still answer Running before the final status


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _answer(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _authenticate(self, body: bytes) -> str | None:
        """None when the signature is right, else why not."""
        date, content_hash = self.headers.get("x-ms-date"), self.headers.get("x-ms-content-sha256")
        match = _AUTH.match(self.headers.get("Authorization", ""))
        if not (date and content_hash and match):
            return "missing x-ms-date, x-ms-content-sha256 or an HMAC-SHA256 Authorization header"
        if match["signed"] != "x-ms-date;host;x-ms-content-sha256":
            return f"unexpected SignedHeaders {match['signed']}"
        if content_hash != base64.b64encode(hashlib.sha256(body).digest()).decode():
            return "x-ms-content-sha256 does not match the body"
        try:
            skew = abs((datetime.now(UTC) - parsedate_to_datetime(date)).total_seconds())
        except (TypeError, ValueError):
            return "x-ms-date is not an RFC 1123 date"
        if skew > MAX_CLOCK_SKEW:
            return "x-ms-date is too far from the server's clock"
        to_sign = f"{self.command}\n{self.path}\n{date};{self.headers.get('Host', '')};{content_hash}"
        expected = base64.b64encode(hmac.new(self.server.secret, to_sign.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, match["signature"].encode()):
            return "the request signature is not valid"
        return None

    def _prelude(self, fault_key: str) -> bytes | None:
        """Read the body, check api-version and signature, apply a planned fault; the body if serving."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.calls.append((self.command, self.path, dict(self.headers)))
        versions = parse_qs(urlsplit(self.path).query).get("api-version", [])
        if not versions or versions[0] not in API_VERSIONS:
            self._answer(400, _error("InvalidApiVersion", f"unsupported api-version {versions}"))
            return None
        problem = self._authenticate(body)
        if problem:
            self._answer(401, _error("Denied", problem))
            return None
        fault = self.server.faults.next(fault_key)
        if fault and faultlib.apply(fault, self, self.server.faults,
                                    _error("Injected", f"injected {fault.status}")):
            return None
        return body

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path != "/emails:send":
            self._answer(404, _error("NotFound", path))
            return
        body = self._prelude(SEND)
        if body is None:
            return
        try:
            message = json.loads(body)
        except ValueError:
            self._answer(400, _error("BadRequest", "the body is not JSON"))
            return
        problem = _invalid(message)
        if problem:
            self._answer(400, _error(*problem))
            return
        operation_id = self.headers.get("Operation-Id") or str(uuid.uuid4())
        self.server.accept(operation_id, message)
        location = f"{self.server.base_url}/emails/operations/{operation_id}?api-version=2025-09-01"
        self._answer(202, {"id": operation_id, "status": "Running"},
                     {"Operation-Location": location, "Operation-Id": operation_id, "Retry-After": "0"})

    def do_GET(self) -> None:
        match = re.fullmatch(r"/emails/operations/([^/?]+)", urlsplit(self.path).path)
        if not match:
            self._answer(404, _error("NotFound", self.path))
            return
        if self._prelude(POLL) is None:
            return
        sent = self.server.operations.get(match[1])
        if sent is None:
            self._answer(404, _error("NotFound", f"no operation {match[1]}"))
        elif sent.running_polls > 0:
            sent.running_polls -= 1
            self._answer(200, {"id": sent.operation_id, "status": "Running"})
        elif sent.status == "Failed":
            self._answer(200, {"id": sent.operation_id, "status": "Failed", "error": _error(
                "EmailDroppedAllRecipientsSuppressed",
                "Email was dropped because all recipients were suppressed.")["error"]})
        else:
            self._answer(200, {"id": sent.operation_id, "status": sent.status})


def _invalid(message: Any) -> tuple[str, str] | None:
    """What ACS would answer 400 for, as (code, message)."""
    if not isinstance(message, dict) or not isinstance(message.get("senderAddress"), str):
        return "BadRequest", "senderAddress is required"
    recipients = message.get("recipients")
    to = recipients.get("to") if isinstance(recipients, dict) else None
    if not to or not isinstance(to, list):
        return "BadRequest", "recipients.to needs at least one recipient"
    for recipient in to:
        address = recipient.get("address") if isinstance(recipient, dict) else None
        if not isinstance(address, str) or not _ADDRESS.match(address):
            return "InvalidEmailAddress", "Invalid email address format."
    content = message.get("content")
    if not isinstance(content, dict) or not content.get("subject"):
        return "BadRequest", "content.subject is required"
    if not (content.get("plainText") or content.get("html")):
        return "BadRequest", "content needs plainText or html"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secret = secret
        self.base_url = ""
        self.faults = faultlib.Faults()
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.operations: dict[str, Sent] = {}
        self.suppressed: set[str] = set()
        self.running_polls = 0
        self._lock = threading.Lock()

    def accept(self, operation_id: str, message: dict[str, Any]) -> None:
        with self._lock:
            if operation_id in self.operations:  # a re-send of the same operation: one message
                return
            addresses = {r["address"] for r in message["recipients"]["to"]}
            status = "Failed" if addresses <= self.suppressed else "Succeeded"
            self.operations[operation_id] = Sent(operation_id, message, status, self.running_polls)


class AcsStandIn:
    """`with AcsStandIn() as acs:` serves on 127.0.0.1; `tls_ca` (a trustme.CA) makes it https."""

    def __init__(self, tls_ca: Any | None = None) -> None:
        self.access_key = base64.b64encode(uuid.uuid4().bytes * 2).decode()
        self._server = _Server(base64.b64decode(self.access_key))
        scheme = "http"
        if tls_ca is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.endpoint = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._server.base_url = self.endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="acs-standin", daemon=True)

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    @property
    def faults(self) -> faultlib.Faults:
        return self._server.faults

    @property
    def sent(self) -> list[Sent]:
        return list(self._server.operations.values())

    @property
    def calls(self) -> list[tuple[str, str, dict[str, str]]]:
        return list(self._server.calls)

    def keep_running(self, polls: int) -> None:
        """Operations, current and new, answer Running to this many more polls before their final status."""
        self._server.running_polls = polls
        for sent in self._server.operations.values():
            sent.running_polls = polls

    def suppress(self, address: str) -> None:
        """Sends to only this address are accepted, then fail (ACS's suppression list)."""
        self._server.suppressed.add(address)

    def __enter__(self) -> AcsStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.faults.release()
        self._server.shutdown()
        self._server.server_close()

