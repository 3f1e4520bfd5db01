"""The Kubernetes Secret store against the real apiserver: contract, concurrency, kubectl."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.request import KeyRequest, State
from shared.services.ports import Conflict
from shared.store.codec import request_name
from shared.store.requests import CLAIM_REQUEST_ANNOTATION, CLAIM_TIME_ANNOTATION, KubernetesRequestStore, _claim_name


@pytest.fixture
def store(kube_api_client, namespace) -> KubernetesRequestStore:
    return KubernetesRequestStore(kube_api_client, namespace)


def test_round_trip_and_update_guarded_by_resource_version(store):
    created, is_new = store.submit(KeyRequest.new("ann@example.com", "gpt-4o"))
    assert is_new and created.resource_version
    read = store.get(created.id)
    assert read == created

    decided = store.update(read.with_changes(state=State.DENIED, reason="policy", decided_by="alice",
                                             decided_at=read.created_at, attempts=2))
    assert store.get(created.id) == decided
    assert decided.resource_version != read.resource_version

    with pytest.raises(Conflict):  # written by someone else since `read` was taken
        store.update(read.with_changes(state=State.APPROVED))
    assert store.get(created.id).state == State.DENIED


def test_update_can_clear_an_annotation(store, core_api, namespace):
    created, _ = store.submit(KeyRequest.new("ann@example.com", "gpt-4o"))
    with_error = store.update(created.with_changes(last_error="timeout"))
    cleared = store.update(with_error.with_changes(last_error=None))
    assert cleared.last_error is None
    notes = core_api.read_namespaced_secret(request_name(created.id), namespace).metadata.annotations
    assert "llm-key-requestor/last-error" not in notes


def test_list_by_state_in_pages(store):
    ids = {store.submit(KeyRequest.new(f"u{i}@example.com", "gpt-4o"))[0].id for i in range(7)}
    some = store.get(sorted(ids)[0])
    store.update(some.with_changes(state=State.IN_REVIEW))

    seen, token, pages = [], None, 0
    while True:
        page, token = store.list([State.PENDING], limit=2, continue_token=token)
        seen += page
        pages += 1
        if not token:
            break
    assert pages == 3 and len(seen) == 6 and all(r.state == State.PENDING for r in seen)
    both, _ = store.list([State.PENDING, State.IN_REVIEW])
    assert {r.id for r in both} == ids


def test_a_mistyped_state_label_is_skipped_in_lists_not_fatal(store, core_api, namespace):
    good, _ = store.submit(KeyRequest.new("a@example.com", "gpt-4o"))
    bad, _ = store.submit(KeyRequest.new("b@example.com", "gpt-4o"))
    core_api.patch_namespaced_secret(request_name(bad.id), namespace,
                                     {"metadata": {"labels": {"request-state": "aproved"}}})
    listed, _ = store.list()
    assert [r.id for r in listed] == [good.id]


def test_an_abandoned_claim_is_taken_over(store, core_api, namespace):
    """A writer that died between writing the claim and the request must not block the pair forever."""
    old = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    core_api.create_namespaced_secret(namespace, {"metadata": {
        "name": _claim_name("dead@example.com", "gpt-4o"),
        "labels": {"app.kubernetes.io/name": "llm-key-requestor",
                   "app.kubernetes.io/component": "llm-key-request-claim"},
        "annotations": {CLAIM_REQUEST_ANNOTATION: "00000000-0000-4000-8000-000000000000",
                        CLAIM_TIME_ANNOTATION: old}}})
    created, is_new = store.submit(KeyRequest.new("dead@example.com", "gpt-4o"))
    assert is_new
    claim = core_api.read_namespaced_secret(_claim_name("dead@example.com", "gpt-4o"), namespace)
    assert claim.metadata.annotations[CLAIM_REQUEST_ANNOTATION] == created.id


@pytest.fixture
def kubectl(kube_cluster, namespace):
    binary = shutil.which("kubectl")
    assert binary, "kubectl is installed by scripts/setup"

    def run(*args: str) -> str:
        result = subprocess.run([binary, "--kubeconfig", str(kube_cluster.kubeconfig), "-n", namespace, *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


def test_the_kubectl_runbook(store, kubectl):
    created, _ = store.submit(KeyRequest.new("kim@example.com", "gpt-4o"))
    listed = kubectl("get", "secrets", "-l", "app.kubernetes.io/component=llm-key-request", "-o", "name")
    assert listed.split() == [f"secret/{request_name(created.id)}"]
    described = kubectl("describe", "secret", request_name(created.id))
    assert "llm-key-requestor/email: kim@example.com" in described and "request-state=pending" in described

    kubectl("label", "secret", request_name(created.id), "request-state=approved", "--overwrite")
    assert store.get(created.id).state == State.APPROVED
