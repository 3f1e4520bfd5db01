"""The local Functions host (local_host/), against a throwaway app written into tmp_path.

Nothing here imports the project's own function_app: each test writes a tiny one, so the host's
routing, CORS, error shapes, settings precedence and timers are checked on their own.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from werkzeug.test import Client

from local_host import Ncrontab, TimerScheduler, build_wsgi_app, load_function_app, serve
from local_host.settings import load_local_settings

ALLOWED = "http://frontend.example:5173"

FUNCTION_APP = '''
import json
import os

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
bp = func.Blueprint()


@bp.route(route="items/{id}", methods=["GET"])
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    body = {"id": req.route_params["id"], "q": req.params.get("q"),
            "setting": os.environ.get("OVERRIDABLE")}
    return func.HttpResponse(json.dumps(body), mimetype="application/json",
                             headers={"X-Request-Id": "r-1"})


@bp.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def echo(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"echo": req.get_json()}), status_code=201,
                             mimetype="application/json")


@bp.route(route="boom")
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret-internal-detail")


@bp.timer_trigger(schedule="%TEST_SCHEDULE%", arg_name="timer")
def tick(timer: func.TimerRequest) -> None:
    with open(os.environ["TICK_FILE"], "a") as f:
        f.write(f"{timer.past_due}\\n")


app.register_functions(bp)
'''


@pytest.fixture(autouse=True)
def isolated_process_state():
    """Each test's settings and function_app module vanish after it (the host mutates both)."""
    environ, path, module = dict(os.environ), list(sys.path), sys.modules.get("function_app")
    yield
    os.environ.clear()
    os.environ.update(environ)
    sys.path[:] = path
    sys.modules.pop("function_app", None)
    if module is not None:  # another test's (e.g. the real app's) module comes back
        sys.modules["function_app"] = module


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "function_app.py").write_text(FUNCTION_APP)
    (tmp_path / "host.json").write_text(json.dumps(
        {"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}))
    (tmp_path / "local.settings.json").write_text(json.dumps({
        "IsEncrypted": False,
        "Values": {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "TEST_SCHEDULE": "*/1 * * * * *",
            "TICK_FILE": str(tmp_path / "ticks.txt"),
            "OVERRIDABLE": "from-settings",
        },
        "Host": {"CORS": f"{ALLOWED},http://other.example", "CORSCredentials": True},
    }))
    return tmp_path


@pytest.fixture
def client(app_dir):
    app = load_function_app(app_dir)
    return Client(build_wsgi_app(app, "api", [ALLOWED], cors_credentials=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- routing ------------------------------------------------------------------------------

def test_route_params_and_query(client):
    r = client.get("/api/items/42?q=hello")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.get_json() == {"id": "42", "q": "hello", "setting": None}


def test_post_json_through_async_function(client):
    r = client.post("/api/echo", json={"llm": "gpt-4o", "email": "a@example.com"})
    assert r.status_code == 201
    assert r.get_json() == {"echo": {"llm": "gpt-4o", "email": "a@example.com"}}


def test_unknown_route_is_404_json(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404
    body = r.get_json()
    assert isinstance(body["message"], str) and "detail" in body


def test_route_prefix_applies(client):
    assert client.get("/items/42").status_code == 404  # served under /api only


def test_wrong_method_is_405_json(client):
    r = client.delete("/api/echo")
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    assert isinstance(r.get_json()["message"], str)


def test_exception_is_500_json_without_traceback(client, caplog):
    r = client.get("/api/boom")
    assert r.status_code == 500
    assert r.get_json() == {"message": "Internal server error", "detail": None}
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "secret-internal-detail" not in text
    # ... but the log has it, with the host's invocation lines.
    assert "secret-internal-detail" in caplog.text
    assert "Executed 'Functions.boom' (Failed, Id=" in caplog.text


def test_route_templates(tmp_path):
    (tmp_path / "function_app.py").write_text(textwrap.dedent('''
        import json
        import azure.functions as func
        app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

        def params(req):
            return func.HttpResponse(json.dumps(dict(req.route_params)), mimetype="application/json")

        app.route(route="deployments/{deployment-id}/chat/{mode?}")(params)
        app.function_name("n")(app.route(route="n/{n:int:min(3)}")(lambda req: params(req)))
        app.function_name("w")(app.route(route="w/{word:alpha}")(lambda req: params(req)))
        app.function_name("files")(app.route(route="files/{*path}")(lambda req: params(req)))
        app.function_name("code")(app.route(route=r"code/{c:regex(^[a-z]{{2}}\\d$)}")(lambda req: params(req)))
        app.function_name("lang")(app.route(route="docs/{lang=en}")(lambda req: params(req)))
    '''))
    client = Client(build_wsgi_app(load_function_app(tmp_path), "", []))
    assert client.get("/deployments/gpt-4o/chat/fast").get_json() == {"deployment-id": "gpt-4o", "mode": "fast"}
    assert client.get("/deployments/gpt-4o/chat").get_json() == {"deployment-id": "gpt-4o"}
    assert client.get("/n/7").get_json() == {"n": "7"}
    assert client.get("/n/2").status_code == 404
    assert client.get("/n/x").status_code == 404
    assert client.get("/w/abc").get_json() == {"word": "abc"}
    assert client.get("/w/a1").status_code == 404
    assert client.get("/files/a/b/c.txt").get_json() == {"path": "a/b/c.txt"}
    assert client.get("/files").get_json() == {}
    assert client.get("/code/ab1").get_json() == {"c": "ab1"}
    assert client.get("/code/abc").status_code == 404
    assert client.get("/docs").get_json() == {"lang": "en"}
    assert client.get("/docs/de").get_json() == {"lang": "de"}


def test_get_functions_still_works_around_the_host(app_dir):
    app = load_function_app(app_dir)
    assert len(app.get_functions()) == 4  # e.g. a test reading the bindings first
    client = Client(build_wsgi_app(app, "", []))
    assert client.get("/items/1").status_code == 200
    assert len(app.get_functions()) == 4  # ... or after the host indexed them


def test_a_second_app_replaces_the_first(app_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    (other / "function_app.py").write_text(textwrap.dedent('''
        import azure.functions as func
        app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

        @app.route(route="items/{id}")
        def other(req):
            return func.HttpResponse("other app")
    '''))
    first, second = load_function_app(app_dir), load_function_app(other)
    assert first is not second
    assert Client(build_wsgi_app(second, "", [])).get("/items/1").get_data() == b"other app"


# --- CORS ---------------------------------------------------------------------------------

def preflight(client, origin):
    return client.options("/api/echo", headers={
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    })


def test_preflight_allowed_origin(client):
    r = preflight(client, ALLOWED)
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    allowed_headers = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in r.headers["Vary"]
    assert r.headers["Access-Control-Allow-Credentials"] == "true"


def test_preflight_disallowed_origin_gets_no_cors_headers(client):
    r = preflight(client, "http://evil.example")
    assert r.status_code in (200, 204)
    assert not [k for k in r.headers.keys() if k.lower().startswith("access-control-")]  # noqa: SIM118 - Headers iterate as pairs


def test_cors_header_on_actual_response(client):
    r = client.get("/api/items/1", headers={"Origin": ALLOWED, "Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
    # Error answers carry it too, so the page can show their message.
    assert client.get("/api/nothing", headers={"Origin": ALLOWED}).headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Access-Control-Allow-Origin" not in client.get(
        "/api/items/1", headers={"Origin": "http://evil.example"}).headers


# --- settings -----------------------------------------------------------------------------

def test_environment_wins_over_local_settings(app_dir, monkeypatch):
    monkeypatch.setenv("OVERRIDABLE", "from-environment")
    settings = load_local_settings(app_dir / "local.settings.json")
    assert os.environ["OVERRIDABLE"] == "from-environment"
    assert os.environ["TEST_SCHEDULE"] == "*/1 * * * * *"  # not set before: taken from the file
    assert "OVERRIDABLE" not in settings.applied
    assert settings.cors_origins == [ALLOWED, "http://other.example"]
    assert settings.cors_credentials is True


def test_missing_settings_file_is_fine(tmp_path):
    settings = load_local_settings(tmp_path / "local.settings.json")
    assert settings.values == {} and settings.cors_origins == []


def test_unset_schedule_setting_fails_clearly(app_dir):
    os.environ.pop("TEST_SCHEDULE", None)
    app = load_function_app(app_dir)
    with pytest.raises(ValueError, match="TEST_SCHEDULE"):
        TimerScheduler(app, environ={})
    with pytest.raises(ValueError, match="timer tick: invalid NCRONTAB expression '0 0 25 . . .'"):
        TimerScheduler(app, environ={"TEST_SCHEDULE": "0 0 25 * * *"})


# --- serve(): real HTTP and timers --------------------------------------------------------

def test_serve_http_and_timer(app_dir, monkeypatch):
    monkeypatch.setenv("OVERRIDABLE", "from-environment")
    host = serve(app_dir, free_port())
    try:
        assert host.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{host.url}/items/7?q=x", timeout=5) as r:
            assert r.status == 200
            assert json.load(r) == {"id": "7", "q": "x", "setting": "from-environment"}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{host.url}/boom", timeout=5)
        assert e.value.code == 500 and json.load(e.value)["message"] == "Internal server error"

        ticks = app_dir / "ticks.txt"
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline and _lines(ticks) < 2:
            time.sleep(0.1)
        assert _lines(ticks) >= 2
        assert ticks.read_text().splitlines()[0] == "False"  # on time: not past due
    finally:
        host.shutdown()


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


class FakeTime:
    """The scheduler's clock and wait: waiting moves time on at once; a run "takes" what it says."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.waits: list[float] = []

    def clock(self) -> datetime:
        return self.now

    def wait(self, stopping: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += timedelta(seconds=seconds)
        return stopping.is_set()

    def spend(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_timer_skips_occurrences_while_a_run_overruns(tmp_path, caplog):
    """Every second, a run that takes 1.6 s: one run at a time, the overrun occurrence skipped, not
    queued (the real host's singleton lock), on a clock the test drives."""
    (tmp_path / "function_app.py").write_text(textwrap.dedent('''
        import azure.functions as func
        app = func.FunctionApp()
        runs = []

        @app.timer_trigger(schedule="*/1 * * * * *", arg_name="t")
        def slow(t):
            runs.append(t.past_due)
    '''))
    app = load_function_app(tmp_path)
    time_ = FakeTime(datetime(2026, 12, 1, 12, 0, 0, 500_000, tzinfo=UTC))
    scheduler = TimerScheduler(app, clock=time_.clock, wait=time_.wait)
    (timer,) = scheduler.timers
    stopping = threading.Event()
    fired: list[datetime] = []
    run = timer._fire

    def slow_fire(scheduled, now):
        fired.append(scheduled)
        run(scheduled, now)
        time_.spend(1.6)
        if len(fired) == 3:
            stopping.set()

    timer._fire = slow_fire
    timer._loop(stopping)
    assert [f.second for f in fired] == [1, 3, 5], "the occurrences at :02 and :04 fell in a run: skipped"
    assert "overran" in caplog.text
    assert time_.waits and all(w >= 0 for w in time_.waits)


# --- NCRONTAB -----------------------------------------------------------------------------

def test_ncrontab_every_30_seconds():
    cron = Ncrontab("*/30 * * * * *")
    t = datetime(2024, 1, 31, 23, 59, 10)
    times = []
    for _ in range(3):
        t = cron.next_after(t)
        times.append(t)
    assert times == [datetime(2024, 1, 31, 23, 59, 30), datetime(2024, 2, 1, 0, 0, 0),
                     datetime(2024, 2, 1, 0, 0, 30)]
    assert cron.next_after(datetime(2024, 1, 1, 0, 0, 30)) == datetime(2024, 1, 1, 0, 1, 0)  # strictly after


def test_ncrontab_weekdays_at_nine():
    cron = Ncrontab("0 0 9 * * 1-5")
    # Friday 2024-03-01 10:00 -> Monday 2024-03-04 09:00 (Sunday is 0, so 1-5 is Mon-Fri).
    assert cron.next_after(datetime(2024, 3, 1, 10, 0)) == datetime(2024, 3, 4, 9, 0)
    assert cron.next_after(datetime(2024, 3, 4, 8, 59, 59)) == datetime(2024, 3, 4, 9, 0)


def test_ncrontab_five_fields_and_lists():
    cron = Ncrontab("15,45 10-12/2 * * *")  # no seconds field: fires at second 0
    t = datetime(2024, 5, 5, 10, 20, 5)
    assert cron.next_after(t) == datetime(2024, 5, 5, 10, 45, 0)
    assert cron.next_after(datetime(2024, 5, 5, 10, 45)) == datetime(2024, 5, 5, 12, 15)
    assert Ncrontab("0 0 0 * * Sun").next_after(datetime(2024, 5, 5, 1)) == datetime(2024, 5, 12)


@pytest.mark.parametrize("expr, message", [
    ("* * * *", "expected 6 fields"),
    ("61 * * * * *", "second field '61': 61 is out of range 0-59"),
    ("0 0 25 * * *", "hour field '25'"),
    ("0 0 9 * * 7", "day-of-week field '7'"),
    ("0 5-1 * * * *", "runs backwards"),
    ("*/0 * * * * *", "step must be at least 1"),
    ("0 0 x * * *", "'x' is not a number"),
    ("0 0 0 30 2 *", "never fires"),
])
def test_ncrontab_invalid(expr, message):
    with pytest.raises(ValueError, match=message):
        Ncrontab(expr).next_after(datetime(2024, 1, 1))
