"""Reconciling teams against the real kube-apiserver (the KAITO Workspace CRD registered by the
test) and the ARM stand-in (the real azure-mgmt-apimanagement client over HTTPS): create, update,
delete, idempotence, transient failures, and the owner's emails."""

from __future__ import annotations

import base64
import json
import threading
import xml.etree.ElementTree as ElementTree

import pytest

from shared.domain import policy
from shared.domain.team import parse
from shared.domain.team import steps as team_steps
from shared.services import teams
from shared.store.teams import team_selector
from tests.standins.faults import status
from tests.teams_fixtures import (  # noqa: F401
    API_IDS,
    SEED_EXAMPLE,
    Harness,
    apim_service,
    app_config,
    arm,
    catalog,
    catalog_file,
    harness,
    per_model_file,
    workspace_crd,
)

BETA = "developer-requests/beta/access.yaml"


def submit(h: Harness, catalog, text: str, source: str = BETA):
    return teams.submit(h.store, parse(text, source, catalog), source, "basic:admin")


def stored_policy(h: Harness, product: str) -> ElementTree.Element:
    entity = h.service.policies[product]
    assert entity.properties["format"] == "rawxml"
    return ElementTree.fromstring(policy.raw_to_xml(entity.properties["value"]))


def limits_in(root: ElementTree.Element) -> dict[str, dict[str, str]]:
    return policy.describe(ElementTree.tostring(root, encoding="unicode"))


