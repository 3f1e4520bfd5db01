"""The first hour as the README tells it: its commands, run as written.

`scripts/run`'s host (`python -m local_host --local-litellm`, the sample settings) is started as a
subprocess against the session's real kube-apiserver; the README's "Try it" `curl` lines are run
against it, the request becomes `active` through the local LiteLLM-compatible key endpoint and
its key email lands in the outbox. Then every `kubectl` line of the README and docs/ runs through
`bash` with a kubeconfig written by scripts/local_cluster.py the way `scripts/run` writes it
(context namespace = KUBERNETES_NAMESPACE), without `-n`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_HOST = "http://127.0.0.1:7071"


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)


def commands(text: str, program: str) -> list[str]:
    """The lines of `text` that run `program`, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#(?![^(]*\)).*$", "", line).strip()  # a trailing comment (not inside $(...))
        if line.startswith(program + " "):
            found.append(line)
    return found


def documented(program: str) -> list[tuple[str, str]]:
    return [(path.name, command) for path in DOCS for block in bash_blocks(path)
            for command in commands(block, program)]


def test_the_docs_are_scanned_for_commands():
    kubectl_lines = documented("kubectl")
    assert len(kubectl_lines) >= 8, kubectl_lines
    assert any("request-state=approved --overwrite" in c for _, c in kubectl_lines)
    assert len(documented("curl")) >= 5


