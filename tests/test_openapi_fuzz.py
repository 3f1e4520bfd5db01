"""Schemathesis over GET /api/openapi.json, against the app on a real socket and the real
apiserver: every operation, valid and invalid inputs, a bounded number of examples each. No answer
may be a 5xx, and every answer (status, content type, headers, body) must be what the document
says. Admin operations get a valid API key, so their handlers run, not only the 401."""

from __future__ import annotations

import itertools
import threading

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.serving import make_server

from shared import context
from shared.domain.request import KeyRequest, State

API_KEY = "ak-fuzz-" + "f" * 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
TURN = itertools.count()
EXAMPLES = 40  # per operation and phase: the whole run stays well under two minutes on 2 cores


@pytest.fixture
def live_url(app_env, wsgi_app, monkeypatch):
    """The app on 127.0.0.1:<free port>, in this process (so app_env's settings apply)."""
    monkeypatch.setenv("ADMIN_API_KEY", API_KEY)
    monkeypatch.setenv("ADMIN_PASSWORD", "fuzz-password-not-used")
    # Generated credentials must not lock the valid key out (the login limit is per address).
    monkeypatch.setenv("ADMIN_LOGIN_ATTEMPTS_PER_MINUTE", "1000000")
    context.reset()
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def seeded(live_url) -> itertools.cycle:
    """Stored requests in the states the admin actions act on, so the handlers get past "not found"."""
    store = context.request_store()
    ids = []
    for i, state in enumerate((State.PENDING, State.IN_REVIEW, State.ACTIVE, State.DENIED, State.PENDING)):
        request = store.submit(KeyRequest.new(f"fuzz{i}@example.com", "gpt-4o"))[0]
        if state != State.PENDING:
            request = store.update(request.enter(state))
        ids.append(request.id)
    return itertools.cycle(ids)


@pytest.fixture
def api_schema(live_url):
    return schemathesis.openapi.from_url(f"{live_url}/api/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_operation_answers_as_documented(case, live_url, seeded):
    if "request_id" in (case.path_parameters or {}) and next(TURN) % 3:
        case.path_parameters["request_id"] = next(seeded)  # two cases of three: a stored request
    headers = {"x-functions-key": API_KEY}
    if case.body is NOT_SET and case.method.upper() not in ("GET", "HEAD"):
        headers["Content-Type"] = "application/json"  # an admin change without a body, as the panel sends it
    case.call_and_validate(base_url=live_url, headers=headers, checks=CHECKS)