def decoded(secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def test_reconcile_creates_everything(harness, catalog):
    h = harness
    record, outcome = submit(h, catalog, per_model_file())
    assert outcome == "created" and record.generation == 1 and record.phase == "pending"

    report = h.tick()
    assert (report.due, report.processed, report.outcomes) == (1, 1, {"ready": 1})

    product = h.service.products["product-beta"].properties
    assert product["state"] == "published" and product["subscriptionRequired"] is True
    assert product["approvalRequired"] is False and product["subscriptionsLimit"] == 1
    assert product["displayName"] == "AI Access - Team Beta"
    assert "beta-lead@contoso.com" in product["description"] and "CC-2" in product["description"]

    limits = limits_in(stored_policy(h, "product-beta"))
    assert limits["gpt-4o"]["tokens-per-minute"] == "2000" and limits["gpt-4o"]["token-quota"] == "200000"
    assert limits["gpt-4o"]["counter-key"] == '@(context.Subscription.Id + ":gpt-4o")'
    assert limits["gpt-4o-mini"]["tokens-per-minute"] == "8000"
    assert limits["phi-3-mini,phi-3-mini-4k-instruct"]["counter-key"] == "@(context.Subscription.Id)"

    assert h.service.product_apis["product-beta"] == set(API_IDS)
    subscription = h.service.subscriptions["sub-beta"].properties
    assert subscription["state"] == "active" and subscription["scope"] == "/products/product-beta"

    keys = h.secret("beta-api-key")
    assert decoded(keys) == {"primary-key": subscription["primaryKey"], "secondary-key": subscription["secondaryKey"]}
    assert keys.metadata.labels["app.kubernetes.io/name"] == "llm-key-requestor"
    assert keys.metadata.labels["app.kubernetes.io/component"] == "llm-team-api-key"

    workspaces = h.workspaces()
    assert list(workspaces) == ["beta-phi-3-mini-4k-instruct"]
    workspace = workspaces["beta-phi-3-mini-4k-instruct"]
    assert workspace["apiVersion"] == "kaito.sh/v1beta1" and workspace["kind"] == "Workspace"
    assert workspace["resource"]["instanceType"] == "Standard_NC6s_v3"
    assert workspace["inference"]["preset"]["name"] == "phi-3-mini-4k-instruct"
    assert workspace["metadata"]["labels"]["llm-key-requestor/team"] == "beta"

    done = h.store.get("beta")
    assert (done.phase, done.generation, done.observed_generation, done.settled) == ("ready", 1, 1, True)
    assert set(done.steps) == set(team_steps.LIVE_STEPS)
    record_secret = h.secret("llm-team-access-beta")
    assert record_secret.metadata.labels["team-settled"] == "true"
    assert record_secret.metadata.labels["app.kubernetes.io/component"] == "llm-team-access"
    assert not record_secret.data, "the team's record holds no key"
    assert subscription["primaryKey"] not in json.dumps(record_secret.metadata.annotations)

    [email] = h.outbox.sent
    assert email.to == ("beta-lead@contoso.com",) and "provisioned" in email.subject
    assert "beta-api-key" in email.text and subscription["primaryKey"] not in email.text


def test_reconcile_twice_makes_no_duplicate(harness, catalog):
    h = harness
    submit(h, catalog, SEED_EXAMPLE, "developer-requests/alpha/access.yaml")
    h.tick()
    keys = decoded(h.secret("alpha-api-key"))
    calls = len(h.arm.calls)
    assert h.tick().due == 0, "a settled team is not swept again"
    assert len(h.arm.calls) == calls
    # The same file again is no new generation.
    record, outcome = submit(h, catalog, SEED_EXAMPLE, "developer-requests/alpha/access.yaml")
    assert outcome == "unchanged" and record.generation == 1

    # Unsettled by hand (the runbook's resync): every step runs again, and still one of each.
    h.core.patch_namespaced_secret("llm-team-access-alpha", h.namespace,
                                   {"metadata": {"labels": {"team-settled": None}}})
    assert h.tick().processed == 1
    assert list(h.service.products) == ["product-alpha"] and list(h.service.subscriptions) == ["sub-alpha"]
    assert decoded(h.secret("alpha-api-key")) == keys
    assert h.store.get("alpha").phase == "ready"
    assert len(h.outbox.sent) == 2 and "updated" in h.outbox.sent[1].subject
    names = [s.metadata.name for s in h.core.list_namespaced_secret(h.namespace).items]
    assert sorted(n for n in names if "alpha" in n) == ["alpha-api-key", "llm-team-access-alpha"]


def test_changed_limits_and_models_are_reapplied(harness, catalog):
    h = harness
    submit(h, catalog, per_model_file())
    h.tick()
    first_keys = decoded(h.secret("beta-api-key"))

    changed = (per_model_file().replace("tokensPerMinute: 2000", "tokensPerMinute: 1500")
               .replace("- name: phi-3-mini\n        instanceType: Standard_NC6s_v3", "- name: mistral-7b"))
    record, outcome = submit(h, catalog, changed)
    assert outcome == "updated" and record.generation == 2 and not record.settled
    assert h.tick().outcomes == {"ready": 1}

    limits = limits_in(stored_policy(h, "product-beta"))
    assert limits["gpt-4o"]["tokens-per-minute"] == "1500"
    assert "mistral-7b,mistral-7b-instruct" in limits and "phi-3-mini,phi-3-mini-4k-instruct" not in limits
    assert list(h.workspaces()) == ["beta-mistral-7b-instruct"]
    assert h.workspaces()["beta-mistral-7b-instruct"]["resource"]["instanceType"] == "Standard_NC12s_v3"
    assert decoded(h.secret("beta-api-key")) == first_keys, "an update keeps the team's keys"
    done = h.store.get("beta")
    assert (done.generation, done.observed_generation, done.phase) == (2, 2, "ready")
    assert [e.subject.rsplit(" ", 1)[-1] for e in h.outbox.sent] == ["provisioned", "updated"]


def test_delete_removes_everything(harness, catalog):
    h = harness
    submit(h, catalog, per_model_file())
    h.tick()
    assert h.service.products and h.workspaces()

    record = teams.request_delete(h.store, "beta", "basic:admin")
    assert record.deleting and record.generation == 2
    assert h.tick().outcomes == {"deleted": 1}

    assert h.service.subscriptions == {} and h.service.products == {}
    assert h.service.policies == {} and not h.service.product_apis.get("product-beta")
    assert h.secret("beta-api-key") is None and h.secret("llm-team-access-beta") is None
    assert h.workspaces() == {}
    assert h.store.get("beta") is None
    assert [e.subject.rsplit(" ", 1)[-1] for e in h.outbox.sent] == ["provisioned", "removed"]
    deletes = [c for c in h.arm.calls if c.method == "DELETE"]
    assert any("/products/product-beta/apis/" in c.path for c in deletes)
    assert any(c.path.endswith("/products/product-beta/policies/policy") for c in deletes)
    product_delete = [c for c in deletes if c.path.endswith("/products/product-beta")]
    assert product_delete and product_delete[0].query.get("deleteSubscriptions") == "true"
    assert h.tick().due == 0


def test_a_transient_500_is_retried(harness, catalog):
    h = harness
    submit(h, catalog, SEED_EXAMPLE, "developer-requests/alpha/access.yaml")
    h.arm.faults.plan("PUT product", status(500))  # one 500: retried inside the call
    assert h.tick().outcomes == {"ready": 1}

    h.arm.faults.plan("PUT product/policy", status(503), status(500), status(500))  # outlasts the quick retries
    submit(h, catalog, SEED_EXAMPLE.replace("5000", "6000"), "developer-requests/alpha/access.yaml")
    assert h.tick().outcomes == {"provisioning": 1}
    waiting = h.store.get("alpha")
    assert waiting.attempts == 1 and "ARM answered 500" in waiting.last_error
    assert waiting.next_attempt_at is not None and not waiting.settled
    assert waiting.done("product") and not waiting.done("policy")

    h.clock.advance(waiting.attempts * 1.0)  # past the planned retry (0.05 s base backoff)
    assert h.tick().outcomes == {"ready": 1}
    done = h.store.get("alpha")
    assert (done.phase, done.attempts, done.last_error, done.generation) == ("ready", 0, None, 2)
    assert limits_in(stored_policy(h, "product-alpha"))["gpt-4o"]["tokens-per-minute"] == "6000"
    assert list(h.service.products) == ["product-alpha"]


def test_a_permanent_error_fails_the_team_with_the_reason(kube_api_client, namespace, workspace_crd, arm,
                                                         apim_service, catalog):
    name, service = apim_service
    h = Harness(kube_api_client, namespace, arm, name, service, api_ids=("no-such-api",))
    submit(h, catalog, SEED_EXAMPLE, "developer-requests/alpha/access.yaml")
    assert h.tick().outcomes == {"failed": 1}
    failed = h.store.get("alpha")
    assert failed.phase == "failed" and failed.settled
    assert "API no-such-api (APIM_TEAM_API_IDS)" in failed.last_error
    assert h.tick().due == 0, "a failed team waits for a new file or a human"
    # The same file again retries the same generation (and fails the same way here).
    retried, outcome = submit(h, catalog, SEED_EXAMPLE, "developer-requests/alpha/access.yaml")
    assert outcome == "retried" and retried.generation == 1 and not retried.settled
    assert h.tick().outcomes == {"failed": 1}
    # A new file (a new generation) tries again; so would `kubectl label ... team-settled-`.
    h.reconciler.options = h.options = dataclass_replace(h.options, api_ids=API_IDS)
    submit(h, catalog, SEED_EXAMPLE.replace("5000", "5100"), "developer-requests/alpha/access.yaml")
    assert h.tick().outcomes == {"ready": 1}


def dataclass_replace(options, **changes):
    import dataclasses

    return dataclasses.replace(options, **changes)


def test_two_reconcilers_at_once_provision_once(kube_api_client, namespace, workspace_crd, arm, apim_service, catalog):
    name, service = apim_service
    first = Harness(kube_api_client, namespace, arm, name, service, holder="worker-1")
    second = Harness(kube_api_client, namespace, arm, name, service, holder="worker-2")
    submit(first, catalog, per_model_file())
    reports = []
    threads = [threading.Thread(target=lambda h=h: reports.append(h.tick())) for h in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _ in range(3):  # whoever lost the lease may leave the rest to a later tick
        if first.store.get("beta").phase == "ready":
            break
        first.tick()
    assert first.store.get("beta").phase == "ready"
    assert list(service.products) == ["product-beta"] and list(service.subscriptions) == ["sub-beta"]
    assert list(first.workspaces()) == ["beta-phi-3-mini-4k-instruct"]
    assert len(first.outbox.sent) + len(second.outbox.sent) == 1


def test_an_unlabelled_keys_secret_of_the_earlier_flow_is_taken_over(harness, catalog):
    h = harness
    h.core.create_namespaced_secret(h.namespace, {"metadata": {"name": "alpha-api-key"},
                                                  "data": {"primary-key": base64.b64encode(b"old").decode()}})
    submit(h, catalog, SEED_EXAMPLE, "developer-requests/alpha/access.yaml")
    h.tick()
    secret = h.secret("alpha-api-key")
    assert decoded(secret)["primary-key"] == h.service.subscriptions["sub-alpha"].properties["primaryKey"]
    assert secret.metadata.labels["app.kubernetes.io/component"] == "llm-team-api-key"


def test_the_sweep_lists_only_unsettled_teams(harness, catalog):
    h = harness
    submit(h, catalog, SEED_EXAMPLE, "developer-requests/alpha/access.yaml")
    submit(h, catalog, per_model_file())
    assert sorted(r.name for r in h.store.list_due()) == ["alpha", "beta"]
    h.tick()
    assert h.store.list_due() == []
    listed = h.core.list_namespaced_secret(h.namespace, label_selector=team_selector()).items
    assert sorted(s.metadata.name for s in listed) == ["llm-team-access-alpha", "llm-team-access-beta"]


@pytest.mark.parametrize("shape", ["documented", "catalog"])
def test_other_shapes_reconcile(harness, catalog, shape):
    h = harness
    text, source, team = {"documented": (SEED_EXAMPLE, "developer-requests/alpha/access.yaml", "alpha"),
                          "catalog": (catalog_file(), "developer-requests/gamma/access.yaml", "gamma")}[shape]
    submit(h, catalog, text, source)
    assert h.tick().outcomes == {"ready": 1}
    assert f"product-{team}" in h.service.products and f"sub-{team}" in h.service.subscriptions
    assert h.secret(f"{team}-api-key") is not None
    expected = ["gamma-llama-3-1-8b-instruct"] if shape == "catalog" else []
    assert list(h.workspaces()) == expected
