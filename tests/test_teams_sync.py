"""`python -m shared.teams sync|plan` against the app served by the local host on a real socket,
the real kube-apiserver (team records, keys Secrets, KAITO Workspaces) and the ARM stand-in (the
real azure-mgmt-apimanagement client over HTTPS), with the team timer function run in between:
create, nothing to send, one change, prune, the deletion limit, invalid files, the plan in text
and JSON, `GET /api/teams`; then the HTTP client's retries, timeouts and credentials on their own."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from shared import context
from shared.domain.team import content_hash
from shared.teams.__main__ import main
from shared.teams.client import AppClient, EntraToken, Unreachable, retry_after_seconds
from tests.conftest import ROOT, free_port
from tests.teams_fixtures import (
    API_IDS,
    AZURE_SUBSCRIPTION,
    RESOURCE_GROUP,
    SEED_EXAMPLE,
    StaticToken,
    catalog_file,
    per_model_file,
)
from tests.test_local_cluster import GROUP, PLURAL, VERSION

API_KEY = "ak-sync-" + "k" * 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def seed_file(team: str) -> str:
    return SEED_EXAMPLE.replace("name: alpha", f"name: {team}").replace("alpha-lead", f"{team}-lead")


FILES = {"alpha": SEED_EXAMPLE, "beta": per_model_file(), "gamma": catalog_file()}


class Recorder:
    """WSGI middleware in front of the app: every request it gets, and faults to answer first."""

    def __init__(self, app) -> None:
        self.app = app
        self.calls: list[tuple[str, str, str]] = []
        self.faults: list[tuple[str, list[tuple[str, str]]]] = []  # answered to the next requests, in turn
        self.refuse: dict[tuple[str, str], str] = {}  # (method, path) -> the status always answered
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            self.calls.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("QUERY_STRING", "")))
            fault = self.faults.pop(0) if self.faults else None
            refused = self.refuse.get((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
            if fault is None and refused is not None:
                fault = (refused, [])
        if fault is not None:
            status, headers = fault
            start_response(status, [("Content-Type", "application/json"), *headers])
            return [b'{"message": "The service is busy", "detail": null}']
        return self.app(environ, start_response)

    def writes(self) -> list[tuple[str, str]]:
        """PUTs and DELETEs that change something (a dry-run DELETE does not)."""
        return [(m, p) for m, p, q in self.calls if m == "PUT" or (m == "DELETE" and "dryRun" not in q)]

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()


class LiveApp:
    def __init__(self, url, recorder, service, namespace, objects, core, timer) -> None:
        self.url, self.recorder, self.service, self.namespace = url, recorder, service, namespace
        self.objects, self.core, self._timer = objects, core, timer

    def tick(self) -> None:
        """One run of the team timer function, as the host would start it."""
        from azure.functions.timer import TimerRequest

        from local_host.functions import invoke

        invoke(self._timer, TimerRequest(past_due=False))

    def workspaces(self) -> set[str]:
        body = self.objects.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return {item["metadata"]["name"] for item in body["items"]}

    def secrets(self, selector: str, namespace: str | None = None) -> set[str]:
        return {s.metadata.name for s in self.core.list_namespaced_secret(namespace or self.namespace,
                                                                           label_selector=selector).items}

    def team_keys(self) -> set[str]:
        """The teams' keys Secrets, where they live (TEAM_KEYS_NAMESPACE, conftest's app_env)."""
        assert not self.secrets("app.kubernetes.io/component=llm-team-api-key"), "no team key beside the records"
        return self.secrets("app.kubernetes.io/component=llm-team-api-key", f"{self.namespace}-keys")

    def get(self, path: str, **kwargs):
        return httpx.get(self.url + path, headers={"x-functions-key": API_KEY}, timeout=10, **kwargs)


@pytest.fixture
def live(app_env, wsgi_app, functions, monkeypatch, tmp_path, arm, apim_service, workspace_crd,
         kube_api_client):
    """The app on 127.0.0.1:<free port> (the local host's WSGI app behind werkzeug's threaded
    server), with APIM on the ARM stand-in and KAITO on the test cluster."""
    from kubernetes import client
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the local host serves

        def log_request(self, *args, **kwargs) -> None:
            pass

    from shared.adapters import apim

    service_name, service = apim_service
    for name, value in {"ADMIN_API_KEY": API_KEY, "APIM_TEAM_API_IDS": ",".join(API_IDS),
                        "EMAIL_OUTBOX_DIR": str(tmp_path / "outbox"), "APIM_SUBSCRIPTION_ID": AZURE_SUBSCRIPTION,
                        "APIM_RESOURCE_GROUP": RESOURCE_GROUP, "APIM_SERVICE_NAME": service_name,
                        "ARM_ENDPOINT": arm.url, "CA_BUNDLE": str(arm.ca_pem_path)}.items():
        monkeypatch.setenv(name, value)
    for name in ("GITHUB_SHA", "BUILD_SOURCEVERSION", "CI_COMMIT_SHA", "ADMIN_ENTRA_SCOPE", "LLM_KEY_REQUESTOR_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(apim, "default_credential", lambda client_id=None: StaticToken(arm.token))
    context.reset()
    context.settings()  # the app's settings, read now: a test may change the CLI's ADMIN_API_KEY later
    recorder = Recorder(wsgi_app)
    server = make_server("127.0.0.1", free_port(), recorder, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveApp(f"http://127.0.0.1:{server.server_port}", recorder, service, app_env,
                      client.CustomObjectsApi(kube_api_client), client.CoreV1Api(kube_api_client),
                      functions["team_timer"])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A checkout with developer-requests/{alpha,beta,gamma}/access.yaml; the working directory."""
    root = tmp_path / "repo"
    for team, text in FILES.items():
        write(root, team, text)
    monkeypatch.chdir(root)
    return root


