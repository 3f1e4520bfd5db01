"""AKS access without stored credentials (`KUBERNETES_AUTH=entra`), against the real kube-apiserver.

On Azure the bearer token is an Entra ID token for the AKS server application, fetched with the
app's managed identity. No Entra ID here, but the apiserver accepts the bearer tokens it knows:
the static token of its token file and ServiceAccount tokens it signed. So a fake TokenCredential
hands out those, and everything from the client's refresh hook to the apiserver's answer is real.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT


class FakeCredential:
    """An azure.core TokenCredential that hands out the given (token, lifetime seconds) in turn."""

    def __init__(self, *tokens: tuple[str, float], delay: float = 0.0, fail: BaseException | None = None):
        self._tokens = list(tokens)
        self.delay = delay
        self.fail = fail
        self.calls: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs):
        from azure.core.credentials import AccessToken

        with self._lock:
            self.calls.append(scopes)
            if self.fail is not None:
                raise self.fail
            token, lifetime = self._tokens[0] if len(self._tokens) == 1 else self._tokens.pop(0)
        time.sleep(self.delay)
        return AccessToken(token, int(time.time() + lifetime))


def ca_data(cluster) -> str:
    return base64.b64encode(Path(cluster.ca_file).read_bytes()).decode()


def entra_client(cluster, credential, **kwargs):
    from shared.store.kube import api_client

    return api_client(None, auth="entra", server=cluster.server, ca_data=ca_data(cluster),
                      client_id="00000000-0000-0000-0000-000000000001", credential=credential, **kwargs)


def core(client):
    from kubernetes import client as k8s

    return k8s.CoreV1Api(client)


def make_secret(core_api, namespace: str, name: str = "probe") -> str:
    core_api.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": {"k": "v"}})
    return name


def service_account_token(core_api, namespace: str, verbs=("get", "list")) -> str:
    """A second valid bearer token: a ServiceAccount allowed to read Secrets in `namespace` only."""
    from kubernetes import client as k8s

    name = "reader-" + uuid.uuid4().hex[:6]
    core_api.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac = k8s.RbacAuthorizationV1Api(core_api.api_client)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": list(verbs)}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    request = core_api.create_namespaced_service_account_token(
        name, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}})
    return request.status.token


# --- the token reaches the apiserver -------------------------------------------------------------

def test_entra_mode_reads_a_secret_with_the_credential_token(kube_cluster, core_api, namespace):
    make_secret(core_api, namespace)
    credential = FakeCredential((kube_cluster.token, 3600))

    api = core(entra_client(kube_cluster, credential))
    secret = api.read_namespaced_secret("probe", namespace)

    assert base64.b64decode(secret.data["k"]) == b"v"
    assert credential.calls == [("6dae42f8-4368-4678-94ff-3960e28e3630/.default",)]


def test_entra_mode_through_the_request_store(kube_cluster, core_api, namespace):
    from shared.store.requests import KubernetesRequestStore

    credential = FakeCredential((kube_cluster.token, 3600))
    store = KubernetesRequestStore(entra_client(kube_cluster, credential), namespace)

    store.ping()  # a GET by name that answers 404: authenticated and authorized
    assert store.list()[0] == []
    assert len(credential.calls) == 1


def test_settings_come_from_the_environment(kube_cluster, core_api, namespace, monkeypatch):
    """App settings -> Settings -> the context's one client: KUBERNETES_AUTH in any case, the
    server, its CA and the identity's client id all reach the client, and KUBECONFIG is ignored."""
    import azure.identity

    from shared import context

    make_secret(core_api, namespace)
    monkeypatch.setenv("KUBERNETES_AUTH", "Entra")
    monkeypatch.setenv("KUBERNETES_SERVER", kube_cluster.server)
    monkeypatch.setenv("KUBERNETES_CA_DATA", ca_data(kube_cluster))
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000002")
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")  # ignored with entra
    monkeypatch.setenv("KUBERNETES_NAMESPACE", namespace)
    monkeypatch.setenv("CONFIG_FILE", str(ROOT / "config.yaml"))
    credential = FakeCredential((kube_cluster.token, 3600))
    asked_for: list[dict] = []

    def default_credential(**kwargs):
        asked_for.append(kwargs)
        return credential

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", default_credential)
    context.reset()
    try:
        assert context.settings().kubernetes_auth == "entra"
        api = core(context.kube_client())
        assert api.read_namespaced_secret("probe", namespace).metadata.name == "probe"
        assert api.api_client.configuration.host == kube_cluster.server
        context.request_store().ping()  # the same client, so the same token: no second get_token
    finally:
        context.reset()
    assert asked_for == [{"managed_identity_client_id": "00000000-0000-0000-0000-000000000002"}]
    assert len(credential.calls) == 1