@pytest.fixture
def local_run(kube_cluster, namespace, tmp_path):
    """The host as scripts/run starts it, on a free port, with the sample settings."""
    if not shutil.which("curl") or not shutil.which("kubectl"):
        pytest.skip("curl and kubectl are needed to run the README's commands")
    settings = json.loads((ROOT / "local.settings.sample.json").read_text())
    values = settings["Values"]
    litellm_port = free_port()
    values.update(KUBECONFIG=str(kube_cluster.kubeconfig), KUBERNETES_NAMESPACE=namespace,
                  LITELLM_BASE_URL=f"http://127.0.0.1:{litellm_port}",
                  APPROVAL_SCHEDULE="*/2 * * * * *", TEAM_SCHEDULE="0 0 0 1 1 *",
                  EMAIL_OUTBOX_DIR=str(tmp_path / "outbox"), PROCESSOR_BACKOFF_SECONDS="1")
    settings_file = tmp_path / "local.settings.json"
    settings_file.write_text(json.dumps(settings))
    # Only the machine's environment: nothing a test set for the app in this process.
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env["LITELLM_API_KEY"] = values["LITELLM_API_KEY"]
    port = free_port()
    log_file = tmp_path / "host.log"
    with log_file.open("w") as log:
        host = subprocess.Popen(
            [sys.executable, "-m", "local_host", "--app-dir", str(ROOT), "--port", str(port),
             "--settings", str(settings_file), "--local-litellm"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/api/models", timeout=2).read()
                break
            except OSError:
                if host.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the host did not start:\n{log_file.read_text()}")
                time.sleep(0.3)
        yield {"url": url, "log": log_file, "outbox": tmp_path / "outbox", "namespace": namespace}
    finally:
        host.terminate()
        try:
            host.wait(15)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait()


def run(command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_the_first_hour_try_it_and_the_kubectl_runbook(local_run, kube_cluster, tmp_path):
    url, namespace = local_run["url"], local_run["namespace"]
    curls = [c for _, c in documented("curl") if README_HOST in c and "/api/links/" not in c]
    request_id = None
    for command in curls:
        if "<id>" in command and request_id is None:
            continue
        result = run(command.replace(README_HOST, url).replace("<id>", request_id or ""))
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        if "/api/request-key" in command:
            answer = json.loads(result.stdout)
            assert answer["success"] is True and answer["state"] == "pending", answer
            request_id = answer["request_id"]
    assert request_id, "the README's Try it creates a request"
    for command in [c for c in curls if "<id>" in c]:
        result = run(command.replace(README_HOST, url).replace("<id>", request_id))
        assert result.returncode == 0 and request_id in result.stdout, f"{command}\n{result.stdout}"

    # The timer approves gpt-4o, the local key endpoint issues the key, the email lands in outbox/.
    deadline = time.monotonic() + 90
    status: dict = {}
    while time.monotonic() < deadline:
        status = json.loads(urllib.request.urlopen(f"{url}/api/requests/{request_id}", timeout=5).read())
        if status["state"] == "active" and list(local_run["outbox"].glob("*.eml")):
            break
        time.sleep(1)
    log = local_run["log"].read_text()
    assert status.get("state") == "active", f"{status}\n{log}"
    emails = list(local_run["outbox"].glob("*.eml"))
    assert emails and any("alice@example.com" in e.read_text() for e in emails)
    assert "local LiteLLM-compatible key endpoint" in log
    assert re.search(r"INFO HTTP Request: POST http://127.0.0.1:\d+/key/generate \"HTTP/1.1 200 OK\" "
                     rf"\[request_id={request_id}\]", log), log
    # One line per HTTP call, with its level; the invocation's own lines only at DEBUG.
    assert len(re.findall(r"INFO POST /api/request-key -> 201 \(Functions.request_key, \d+ ms\)", log)) == 1
    assert "Executing 'Functions.request_key'" not in log

    # A second request for the runbook's label commands, so the active one is left alone.
    body = json.dumps({"llm": "gpt-4o", "email": "runbook@example.com"}).encode()
    created = urllib.request.urlopen(urllib.request.Request(
        f"{url}/api/request-key", body, {"Content-Type": "application/json"}), timeout=10)
    other = json.loads(created.read())["request_id"]

    # The kubeconfig as scripts/run writes it (`local_cluster.py up --namespace`): no -n needed.
    local_cluster = sys.modules["local_cluster"]
    kubeconfig = tmp_path / "kubeconfig"
    local_cluster._write_kubeconfig(kubeconfig, kube_cluster.server, kube_cluster.ca_file,
                                    kube_cluster.token, namespace)
    env = {"KUBECONFIG": str(kubeconfig)}
    for source, command in documented("kubectl"):
        if "alpha" in command:
            continue  # docs/teams.md's commands on team alpha need it provisioned (APIM): test_teams_*
        as_written = command.replace("-n llm-key-requestor", f"-n {namespace}")
        target = request_id if "describe" in command or "get secret" in command else other
        result = run(as_written.replace("<id>", target), env)
        assert result.returncode == 0, f"{source}: {command}\n{result.stdout}\n{result.stderr}"
        assert "No resources found in default namespace" not in result.stderr + result.stdout, command
    listed = run("kubectl get secrets -l app.kubernetes.io/component=llm-key-request -L request-state", env)
    assert f"llm-key-request-{request_id}" in listed.stdout and "active" in listed.stdout


def test_a_refused_preflight_is_logged_with_its_origin(caplog):
    from werkzeug.wrappers import Request

    from local_host.cors import CorsPolicy

    policy = CorsPolicy(["http://localhost:5173"])

    environ = {"REQUEST_METHOD": "OPTIONS", "PATH_INFO": "/api/models", "HTTP_ORIGIN": "http://evil.example",
               "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "GET", "SERVER_NAME": "x", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}
    with caplog.at_level("WARNING", logger="local_host"):
        response = policy.preflight(Request(environ))
    assert response is not None and "Access-Control-Allow-Origin" not in response.headers
    assert "http://evil.example" in caplog.text and "Host.CORS" in caplog.text
    assert CorsPolicy(["*"]).allows("http://localhost:61234"), 'the README: Host.CORS "*" allows any origin'


def test_the_teams_commands_that_need_no_app_run_as_written(tmp_path):
    """The teams CLI lines of the README and docs/ without --url (those need a deployed app and
    credentials: tests/test_teams_sync.py runs them against the local host)."""
    from tests.teams_fixtures import SEED_EXAMPLE

    team = tmp_path / "developer-requests" / "alpha"
    team.mkdir(parents=True)
    (team / "access.yaml").write_text(SEED_EXAMPLE.replace("team-alpha", "alpha"))
    (tmp_path / ".llm-key-requestor").mkdir()
    shutil.copy(ROOT / "config.yaml", tmp_path / ".llm-key-requestor" / "config.yaml")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {"PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "CONFIG_FILE": str(ROOT / "config.yaml")}
    lines = [(source, c) for program in ("python", ".venv/bin/python") for source, c in documented(program)
             if "shared.teams" in c and "--url" not in c]
    assert len(lines) >= 4, lines
    for source, command in lines:
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                env={**os.environ, **env})
        assert result.returncode == 0, f"{source}: {command}\n{result.stdout}\n{result.stderr}"
