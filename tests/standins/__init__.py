"""Stand-ins for backends that cannot run here (LiteLLM's key API, Azure Resource Manager).

Each speaks the real wire protocol to the real client on 127.0.0.1, records every call, and
takes planned faults (`faults.py`). This module holds what they share: a threaded HTTP(S) server
on a free port with start()/stop(), the call record, and the fault hook.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import ssl
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.standins.faults import Faults, apply


@dataclasses.dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, raw bytes when not JSON, None when empty
    at: float  # time.monotonic() when the call arrived


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None  # JSON-able; None sends no body
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class StandinServer:
    """A ThreadingHTTPServer in a background thread. Subclasses implement `fault_key` (which
    plan a call draws from) and `serve` (the backend's behaviour)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.faults = Faults()
        self.calls: list[Call] = []
        self._ssl_context = ssl_context
        self._lock = threading.Lock()  # guards `calls` and subclass state
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- subclass hooks ---------------------------------------------------------------------

    def fault_key(self, call: Call) -> str:
        return f"{call.method} {call.path}"

    def serve(self, call: Call) -> Reply:
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandinServer:
        self.faults.reset_release()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        if self._ssl_context is not None:
            self._server.socket = self._ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.faults.release()  # wake handlers sleeping in a hang()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
        self.faults.clear()

    def wait_for(self, condition: Any, timeout: float) -> None:
        """Until `condition()` holds (e.g. a call served late has landed); AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{type(self).__name__}: condition not met within {timeout:g} s")
            threading.Event().wait(0.05)

    def calls_to(self, method: str, path_prefix: str = "") -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and c.path.startswith(path_prefix)]

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


def leaks(secrets: set[str] | list[str], *texts: str) -> list[str]:
    """The secrets (shown by length only) that appear in any of `texts`."""
    return [f"<secret of {len(s)} chars>" for s in secrets if s and any(s in text for text in texts)]


def logged_text(caplog: Any) -> str:
    """Every record pytest's caplog captured in the test's setup and call, formatted with its
    traceback (at teardown `caplog.text` holds only the teardown's own records)."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for phase in ("setup", "call") for record in caplog.get_records(phase))


def exception_texts(exc: BaseException) -> list[str]:
    """Everything an exception can show: str, repr, its printed traceback, and the same of the
    exceptions it was raised from or during (even a suppressed context stays reachable)."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 30:
        texts += [str(seen), repr(seen), "".join(traceback.format_exception(seen))]
        seen = seen.__cause__ or seen.__context__
    return texts


def _handler_for(standin: StandinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _dispatch(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            split = urlsplit(self.path)
            call = Call(method=self.command, path=split.path,
                        query={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
                        headers={k.lower(): v for k, v in self.headers.items()}, body=body, at=time.monotonic())
            standin._record(call)
            fault = standin.faults.next(standin.fault_key(call)) or standin.faults.next("*")
            if fault is not None and apply(fault, self, standin.faults):
                return
            reply = standin.serve(call)
            payload = b"" if reply.body is None else json.dumps(reply.body, default=str).encode()
            self.send_response(reply.status)
            if payload:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