def write(root: Path, team: str, text: str) -> Path:
    path = root / "developer-requests" / team / "access.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def remove(root: Path, team: str) -> None:
    path = root / "developer-requests" / team
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def sync(live: LiveApp, *extra: str, sleep=None) -> int:
    return main(["sync", "developer-requests", "--url", live.url, "--commit", COMMIT, *extra],
                sleep=Sleeps() if sleep is None else sleep)


def rows(out: str) -> dict[str, tuple[str, str]]:
    """The table: team -> (action, result)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TEAM "))
    table = {}
    for line in lines[start + 1:]:
        parts = line.split(None, 2)
        if len(parts) < 3 or line.startswith(("warning:", "sync:", "dry run:", "plan:", "refused", "error:")):
            break
        table[parts[0]] = (parts[1], parts[2])
    return table


# --- sync end to end ---------------------------------------------------------------------------------------


def test_sync_creates_three_teams_then_sends_nothing_then_one_put(live, repo, capsys):
    assert sync(live) == 0
    out = capsys.readouterr().out
    assert sorted(live.recorder.writes()) == [("PUT", "/api/teams/alpha"), ("PUT", "/api/teams/beta"),
                                              ("PUT", "/api/teams/gamma")]
    table = rows(out)
    assert table == {"alpha": ("create", "created (201), generation 1"),
                     "beta": ("create", "created (201), generation 1"),
                     "gamma": ("create", "created (201), generation 1")}
    assert "+ create    APIM product           product-alpha" in out  # the app's plan, printed before the table
    assert out.rstrip().endswith("sync: 3 teams: 3 created, 0 updated, 0 retried, 0 deleted, 0 unchanged; "
                                 "3 write(s), 0 error(s)")

    # GET /api/teams: content hash, state, last sync, source and commit.
    listed = {t["team"]: t for t in live.get("/api/teams").json()["teams"]}
    assert sorted(listed) == ["alpha", "beta", "gamma"]
    for team, text in FILES.items():
        assert listed[team]["content_sha256"] == content_hash(text)
        assert listed[team]["source"] == f"developer-requests/{team}/access.yaml"
        assert listed[team]["commit"] == COMMIT
        assert listed[team]["phase"] == "pending" and listed[team]["in_sync"] is False
        assert listed[team]["last_sync_at"] and listed[team]["last_sync_by"] == "api-key:api-key"

    live.tick()
    assert set(live.service.products) == {"product-alpha", "product-beta", "product-gamma"}
    assert live.workspaces() == {"beta-phi-3-mini-4k-instruct", "gamma-llama-3-1-8b-instruct"}
    listed = {t["team"]: t for t in live.get("/api/teams").json()["teams"]}
    assert all(t["phase"] == "ready" and t["in_sync"] and t["reconciled_at"] for t in listed.values())

    # A second sync: nothing to send, not even a check.
    live.recorder.clear()
    assert sync(live) == 0
    out = capsys.readouterr().out
    assert live.recorder.writes() == []
    assert [m for m, _, _ in live.recorder.calls] == ["GET"]
    assert {team: action for team, (action, _) in rows(out).items()} == {t: "unchanged" for t in FILES}
    assert "0 write(s)" in out.splitlines()[-1]

    # One file changed: one PUT, a new generation, the others left alone.
    write(repo, "beta", per_model_file().replace("tokensPerMinute: 8000", "tokensPerMinute: 9000"))
    live.recorder.clear()
    assert sync(live) == 0
    out = capsys.readouterr().out
    assert live.recorder.writes() == [("PUT", "/api/teams/beta")]
    assert rows(out)["beta"] == ("update", "updated (202), generation 2")
    assert "~ update    APIM product policy" in out and "gpt-4o-mini: 8,000 tokens/min" in out
    live.tick()
    beta = live.get("/api/teams/beta").json()
    assert beta["generation"] == beta["observed_generation"] == 2 and beta["phase"] == "ready"
    assert beta["content_sha256"] == content_hash((repo / "developer-requests/beta/access.yaml").read_text())


def test_a_comment_is_recorded_without_a_new_generation_and_a_failed_team_is_retried(live, repo, capsys):
    assert sync(live) == 0
    live.tick()
    capsys.readouterr()
    write(repo, "alpha", "# owned by the platform team\n" + SEED_EXAMPLE)
    live.recorder.clear()
    assert sync(live) == 0
    assert live.recorder.writes() == [("PUT", "/api/teams/alpha")]
    assert rows(capsys.readouterr().out)["alpha"] == ("update", "grant unchanged (200), file recorded")
    alpha = live.get("/api/teams/alpha").json()
    assert alpha["generation"] == 1 and alpha["phase"] == "ready"
    live.recorder.clear()
    assert sync(live) == 0 and live.recorder.writes() == []
    capsys.readouterr()

    store = context.team_store()
    gamma = store.get("gamma")
    store.update(gamma.with_changes(gamma.updated_at, phase="failed", settled=True, last_error="APIM said no"))
    live.recorder.clear()
    assert sync(live) == 0
    assert live.recorder.writes() == [("PUT", "/api/teams/gamma")]
    action, result = rows(capsys.readouterr().out)["gamma"]
    assert (action, result) == ("retry", "retry accepted (202), generation 1")
    live.tick()
    assert live.get("/api/teams/gamma").json()["phase"] == "ready"


def test_prune_deletes_a_removed_folder_and_its_apim_and_kaito_resources(live, repo, capsys):
    assert sync(live) == 0
    live.tick()
    assert "gamma-api-key" in live.team_keys()
    remove(repo, "gamma")
    capsys.readouterr()

    live.recorder.clear()
    assert sync(live) == 0  # without --prune: kept, and said so
    out = capsys.readouterr().out
    assert live.recorder.writes() == []
    assert rows(out)["gamma"] == ("orphan", "no folder (kept: --prune deletes it)")
    assert "1 without a folder (kept; --prune deletes them)" in out.splitlines()[-1]

    live.recorder.clear()
    assert sync(live, "--prune") == 0
    out = capsys.readouterr().out
    assert live.recorder.writes() == [("DELETE", "/api/teams/gamma")]
    assert rows(out)["gamma"] == ("delete", "deletion accepted (202); the timer removes its resources")
    assert "- delete    KAITO Workspace        gamma-llama-3-1-8b-instruct" in out
    assert "- delete    APIM subscription      sub-gamma" in out

    live.tick()
    assert "product-gamma" not in live.service.products and "sub-gamma" not in live.service.subscriptions
    assert live.workspaces() == {"beta-phi-3-mini-4k-instruct"}
    assert live.team_keys() == {"alpha-api-key", "beta-api-key"}
    assert [t["team"] for t in live.get("/api/teams").json()["teams"]] == ["alpha", "beta"]
    live.recorder.clear()
    assert sync(live, "--prune") == 0 and live.recorder.writes() == []


def test_more_deletions_than_max_deletes_are_refused_and_nothing_is_sent(live, repo, capsys):
    for team in ("delta", "epsilon", "zeta"):
        write(repo, team, seed_file(team))
    assert sync(live) == 0
    capsys.readouterr()
    for team in ("beta", "gamma", "delta", "epsilon"):
        remove(repo, team)
    write(repo, "alpha", SEED_EXAMPLE.replace("5000", "6000"))  # a change is held back too

    live.recorder.clear()
    assert sync(live, "--prune", "--max-deletes", "3") == 1
    out = capsys.readouterr().out
    assert live.recorder.writes() == []
    assert "refused: 4 teams would be deleted, more than --max-deletes 3; nothing was sent" in out
    assert rows(out)["beta"][0] == "delete" and rows(out)["beta"][1].startswith("not sent: refused")
    assert rows(out)["alpha"][1].startswith("not sent: refused")
    listed = live.get("/api/teams").json()["teams"]
    assert len(listed) == 6 and not any(t["deleting"] for t in listed)
    assert live.get("/api/teams/alpha").json()["generation"] == 1

    assert sync(live, "--prune") == 1  # the default limit is 3 as well
    capsys.readouterr()
    live.recorder.clear()
    assert sync(live, "--prune", "--force") == 0
    assert sorted(live.recorder.writes()) == [("DELETE", f"/api/teams/{t}") for t in
                                              ("beta", "delta", "epsilon", "gamma")] + [("PUT", "/api/teams/alpha")]
    listed = {t["team"]: t for t in live.get("/api/teams").json()["teams"]}
    assert {t for t, v in listed.items() if v["deleting"]} == {"beta", "delta", "epsilon", "gamma"}


def test_an_invalid_file_anywhere_sends_nothing(live, repo, capsys):
    bad = repo / "developer-requests" / "nested" / "zeta" / "access.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(seed_file("zeta").replace("5000", "-1"))
    live.recorder.clear()
    assert sync(live, "--prune") == 1
    out = capsys.readouterr().out
    assert live.recorder.calls == []  # not even the list: the files are checked first
    assert out.splitlines()[0] == ("developer-requests/nested/zeta/access.yaml: limits.tokensPerMinute: "
                                   "must be greater than 0, not -1")
    assert out.splitlines()[-1] == "sync: 1 problem(s) in 4 file(s); nothing sent"

    # Valid here, but not for the app (its catalog lacks the model): checked by the app before any PUT.
    bad.unlink()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    extra = copy.deepcopy(config["models"][0])
    extra["id"] = "gpt-4-1"
    config["models"].append(extra)
    local = repo.parent / "newer-config.yaml"
    local.write_text(yaml.safe_dump(config))
    write(repo, "zeta", seed_file("zeta").replace("- gpt-4o", "- gpt-4-1"))
    live.recorder.clear()
    assert sync(live, "--config", str(local)) == 1
    out = capsys.readouterr().out
    assert live.recorder.writes() == []
    assert any(line.startswith("developer-requests/zeta/access.yaml: models.foundry.models[0]: 'gpt-4-1' is not a "
                               "model") and line.endswith("(says the app)") for line in out.splitlines())
    assert context.team_store().get("alpha") is None


def test_dry_run_and_plan_print_the_plan_the_app_would_execute(live, repo, capsys):
    assert sync(live) == 0
    live.tick()
    write(repo, "beta", per_model_file().replace("instanceType: Standard_NC6s_v3", "instanceType: Standard_NC6s_v3\n"
                                                 "      - name: mistral-7b"))
    remove(repo, "gamma")
    capsys.readouterr()

    live.recorder.clear()
    assert sync(live, "--prune", "--dry-run") == 0
    dry = capsys.readouterr().out
    assert main(["plan", "developer-requests", "--url", live.url, "--prune", "--commit", COMMIT]) == 0
    planned = capsys.readouterr().out
    assert live.recorder.writes() == []
    assert dry.splitlines()[:-1] == planned.splitlines()[:-1]  # the same plan; only the summary's head differs
    assert dry.splitlines()[-1].startswith("dry run: 3 teams: 0 to create, 1 to update, 0 to retry, 1 to delete")
    assert planned.splitlines()[-1].startswith("plan: 3 teams:")
    assert "+ create    KAITO Workspace        beta-mistral-7b-instruct" in dry
    assert "- delete    APIM product           product-gamma" in dry
    assert rows(dry)["beta"] == ("update", "would be updated: the file changed")

    assert main(["sync", "developer-requests", "--url", live.url, "--prune", "--dry-run", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["dry_run"] is True and document["exit_code"] == 0 and document["summary"]["writes"] == 0
    teams = {t["team"]: t for t in document["teams"]}
    assert {t: v["action"] for t, v in teams.items()} == {"alpha": "unchanged", "beta": "update", "gamma": "delete"}
    changes = {(c["action"], c["kind"], c["name"]) for c in teams["beta"]["plan"]["changes"]}
    assert ("create", "KAITO Workspace", "beta-mistral-7b-instruct") in changes
    assert ("unchanged", "APIM subscription", "sub-beta") in changes
    gamma = {(c["kind"], c["name"]) for c in teams["gamma"]["plan"]["changes"]}
    assert gamma == {("APIM subscription", "sub-gamma"), ("APIM product", "product-gamma"),
                     ("APIM product policy", "product-gamma/policy"), ("Kubernetes Secret", "gamma-api-key"),
                     ("KAITO Workspace", "gamma-llama-3-1-8b-instruct"),
                     *{("APIM product API link", f"product-gamma/apis/{api}") for api in API_IDS}}
    assert teams["beta"]["live"]["content_sha256"] == content_hash(per_model_file())
    assert teams["beta"]["content_sha256"] != teams["beta"]["live"]["content_sha256"]
    assert live.recorder.writes() == []
    assert live.get("/api/teams/gamma").json()["deleting"] is False


def test_plan_without_credentials_asks_the_app_anonymously(live, repo, capsys, monkeypatch):
    assert sync(live) == 0
    write(repo, "alpha", SEED_EXAMPLE.replace("5000", "2500"))
    remove(repo, "gamma")
    capsys.readouterr()
    monkeypatch.delenv("ADMIN_API_KEY")
    live.recorder.clear()
    assert main(["plan", "developer-requests", "--url", live.url, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {m for m, _, _ in live.recorder.calls} == {"POST"}  # validate only: no list, no write
    assert document["anonymous"] is True
    assert {t["team"]: t["action"] for t in document["teams"]} == {"alpha": "update", "beta": "unchanged"}
    assert "shows no deletions" in document["warnings"][0]
    # sync itself needs credentials: a usage error, nothing sent.
    assert main(["sync", "developer-requests", "--url", live.url]) == 2
    assert "sync needs admin credentials" in capsys.readouterr().err


def test_wrong_credentials_and_an_unreachable_app_exit_2(live, repo, capsys, monkeypatch):
    monkeypatch.setenv("ADMIN_API_KEY", "ak-wrong")
    assert sync(live) == 2
    out = capsys.readouterr().out
    assert "error: GET /api/teams answered 401: The API key is not valid (sent ADMIN_API_KEY)" in out
    monkeypatch.setenv("ADMIN_API_KEY", API_KEY)

    sleeps = Sleeps()
    closed = f"http://127.0.0.1:{free_port()}"
    assert main(["sync", "developer-requests", "--url", closed, "--retries", "2"], sleep=sleeps) == 2
    captured = capsys.readouterr()
    assert f"error: GET /api/teams: cannot reach {closed} (ConnectError" in captured.out
    assert "(tried 3 times)" in captured.out and sleeps == [1.0, 2.0]
    assert captured.err.count("retry: ") == 2
    assert context.team_store().get("alpha") is None


def test_a_refused_put_holds_back_the_deletions_and_a_vanished_app_stops_the_run(live, repo, capsys):
    for team in ("delta", "epsilon"):
        write(repo, team, seed_file(team))
    assert sync(live) == 0
    remove(repo, "delta")
    write(repo, "alpha", SEED_EXAMPLE.replace("5000", "6000"))
    write(repo, "beta", per_model_file().replace("8000", "9000"))
    capsys.readouterr()

    live.recorder.refuse[("PUT", "/api/teams/alpha")] = "409 Conflict"
    live.recorder.clear()
    assert sync(live, "--prune") == 1
    out = capsys.readouterr().out
    assert live.recorder.writes() == [("PUT", "/api/teams/alpha"), ("PUT", "/api/teams/beta")]
    table = rows(out)
    assert table["alpha"] == ("update", "error: PUT /api/teams/alpha answered 409: The service is busy")
    assert table["beta"] == ("update", "updated (202), generation 2")
    assert table["delta"] == ("delete", "not sent: the update of alpha failed: no folder any more")
    assert out.splitlines()[-1].endswith("2 write(s), 1 error(s), 1 not sent")

    live.recorder.refuse = {("PUT", "/api/teams/alpha"): "503 Service Unavailable"}
    live.recorder.clear()
    assert sync(live, "--prune", "--retries", "1") == 2
    out = capsys.readouterr().out
    assert live.recorder.writes() == [("PUT", "/api/teams/alpha"), ("PUT", "/api/teams/alpha")]
    assert rows(out)["alpha"] == ("update", "error: no answer")
    assert "error: PUT /api/teams/alpha answered 503: The service is busy (tried 2 times)" in out
    assert context.team_store().get("delta").deleting is False

    live.recorder.refuse = {}
    assert sync(live, "--prune") == 0
    assert context.team_store().get("delta").deleting is True


def test_429_and_503_with_retry_after_are_waited_out(live, repo, capsys):
    live.recorder.faults = [("503 Service Unavailable", [("Retry-After", "7")]),
                            ("429 Too Many Requests", [("Retry-After", "2")]),
                            ("502 Bad Gateway", [])]
    sleeps = Sleeps()
    assert sync(live, sleep=sleeps) == 0
    assert sleeps == [7.0, 2.0, 4.0]  # Retry-After as given; without one, backoff (third try: 4 s)
    assert len(live.recorder.writes()) == 3
    assert "retry: GET /api/teams answered 503: The service is busy; retrying in 7 s (try 2 of 5)" \
        in capsys.readouterr().err

    live.recorder.faults = [("503 Service Unavailable", [("Retry-After", "3600")])]
    assert sync(live) == 2
    assert "it asks to retry after 3600 s, longer than 120 s: try again later" in capsys.readouterr().out


def test_list_endpoint_pages_and_needs_admin(live, repo, capsys):
    assert sync(live) == 0
    assert httpx.get(live.url + "/api/teams", timeout=10).status_code == 401
    first = live.get("/api/teams", params={"limit": "2"}).json()
    assert [t["team"] for t in first["teams"]] == ["alpha", "beta"] and first["count"] == 2 and first["continue"]
    second = live.get("/api/teams", params={"limit": "2", "continue": first["continue"]}).json()
    assert [t["team"] for t in second["teams"]] == ["gamma"] and second["continue"] is None
    assert live.get("/api/teams", params={"limit": "0"}).status_code == 422
    assert live.get("/api/teams", params={"continue": "not-a-token"}).status_code == 422
    dry = httpx.delete(live.url + "/api/teams/alpha?dryRun=true", timeout=10,
                       headers={"x-functions-key": API_KEY, "Content-Type": "application/json"})
    assert dry.status_code == 200 and dry.json()["plan"]["action"] == "delete"
    assert live.get("/api/teams/alpha").json()["deleting"] is False
    assert httpx.delete(live.url + "/api/teams/nobody?dryRun=true", headers={"x-functions-key": API_KEY,
                                                                           "Content-Type": "application/json"},
                        timeout=10).status_code == 404
    bad_commit = httpx.put(live.url + "/api/teams/alpha", headers={"x-functions-key": API_KEY}, timeout=10,
                           json={"path": "developer-requests/alpha/access.yaml", "content": SEED_EXAMPLE,
                                 "commit": "not a commit"})
    assert bad_commit.status_code == 422 and "commit" in bad_commit.json()["message"]


# --- the HTTP client on its own ---------------------------------------------------------------------------


def test_timeouts_are_retried_with_backoff_then_reported():
    sleeps = Sleeps()

    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    client = AppClient("https://app.example", timeout=5, retries=4, sleep=sleeps,
                       transport=httpx.MockTransport(handler))
    with pytest.raises(Unreachable) as caught:
        client.list_teams()
    assert caught.value.message == "GET /api/teams: no answer from https://app.example within 5 s (tried 5 times)"
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_retry_after_as_an_http_date():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:09 GMT", lambda: now) == 9.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", lambda: now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_an_entra_token_is_sent_as_a_bearer_token(tmp_path, monkeypatch, capsys):
    import azure.identity
    from azure.core.credentials import AccessToken

    scopes = []

    class Credential:
        def get_token(self, *wanted, **kwargs):
            scopes.extend(wanted)
            return AccessToken("entra-token-123", 4_102_444_800)

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", Credential)
    monkeypatch.delenv("ADMIN_API_KEY", raising=False)
    seen = []

    def handler(request):
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        return httpx.Response(200, json={"teams": [], "unreadable": [], "continue": None})

    write(tmp_path, "alpha", SEED_EXAMPLE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONFIG_FILE", str(ROOT / "config.yaml"))
    code = main(["sync", "developer-requests", "--url", "https://app.example", "--entra-scope",
                 "api://llm-key-requestor/.default", "--dry-run"], transport=httpx.MockTransport(handler))
    assert code == 0, capsys.readouterr()
    assert seen[0] == ("GET", "/api/teams", "Bearer entra-token-123")
    assert ("POST", "/api/teams/validate", None) in seen  # validate is anonymous: no token sent
    assert scopes == ["api://llm-key-requestor/.default"]


def test_an_entra_failure_is_a_clear_exit_2():
    class Broken:
        def get_token(self, *scopes, **kwargs):
            raise RuntimeError("DefaultAzureCredential failed to retrieve a token\nlong details")

    from shared.teams.client import Refused

    with pytest.raises(Refused) as caught:
        EntraToken("api://app/.default", credential=Broken()).headers()
    assert caught.value.message == ("could not get an Entra ID token for api://app/.default: "
                                    "DefaultAzureCredential failed to retrieve a token")


def test_the_api_key_path_never_imports_azure_identity(tmp_path):
    write(tmp_path, "alpha", SEED_EXAMPLE)
    code = ("import sys; from shared.teams.__main__ import main; "
            f"rc = main(['sync', {str(tmp_path / 'developer-requests')!r}, '--url', 'http://127.0.0.1:{free_port()}', "
            "'--retries', '0']); print(rc, 'azure.identity' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "ADMIN_API_KEY": "ak-x", "CONFIG_FILE": str(ROOT / "config.yaml")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.split()[-2:] == ["2", "False"], result.stderr


def test_usage_errors_exit_2(tmp_path, capsys, monkeypatch):
    write(tmp_path, "alpha", SEED_EXAMPLE)
    monkeypatch.setenv("CONFIG_FILE", str(ROOT / "config.yaml"))
    monkeypatch.setenv("ADMIN_API_KEY", "ak-x")
    monkeypatch.delenv("LLM_KEY_REQUESTOR_URL", raising=False)
    folder = str(tmp_path / "developer-requests")
    assert main(["sync", folder]) == 2
    assert "sync needs the app's URL" in capsys.readouterr().err
    assert main(["sync", folder, "--url", "http://app.example"]) == 2
    assert "use https" in capsys.readouterr().err
    assert main(["sync", folder, "--url", "https://app.example", "--commit", "main"]) == 2
    with pytest.raises(SystemExit) as caught:
        main(["sync", folder, "--url", "https://app.example", "--max-deletes", "-1"])
    assert caught.value.code == 2


def test_decide_compares_by_content_hash_and_path():
    from shared.config import load_config
    from shared.domain.team import TeamCatalog, parse
    from shared.teams.files import TeamFile
    from shared.teams.sync import decide

    catalog = TeamCatalog.from_config(load_config(ROOT / "config.yaml"))

    def file(team: str, text: str, source: str | None = None) -> TeamFile:
        source = source or f"developer-requests/{team}/access.yaml"
        return TeamFile(source, text, parse(text, source, catalog), content_hash(text))

    def live_team(team: str, text: str | None, **extra) -> dict:
        return {"team": team, "content_sha256": content_hash(text) if text else None, "phase": "ready",
                "deleting": False, "source": f"developer-requests/{team}/access.yaml", **extra}

    files = [file("alpha", SEED_EXAMPLE), file("beta", seed_file("beta"), "teams/beta/access.yaml"),
             file("gamma", seed_file("gamma")), file("delta", seed_file("delta")), file("eta", seed_file("eta")),
             file("zeta", seed_file("zeta"))]
    live = [live_team("alpha", SEED_EXAMPLE), live_team("beta", seed_file("beta")), live_team("gamma", None),
            live_team("delta", seed_file("delta"), phase="failed", last_error="boom"),
            live_team("eta", seed_file("eta"), deleting=True, phase="deleting"),
            live_team("old", "x"), live_team("older", "y", deleting=True)]
    got = {row.team: (row.action, row.reason) for row in decide(files, live, prune=False)}
    assert got == {
        "alpha": ("unchanged", "same file (ready)"),
        "beta": ("update", "the file moved from developer-requests/beta/access.yaml"),
        "gamma": ("update", "the app holds no content hash for it (stored before sync kept one)"),
        "delta": ("retry", "same file, but the team failed: boom"),
        "eta": ("create", "the team is being deleted: sending the file cancels that"),
        "zeta": ("create", "no such team in the app"),
        "old": ("orphan", "no folder (kept: --prune deletes it)"),
        "older": ("deleting", "no folder; the app is removing it already"),
    }
    assert [row.team for row in decide(files, live, prune=True) if row.action == "delete"] == ["old"]


def test_content_hash_ignores_line_endings_and_a_bom():
    assert content_hash("a: 1\r\nb: 2\r\n") == content_hash("a: 1\nb: 2\n") == content_hash("\ufeffa: 1\nb: 2\n")
    assert content_hash("a: 1\n") != content_hash("a: 1\n# note\n")


# --- the CI definitions under docs/ci ---------------------------------------------------------------------


def cli_lines(node) -> list[str]:
    """Every `python -m shared.teams ...` command in a CI definition's scripts, continuations joined."""
    if isinstance(node, dict):
        return [line for value in node.values() for line in cli_lines(value)]
    if isinstance(node, list):
        return [line for value in node for line in cli_lines(value)]
    if isinstance(node, str) and "python -m shared.teams" in node:
        text = node.replace("\\\n", " ")
        return [line.strip() for line in text.splitlines() if "python -m shared.teams" in line]
    return []


