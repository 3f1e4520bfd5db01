"""Builds the Kubernetes API client: in-cluster service account, a kubeconfig file, or an Entra ID
token from the app's managed identity (AKS with Entra ID, no stored credentials).

Which one, from the app settings; `api_client` reads none of them itself: the composition root
(shared/context.py) passes each value from `Settings`, so one validated object decides.

- `KUBERNETES_AUTH=kubeconfig` (the default): the in-cluster service account when running in a pod
  (`in_cluster`, from KUBERNETES_SERVICE_HOST) and no kubeconfig is given, else the kubeconfig file
  (`KUBECONFIG`, else `~/.kube/config`).
- `KUBERNETES_AUTH=entra`: `KUBERNETES_SERVER` (the AKS API server, https) and
  `KUBERNETES_CA_DATA` (its CA, base64 PEM as in a kubeconfig's `certificate-authority-data`);
  the bearer token is an Entra ID access token for the AKS server application, got with
  `DefaultAzureCredential(managed_identity_client_id=AZURE_CLIENT_ID)`. Nothing secret is stored:
  the token is fetched on first use and renewed, before each request, once less than five minutes
  of it remain (`Configuration.refresh_api_key_hook`).

The SDKs are imported here, on first use, not when function_app is imported: the Kubernetes client
is the largest import of the HTTP path, and azure.identity is only loaded with `entra`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# Enough pooled connections that concurrent invocations never queue for a socket.
POOL_SIZE = 32

# The Entra ID application every AKS cluster with Entra integration accepts tokens for
# ("Azure Kubernetes Service AAD Server"); the same in every tenant.
AKS_SCOPE = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"
# Renew a token once less than this much of its lifetime remains (Entra tokens last 60-90 min).
REFRESH_MARGIN_SECONDS = 300.0

AUTH_MODES = ("kubeconfig", "entra")


class KubernetesAuthError(ValueError):
    """The Kubernetes authentication settings are incomplete or malformed; the message names the setting."""


class TokenUnavailable(ConnectionError):
    """No Entra ID token could be had for the Kubernetes API (managed identity endpoint down,
    identity not assigned, ...). A ConnectionError, so the store reports the Kubernetes API as
    unavailable (503, retried) rather than failing the request with a 500."""


class EntraTokenProvider:
    """An Entra ID bearer token for the AKS API, renewed before it expires. Thread-safe.

    `get_token` of the credential is called on first use and again whenever less than `margin`
    seconds remain; concurrent callers wait for one renewal instead of each asking. When a renewal
    fails while the current token is still valid, the current one is used and the failure logged,
    so a short outage of the identity endpoint does not fail requests.
    """

    def __init__(self, credential: Any, scope: str = AKS_SCOPE, margin: float = REFRESH_MARGIN_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self._credential = credential
        self._scope = scope
        self._margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._current: tuple[str, float] | None = None  # (token, expires_on), replaced as a whole

    def token(self) -> str:
        current = self._current
        if current is not None and current[1] - self._clock() >= self._margin:
            return current[0]
        with self._lock:
            current = self._current  # another thread may have renewed it while we waited
            now = self._clock()
            if current is not None and current[1] - now >= self._margin:
                return current[0]
            try:
                fresh = self._credential.get_token(self._scope)
            except Exception as exc:  # noqa: BLE001 - azure.core ClientAuthenticationError and friends
                if current is not None and current[1] > now:
                    log.warning("could not renew the Entra ID token for the Kubernetes API (%s: %s); "
                                "using the current one for %.0f more seconds", type(exc).__name__, exc,
                                current[1] - now)
                    return current[0]
                log.error("could not get an Entra ID token for the Kubernetes API: %s: %s",
                          type(exc).__name__, exc)
                raise TokenUnavailable(f"no Entra ID token for the Kubernetes API ({type(exc).__name__})") from None
            self._current = (fresh.token, float(fresh.expires_on))
            log.info("Entra ID token for the Kubernetes API %s, valid for %.0f s",
                     "renewed" if current is not None else "acquired", float(fresh.expires_on) - now)
            return fresh.token

    def refresh_hook(self, configuration: Any) -> None:
        """`Configuration.refresh_api_key_hook`: runs before every request the client sends."""
        configuration.api_key["authorization"] = "Bearer " + self.token()


def auth_mode(value: str | None) -> str:
    """KUBERNETES_AUTH in any case and spacing (`Entra`, ` ENTRA `) -> `kubeconfig` or `entra`;
    blank means the default, `kubeconfig`. The one rule, shared by Settings and `api_client`."""
    mode = (value or "").strip().lower() or "kubeconfig"
    if mode not in AUTH_MODES:
        raise KubernetesAuthError(f"KUBERNETES_AUTH: must be one of {', '.join(AUTH_MODES)} (any case), "
                                  f"not {value!r}")
    return mode


def api_client(kubeconfig: str | None = None, *, auth: str = "kubeconfig", server: str | None = None,
               ca_data: str | None = None, client_id: str | None = None, in_cluster: bool = False,
               credential: Any = None) -> Any:
    """A `kubernetes.client.ApiClient` for the given authentication. Reads no setting itself.

    `auth`: `kubeconfig` or `entra` (KUBERNETES_AUTH). With `kubeconfig`, `in_cluster` (the
    process runs in a pod) and no `kubeconfig` path means the pod's service account; else the
    kubeconfig file (None: `~/.kube/config`). With `entra`: `server` (KUBERNETES_SERVER),
    `ca_data` (KUBERNETES_CA_DATA) and `client_id` (AZURE_CLIENT_ID, a user-assigned identity).
    `credential` (an azure.core TokenCredential) replaces DefaultAzureCredential, e.g. in tests.
    """
    from kubernetes import client, config

    mode = auth_mode(auth)
    configuration = client.Configuration()
    if mode == "entra":
        source = _configure_entra(configuration, _blank_to_none(server), _blank_to_none(ca_data),
                                  _blank_to_none(client_id), credential)
        if kubeconfig:
            log.info("KUBERNETES_AUTH=entra: KUBECONFIG %s is not used", kubeconfig)
    elif kubeconfig is None and in_cluster:
        config.load_incluster_config(client_configuration=configuration)
        source = "in-cluster service account"
    else:
        _load_kubeconfig(configuration, kubeconfig)
        source = f"kubeconfig {kubeconfig or '~/.kube/config'}"
    configuration.connection_pool_maxsize = POOL_SIZE
    # urllib3's default retries resend a timed-out PUT up to three times, so one write could take
    # 4 x the timeout. Retry only what was never sent (a refused or failed connect); every other
    # failure goes back to the caller, whose timeout is then the whole cost of the call.
    from urllib3.util.retry import Retry

    configuration.retries = Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0)
    log.info("Kubernetes API %s via %s", configuration.host, source)
    return client.ApiClient(configuration)


def _load_kubeconfig(configuration: Any, path: str | None) -> None:
    """The kubeconfig's server, CA and credentials into `configuration`.

    The client's loader installs a hook that applies the whole kubeconfig again before every call
    (setting `host` scans the environment for proxy settings each time: a quarter of the CPU of a
    POST /api/request-key, bench/intake.py). Its only use is to reload a token that expires (an
    exec plugin's): for a token without an expiry, or a client certificate, the hook goes."""
    from kubernetes.config import kube_config

    loader = kube_config._get_kube_config_loader(filename=path or kube_config.KUBE_CONFIG_DEFAULT_LOCATION,
                                                 persist_config=False)
    loader.load_and_set(configuration)
    if "expiry" not in loader.__dict__:
        configuration.refresh_api_key_hook = None


def _blank_to_none(value: str | None) -> str | None:
    value = value.strip() if isinstance(value, str) else value
    return value or None


def _configure_entra(configuration: Any, server: str | None, ca_data: str | None, client_id: str | None,
                     credential: Any) -> str:
    if not server:
        raise KubernetesAuthError("KUBERNETES_SERVER: required with KUBERNETES_AUTH=entra "
                                  "(the AKS API server URL, https://...)")
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        # A bearer token must never travel in clear text.
        raise KubernetesAuthError(f"KUBERNETES_SERVER: must be an https URL, not {server!r}")
    configuration.host = server.rstrip("/")
    configuration.verify_ssl = True
    if ca_data:
        configuration.ssl_ca_cert = _ca_file(ca_data)
    else:
        log.warning("KUBERNETES_CA_DATA is not set: the API server's certificate is checked against "
                    "the system trust store, which does not hold an AKS cluster's own CA")

    if credential is None:
        from azure.identity import DefaultAzureCredential  # only on this path: a heavy import

        credential = DefaultAzureCredential(managed_identity_client_id=client_id) if client_id \
            else DefaultAzureCredential()
    provider = EntraTokenProvider(credential)
    # auth_settings() only asks the hook when an "authorization" key exists; the first request fills it.
    configuration.api_key = {"authorization": ""}
    configuration.api_key_prefix = {}
    configuration.refresh_api_key_hook = provider.refresh_hook
    return f"Entra ID token ({'user-assigned identity ' + client_id if client_id else 'default credential'})"


def _ca_file(ca_data: str) -> str:
    """KUBERNETES_CA_DATA (base64 of PEM, or PEM itself) -> a file the client can verify with.

    The client takes a CA file path only. The file's name is the hash of its content, so every
    client built with the same CA shares one file, written once.
    """
    text = ca_data.strip()
    if text.startswith("-----BEGIN"):
        pem = text.encode()
    else:
        try:
            pem = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise KubernetesAuthError("KUBERNETES_CA_DATA: not valid base64") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise KubernetesAuthError("KUBERNETES_CA_DATA: must be a PEM certificate (base64-encoded, "
                                  "as certificate-authority-data in a kubeconfig)")
    path = Path(tempfile.gettempdir()) / f"kubernetes-ca-{hashlib.sha256(pem).hexdigest()[:16]}.pem"
    if not path.is_file() or path.read_bytes() != pem:
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=".kubernetes-ca-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(partial, path)
    return str(path)
