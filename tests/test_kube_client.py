"""One Kubernetes client per process: the composition root (shared/context.py) builds it once from
Settings, and the request store, the team store and the KAITO adapter all use it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_kube_auth import FakeCredential


@pytest.fixture
def built(app_env, tmp_path, monkeypatch):
    """The context's three Kubernetes users, built after counting how often a client is made."""
    from shared import context
    from shared.store import kube

    monkeypatch.setenv("EMAIL_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # should the tests themselves run in a pod
    made = []
    real = kube.api_client

    def counting(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(kube, "api_client", counting)
    context.reset()
    return context, made


def _clients(context):
    reconciler = context.team_reconciler()
    return {
        "request store": context.request_store()._secrets.api_client,
        "team store": context.team_store()._secrets.api_client,
        "team reconciler's store": reconciler.store._secrets.api_client,
        "KAITO": reconciler.workspaces._api.api_client,
    }


def test_request_store_team_store_and_kaito_share_one_client(built, kube_cluster):
    context, made = built

    clients = _clients(context)

    shared = context.kube_client()
    assert {name: client is shared for name, client in clients.items()} == dict.fromkeys(clients, True)
    assert len(made) == 1
    assert shared.configuration.host == kube_cluster.server
    # Built from Settings, every value explicit.
    assert made[0] == {"auth": "kubeconfig", "server": None, "ca_data": None, "client_id": None,
                       "in_cluster": False}


def test_reset_builds_a_new_shared_client(built):
    context, made = built
    first = context.kube_client()
    context.reset()
    second = context.kube_client()
    assert second is not first
    assert context.request_store()._secrets.api_client is second
    assert len(made) == 2


def test_with_entra_all_three_use_one_token(built, kube_cluster, monkeypatch):
    """KUBERNETES_AUTH=Entra validates, and every user of the client sends the one token provider's
    token to the real apiserver: the credential is asked once for all of them."""
    import azure.identity

    context, made = built
    monkeypatch.setenv("KUBERNETES_AUTH", "Entra")
    monkeypatch.setenv("KUBERNETES_SERVER", kube_cluster.server)
    monkeypatch.setenv("KUBERNETES_CA_DATA", base64.b64encode(Path(kube_cluster.ca_file).read_bytes()).decode())
    monkeypatch.setenv("CONFIG_FILE", str(ROOT / "config.yaml"))
    credential = FakeCredential((kube_cluster.token, 3600))
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda **kwargs: credential)
    context.reset()

    context.load()  # start-up validation accepts it
    assert context.settings().kubernetes_auth == "entra"
    context.request_store().ping()
    assert context.team_store().get("alpha") is None
    assert context.team_reconciler().workspaces.names_for_team("alpha") == []

    assert len(made) == 1 and made[0]["auth"] == "entra"
    assert len(credential.calls) == 1


def test_a_kubeconfig_token_without_an_expiry_is_not_reapplied_before_every_call(kube_cluster, tmp_path):
    """The client's loader re-applies the whole kubeconfig before each call (a scan of the
    environment for proxies each time); with a token that never expires the app drops that hook,
    and with one that expires (an exec plugin's) keeps it, so the token is still renewed."""
    import yaml
    from kubernetes.client import CoreV1Api

    from shared.store.kube import api_client

    client = api_client(str(kube_cluster.kubeconfig))
    assert client.configuration.refresh_api_key_hook is None
    assert CoreV1Api(client).list_namespace(limit=1).items, "the token still goes with every call"

    expiring = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    token = expiring["users"][0]["user"].pop("token")
    expiring["users"][0]["user"]["exec"] = {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "sh", "args": ["-c", (
            "printf '{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\"kind\":\"ExecCredential\","
            f"\"status\":{{\"token\":\"{token}\",\"expirationTimestamp\":\"2099-01-01T00:00:00Z\"}}}}'")]}
    path = tmp_path / "kubeconfig-exec"
    path.write_text(yaml.safe_dump(expiring))
    renewing = api_client(str(path))
    assert renewing.configuration.refresh_api_key_hook is not None
    assert CoreV1Api(renewing).list_namespace(limit=1).items


def test_the_store_reuses_its_connections_whatever_the_answer(kube_cluster, namespace, monkeypatch):
    """Every answer is read to its end, so its connection goes back to the pool: a 201, 200, 404
    or 409 costs no new TLS handshake (one per call tripled the apiserver's CPU per create)."""
    import urllib3.connection

    from shared.services.ports import Conflict
    from shared.store.kube import api_client
    from shared.store.secrets import SecretsGateway

    opened = []
    real = urllib3.connection.HTTPSConnection.connect

    def connect(self):
        opened.append(self)
        return real(self)

    monkeypatch.setattr(urllib3.connection.HTTPSConnection, "connect", connect)
    gateway = SecretsGateway(api_client(str(kube_cluster.kubeconfig)), namespace)
    for i in range(10):
        name = f"reuse-{i}"
        assert gateway.read(name) is None  # 404
        created = gateway.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}})
        with pytest.raises(Conflict):
            gateway.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}})
        assert gateway.read(name)["metadata"]["uid"] == created["metadata"]["uid"]
        assert gateway.list(f"missing-label={i}")[0] == []
        assert gateway.delete(name, created["metadata"]["resourceVersion"])

    assert len(opened) == 1, f"{len(opened)} connections for 60 sequential calls"
