"""The Kubernetes Secret store against the real apiserver: contract, concurrency, kubectl."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from shared.domain.request import KeyRequest, State, is_request_id
from shared.services.ports import Conflict
from shared.store import codec
from shared.store.codec import request_name
from shared.store.legacy_claims import CLAIM_REQUEST_ANNOTATION, claim_name
from shared.store.requests import KubernetesRequestStore


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
    assert pages >= 3 and len(seen) == 6 and all(r.state == State.PENDING for r in seen)
    both, _ = store.list([State.PENDING, State.IN_REVIEW])
    assert {r.id for r in both} == ids


def test_a_mistyped_state_label_is_skipped_in_lists_not_fatal(store, core_api, namespace):
    good, _ = store.submit(KeyRequest.new("a@example.com", "gpt-4o"))
    bad, _ = store.submit(KeyRequest.new("b@example.com", "gpt-4o"))
    core_api.patch_namespaced_secret(request_name(bad.id), namespace,
                                     {"metadata": {"labels": {"request-state": "aproved"}}})
    listed, _ = store.list()
    assert [r.id for r in listed] == [good.id]


def legacy_request(core_api, namespace: str, email: str, model: str, state: State) -> KeyRequest:
    """A request as the layout before keyed ids stored it: a random id, and a claim naming it."""
    request = KeyRequest.new(email, model).with_changes(state=state, decision="deny", reason="policy",
                                                         decided_at=datetime.now(UTC))
    core_api.create_namespaced_secret(namespace, codec.to_secret(request))
    core_api.create_namespaced_secret(namespace, {"metadata": {
        "name": claim_name(email, model),
        "labels": {"app.kubernetes.io/name": "llm-key-requestor",
                   "app.kubernetes.io/component": "llm-key-request-claim"},
        "annotations": {CLAIM_REQUEST_ANNOTATION: request.id}}})
    return request


def test_a_request_stored_before_keyed_ids_is_still_the_pairs_one_request(kube_api_client, core_api, namespace):
    old = legacy_request(core_api, namespace, "old@example.com", "gpt-4o", State.IN_REVIEW)
    store = KubernetesRequestStore(kube_api_client, namespace)
    again, created = store.submit(KeyRequest.new("old@example.com", "gpt-4o"))
    assert not created and again.id == old.id
    denied = legacy_request(core_api, namespace, "denied@example.com", "gpt-4o", State.DENIED)
    seen = []
    store.submit(KeyRequest.new("denied@example.com", "gpt-4o"), refuse=seen.append)
    assert [r.id for r in seen] == [denied.id], "a denial stored before is still seen"


def test_ids_are_keyed_hashes_shared_by_every_instance_and_unlike_a_plain_hash(kube_api_client, core_api,
                                                                               namespace):
    import hashlib

    first, _ = KubernetesRequestStore(kube_api_client, namespace).submit(KeyRequest.new("kay@example.com", "gpt-4o"))
    again, created = KubernetesRequestStore(kube_api_client, namespace).submit(
        KeyRequest.new("kay@example.com", "gpt-4o"))
    assert not created and again.id == first.id and is_request_id(first.id) and first.generation == 0
    plain = hashlib.sha256(b"kay@example.com\ngpt-4o\n0").hexdigest()
    assert first.id.replace("-", "")[:12] not in plain
    key = core_api.read_namespaced_secret("llm-key-requestor-request-ids", namespace)
    assert len(key.data["key"]) >= 40 and key.metadata.annotations == {"llm-key-requestor/legacy-claims": "false"}


def test_twenty_identical_requests_at_once_are_one_secret_and_one_write(kube_api_client, core_api, namespace):
    from concurrent.futures import ThreadPoolExecutor

    stores = [KubernetesRequestStore(kube_api_client, namespace) for _ in range(4)]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: stores[i % 4].submit(KeyRequest.new("same@example.com", "gpt-4o")),
                                range(20)))
    assert sum(created for _, created in results) == 1
    assert len({r.id for r, _ in results}) == 1
    secrets = core_api.list_namespaced_secret(namespace).items
    assert sorted(s.metadata.labels.get("app.kubernetes.io/component") for s in secrets) == [
        "llm-key-request", "llm-key-request-id-key"], "no claim, no counter: the request alone"


@pytest.fixture
def archive(core_api, namespace) -> str:
    name = namespace + "-archive"
    core_api.create_namespace({"metadata": {"name": name}})
    yield name
    core_api.delete_namespace(name)


def finish(store: KubernetesRequestStore, request: KeyRequest, state: State = State.DENIED) -> KeyRequest:
    current = store.get(request.id)
    return store.update(current.with_changes(state=state, settled=state, decision="deny", reason="policy",
                                             decided_at=datetime.now(UTC)))


def test_a_finished_request_moves_to_the_archive_and_reads_the_same(store, core_api, namespace, archive):
    created, _ = store.submit(KeyRequest.new("arch@example.com", "gpt-4o"))
    denied = finish(store, created)
    moved = store.archive(denied)
    assert moved.archived and moved.id == created.id and moved.reason == "policy"
    assert [s.metadata.name for s in core_api.list_namespaced_secret(archive).items] == [request_name(created.id)]
    assert request_name(created.id) not in {s.metadata.name for s in core_api.list_namespaced_secret(namespace).items}
    assert store.get(created.id) == moved
    assert [r.id for r in store.list([State.DENIED])[0]] == [created.id]
    assert store.list([State.DENIED], unsettled_only=True)[0] == [], "the sweeps never read the archive"
    cleared = store.update(moved.with_changes(denial_cleared_by="admin", denial_cleared_at=datetime.now(UTC)))
    assert cleared.archived and store.get(created.id).denial_cleared_by == "admin"

    seen = []
    again, is_new = store.submit(KeyRequest.new("arch@example.com", "gpt-4o"), refuse=seen.append)
    assert is_new and again.generation == 1 and again.id != created.id
    assert [r.id for r in seen] == [created.id], "the archived denial is still asked about"


def test_the_admin_list_pages_through_the_request_namespace_then_the_archive(store, archive):
    done = [store.archive(finish(store, store.submit(KeyRequest.new(f"d{i}@example.com", "gpt-4o"))[0]))
            for i in range(3)]
    open_ = [store.submit(KeyRequest.new(f"o{i}@example.com", "gpt-4o"))[0] for i in range(3)]
    seen, token, pages = [], None, 0
    while True:
        page, token = store.list(limit=2, continue_token=token)
        seen += page
        pages += 1
        if not token:
            break
    assert sorted(r.id for r in seen) == sorted(r.id for r in done + open_) and pages >= 3
    assert len({r.id for r in seen}) == 6


def test_without_an_archive_namespace_finished_requests_stay_put(store, core_api, namespace, caplog):
    created, _ = store.submit(KeyRequest.new("stay@example.com", "gpt-4o"))
    denied = finish(store, created)
    assert store.archive(denied) == denied and not store.get(created.id).archived
    assert "archive namespace" in caplog.text and "does not exist" in caplog.text


def test_retention_deletes_a_pairs_requests_newest_first(store, archive):
    first = store.archive(finish(store, store.submit(KeyRequest.new("chain@example.com", "gpt-4o"))[0]))
    second, _ = store.submit(KeyRequest.new("chain@example.com", "gpt-4o"))
    assert second.generation == 1
    assert store.delete(store.get(first.id)) is False, "the open second request is found through the first"
    assert store.submit(KeyRequest.new("chain@example.com", "gpt-4o"))[0].id == second.id
    store.archive(finish(store, second))
    assert store.delete(store.get(second.id)) is True
    assert store.delete(store.get(first.id)) is True


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
