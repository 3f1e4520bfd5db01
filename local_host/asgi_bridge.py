"""Serve an ASGI application from the host's WSGI server, streaming included.

The MCP SDK's transports are ASGI applications; the local host is a threaded werkzeug (WSGI)
server. Each request runs the ASGI app as a task on one event loop of the bridge's own, and its
response flows back to the WSGI thread through a queue, chunk by chunk, so server-sent event
streams reach the client as they are written (werkzeug sends them chunked). When the client goes
away, or the WSGI server drops the response, the app is told (`http.disconnect`); `close()` ends
every response still running, so a server can stop while streams are open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

log = logging.getLogger("local_host")

Scope = MutableMapping[str, Any]
AsgiApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
_DONE = object()  # the app returned (or was cancelled): no more events for this response


class EventLoopThread:
    """One asyncio loop running in a daemon thread, until `stop()`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Awaitable[Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(_as_coroutine(coroutine), self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what is still running on the loop (as asyncio.run does), then stop it."""
        if self.loop.is_closed():
            return
        try:
            self.submit(self._cancel_the_rest()).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("%s: tasks still running at shutdown", self._thread.name)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    async def _cancel_the_rest(self) -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class AsgiBridge:
    """A WSGI callable that runs `app` on `loop` for each request."""

    def __init__(self, app: AsgiApp, loop: EventLoopThread) -> None:
        self.app = app
        self.loop = loop
        self._running: set[tuple[concurrent.futures.Future, queue.SimpleQueue]] = set()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any, body: bytes,
                 extra_scope: dict[str, Any] | None = None) -> Iterable[bytes]:
        scope = _scope(environ)
        scope.update(extra_scope or {})
        events: queue.SimpleQueue = queue.SimpleQueue()
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            events.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                events.put(_DONE)

        future = self.loop.submit(run())
        handle = (future, events)
        with self._lock:
            self._running.add(handle)

        def finished() -> None:
            with self._lock:
                self._running.discard(handle)
            if not self.loop.loop.is_closed():
                self.loop.loop.call_soon_threadsafe(disconnected.set)

        start = events.get()
        if start is _DONE or start.get("type") != "http.response.start":
            finished()
            _log_failure(future, scope)
            start_response("500 Internal Server Error", [("Content-Type", "application/json")])
            return [b'{"message": "Internal server error", "detail": null}']
        status = int(start["status"])
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers") or []]
        start_response(f"{status} {_phrase(status)}", headers)
        return _Body(events, finished)

    def close(self, timeout: float = 5.0) -> None:
        """End every response still running (open event streams included)."""
        with self._lock:
            running = list(self._running)
        for future, events in running:
            future.cancel()
            events.put(_DONE)
        concurrent.futures.wait([f for f, _ in running], timeout=timeout)


class _Body:
    """The response body as the app sends it; closing it (client gone) tells the app."""

    def __init__(self, events: queue.SimpleQueue, finished: Callable[[], None]) -> None:
        self._events = events
        self._finished = finished
        self._iterator = self._chunks()

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def _chunks(self) -> Iterator[bytes]:
        while True:
            message = self._events.get()
            if message is _DONE:
                return
            if message.get("type") != "http.response.body":
                continue
            chunk = message.get("body") or b""
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    def close(self) -> None:
        self._finished()


def _scope(environ: dict[str, Any]) -> Scope:
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append((key[5:].replace("_", "-").lower().encode("latin-1"), str(value).encode("latin-1")))
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers.append((key.replace("_", "-").lower().encode("latin-1"), str(value).encode("latin-1")))
    raw_path = str(environ.get("PATH_INFO") or "/").encode("latin-1")  # WSGI: the bytes as latin-1
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")).removeprefix("HTTP/"),
        "method": environ["REQUEST_METHOD"].upper(), "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": raw_path.decode("utf-8", "replace"), "raw_path": raw_path,
        "query_string": str(environ.get("QUERY_STRING") or "").encode("latin-1"), "root_path": "",
        "headers": headers,
        "server": (environ.get("SERVER_NAME", "localhost"), int(environ.get("SERVER_PORT") or 80)),
        "client": (environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0)),
        "state": {},
    }


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _log_failure(future: concurrent.futures.Future, scope: Scope) -> None:
    try:
        error = future.exception(timeout=5)
    except (concurrent.futures.CancelledError, concurrent.futures.TimeoutError):
        error = None
    log.error("%s %s: the ASGI app sent no response", scope["method"], scope["path"],
              exc_info=(type(error), error, error.__traceback__) if error else None)
