"""GET /api/docs: Swagger UI over the OpenAPI document, from the packaged files (no CDN); and the
page itself in headless Chromium when it is on the machine (scripts/docs_check.mjs)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

PW_DIR = Path("/tmp/browser-check-node")


def test_the_page_loads_its_files_from_the_app_only(http):
    page = http.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "https://" not in html and "http://" not in html, "no CDN: every file comes from the app"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for name, kind in (("swagger-ui.css", "text/css"), ("swagger-ui-bundle.js", "text/javascript"),
                       ("init.js", "text/javascript")):
        assert f'docs/{name}' in html
        asset = http.get(f"/api/docs/{name}")
        assert asset.status_code == 200 and asset.mimetype == kind, name
        assert len(asset.get_data()) > (100 if name == "init.js" else 10_000), name
    assert "openapi.json" in http.get("/api/docs/init.js").get_data(as_text=True)
    bundle = http.get("/api/docs/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle


def test_only_the_pages_files_are_served(http):
    for name in ("index.html", "..%2Fopenapi.py", "swagger-ui.js", "oauth2-redirect.html"):
        answer = http.get(f"/api/docs/{name}")
        assert answer.status_code == 404, name
        assert answer.get_json()["message"] == "Not found"


def test_the_package_is_pinned_and_apache_licensed():
    from importlib.metadata import metadata

    pins = (ROOT / "requirements.txt").read_text()
    assert "swagger-ui-bundle-v2==5.31.0" in pins
    meta = metadata("swagger-ui-bundle-v2")
    assert meta["Version"] == "5.31.0" and meta["License"] == "Apache-2.0"


def test_the_page_in_headless_chromium(kube_cluster, namespace, tmp_path):
    """Loads, lists every operation of the document, and "Try it out" on GET /api/models works."""
    if not (shutil.which("node") and Path("/usr/bin/chromium").exists()
            and (PW_DIR / "node_modules" / "playwright-core").is_dir()):
        pytest.skip("node, Debian chromium and playwright-core (scripts/browser_check.sh installs them) are needed")
    import os
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(PYTHONPATH=str(ROOT), KUBECONFIG=str(kube_cluster.kubeconfig), KUBERNETES_NAMESPACE=namespace,
               CONFIG_FILE=str(ROOT / "config.yaml"), LITELLM_API_KEY="sk-docs-check-placeholder",
               APPROVAL_SCHEDULE="0 0 0 1 1 *", TEAM_SCHEDULE="0 0 0 1 1 *")
    log = (tmp_path / "host.log").open("w")
    # No local.settings.json: the environment above configures the app.
    host = subprocess.Popen([sys.executable, "-m", "local_host", "--app-dir", str(ROOT), "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/api/models", timeout=2).read()
                break
            except OSError:
                assert host.poll() is None, (tmp_path / "host.log").read_text()
                time.sleep(0.3)
        result = subprocess.run(["node", str(ROOT / "scripts" / "docs_check.mjs"), "--url", url,
                                 "--pw-dir", str(PW_DIR)], capture_output=True, text=True, timeout=180)
    finally:
        host.terminate()
        host.wait(15)
    report = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}
    assert result.returncode == 0, f"{report}\n{result.stderr[-2000:]}"
    assert report["operations"] == report["documented"] and report["operations"] >= 20
    assert report["foreign"] == [] and report["tryIt"]["status"] == 200 and report["tryIt"]["models"] >= 1
