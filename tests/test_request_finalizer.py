"""A request Secret deleted by hand (`kubectl delete secret llm-key-request-<id>`) takes its keys
with it: while a request may hold issued access its Secret carries a finalizer, so the delete only
marks it; the next tick revokes that access and drops the finalizer, and the apiserver removes it.
Real kube-apiserver, real SMTP server, the LiteLLM key API stand-in."""

from __future__ import annotations

import logging

from shared.domain.request import State
from shared.store import codec
from tests.standins.faults import status
from tests.test_processor_loops import active, loops  # noqa: F401 - the fixture, and its helper

FINALIZER = "llm-key-requestor/revoke-access"


def stored(core_api, namespace: str, request_id: str):
    from kubernetes.client.exceptions import ApiException

    try:
        return core_api.read_namespaced_secret(codec.request_name(request_id), namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete_by_hand(core_api, namespace: str, request_id: str) -> None:
    core_api.delete_namespaced_secret(codec.request_name(request_id), namespace)


def live_keys(litellm_standin, request_id: str) -> list[str]:
    return [token for token, row in litellm_standin.keys.items() if request_id in row["key_alias"]]


def test_an_active_key_carries_the_finalizer_and_a_delete_revokes_it_before_the_secret_goes(
        loops, core_api, litellm_standin, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="shared.audit")
    request = active(loops, "deleted@example.com")
    secret = stored(core_api, loops.namespace, request.id)
    assert FINALIZER in secret.metadata.finalizers
    assert secret.metadata.labels[codec.HOLDS_LABEL] == "true"
    assert live_keys(litellm_standin, request.id)

    delete_by_hand(core_api, loops.namespace, request.id)
    held = stored(core_api, loops.namespace, request.id)
    assert held is not None and held.metadata.deletion_timestamp is not None, "the finalizer holds it"
    assert live_keys(litellm_standin, request.id), "nothing is revoked before the tick"

    report = loops.processor.run_tick()
    assert report.outcomes.get("deleted") == 1
    assert live_keys(litellm_standin, request.id) == []
    assert len(litellm_standin.calls_to("POST", "/key/delete")) == 1
    assert stored(core_api, loops.namespace, request.id) is None, "the Secret is gone once its key is"
    assert f"audit: request {request.id}" in caplog.text and "deleted by hand" in caplog.text
    assert loops.processor.run_tick().due == 0


def test_a_request_that_holds_nothing_has_no_finalizer_and_goes_at_once(loops, core_api):  # noqa: F811
    request = loops.submit("pending@example.com")
    assert not stored(core_api, loops.namespace, request.id).metadata.finalizers
    delete_by_hand(core_api, loops.namespace, request.id)
    assert stored(core_api, loops.namespace, request.id) is None


def test_revoked_access_drops_the_finalizer_and_keeps_an_operators_own(loops, core_api, litellm_standin):  # noqa: F811
    request = active(loops, "revoked@example.com")
    name = codec.request_name(request.id)
    core_api.patch_namespaced_secret(name, loops.namespace, {"metadata": {"finalizers": [
        FINALIZER, "example.com/backup"]}})
    from shared.services import review

    review.act(loops.store, request.id, "revoke", "basic:admin", "no longer needed")
    revoked = loops.until_settled(request)
    assert revoked.state == State.REVOKED
    secret = stored(core_api, loops.namespace, request.id)
    assert secret.metadata.finalizers == ["example.com/backup"], "ours goes with the access; theirs stays"
    assert codec.HOLDS_LABEL not in secret.metadata.labels
    core_api.patch_namespaced_secret(name, loops.namespace, {"metadata": {"finalizers": None}})


def test_a_revoke_that_fails_for_good_keeps_the_secret_terminating_with_the_reason(
        loops, core_api, litellm_standin):  # noqa: F811
    request = active(loops, "stuck@example.com")
    litellm_standin.faults.plan("POST /key/delete", *[status(401, body={"error": "Authentication Error"})] * 10)
    delete_by_hand(core_api, loops.namespace, request.id)
    for _ in range(3):
        loops.processor.run_tick()
    held = stored(core_api, loops.namespace, request.id)
    assert held is not None and FINALIZER in held.metadata.finalizers, "the key may live: the Secret stays"
    current = loops.get(request)
    assert current.deleting and "revoking litellm access failed" in current.last_error
    assert live_keys(litellm_standin, request.id)
    assert len(litellm_standin.calls_to("POST", "/key/delete")) == 1, "a refusal is not retried by itself"
    version = current.resource_version
    assert loops.processor.run_tick().due == 0, "and it costs no tick anything more"
    assert loops.get(request).resource_version == version
    # The runbook's way out once the key is revoked by hand in LiteLLM: drop the finalizer.
    core_api.patch_namespaced_secret(codec.request_name(request.id), loops.namespace,
                                     {"metadata": {"finalizers": None}})
    assert stored(core_api, loops.namespace, request.id) is None


def test_a_request_deleted_while_being_provisioned_is_revoked_not_finished(loops, core_api, litellm_standin,  # noqa: F811
                                                                          smtp_server):
    """Deleted between `prepare` (the finalizer is written with the chosen key) and the email: the
    issued key is revoked, nothing is emailed, the Secret goes."""
    request = loops.submit("midway@example.com")
    litellm_standin.faults.plan("POST /key/generate", *[status(503)] * 3)  # every try of one call
    loops.processor.run_tick()  # decided, prepared, issue failed once: waits for its retry
    current = loops.get(request)
    assert current.state == State.APPROVED
    assert FINALIZER in stored(core_api, loops.namespace, request.id).metadata.finalizers
    delete_by_hand(core_api, loops.namespace, request.id)
    loops.clock.advance(3600)
    loops.processor.run_tick()
    assert stored(core_api, loops.namespace, request.id) is None
    assert live_keys(litellm_standin, request.id) == []
    assert smtp_server.mailbox.to("midway@example.com") == []
