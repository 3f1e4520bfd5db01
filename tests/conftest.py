"""Shared fixtures: one real kube-apiserver + etcd per test session, a fresh namespace per test,
and the app's HTTP functions served in-process by the project's local host (same routing and
CORS as on 127.0.0.1:7071, without a socket)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRONTEND_ORIGIN = "http://localhost:5173"

# The shipped config.yaml provisions through LiteLLM, and the app refuses to start without the
# LiteLLM master key then (shared/context.py): every test process and the subprocesses it starts
# (`import function_app`) get a placeholder. Tests that call a LiteLLM stand-in set its own key.
os.environ.setdefault("LITELLM_API_KEY", "sk-test-placeholder-master-key")


def _load_local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "scripts" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_cluster"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    cluster = _load_local_cluster().start(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def kube_api_client(kube_cluster):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))


@pytest.fixture(scope="session")
def core_api(kube_api_client):
    from kubernetes import client

    return client.CoreV1Api(kube_api_client)


@pytest.fixture
def namespace(core_api) -> str:
    """A namespace of the test's own, so tests never see each other's Secrets."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    core_api.create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def app_env(kube_cluster, core_api, namespace, monkeypatch):
    """The app's settings pointed at the test cluster and namespace; the context rebuilt around it."""
    from shared import context

    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    monkeypatch.setenv("KUBERNETES_NAMESPACE", namespace)
    # The teams' keys Secrets live apart from the records (TEAM_KEYS_NAMESPACE): a namespace of their own.
    core_api.create_namespace({"metadata": {"name": f"{namespace}-keys"}})
    monkeypatch.setenv("TEAM_KEYS_NAMESPACE", f"{namespace}-keys")
    # Finished requests move to the archive (KUBERNETES_ARCHIVE_NAMESPACE, default <namespace>-archive).
    core_api.create_namespace({"metadata": {"name": f"{namespace}-archive"}})
    monkeypatch.setenv("CONFIG_FILE", str(ROOT / "config.yaml"))
    context.reset()
    yield namespace
    context.reset()


@pytest.fixture(scope="session")
def function_app_module():
    os.environ.setdefault("CONFIG_FILE", str(ROOT / "config.yaml"))
    import function_app

    return function_app


@pytest.fixture(scope="session")
def functions(function_app_module) -> dict:
    """The app's functions as the host indexes them: name -> entry (bindings, user function)."""
    from local_host.functions import index_functions

    return {entry.name: entry for entry in index_functions(function_app_module.app)}


@pytest.fixture(scope="session")
def wsgi_app(function_app_module):
    from local_host.wsgi import build_wsgi_app

    return build_wsgi_app(function_app_module.app, route_prefix="", cors_origins=[FRONTEND_ORIGIN])


@pytest.fixture
def http(app_env, wsgi_app):
    """A client for the app's HTTP functions, talking to the real apiserver."""
    from werkzeug.test import Client

    return Client(wsgi_app)


def secret_names(core_api, namespace: str, selector: str) -> list[str]:
    return sorted(s.metadata.name for s in core_api.list_namespaced_secret(namespace, label_selector=selector).items)


def request_secret(core_api, namespace: str, request_id: str):
    """A request's Secret where the app keeps it: the request namespace, or once it is finished
    and its work done, the archive (`<namespace>-archive`)."""
    from kubernetes.client.exceptions import ApiException

    from shared.store.codec import request_name

    for where in (namespace, f"{namespace}-archive"):
        try:
            return core_api.read_namespaced_secret(request_name(request_id), where)
        except ApiException as exc:
            if exc.status != 404:
                raise
    raise AssertionError(f"request {request_id} is stored in neither {namespace} nor its archive")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mailbox:
    """What a real SMTP server (aiosmtpd) received, parsed."""

    def __init__(self) -> None:
        import threading

        self.messages: list = []
        self._lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # aiosmtpd hook
        if address.startswith("bounce"):  # a mailbox that does not exist: a permanent refusal
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        from email import policy
        from email.parser import BytesParser

        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or envelope.content)
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 OK"

    def to(self, address: str) -> list:
        with self._lock:
            return [m for rcpts, m in self.messages if address in rcpts]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


@pytest.fixture(scope="session")
def smtp_server():
    """A real SMTP server on loopback (plain, as a local relay; TLS and AUTH are tested with the notifier)."""
    from aiosmtpd.controller import Controller

    mailbox = Mailbox()
    # The server logs each DATA line at DEBUG: it is the recipient, so keys are meant to reach it,
    # and its lines must not mix with the app's in the tests' scans of captured logs for keys.
    logging.getLogger("mail.log").setLevel(logging.INFO)
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    controller.mailbox = mailbox
    yield controller
    controller.stop()


@pytest.fixture(scope="session")
def litellm_standin():
    from tests.standins.litellm_server import LiteLLMStandin

    standin = LiteLLMStandin().start()
    yield standin
    standin.stop()


# The team fixtures (an ARM stand-in, the KAITO CRD, the catalog...) for every module that asks for them.
from tests.teams_fixtures import apim_service, app_config, arm, catalog, harness, workspace_crd  # noqa: E402, F401
