"""Logs an operator can follow: every line about a request carries its id as a structured field
(which Application Insights keeps as a customDimension), retries name the call once, a give-up is
logged once. The tick runs against the real kube-apiserver, with no LiteLLM listening."""

from __future__ import annotations

import logging
import threading

import pytest

from shared import context, logfields
from shared.domain.request import State
from tests.conftest import free_port
from tests.test_processor_loops import loops  # noqa: F401 - the fixture

APP_LOGGERS = ("shared", "httpx", "local_host")


def test_bound_fields_reach_every_record_and_extra_never_collides(caplog):
    log = logging.getLogger("shared.test")
    with caplog.at_level(logging.INFO, logger="shared.test"):
        with logfields.bound(request_id="r-1"):
            log.info("inside")
            log.info("with extra", extra=logfields.fields(request_id="r-1", team=None))
            seen: list[str | None] = []
            worker = threading.Thread(target=lambda: seen.append(logfields.current().get("request_id")))
            worker.start()
            worker.join()
        log.info("outside", extra=logfields.fields(request_id="r-2"))
        log.info("plain")
    by_message = {r.getMessage(): r for r in caplog.records}
    assert by_message["inside"].request_id == "r-1"
    assert by_message["with extra"].request_id == "r-1"
    assert by_message["outside"].request_id == "r-2"
    assert not hasattr(by_message["plain"], "request_id")
    assert seen == [None], "a new thread starts unbound: the tick binds inside each worker"


def test_a_failing_request_logs_each_line_with_its_id_and_gives_up_once(loops, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setenv("LITELLM_BASE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    context.reset()
    request = loops.submit("follow-me@example.com")
    caplog.clear()
    failed = loops.until_settled(request)
    assert failed.state == State.FAILED
    about = [r for r in caplog.records if r.name.startswith(APP_LOGGERS) and request.id in r.getMessage()]
    retries = [r for r in caplog.records if "; try " in r.getMessage()]
    assert about and retries
    for record in about + retries:
        assert getattr(record, "request_id", None) == request.id, record.getMessage()
    for record in retries:
        message = record.getMessage()
        assert message.count("LiteLLM POST /key/generate") == 1, message
    gave_up = [r for r in caplog.records if "gave up after" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(gave_up) == 1, [r.getMessage() for r in gave_up]
    assert "at step" in gave_up[0].getMessage()
    # Every line the tick logged carries the id: none is about this request without saying so.
    tick_lines = [r for r in caplog.records if r.name.startswith("shared.services")
                  and r.getMessage().startswith("request ")]
    assert all(getattr(r, "request_id", None) == request.id for r in tick_lines)


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_the_local_host_shows_the_level_and_the_fields(level):
    from local_host.__main__ import FieldsFormatter

    formatter = FieldsFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("shared.x", getattr(logging, level), __file__, 1, "LiteLLM call failed", (), None)
    record.request_id = "abc"
    assert formatter.format(record) == f"{level} LiteLLM call failed [request_id=abc]"
    named = logging.LogRecord("shared.x", logging.INFO, __file__, 1, "request abc created", (), None)
    named.request_id = "abc"
    assert formatter.format(named) == "INFO request abc created", "not repeated when the message names it"


def test_an_http_call_on_a_request_logs_with_its_id(caplog):
    """The HTTP boundary binds the route's request id (or team) around the whole call."""
    import azure.functions as func

    from shared.http.responses import handles_errors
    from shared.services.ports import NotFound

    @handles_errors
    def admin_get_request(req: func.HttpRequest) -> func.HttpResponse:
        logging.getLogger("shared.http.admin").info("reading it")
        raise NotFound("no such request")

    rid = "0b4cbd7e-3d1c-4a8e-9a51-3f2b7c1d9e00"
    with caplog.at_level(logging.INFO, logger="shared"):
        answer = admin_get_request(func.HttpRequest("GET", f"http://127.0.0.1/api/admin/requests/{rid}", body=b"",
                                                    route_params={"request_id": rid}))
    assert answer.status_code == 404
    lines = [r for r in caplog.records if r.name.startswith("shared.http")]
    assert len(lines) == 2 and all(getattr(r, "request_id", None) == rid for r in lines)
