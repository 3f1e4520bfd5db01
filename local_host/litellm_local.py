"""A local, in-memory stand-in for LiteLLM's key API, so a first `scripts/run` issues real-looking keys.

No LiteLLM runs on a fresh machine, so the "Try it" request would retry and end `failed`. When
`LITELLM_BASE_URL` points at a loopback address where nothing listens (the sample's
`http://127.0.0.1:4000`), `python -m local_host --local-litellm` serves these endpoints there:
`POST /key/generate`, `GET /key/info`, `POST /key/update`, `POST /key/delete` (with
`Authorization: Bearer <LITELLM_API_KEY>`), as LiteLLM answers them: a caller-chosen `sk-` key,
a unique `key_alias` (400 "already exists" on a repeat), keys stored by their SHA-256 only.
The keys it issues call nothing: they only let the request's whole story run locally. Its state
lives in memory and ends with the process. The test suite uses a stricter stand-in validated with
LiteLLM's own models (tests/standins/litellm_server.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

log = logging.getLogger("local_host.litellm")

_DURATION = re.compile(r"^(\d+)(s|m|h|d|w|mo)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _seconds(duration: str) -> int:
    match = _DURATION.match(duration.strip())
    if not match:
        raise ValueError(f"invalid duration {duration!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": {"message": message, "type": "bad_request_error"}}),
                    status=status, content_type="application/json")


class LocalLiteLLM:
    """The four key endpoints as a WSGI app; `keys` maps token id (SHA-256) -> the stored row."""

    def __init__(self, master_key: str) -> None:
        self.master_key = master_key
        self.keys: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        response = self._answer(request)
        # DEBUG: the app's own client logs the same call (httpx), with the request id.
        log.debug("local LiteLLM: %s %s -> %d", request.method, request.path, response.status_code)
        return response(environ, start_response)

    def _answer(self, request: Request) -> Response:
        if request.path in ("/health/liveliness", "/health/readiness"):
            return Response('"I\'m alive!"', content_type="application/json")
        if request.headers.get("Authorization") != f"Bearer {self.master_key}":
            return _error(401, "Authentication Error, Invalid proxy server token passed.")
        route = {("POST", "/key/generate"): self._generate, ("GET", "/key/info"): self._info,
                 ("POST", "/key/update"): self._update, ("POST", "/key/delete"): self._delete}.get(
            (request.method, request.path))
        if route is None:
            return Response(json.dumps({"detail": "Not Found"}), status=404, content_type="application/json")
        body: Any = {}
        if request.method == "POST":
            try:
                body = json.loads(request.get_data() or b"{}")
            except ValueError:
                return _error(400, "body is not JSON")
            if not isinstance(body, dict):
                return _error(400, "body must be a JSON object")
        with self._lock:
            try:
                return route(request, body)
            except ValueError as exc:
                return _error(400, str(exc))

    @staticmethod
    def _json(payload: Any) -> Response:
        return Response(json.dumps(payload), content_type="application/json")

    def _expires(self, duration: Any) -> str | None:
        if duration in (None, "", "-1"):
            return None
        return (datetime.now(UTC) + timedelta(seconds=_seconds(str(duration)))).isoformat()

    def _generate(self, request: Request, body: dict[str, Any]) -> Response:
        key = body.get("key")
        if not isinstance(key, str) or not key.startswith("sk-") or len(key) < 16:
            return _error(400, "Invalid key format. LiteLLM Virtual Key must start with 'sk-' (16+ characters).")
        alias = body.get("key_alias")
        if alias is not None and any(row.get("key_alias") == alias for row in self.keys.values()):
            return _error(400, f"Key with alias '{alias}' already exists. "
                               "Unique key aliases across all keys are required.")
        token = _hash(key)
        now = datetime.now(UTC).isoformat()
        row = {k: v for k, v in body.items() if k != "key"}
        row.update(token=token, expires=self._expires(body.get("duration")), created_at=now,
                   updated_at=now, spend=0.0, key_name=f"sk-...{key[-4:]}")
        self.keys[token] = row
        return self._json({**row, "key": key, "token_id": token})

    def _token(self, value: str) -> str:
        return value if value in self.keys else _hash(value)

    def _info(self, request: Request, body: dict[str, Any]) -> Response:
        key = request.args.get("key")
        if not key:
            return _error(400, "No key passed in.")
        row = self.keys.get(self._token(key))
        if row is None:
            return _error(404, "Key not found in database")
        return self._json({"key": key, "info": {k: v for k, v in row.items() if k != "token"}})

    def _update(self, request: Request, body: dict[str, Any]) -> Response:
        row = self.keys.get(self._token(str(body.get("key") or "")))
        if row is None:
            return _error(404, "Key not found")
        changes = {k: v for k, v in body.items() if k != "key"}
        if "duration" in changes:
            changes["expires"] = self._expires(changes.pop("duration"))
        row.update(changes, updated_at=datetime.now(UTC).isoformat())
        return self._json({k: v for k, v in row.items() if k != "token"})

    def _delete(self, request: Request, body: dict[str, Any]) -> Response:
        tokens = [self._token(str(k)) for k in body.get("keys") or []]
        aliases = body.get("key_aliases") or []
        tokens += [t for t, row in self.keys.items() if row.get("key_alias") in aliases]
        found = [t for t in dict.fromkeys(tokens) if t in self.keys]
        if not found:
            return _error(404, "No keys found")
        for token in found:
            del self.keys[token]
        return self._json({"deleted_keys": body.get("keys") or aliases})


class _QuietHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass  # LocalLiteLLM logs one line per call itself


class RunningLiteLLM:
    def __init__(self, server: BaseWSGIServer, app: LocalLiteLLM) -> None:
        self.server, self.app = server, app
        self.url = f"http://{server.host}:{server.port}"
        self._thread = threading.Thread(target=server.serve_forever, name="local-litellm", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def local_target(base_url: str | None) -> tuple[str, int] | None:
    """(host, port) when `base_url` names a loopback address where nothing listens yet, else None
    (a real LiteLLM there, or a remote one: leave it alone)."""
    parts = urlsplit((base_url or "").strip() or "http://localhost:4000")
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK:
        return None
    port = parts.port or 80
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return None  # something answers there: assume it is a real LiteLLM
    except OSError:
        return host, port


def start_if_needed(base_url: str | None, master_key: str | None) -> RunningLiteLLM | None:
    """Serve the local stand-in where `base_url` points, if that is a free loopback port."""
    target = local_target(base_url)
    if target is None or not master_key:
        return None
    app = LocalLiteLLM(master_key)
    server = make_server(target[0], target[1], app, threaded=True, request_handler=_QuietHandler)
    return RunningLiteLLM(server, app)
