"""No takeover of what is not the app's, and team keys apart from request keys.

Against the real kube-apiserver and the ARM stand-in (the real azure-mgmt-apimanagement client):
an unmarked `product-{team}`, `sub-{team}` or `{team}-api-key` made before the team is refused
with a clear reason and left exactly as it was, a deletion leaves it too, marked ones (and what
the app made before it marked anything) reconcile, and the keys land in TEAM_KEYS_NAMESPACE only.
The per-team Role of docs/teams.md is applied as written and asked what it allows.
"""

from __future__ import annotations

import base64
import copy
import re
import uuid

import pytest
import yaml

from shared.adapters import apim_marks
from shared.domain.team import parse
from shared.services import teams
from shared.services.ports import TransientError
from shared.settings import Settings, SettingsError
from shared.store.teams import KubernetesTeamStore
from tests.conftest import ROOT
from tests.standins.arm_server import Entity
from tests.teams_fixtures import SEED_EXAMPLE, Harness

ALPHA = "developer-requests/alpha/access.yaml"
TAG = apim_marks.OWNER_TAG
WRITES = ("PUT", "PATCH", "DELETE", "POST")


@pytest.fixture
def h(harness) -> Harness:
    return harness


@pytest.fixture
def submit(harness, catalog):
    """Store team alpha (the seed's file), as `PUT /api/teams/alpha` does."""
    return lambda: teams.submit(harness.store, parse(SEED_EXAMPLE, ALPHA, catalog), ALPHA, "basic:admin")


def failed_with(h: Harness, text: str) -> str:
    record = h.store.get("alpha")
    assert record.phase == "failed" and record.last_error, record
    assert record.last_error.startswith(text), record.last_error
    return record.last_error


def writes_to(h: Harness, path: str) -> list[str]:
    return [f"{c.method} {c.path}" for c in h.arm.calls if c.method in WRITES and path in c.path]


def unsettle(h: Harness) -> None:
    """The runbook's re-apply: `kubectl label secret llm-team-access-alpha team-settled-`."""
    h.core.patch_namespaced_secret("llm-team-access-alpha", h.namespace,
                                   {"metadata": {"labels": {"team-settled": None}}})


