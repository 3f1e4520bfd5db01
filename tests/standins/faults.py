"""Fault injection for the stand-in servers: plan what the next calls to an endpoint suffer.

`faults.plan("POST /key/generate", status(429, retry_after=1), status(500))` makes the next two
calls to that endpoint fail, in that order; once a key's plan is used up, calls are served
normally. The key is whatever the server names its endpoints by (a method and path, an operation
name). Generic on purpose: any stand-in (LiteLLM, ARM, ACS...) can use it; `apply` serves a fault
from an `http.server` handler.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any


@dataclasses.dataclass(frozen=True)
class Fault:
    """Wait `delay` seconds, then answer `status` (if set) instead of serving, or drop the
    connection without an answer (`drop`)."""

    delay: float = 0.0
    status: int | None = None
    retry_after: float | None = None
    body: Any = None  # JSON-able, or bytes sent as is; None: the server's own error body
    drop: bool = False


def latency(seconds: float) -> Fault:
    """Serve normally, `seconds` late."""
    return Fault(delay=seconds)


def status(code: int, retry_after: float | None = None, body: Any = None) -> Fault:
    """Answer `code` (with a Retry-After header if given) instead of serving."""
    return Fault(status=code, retry_after=retry_after, body=body)


def hang(seconds: float = 30.0) -> Fault:
    """Say nothing for `seconds` (past any sane client timeout), then close the connection."""
    return Fault(delay=seconds, drop=True)


class Faults:
    """Thread-safe queues of planned faults, keyed by whatever the server names its endpoints."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned: dict[str, collections.deque[Fault]] = collections.defaultdict(collections.deque)
        # Set on server stop, so a hanging handler thread ends at once instead of sleeping on.
        self._released = threading.Event()

    def plan(self, key: str, *faults: Fault) -> None:
        with self._lock:
            self._planned[key].extend(faults)

    def next(self, key: str) -> Fault | None:
        with self._lock:
            queue = self._planned.get(key)
            return queue.popleft() if queue else None

    def clear(self) -> None:
        with self._lock:
            self._planned.clear()

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake when the server stops."""
        self._released.wait(seconds)

    def release(self) -> None:
        self._released.set()

    def reset_release(self) -> None:
        self._released.clear()


def apply(fault: Fault, handler: BaseHTTPRequestHandler, faults: Faults,
          default_body: dict[str, Any] | None = None) -> bool:
    """Apply `fault` in an http.server handler; True when the fault answered (or dropped) the call,
    False when the handler should go on and serve (a pure latency fault)."""
    if fault.delay:
        faults.sleep(fault.delay)
    if fault.drop:
        handler.close_connection = True
        return True
    if fault.status is None:
        return False
    body = fault.body if fault.body is not None else (default_body or {"error": f"injected {fault.status}"})
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(fault.status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    if fault.retry_after is not None:
        handler.send_header("Retry-After", f"{fault.retry_after:g}")
    handler.end_headers()
    handler.wfile.write(payload)
    return True