@pytest.mark.parametrize("name", ["github-actions-teams.yml", "azure-pipelines-teams.yml"])
def test_the_ci_definitions_call_the_cli_as_it_parses(name):
    import shlex

    from shared.teams.__main__ import _parser

    document = yaml.safe_load((ROOT / "docs" / "ci" / name).read_text())
    commands = cli_lines(document)
    assert {shlex.split(c)[3] for c in commands} == {"plan", "sync"}
    for command in commands:
        words = shlex.split(command.split(">")[0].split("|")[0])
        args = _parser().parse_args(words[3:])  # a flag the CLI does not know would exit here
        assert args.url == "$LLM_KEY_REQUESTOR_URL" and args.config.endswith("config.yaml")
        if args.command == "sync":
            assert args.prune and not args.force and not args.dry_run
    if name.startswith("github"):
        jobs = document["jobs"]
        assert jobs["sync"]["permissions"]["id-token"] == "write" and jobs["sync"]["environment"] == "teams-sync"
        assert any(step.get("uses", "").startswith("azure/login@") for step in jobs["sync"]["steps"])
        assert "secrets." not in json.dumps(jobs["plan"]) and "id-token" not in jobs["plan"]["permissions"]
    else:
        steps = document["stages"][1]["jobs"][0]["steps"]
        assert any(step.get("task") == "AzureCLI@2" for step in steps)
