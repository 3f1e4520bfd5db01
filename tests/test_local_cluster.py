"""The local kube-apiserver (scripts/local_cluster.py) serves what the requestor relies on.

Custom resources are the case that crashed a kube-apiserver built from Debian's source with Go 1.19
before the vendored reflect2 was patched (SIGSEGV when it JSON-encodes a nested map), so this
test creates a kaito.sh Workspace-like resource with a deeply nested spec and then checks the log.
The `kube_cluster` fixture (tests/conftest.py) returns a running `local_cluster.Cluster`.
"""

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "kaito.sh", "v1beta1", "workspaces"
CRD_NAME = f"{PLURAL}.{GROUP}"
NAMESPACE = "default"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "local_cluster.py"

WORKSPACE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "workspace", "kind": "Workspace",
                  "shortNames": ["wk"]},
        "versions": [{
            "name": VERSION,
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
            }},
        }],
    },
}


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def api_client(kube_cluster):
    api = config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def workspace_crd(api_client):
    extensions = client.ApiextensionsV1Api(api_client)
    try:
        extensions.create_custom_resource_definition(WORKSPACE_CRD)
    except ApiException as error:
        if error.status != 409:  # another test in this session already registered it
            raise

    def established():
        crd = extensions.read_custom_resource_definition(CRD_NAME)
        return any(c.type == "Established" and c.status == "True"
                   for c in (crd.status.conditions or []))

    wait_for(established, f"CRD {CRD_NAME} to be Established")
    return CRD_NAME


def test_custom_resource_round_trip(kube_cluster, api_client, workspace_crd):
    objects = client.CustomObjectsApi(api_client)
    name = f"falcon-{uuid.uuid4().hex[:8]}"
    spec = {
        "resource": {
            "instanceType": "Standard_NC12s_v3",
            "count": 1,
            "labelSelector": {"matchLabels": {"apps": "falcon-7b"}},
        },
        "inference": {
            "preset": {"name": "falcon-7b", "presetOptions": {"accessMode": "public"}},
            "config": {"limits": {"tokensPerMinute": 1000, "tags": ["a", "b"]},
                       "nested": {"deeper": {"deepest": {"flag": True, "ratio": 0.5}}}},
        },
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workspace",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "local-cluster-test"}},
        "spec": spec,
    }

    # Discovery of a just-established CRD can lag by a moment: retry a 404 briefly.
    def create():
        try:
            return objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    created = wait_for(create, f"the {PLURAL} endpoint", timeout=10)
    assert created["metadata"]["name"] == name

    fetched = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    assert fetched["spec"] == spec
    assert fetched["spec"]["resource"]["labelSelector"]["matchLabels"]["apps"] == "falcon-7b"
    assert fetched["spec"]["inference"]["config"]["nested"]["deeper"]["deepest"] == {
        "flag": True, "ratio": 0.5,
    }
    assert fetched["spec"]["inference"]["config"]["limits"]["tags"] == ["a", "b"]

    listed = objects.list_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL,
        label_selector="app.kubernetes.io/part-of=local-cluster-test",
    )
    assert name in [item["metadata"]["name"] for item in listed["items"]]

    objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    with pytest.raises(ApiException) as missing:
        objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    assert missing.value.status == 404

    log = kube_cluster.apiserver_log.read_text(errors="replace")
    assert "panic" not in log.lower()
    assert "SIGSEGV" not in log


# --- a killed test run leaves nothing behind ------------------------------------------------------

CHILD = """
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("local_cluster", sys.argv[1])
local_cluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(local_cluster)
cluster = local_cluster.start(sys.argv[2])
print(json.dumps({"etcd": cluster.etcd_pid, "apiserver": cluster.apiserver_pid}), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_cluster_dies_with_the_process_that_started_it(kube_cluster, tmp_path):
    """SIGKILL of the starting process (as when a test run is killed) takes etcd and kube-apiserver
    with it. `kube_cluster` only makes sure the binary is built before the clock starts."""
    stderr = (tmp_path / "child.stderr").open("wb")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(SCRIPT), str(tmp_path / "cluster")],
                             stdout=subprocess.PIPE, stderr=stderr)
    pids = {}
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        line = child.stdout.readline() if ready else b""
        assert line, f"the child printed no pids; its stderr:\n{(tmp_path / 'child.stderr').read_text()[-3000:]}"
        pids = json.loads(line)
        assert all(_alive(pid) for pid in pids.values()), pids

        child.send_signal(signal.SIGKILL)
        child.wait(10)

        wait_for(lambda: not any(_alive(pid) for pid in pids.values()),
                 f"etcd and kube-apiserver {pids} to die with their parent", timeout=5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in pids.values():  # whatever happened above, leave nothing running
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        stderr.close()


def test_up_leaves_the_cluster_running_until_down(kube_cluster, tmp_path):
    """`local_cluster.py up` (what scripts/run calls) exits and the cluster keeps running; `down` stops it."""
    workdir = tmp_path / "cluster"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *args, "--dir", str(workdir)],
                              capture_output=True, text=True, timeout=120)

    up = cli("up")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        status = cli("status")
        assert status.returncode == 0, status.stdout + status.stderr[-2000:]
        state = json.loads(status.stdout)
        assert state["running"] and state["ready"]
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr[-2000:]
    assert not any(_alive(state[key]) for key in ("etcd_pid", "apiserver_pid"))