def test_the_client_reads_no_setting_from_the_environment(kube_cluster, core_api, namespace, monkeypatch):
    """Only what the caller passes counts: KUBERNETES_AUTH=entra and KUBERNETES_SERVICE_HOST in the
    environment change nothing for a client built with a kubeconfig."""
    from shared.store.kube import EntraTokenProvider, api_client

    make_secret(core_api, namespace)
    monkeypatch.setenv("KUBERNETES_AUTH", "entra")
    monkeypatch.setenv("KUBERNETES_SERVER", "https://aks.invalid:443")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")

    client = api_client(str(kube_cluster.kubeconfig))

    assert client.configuration.host == kube_cluster.server
    assert not isinstance(getattr(client.configuration.refresh_api_key_hook, "__self__", None), EntraTokenProvider)
    assert core(client).read_namespaced_secret("probe", namespace).metadata.name == "probe"


# --- renewal ------------------------------------------------------------------------------------

def test_token_is_reused_while_it_has_more_than_five_minutes(kube_cluster, core_api, namespace):
    make_secret(core_api, namespace)
    credential = FakeCredential((kube_cluster.token, 3600))
    api = core(entra_client(kube_cluster, credential))

    for _ in range(10):
        api.read_namespaced_secret("probe", namespace)

    assert len(credential.calls) == 1


def test_token_is_renewed_before_it_expires_and_the_new_one_is_sent(kube_cluster, core_api, namespace):
    """First token: the admin's, with under 5 minutes left. Second: a ServiceAccount's that may only
    read Secrets in `namespace`. A read elsewhere succeeds with the first and is refused with the
    second, which proves the renewed token is the one on the wire."""
    from kubernetes.client.exceptions import ApiException

    make_secret(core_api, namespace)
    elsewhere = f"t-{uuid.uuid4().hex[:12]}"
    core_api.create_namespace({"metadata": {"name": elsewhere}})
    make_secret(core_api, elsewhere)
    sa_token = service_account_token(core_api, namespace)
    credential = FakeCredential((kube_cluster.token, 290), (sa_token, 3600))
    api = core(entra_client(kube_cluster, credential))

    assert api.read_namespaced_secret("probe", elsewhere).metadata.name == "probe"  # admin token
    assert len(credential.calls) == 1
    with pytest.raises(ApiException) as refused:  # 290 s < 5 min left: renewed before this request
        api.read_namespaced_secret("probe", elsewhere)
    assert refused.value.status == 403
    assert "system:serviceaccount:" in json.loads(refused.value.body)["message"]
    assert len(credential.calls) == 2
    for _ in range(3):  # the new token has an hour: no further renewal
        assert api.read_namespaced_secret("probe", namespace).metadata.name == "probe"
    assert len(credential.calls) == 2


def test_concurrent_requests_share_one_renewal(kube_cluster, core_api, namespace):
    make_secret(core_api, namespace)
    credential = FakeCredential((kube_cluster.token, 3600), delay=0.2)
    api = core(entra_client(kube_cluster, credential))
    errors: list[BaseException] = []

    def read():
        try:
            api.read_namespaced_secret("probe", namespace)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(credential.calls) == 1


def test_a_failed_renewal_keeps_the_still_valid_token(kube_cluster, core_api, namespace, caplog):
    from azure.core.exceptions import ClientAuthenticationError

    make_secret(core_api, namespace)
    credential = FakeCredential((kube_cluster.token, 200))  # within the margin, still valid
    api = core(entra_client(kube_cluster, credential))
    api.read_namespaced_secret("probe", namespace)
    credential.fail = ClientAuthenticationError("managed identity endpoint unavailable")

    with caplog.at_level(logging.WARNING, logger="shared.store.kube"):
        assert api.read_namespaced_secret("probe", namespace).metadata.name == "probe"

    assert len(credential.calls) == 2
    assert "could not renew" in caplog.text
    assert kube_cluster.token not in caplog.text


# --- refusals and failures, as the store maps them -----------------------------------------------

