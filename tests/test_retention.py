"""Bounded storage: the daily retention sweep deletes finished requests `requests.retention_days`
after their last change (with an audit line first), their claims and stale intake counters, and
nothing else. Real kube-apiserver; requests written as the app writes them."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from shared import context
from shared.domain.request import KeyRequest, State
from shared.services import retention
from shared.services.ports import Conflict
from shared.store import codec
from tests.conftest import secret_names

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def stored(core_api, namespace: str, state: State, days_ago: float, *, settled: bool = True,
           references: dict | None = None, email: str | None = None, archived: bool = False) -> KeyRequest:
    when = NOW - timedelta(days=days_ago)
    request = KeyRequest.new(email or f"{state.value}-{days_ago}-{archived}@example.com", "gpt-4o-mini", when)
    request = request.with_changes(when, state=state, settled=state if settled else None,
                                   references=references or {})
    core_api.create_namespaced_secret(f"{namespace}-archive" if archived else namespace, codec.to_secret(request))
    return request


def names(core_api, namespace: str, where: str = "") -> list[str]:
    """The request Secrets of the request namespace (where="") or of its archive ("-archive")."""
    return secret_names(core_api, namespace + where, f"{codec.COMPONENT_LABEL}={codec.REQUEST_COMPONENT}")


@pytest.fixture
def store(app_env):
    context.reset()
    return context.request_store()


def test_finished_requests_older_than_the_retention_go_each_with_an_audit_line(store, core_api, app_env, caplog):
    caplog.set_level(logging.INFO, logger="shared.audit")
    # In the archive, where the app moves them; and two left in the request namespace (stored
    # before the archive existed): those go too, or, when younger, move to the archive.
    old = [stored(core_api, app_env, state, 91, archived=True) for state in (State.DENIED, State.REVOKED,
                                                                             State.FAILED, State.EXPIRED)]
    old += [stored(core_api, app_env, State.DENIED, 95), stored(core_api, app_env, State.EXPIRED, 300)]
    young = stored(core_api, app_env, State.DENIED, 89, archived=True)
    young_leftover = stored(core_api, app_env, State.REVOKED, 30)
    unsettled = stored(core_api, app_env, State.FAILED, 200, settled=False)  # its cleanup has not run
    live = stored(core_api, app_env, State.ACTIVE, 200)
    waiting = stored(core_api, app_env, State.IN_REVIEW, 200)

    report = retention.sweep(store, 90, now=NOW)

    assert report.deleted == 6 and report.archived == 1 and report.complete
    assert names(core_api, app_env) == sorted(codec.request_name(r.id) for r in (unsettled, live, waiting))
    assert names(core_api, app_env, "-archive") == sorted(codec.request_name(r.id) for r in (young, young_leftover))
    for request in old:
        assert f"audit: retention deletes request {request.id} ({request.state.value}" in caplog.text
    assert retention.sweep(store, 90, now=NOW).deleted == 0, "a second run finds nothing more"


def test_a_finished_request_that_may_still_hold_access_is_kept_and_said(store, core_api, app_env, caplog):
    held = stored(core_api, app_env, State.FAILED, 365, references={
        "litellm-prepared": "true", "litellm-reached": "yes", "litellm-revoke-failed": "401"})
    report = retention.sweep(store, 90, now=NOW)
    assert report.deleted == 0 and report.held == 1
    assert names(core_api, app_env) == [codec.request_name(held.id)]
    assert f"request {held.id} (failed) is older than 90 days but may still hold access" in caplog.text


def test_pages_through_what_is_stored(store, core_api, app_env):
    for i in range(7):
        stored(core_api, app_env, State.DENIED, 120, email=f"paged{i}@example.com")
    report = retention.sweep(store, 90, now=NOW, page_size=2)
    assert report.deleted == 7 and report.pages >= 4
    assert names(core_api, app_env) == []


def test_no_retention_keeps_every_request(store, core_api, app_env):
    stored(core_api, app_env, State.DENIED, 4000)
    assert retention.sweep(store, None, now=NOW).deleted == 0
    assert len(names(core_api, app_env)) == 1


def test_a_request_changed_since_it_was_read_is_not_deleted(store, core_api, app_env):
    request = stored(core_api, app_env, State.DENIED, 120)
    read = store.get(request.id)
    store.update(read.with_changes(NOW, denial_cleared_by="admin", denial_cleared_at=NOW))
    with pytest.raises(Conflict):
        store.delete(read)
    assert names(core_api, app_env) == [codec.request_name(request.id)]


def test_the_claim_of_a_request_stored_before_keyed_ids_goes_with_it_unless_it_names_a_newer_one(
        store, core_api, app_env):
    from shared.store.legacy_claims import CLAIM_REQUEST_ANNOTATION, claim_name

    def claim(email: str, request_id: str) -> None:
        core_api.create_namespaced_secret(app_env, {"metadata": {
            "name": claim_name(email, "gpt-4o-mini"), "annotations": {CLAIM_REQUEST_ANNOTATION: request_id},
            "labels": {codec.APP_LABEL: codec.APP_NAME, codec.COMPONENT_LABEL: codec.CLAIM_COMPONENT}}})

    gone = stored(core_api, app_env, State.DENIED, 120, email="claimed@example.com")
    claim("claimed@example.com", gone.id)
    moved_on = stored(core_api, app_env, State.DENIED, 120, email="moved-on@example.com")
    claim("moved-on@example.com", "00000000-0000-4000-8000-000000000001")  # names a newer request

    assert retention.sweep(store, 90, now=NOW).deleted == 2
    left = secret_names(core_api, app_env, f"{codec.COMPONENT_LABEL}={codec.CLAIM_COMPONENT}")
    assert left == [claim_name("moved-on@example.com", "gpt-4o-mini")]
    assert moved_on.id not in " ".join(names(core_api, app_env))


def test_counters_of_past_windows_go_unless_they_remember_an_open_request(store, core_api, app_env):
    open_request, _ = store.submit(KeyRequest.new("open@example.com", "gpt-4o-mini"))
    assert store.take_limit("address:old@example.com", "2026-11-29", 10, request_id="x") is None
    assert store.take_limit("domain:example.com", "2026-11-30T23", 200) is None
    assert store.take_limit("address:open@example.com", "2026-11-29", 10, request_id=open_request.id) is None
    assert store.take_limit("address:today@example.com", "2026-12-01", 10, request_id="y") is None
    report = retention.sweep(store, 90, now=NOW)
    assert report.limits_deleted == 2
    scopes = sorted(s.metadata.annotations["llm-key-requestor/limit-scope"] for s in core_api.list_namespaced_secret(
        app_env, label_selector=f"{codec.COMPONENT_LABEL}=llm-key-limit").items)
    assert scopes == ["address:open@example.com", "address:today@example.com"]


def test_the_budget_stops_the_sweep_between_pages(store, core_api, app_env):
    for i in range(4):
        stored(core_api, app_env, State.DENIED, 120, email=f"budget{i}@example.com")
    ticks = iter([0.0, 0.0] + [10.0] * 10)  # the deadline, the first page; then it is spent
    report = retention.sweep(store, 90, now=NOW, page_size=2, budget_seconds=5, monotonic=lambda: next(ticks))
    assert not report.complete and report.deleted == 2
    assert len(names(core_api, app_env)) == 2


def test_the_retention_timer_runs_the_sweep_daily(functions, app_env, core_api, caplog):
    from azure.functions.timer import TimerRequest

    from local_host.functions import invoke

    entry = functions["retention_timer"]
    assert entry.trigger["schedule"] == "0 30 3 * * *"
    old = stored(core_api, app_env, State.DENIED, 400)
    caplog.set_level(logging.INFO)
    invoke(entry, TimerRequest(past_due=False))
    assert codec.request_name(old.id) not in names(core_api, app_env)
    assert "retention: " in caplog.text and "1 deleted" in caplog.text


def test_a_full_secret_quota_refuses_new_requests_with_a_503_and_no_kubernetes_words(http, core_api, app_env):
    """infra/kubernetes/resourcequota.yaml caps the Secrets of the namespace; at the cap the
    requester gets a 503 to try later (the quota's own message goes to the log only), and no
    request is left half-written."""
    from kubernetes import client

    hard = {"count/secrets": "12"}
    core_api.create_namespaced_resource_quota(app_env, {"metadata": {"name": "secrets"}, "spec": {"hard": hard}})
    # No kube-controller-manager here: give the quota the status it would compute (nothing used yet).
    core_api.replace_namespaced_resource_quota_status("secrets", app_env, client.V1ResourceQuota(
        metadata={"name": "secrets"}, spec={"hard": hard}, status={"hard": hard, "used": {"count/secrets": "0"}}))
    answers = [http.post("/api/request-key", json={"email": f"q{i}@example.com", "llm": "gpt-4o-mini"})
               for i in range(12)]
    statuses = [a.status_code for a in answers]
    assert statuses[0] == 201 and 503 in statuses, statuses
    full = statuses.index(503)
    assert set(statuses[full:]) == {503}, statuses
    assert all(a.headers["Retry-After"] and "quota" not in a.get_data(as_text=True).lower() for a in answers[full:])
    assert len(names(core_api, app_env)) == full, "no refused request is stored"
