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
from shared.services.ports import NotFound
from shared.store.teams import team_selector
from tests.standins import leaks
from tests.standins.faults import status
from tests.teams_fixtures import (
    API_IDS,
    SEED_EXAMPLE,
    Harness,
    catalog_file,
    per_model_file,
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

    keys = h.keys("beta")
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
    keys = decoded(h.keys("alpha"))
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
    assert decoded(h.keys("alpha")) == keys
    assert h.store.get("alpha").phase == "ready"
    assert len(h.outbox.sent) == 2 and "updated" in h.outbox.sent[1].subject
    names = [s.metadata.name for s in h.core.list_namespaced_secret(h.namespace).items]
    assert sorted(n for n in names if "alpha" in n) == ["llm-team-access-alpha"]
    keys = [s.metadata.name for s in h.core.list_namespaced_secret(h.keys_namespace).items]
    assert keys == ["alpha-api-key"], "the keys live apart from the records, once"


def test_changed_limits_and_models_are_reapplied(harness, catalog):
    h = harness
    submit(h, catalog, per_model_file())
    h.tick()
    first_keys = decoded(h.keys("beta"))

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
    assert decoded(h.keys("beta")) == first_keys, "an update keeps the team's keys"
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
    assert h.keys("beta") is None and h.secret("llm-team-access-beta") is None
    assert h.workspaces() == {}
    assert h.store.get("beta") is None
    assert [e.subject.rsplit(" ", 1)[-1] for e in h.outbox.sent] == ["provisioned", "removed"]
    deletes = [c for c in h.arm.calls if c.method == "DELETE"]
    assert any("/products/product-beta/apis/" in c.path for c in deletes)
    assert any(c.path.endswith("/products/product-beta/policies/policy") for c in deletes)
    product_delete = [c for c in deletes if c.path.endswith("/products/product-beta")]
    # The team's subscription went first; without deleteSubscriptions APIM keeps any other one.
    assert product_delete and "deleteSubscriptions" not in product_delete[0].query
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
    assert h.keys(team) is not None
    expected = ["gamma-llama-3-1-8b-instruct"] if shape == "catalog" else []
    assert list(h.workspaces()) == expected


# --- key rotation ------------------------------------------------------------------------------------


GRACE = 86400.0  # TeamReconcilerOptions' default, config.yaml's provisioning.rotation_grace (24h)


def apim_keys(h: Harness, team: str = "beta") -> tuple[str, str]:
    stored = h.service.subscriptions[f"sub-{team}"].properties
    return stored["primaryKey"], stored["secondaryKey"]


def secret_keys(h: Harness, team: str = "beta") -> tuple[str, str]:
    data = decoded(h.keys(team))
    return data["primary-key"], data["secondary-key"]


def regenerations(h: Harness) -> list[str]:
    return [c.path.rsplit("/", 1)[-1] for c in h.arm.calls if c.path.endswith("Key") and c.method == "POST"]


def test_rotation_keeps_one_key_working_at_every_moment_and_alternates(harness, catalog):
    h = harness
    submit(h, catalog, per_model_file())
    h.tick()
    primary, secondary = apim_keys(h)

    record, outcome = teams.request_rotation(h.store, "beta", "basic:admin")
    assert outcome == "requested" and record.rotating and not record.settled and record.phase == "ready"
    assert teams.status(h.store, "beta")["rotation"]["new_key"] == "secondary-key"

    # First run: the unused key (secondary) is regenerated, both keys are written, the owner is told;
    # then the team waits out the grace, its primary untouched.
    assert h.tick().outcomes == {"ready": 1}
    new_primary, new_secondary = apim_keys(h)
    assert new_primary == primary and new_secondary != secondary
    assert secret_keys(h) == (primary, new_secondary)
    waiting = h.store.get("beta")
    assert set(waiting.rotation_steps) == {team_steps.ROTATE_NEW, team_steps.ROTATE_KEYS_NEW,
                                           team_steps.NOTIFIED_ROTATED}
    assert waiting.rotation_retire_at == waiting.next_attempt_at
    grace_left = (waiting.rotation_retire_at - h.clock()).total_seconds()
    assert GRACE - 60 < grace_left <= GRACE
    assert (waiting.phase, waiting.settled, waiting.observed_generation) == ("ready", False, 1)
    assert set(waiting.steps) == set(team_steps.LIVE_STEPS), "the generation's steps are not redone"
    assert teams.summary(waiting)["in_sync"] is True
    rotated = h.outbox.sent[-1]
    assert rotated.to == ("beta-lead@contoso.com",) and rotated.subject.endswith("rotated")
    where = f"in the Kubernetes Secret beta-api-key in namespace {h.keys_namespace}"
    assert f"The secondary-key {where} is new" in rotated.text
    assert "jsonpath='{.data.secondary-key}'" in rotated.text
    assert f"primary-key keeps working until {waiting.rotation_retire_at:%Y-%m-%d %H:%M} UTC" in rotated.text
    assert not leaks({primary, secondary, new_secondary}, rotated.text, rotated.html, json.dumps(
        h.secret("llm-team-access-beta").metadata.annotations))
    assert regenerations(h) == ["regenerateSecondaryKey"]

    # Before the grace is over nothing happens, however often the timer runs.
    h.clock.advance(GRACE - 120)
    assert h.tick().processed == 0
    assert apim_keys(h) == (primary, new_secondary) and len(h.outbox.sent) == 2

    # After it: the old key (primary) is regenerated, the Secret written again, the rotation ends.
    h.clock.advance(121)
    assert h.tick().outcomes == {"ready": 1}
    final_primary, final_secondary = apim_keys(h)
    assert final_primary != primary and final_secondary == new_secondary, "only the new key works"
    assert secret_keys(h) == (final_primary, final_secondary)
    done = h.store.get("beta")
    assert not done.rotating and done.settled and done.phase == "ready" and done.rotation_steps == {}
    assert done.applied["live-key"] == "secondary" and done.next_attempt_at is None
    assert teams.status(h.store, "beta")["key_in_use"] == "secondary-key"
    assert regenerations(h) == ["regenerateSecondaryKey", "regeneratePrimaryKey"]
    assert len(h.outbox.sent) == 2 and h.tick().due == 0
    annotations = h.secret("llm-team-access-beta").metadata.annotations
    assert not any("rotat" in k for k in annotations), "nothing of the rotation is left on the record"

    # The next rotation takes the other turn: the primary (not in use now) first.
    teams.request_rotation(h.store, "beta", "basic:admin")
    h.tick()
    assert apim_keys(h)[1] == final_secondary and apim_keys(h)[0] != final_primary
    assert "The primary-key in the Kubernetes Secret" in h.outbox.sent[-1].text
    h.clock.advance(GRACE + 1)
    h.tick()
    assert apim_keys(h)[1] != final_secondary and h.store.get("beta").applied["live-key"] == "primary"
    assert secret_keys(h) == apim_keys(h)
    assert regenerations(h)[2:] == ["regeneratePrimaryKey", "regenerateSecondaryKey"]
    # Emails after an odd number of rotations name the key in use.
    changed = per_model_file().replace("tokensPerMinute: 2000", "tokensPerMinute: 1900")
    submit(h, catalog, changed)
    h.tick()
    assert "jsonpath='{.data.primary-key}'" in h.outbox.sent[-1].text


def test_a_rotation_is_asked_for_only_on_a_ready_team_one_at_a_time(harness, catalog):
    h = harness
    with pytest.raises(NotFound):
        teams.request_rotation(h.store, "beta", "basic:admin")
    submit(h, catalog, per_model_file())
    with pytest.raises(teams.RotationRefused, match="is not ready"):
        teams.request_rotation(h.store, "beta", "basic:admin")
    h.tick()
    teams.request_rotation(h.store, "beta", "basic:admin")
    with pytest.raises(teams.RotationRefused, match="has a key rotation that is running"):
        teams.request_rotation(h.store, "beta", "basic:admin")
    h.tick()
    with pytest.raises(teams.RotationRefused, match="is running"):  # waiting out the grace
        teams.request_rotation(h.store, "beta", "basic:admin")


def test_a_new_generation_during_the_grace_does_not_restart_the_rotation(harness, catalog):
    h = harness
    submit(h, catalog, per_model_file())
    h.tick()
    teams.request_rotation(h.store, "beta", "basic:admin")
    h.tick()
    primary, secondary = apim_keys(h)

    changed = per_model_file().replace("tokensPerMinute: 2000", "tokensPerMinute: 1500")
    assert submit(h, catalog, changed)[1] == "updated"
    assert h.tick().outcomes == {"ready": 1}, "the new generation is applied at once, not after the grace"
    middle = h.store.get("beta")
    assert (middle.generation, middle.observed_generation, middle.settled) == (2, 2, False)
    assert middle.rotating and middle.next_attempt_at == middle.rotation_retire_at
    assert apim_keys(h) == (primary, secondary) and regenerations(h) == ["regenerateSecondaryKey"]
    assert limits_in(stored_policy(h, "product-beta"))["gpt-4o"]["tokens-per-minute"] == "1500"
    assert [e.subject.rsplit(" ", 1)[-1] for e in h.outbox.sent] == ["provisioned", "rotated", "updated"]

    h.clock.advance(GRACE + 1)
    h.tick()
    assert apim_keys(h)[1] == secondary and apim_keys(h)[0] != primary
    done = h.store.get("beta")
    assert not done.rotating and done.settled and (done.generation, done.observed_generation) == (2, 2)


def test_rotation_failures_are_retried_and_a_failed_rotation_resumes(harness, catalog):
    h = harness
    submit(h, catalog, per_model_file())
    h.tick()
    primary, secondary = apim_keys(h)
    teams.request_rotation(h.store, "beta", "basic:admin")

    h.arm.faults.plan("POST subscription/regenerateSecondaryKey", status(503), status(500), status(500))
    assert h.tick().outcomes == {"ready": 1}
    retrying = h.store.get("beta")
    assert retrying.attempts == 1 and "ARM answered 500" in retrying.last_error
    assert retrying.rotation_steps == {} and apim_keys(h) == (primary, secondary)

    h.arm.faults.plan("POST subscription/regenerateSecondaryKey", status(403, body={"error": {
        "code": "AuthorizationFailed", "message": "not allowed to regenerate"}}))
    h.clock.advance(5)
    assert h.tick().outcomes == {"failed": 1}
    failed = h.store.get("beta")
    assert failed.phase == "failed" and failed.settled and failed.rotating
    assert "AuthorizationFailed" in failed.last_error
    assert h.tick().due == 0, "a failed rotation waits for a human"
    assert teams.status(h.store, "beta")["rotation"]["steps"] == {}

    record, outcome = teams.request_rotation(h.store, "beta", "basic:admin")  # POST .../rotate again
    assert outcome == "resumed" and not record.settled
    assert h.tick().outcomes == {"ready": 1}
    resumed = h.store.get("beta")
    assert set(resumed.steps) == set(team_steps.LIVE_STEPS), "the team was re-applied first"
    assert resumed.rotated(team_steps.NOTIFIED_ROTATED) and apim_keys(h)[0] == primary
    assert apim_keys(h)[1] != secondary and secret_keys(h) == apim_keys(h)
    h.clock.advance(GRACE + 1)
    h.tick()
    assert not h.store.get("beta").rotating and apim_keys(h)[0] != primary


def test_deleting_a_team_during_its_rotation_removes_everything(harness, catalog):
    h = harness
    submit(h, catalog, per_model_file())
    h.tick()
    teams.request_rotation(h.store, "beta", "basic:admin")
    h.tick()
    teams.request_delete(h.store, "beta", "basic:admin")
    assert h.tick().outcomes == {"deleted": 1}
    assert h.service.subscriptions == {} and h.keys("beta") is None and h.store.get("beta") is None
    h.clock.advance(GRACE + 1)
    assert h.tick().due == 0