def decoded(secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


# --- the product ------------------------------------------------------------------------------------------


def test_an_unmarked_product_is_refused_and_left_exactly_as_it_was(h, submit):
    h.arm.add_product(h.service, "product-alpha", "Alpha (the platform team's own)")
    h.service.products["product-alpha"].properties["description"] = "Hand-made for the alpha pilot."
    h.service.product_apis["product-alpha"] = {"other-api"}
    before = copy.deepcopy(h.service.products["product-alpha"])
    submit()
    assert h.tick().outcomes == {"failed": 1}

    reason = failed_with(h, "APIM product product-alpha already exists and is not managed by llm-key-requestor")
    assert "left unchanged" in reason and f"tag {TAG}" in reason and "ARM" not in reason
    assert h.service.products["product-alpha"] == before, "not one property (nor the ETag) changed"
    assert h.service.product_apis["product-alpha"] == {"other-api"} and "product-alpha" not in h.service.policies
    assert not h.service.product_tags.get("product-alpha") and TAG not in h.service.tags
    assert writes_to(h, "/products/product-alpha") == [], "nothing written to it"
    assert h.service.subscriptions == {} and h.keys("alpha") is None, "and nothing after it"

    # Deleting the team leaves it too, and the record goes.
    teams.request_delete(h.store, "alpha", "basic:admin")
    assert h.tick().outcomes == {"deleted": 1}
    assert h.service.products["product-alpha"] == before and writes_to(h, "/products/product-alpha") == []


def test_a_product_handed_over_by_its_tag_reconciles(h, submit):
    """The operator's way to hand a product over: assign it the tag, then re-apply the team."""
    h.arm.add_product(h.service, "product-alpha", "Alpha (the platform team's own)")
    submit()
    h.tick()
    failed_with(h, "APIM product product-alpha already exists")
    h.service.tags[TAG] = Entity({"displayName": TAG})
    h.service.product_tags["product-alpha"] = {TAG}
    unsettle(h)
    assert h.tick().outcomes == {"ready": 1}
    product = h.service.products["product-alpha"].properties
    assert product["displayName"] == "AI Access - Team Alpha"
    assert product["description"].endswith(apim_marks.MANAGED_SENTENCE)
    assert h.service.product_tags["product-alpha"] == {TAG} and "sub-alpha" in h.service.subscriptions


def test_what_the_app_makes_carries_its_marks_read_back_through_the_sdk(h, submit):
    submit()
    assert h.tick().outcomes == {"ready": 1}
    assert h.service.product_tags["product-alpha"] == {TAG}
    assert h.service.tags[TAG].properties == {"displayName": TAG}
    assert h.service.subscriptions["sub-alpha"].properties["displayName"] == "Team alpha [llm-key-requestor]"
    # What apim_products reads back, through the real client, is what the stand-in stored.
    adapter = h.reconciler.apim
    client = adapter._apim()
    assert client.tag.get_by_product(adapter._resource_group, adapter._service, "product-alpha", TAG).name == TAG
    assert adapter._tagged("product-alpha")
    keys = decoded(h.keys("alpha"))

    # A second pass (a new generation, every step again) writes into them: they are ours.
    unsettle(h)
    assert h.tick().outcomes == {"ready": 1}
    assert decoded(h.keys("alpha")) == keys and list(h.service.subscriptions) == ["sub-alpha"]


def test_what_the_app_made_before_the_marks_is_adopted(h, submit):
    """A product with the description the app always wrote and a subscription `Team {team}` on
    that product (an existing deployment, or a crash between creating the product and tagging it)."""
    h.arm.add_product(h.service, "product-alpha", "AI Access - Team Alpha")
    h.service.products["product-alpha"].properties["description"] = (
        "LLM access for team alpha. Owner: alpha-lead@contoso.com. Cost center: CC-12345. "
        "Managed by llm-key-requestor; do not edit by hand.")
    h.service.subscriptions["sub-alpha"] = Entity({"scope": "/products/product-alpha", "displayName": "Team alpha",
                                                   "state": "active", "primaryKey": "p-old", "secondaryKey": "s-old"})
    submit()
    assert h.tick().outcomes == {"ready": 1}
    assert h.service.product_tags["product-alpha"] == {TAG}
    subscription = h.service.subscriptions["sub-alpha"].properties
    assert subscription["displayName"] == "Team alpha [llm-key-requestor]"
    assert decoded(h.keys("alpha")) == {"primary-key": "p-old", "secondary-key": "s-old"}, "its keys are kept"


# --- the subscription -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope,display_name", [
    ("/products/someone-else", "Alice's test key"),        # another product
    ("/products/product-alpha", "Alice's test key"),       # the team's product, but not the app's name
    ("/apis", "Team alpha"),                               # the old name, on another scope
])
def test_an_unmarked_subscription_is_refused_and_keeps_its_keys(h, submit, scope, display_name):
    h.arm.add_product(h.service, "someone-else")
    h.service.subscriptions["sub-alpha"] = Entity({"scope": scope, "displayName": display_name, "state": "active",
                                                   "primaryKey": "alice-primary", "secondaryKey": "alice-secondary"})
    before = copy.deepcopy(h.service.subscriptions["sub-alpha"])
    submit()
    assert h.tick().outcomes == {"failed": 1}

    reason = failed_with(h, "APIM subscription sub-alpha already exists and is not managed by llm-key-requestor")
    assert "'Team alpha [llm-key-requestor]'" in reason and "alice-" not in reason
    assert h.service.subscriptions["sub-alpha"] == before
    assert writes_to(h, "/subscriptions/sub-alpha") == []
    assert h.keys("alpha") is None, "its keys never reach the team's Secret"
    assert h.service.product_tags["product-alpha"] == {TAG}, "the steps before it ran"

    teams.request_delete(h.store, "alpha", "basic:admin")
    h.tick()
    assert h.service.subscriptions["sub-alpha"] == before, "a deletion does not delete it either"
    assert writes_to(h, "/subscriptions/sub-alpha") == []
    if scope == "/products/product-alpha":
        # Deleting the team's product would delete it with the product: the product stays too.
        record = h.store.get("alpha")
        assert record.phase == "failed" and "still has subscriptions this app did not make (sub-alpha)" in \
            record.last_error, record
        assert "product-alpha" in h.service.products
    else:
        assert h.store.get("alpha") is None and "product-alpha" not in h.service.products


# --- the keys Secret ---------------------------------------------------------------------------------------


def test_an_unlabelled_keys_secret_is_refused_and_left_as_it_was(h, submit):
    """The earlier flow's Secret (no labels): no longer taken over."""
    h.core.create_namespaced_secret(h.keys_namespace, {
        "metadata": {"name": "alpha-api-key", "labels": {"owner": "gitops"}},
        "data": {"primary-key": base64.b64encode(b"old").decode()}})
    before = h.keys("alpha").to_dict()
    submit()
    assert h.tick().outcomes == {"failed": 1}

    reason = failed_with(h, f"Secret alpha-api-key in namespace {h.keys_namespace} already exists and is not "
                            "managed by llm-key-requestor")
    assert "app.kubernetes.io/component=llm-team-api-key" in reason
    assert h.keys("alpha").to_dict() == before, "data, labels and resourceVersion as they were"
    subscription = h.service.subscriptions["sub-alpha"].properties
    assert subscription["primaryKey"] not in reason + repr(before)

    teams.request_delete(h.store, "alpha", "basic:admin")
    assert h.tick().outcomes == {"deleted": 1}
    assert h.keys("alpha").to_dict() == before, "a deletion leaves it"