def _store(kube_cluster, credential, namespace):
    from shared.store.requests import KubernetesRequestStore

    return KubernetesRequestStore(entra_client(kube_cluster, credential), namespace)


def test_an_invalid_token_is_a_401_store_error_not_unavailable(kube_cluster, namespace, caplog):
    from kubernetes.client.exceptions import ApiException

    from shared.services.ports import NotFound, StoreError, StoreUnavailable

    bogus = "not-a-token-the-apiserver-knows-" + uuid.uuid4().hex
    credential = FakeCredential((bogus, 3600))
    with pytest.raises(ApiException) as raw:
        core(entra_client(kube_cluster, credential)).read_namespaced_secret("probe", namespace)
    assert raw.value.status == 401

    with caplog.at_level(logging.DEBUG), pytest.raises(StoreError) as mapped:
        _store(kube_cluster, credential, namespace).get("abc")
    # Not retried as an outage, not mistaken for "no such request": a configuration error.
    assert not isinstance(mapped.value, (StoreUnavailable, NotFound))
    assert "401" in str(mapped.value)
    assert bogus not in str(mapped.value) and bogus not in caplog.text


def _resigned_service_account_token(kube_cluster, core_api, namespace, expires_in: int) -> str:
    """A ServiceAccount token the apiserver issued, its expiry changed and re-signed with the
    apiserver's own service-account key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64url(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def unb64url(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    header, payload, _ = service_account_token(core_api, namespace).split(".")
    claims = json.loads(unb64url(payload))
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now + expires_in)
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    key = serialization.load_pem_private_key((Path(kube_cluster.workdir) / "pki" / "sa.key").read_bytes(), None)
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def test_an_expired_token_is_refused_with_401(kube_cluster, core_api, namespace):
    from kubernetes.client.exceptions import ApiException

    from shared.services.ports import StoreError, StoreUnavailable

    make_secret(core_api, namespace)
    # Control: the same forgery with a future expiry is accepted, so the 401 below is the expiry.
    valid = _resigned_service_account_token(kube_cluster, core_api, namespace, expires_in=3600)
    control = core(entra_client(kube_cluster, FakeCredential((valid, 3600))))
    assert control.read_namespaced_secret("probe", namespace).metadata.name == "probe"

    expired = _resigned_service_account_token(kube_cluster, core_api, namespace, expires_in=-3600)
    from shared.store.requests import KubernetesRequestStore

    credential = FakeCredential((expired, -3600))
    client = entra_client(kube_cluster, credential)
    for _ in range(2):
        with pytest.raises(ApiException) as raw:
            core(client).read_namespaced_secret("probe", namespace)
        assert raw.value.status == 401

    with pytest.raises(StoreError) as mapped:
        KubernetesRequestStore(client, namespace).get("abc")
    assert not isinstance(mapped.value, StoreUnavailable)
    assert "401" in str(mapped.value)
    # An expired token is never reused: every request asks the credential again.
    assert len(credential.calls) == 3


def test_no_token_at_all_is_store_unavailable(kube_cluster, namespace):
    from azure.core.exceptions import ClientAuthenticationError

    from shared.services.ports import StoreUnavailable
    from shared.store.kube import TokenUnavailable

    credential = FakeCredential(("unused", 3600), fail=ClientAuthenticationError("no identity assigned"))
    with pytest.raises(TokenUnavailable):
        core(entra_client(kube_cluster, credential)).read_namespaced_secret("probe", namespace)
    with pytest.raises(StoreUnavailable):
        _store(kube_cluster, credential, namespace).get("abc")


def test_the_servers_certificate_is_verified(kube_cluster, namespace):
    import trustme

    from shared.services.ports import StoreUnavailable
    from shared.store.kube import api_client
    from shared.store.requests import KubernetesRequestStore

    other_ca = base64.b64encode(trustme.CA().cert_pem.bytes()).decode()
    client = api_client(None, auth="entra", server=kube_cluster.server, ca_data=other_ca,
                        credential=FakeCredential((kube_cluster.token, 3600)))
    with pytest.raises(StoreUnavailable):
        KubernetesRequestStore(client, namespace, timeout_seconds=5).get("abc")


# --- settings -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"auth": "token"}, "KUBERNETES_AUTH"),
    ({"auth": "entra", "server": None}, "KUBERNETES_SERVER: required"),
    ({"auth": "entra", "server": "http://127.0.0.1:6443"}, "KUBERNETES_SERVER: must be an https URL"),
    ({"auth": "entra", "server": "https://aks.example", "ca_data": "%%%"}, "KUBERNETES_CA_DATA: not valid base64"),
    ({"auth": "entra", "server": "https://aks.example", "ca_data": base64.b64encode(b"hello").decode()},
     "KUBERNETES_CA_DATA: must be a PEM certificate"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    from shared.store.kube import KubernetesAuthError, api_client

    with pytest.raises(KubernetesAuthError, match=message):
        api_client(None, credential=FakeCredential(("t", 3600)), **kwargs)


@pytest.mark.parametrize("value, mode", [
    ("entra", "entra"), ("Entra", "entra"), ("ENTRA", "entra"), (" entra ", "entra"),
    ("kubeconfig", "kubeconfig"), ("KubeConfig", "kubeconfig"), ("", "kubeconfig"),
])
def test_kubernetes_auth_is_case_insensitive_in_settings_and_client_alike(value, mode):
    from shared.settings import Settings
    from shared.store.kube import auth_mode

    assert Settings.from_env({"KUBERNETES_AUTH": value}).kubernetes_auth == mode
    assert auth_mode(value) == mode


@pytest.mark.parametrize("value", ["token", "aad", "entra-id"])
def test_an_unknown_kubernetes_auth_is_refused_by_settings_and_client_alike(value):
    from shared.settings import Settings, SettingsError
    from shared.store.kube import KubernetesAuthError, auth_mode

    with pytest.raises(SettingsError, match=f"KUBERNETES_AUTH: .*must be kubeconfig or entra.*{value}"):
        Settings.from_env({"KUBERNETES_AUTH": value})
    with pytest.raises(KubernetesAuthError, match="KUBERNETES_AUTH"):
        auth_mode(value)


def test_in_cluster_comes_from_settings():
    from shared.settings import Settings

    assert Settings.from_env({}).in_cluster is False
    assert Settings.from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).in_cluster is True


def test_ca_data_may_also_be_plain_pem(kube_cluster, core_api, namespace):
    from shared.store.kube import api_client

    make_secret(core_api, namespace)
    client = api_client(None, auth="entra", server=kube_cluster.server,
                        ca_data=Path(kube_cluster.ca_file).read_text(),
                        credential=FakeCredential((kube_cluster.token, 3600)))
    assert core(client).read_namespaced_secret("probe", namespace).metadata.name == "probe"


def test_kubeconfig_mode_still_works(kube_cluster, core_api, namespace):
    from shared.store.kube import EntraTokenProvider, api_client

    make_secret(core_api, namespace)
    by_default = api_client(str(kube_cluster.kubeconfig))
    explicit = api_client(str(kube_cluster.kubeconfig), auth="kubeconfig")
    for client in (by_default, explicit):
        assert core(client).read_namespaced_secret("probe", namespace).metadata.name == "probe"
        hook = client.configuration.refresh_api_key_hook
        assert not isinstance(getattr(hook, "__self__", None), EntraTokenProvider)
    # A kubeconfig path wins over in_cluster, as it always did.
    assert api_client(str(kube_cluster.kubeconfig), in_cluster=True).configuration.host == kube_cluster.server


def test_azure_identity_is_imported_only_for_entra_with_the_default_credential(kube_cluster):
    """Cold start: neither importing function_app nor a kubeconfig or injected-credential client
    loads azure.identity; only building the DefaultAzureCredential does."""
    script = f"""
import os, sys
os.environ.setdefault("CONFIG_FILE", {str(ROOT / "config.yaml")!r})
import function_app
assert "azure.identity" not in sys.modules, "function_app imported azure.identity"
from shared.store.kube import api_client
api_client({str(kube_cluster.kubeconfig)!r})
class Cred:
    def get_token(self, *scopes, **kw): raise AssertionError("not called")
api_client(None, auth="entra", server="https://aks.example:443", credential=Cred())
assert "azure.identity" not in sys.modules, "a client without DefaultAzureCredential imported azure.identity"
client = api_client(None, auth="entra", server="https://aks.example:443",
                    client_id="11111111-2222-3333-4444-555555555555")
assert "azure.identity" in sys.modules
hook = client.configuration.refresh_api_key_hook
cred = hook.__self__._credential
assert type(cred).__name__ == "DefaultAzureCredential", type(cred)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
