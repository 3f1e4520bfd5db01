"""What the team access tests share: the seed's example file, the three shapes, the catalog, the
KAITO Workspace CRD on the test cluster, the ARM stand-in with APIs to link, and a reconciler wired
to the real kube-apiserver and the stand-in (the real azure-mgmt-apimanagement client over HTTPS)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from shared.config import Notifications, load_config
from shared.domain.team import TeamCatalog
from tests.test_local_cluster import CRD_NAME, GROUP, PLURAL, VERSION, WORKSPACE_CRD  # the one CRD body

ROOT = Path(__file__).resolve().parent.parent

# The example of the GitOps flow's README (seeds/000_11f005ac594ce722.txt), verbatim.
SEED_EXAMPLE = """\
# developer-requests/team-alpha/access.yaml
team:
  name: alpha
  displayName: "AI Access - Team Alpha"
  owner: alpha-lead@contoso.com
  costCenter: CC-12345

models:
  foundry:
    enabled: true
    models:
      - gpt-4o
  kaito:
    enabled: false

limits:
  tokensPerMinute: 5000
  dailyTokenQuota: 1000000
"""


def per_model_file(team: str = "beta", owner: str = "beta-lead@contoso.com") -> str:
    return f"""\
team:
  name: {team}
  displayName: AI Access - Team {team.title()}
  owner: {owner}
  costCenter: CC-2
models:
  foundry:
    enabled: true
    models:
      - name: gpt-4o
        tokensPerMinute: 2000
        dailyTokenQuota: 200000
      - name: gpt-4o-mini
        tokensPerMinute: 8000
  kaito:
    enabled: true
    workspaces:
      - name: phi-3-mini
        instanceType: Standard_NC6s_v3
limits:
  tokensPerMinute: 5000
  dailyTokenQuota: 1000000
"""


def catalog_file(team: str = "gamma") -> str:
    return f"""\
team:
  name: {team}
  owner: {team}-lead@contoso.com
  costCenter: 4711
models:
  foundry:
    - name: gpt-4o
      tokensPerMinute: 3000
      dailyTokenQuota: 300000
  kaito:
    - name: llama-3-1-8b
      tokensPerMinute: 1000
      dailyTokenQuota: 50000
"""


@pytest.fixture(scope="session")
def app_config():
    return load_config(ROOT / "config.yaml")


@pytest.fixture(scope="session")
def catalog(app_config) -> TeamCatalog:
    return TeamCatalog.from_config(app_config)


# --- Azure and Kubernetes -----------------------------------------------------------------------------

AZURE_SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "rg-teams"
API_IDS = ("azure-openai", "openai-v1")
class StaticToken:
    """A TokenCredential with the token the ARM stand-in accepts."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class Outbox:
    """A Notifier that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, email) -> None:
        self.sent.append(email)

    def subjects(self) -> list[str]:
        return [e.subject for e in self.sent]


@pytest.fixture(scope="session")
def workspace_crd(kube_api_client):
    """The KAITO Workspace CRD (as tests/test_local_cluster.py registers it), served and answering."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    extensions = client.ApiextensionsV1Api(kube_api_client)
    try:
        extensions.create_custom_resource_definition(WORKSPACE_CRD)
    except ApiException as error:
        if error.status != 409:
            raise
    objects = client.CustomObjectsApi(kube_api_client)
    deadline = time.monotonic() + 30
    while True:  # established, and discovery knows the endpoint
        try:
            objects.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
            return CRD_NAME
        except ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def arm():
    from tests.standins.arm_server import ArmStandin

    server = ArmStandin().start()
    yield server
    server.close()


@pytest.fixture
def apim_service(arm):
    """A fresh APIM service holding the APIs team products link to; returns (name, state)."""
    arm.reset_calls()
    name = f"apim-{uuid.uuid4().hex[:8]}"
    service = arm.add_service(AZURE_SUBSCRIPTION, RESOURCE_GROUP, name)
    for api in API_IDS + ("other-api",):
        service.apis[api] = {"displayName": api, "path": api, "protocols": ["https"]}
    return name, service


def apim_products(arm, service_name: str, timeout: float = 2.0):
    from shared.adapters.apim_products import ApimTeamProducts

    return ApimTeamProducts(AZURE_SUBSCRIPTION, RESOURCE_GROUP, service_name, base_url=arm.url,
                            credential=StaticToken(arm.token), ca_bundle=arm.ca_pem_path, timeout_seconds=timeout)


def keys_namespace(namespace: str) -> str:
    """The team keys namespace the tests pair with a records namespace."""
    return f"{namespace}-keys"


class Harness:
    """A team reconciler on the real apiserver (test namespace) and the ARM stand-in."""

    def __init__(self, kube_api_client: Any, namespace: str, arm: Any, service_name: str, service: Any,
                 api_ids: tuple[str, ...] = API_IDS, holder: str | None = None) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        from shared.adapters.kaito import KaitoWorkspaces
        from shared.services.team_reconciler import TeamReconciler, TeamReconcilerOptions
        from shared.store.teams import KubernetesTeamStore
        from tests.clock import Clock

        self.clock = Clock()
        self.namespace = namespace
        self.keys_namespace = keys_namespace(namespace)  # TEAM_KEYS_NAMESPACE: apart from the records
        self.arm = arm
        self.service = service
        self.core = client.CoreV1Api(kube_api_client)
        try:
            self.core.create_namespace({"metadata": {"name": self.keys_namespace}})
        except ApiException as error:
            if error.status != 409:  # a second harness on the same namespace
                raise
        self.objects = client.CustomObjectsApi(kube_api_client)
        self.store = KubernetesTeamStore(kube_api_client, namespace, keys_namespace=self.keys_namespace)
        self.outbox = Outbox()
        extra = {"holder": holder} if holder else {}
        self.options = TeamReconcilerOptions(api_ids=api_ids, keys_namespace=self.keys_namespace,
                                             gateway_url="https://gw.example",
                                             backoff_base_seconds=0.05, max_attempts=3, **extra)
        self.reconciler = TeamReconciler(self.store, apim_products(arm, service_name),
                                         KaitoWorkspaces(kube_api_client, namespace), self.outbox,
                                         Notifications(product_name="Key Desk"), self.options,
                                         clock=self.clock)

    def tick(self, times: int = 1, pause: float = 0.0):
        """Run `times` ticks, moving the reconciler's clock on by `pause` seconds after each."""
        report = None
        for _ in range(times):
            report = self.reconciler.run_tick()
            self.clock.advance(pause)
        return report

    def workspaces(self) -> dict[str, dict]:
        body = self.objects.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return {item["metadata"]["name"]: item for item in body["items"]}

    def secret(self, name: str, namespace: str | None = None):
        """A Secret of the records' namespace (or `namespace`), None if there is none."""
        from kubernetes.client.rest import ApiException

        try:
            return self.core.read_namespaced_secret(name, namespace or self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def keys(self, team: str):
        """The team's keys Secret, where teams read it (TEAM_KEYS_NAMESPACE)."""
        return self.secret(f"{team}-api-key", self.keys_namespace)


@pytest.fixture
def harness(kube_api_client, namespace, workspace_crd, arm, apim_service) -> Harness:
    name, service = apim_service
    return Harness(kube_api_client, namespace, arm, name, service)