def test_a_labelled_keys_secret_is_the_apps_and_gets_the_keys(h, submit):
    h.core.create_namespaced_secret(h.keys_namespace, {
        "metadata": {"name": "alpha-api-key", "labels": {"app.kubernetes.io/name": "llm-key-requestor",
                                                         "app.kubernetes.io/component": "llm-team-api-key"},
                     "annotations": {"note": "handed over"}},
        "data": {"primary-key": base64.b64encode(b"old").decode()}})
    submit()
    assert h.tick().outcomes == {"ready": 1}
    subscription = h.service.subscriptions["sub-alpha"].properties
    secret = h.keys("alpha")
    assert decoded(secret) == {"primary-key": subscription["primaryKey"], "secondary-key": subscription["secondaryKey"]}
    assert secret.metadata.annotations["note"] == "handed over"


# --- where the keys live -----------------------------------------------------------------------------------


def test_team_keys_live_in_their_own_namespace_and_an_old_copy_beside_the_records_goes(h, submit):
    # What the app wrote beside the records before TEAM_KEYS_NAMESPACE existed (its labels), and
    # someone else's Secret of another team's name there (no labels): only the first is the app's.
    ours = {"app.kubernetes.io/name": "llm-key-requestor", "app.kubernetes.io/component": "llm-team-api-key"}
    h.core.create_namespaced_secret(h.namespace, {"metadata": {"name": "alpha-api-key", "labels": ours},
                                                  "data": {"primary-key": base64.b64encode(b"old").decode()}})
    h.core.create_namespaced_secret(h.namespace, {"metadata": {"name": "beta-api-key"}, "stringData": {"k": "v"}})
    submit()
    assert h.tick().outcomes == {"ready": 1}

    assert h.keys("alpha") is not None
    beside_records = sorted(s.metadata.name for s in h.core.list_namespaced_secret(h.namespace).items)
    assert beside_records == ["beta-api-key", "llm-team-access-alpha"], "no team key beside the records"
    keys_namespace = sorted(s.metadata.name for s in h.core.list_namespaced_secret(h.keys_namespace).items)
    assert keys_namespace == ["alpha-api-key"], "nothing but team keys in the keys namespace"
    assert h.store.keys_present("alpha")
    [email] = h.outbox.sent
    assert f"kubectl get secret alpha-api-key -n {h.keys_namespace}" in email.text


def test_a_missing_keys_namespace_is_named_with_its_setting(kube_api_client, namespace):
    store = KubernetesTeamStore(kube_api_client, namespace, keys_namespace=f"nowhere-{uuid.uuid4().hex[:8]}")
    with pytest.raises(TransientError) as error:
        store.write_keys("alpha", "primary-value-4711", "secondary-value-4711")
    assert "(TEAM_KEYS_NAMESPACE) does not exist" in error.value.message
    assert "value-4711" not in error.value.message and not store.keys_present("alpha")


def test_the_keys_namespace_setting():
    assert Settings.from_env({}).team_keys_namespace == "developer-requests"
    assert Settings.from_env({"TEAM_KEYS_NAMESPACE": " team-keys "}).team_keys_namespace == "team-keys"
    with pytest.raises(SettingsError, match="TEAM_KEYS_NAMESPACE.*not a Kubernetes namespace name"):
        Settings.from_env({"TEAM_KEYS_NAMESPACE": "Team_Keys"})


# --- the per-team Role of docs/teams.md ---------------------------------------------------------------------


def docs_role() -> list[dict]:
    text = (ROOT / "docs" / "teams.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "team-alpha-api-key-reader" in b]
    return [doc for doc in yaml.safe_load_all(block) if doc]


def test_the_per_team_role_of_the_docs_reads_that_teams_secret_and_nothing_else(kube_api_client, core_api,
                                                                                namespace):
    from kubernetes import client

    role, binding = docs_role()
    assert role["kind"] == "Role" and binding["kind"] == "RoleBinding"
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "developer-requests"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["alpha-api-key"],
                              "verbs": ["get"]}]
    keys, group = f"{namespace}-keys", str(uuid.uuid4())
    core_api.create_namespace({"metadata": {"name": keys}})
    for doc in (role, binding):
        doc["metadata"]["namespace"] = keys
    binding["subjects"][0]["name"] = group
    rbac = client.RbacAuthorizationV1Api(kube_api_client)
    rbac.create_namespaced_role(keys, role)
    rbac.create_namespaced_role_binding(keys, binding)

    def allowed(verb: str, name: str | None = None, where: str = keys, groups: tuple[str, ...] = (group,)) -> bool:
        attributes = {"namespace": where, "verb": verb, "resource": "secrets", **({"name": name} if name else {})}
        review = client.AuthorizationV1Api(kube_api_client).create_subject_access_review(
            {"spec": {"user": "bob@contoso.com", "groups": list(groups), "resourceAttributes": attributes}})
        return review.status.allowed

    assert allowed("get", "alpha-api-key")
    assert not allowed("get", "beta-api-key"), "another team's keys"
    assert not allowed("list") and not allowed("watch") and not allowed("update", "alpha-api-key")
    assert not allowed("get", "alpha-api-key", where=namespace), "nothing where the requests live"
    assert not allowed("get", "alpha-api-key", groups=(str(uuid.uuid4()),)), "only the team's group"
