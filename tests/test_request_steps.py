"""What a request or a team needs next, as pure functions: table-driven, no apiserver."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain import lifecycle
from shared.domain import request_steps as rs
from shared.domain.request import KeyRequest, State
from shared.domain.team import TeamRecord, TeamSpec
from shared.domain.team import steps as ts

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def request(state: State, *, steps=(), references=None, settled=None, decision=None, reason=None,
            reason_edited=False) -> KeyRequest:
    return KeyRequest(id="0c2b6a7e-4f3d-4a4b-9c1d-2e3f4a5b6c7d", email="a@example.com", model="m",
                      state=state, created_at=NOW, updated_at=NOW, steps={s: NOW for s in steps},
                      references=references or {}, settled=settled, decision=decision, reason=reason,
                      reason_edited=reason_edited)


PREPARED = {"litellm-prepared": "true", "litellm-reached": "no"}
REACHED = {"litellm-prepared": "true", "litellm-reached": "maybe"}
LEGACY = {"litellm-prepared": "true"}  # stored before `reached` existed: counts as maybe
GAVE_UP = {**REACHED, "litellm-revoke-failed": "LiteLLM POST /key/delete answered 401"}
ISSUED = {"litellm-prepared": "true", "litellm-reached": "yes"}

# (state, steps done, references, the model's backends) -> the next step's name
TABLE = [
    (State.PENDING, (), {}, ("litellm",), "decide"),
    (State.IN_REVIEW, (), {}, ("litellm",), "notify-review"),
    (State.IN_REVIEW, ("notified-review",), {}, ("litellm",), "settle"),
    (State.APPROVED, (), {}, ("litellm",), "prepare:litellm"),
    (State.APPROVED, (), PREPARED, ("litellm",), "issue:litellm"),
    (State.APPROVED, ("litellm-issued",), PREPARED, ("litellm",), "notify-approved"),
    (State.APPROVED, ("litellm-issued",), PREPARED, ("litellm", "apim"), "prepare:apim"),
    (State.APPROVED, (), {}, None, "model-gone"),
    (State.ACTIVE, (), PREPARED, ("litellm",), None),
    (State.REVOKED, (), {}, ("litellm",), None),
    (State.EXPIRED, (), ISSUED, ("litellm",), "revoke:litellm"),
    (State.EXPIRED, (), {}, ("litellm",), "notify-expired"),
    (State.EXPIRED, ("notified-expired",), {}, ("litellm",), "settle"),
    # cleanup: nothing sent -> nothing to revoke; maybe or legacy -> revoke
    (State.DENIED, (), PREPARED, ("litellm",), "forget:litellm"),
    (State.DENIED, (), REACHED, ("litellm",), "revoke:litellm"),
    (State.DENIED, (), LEGACY, ("litellm",), "revoke:litellm"),
    (State.DENIED, (), {}, ("litellm",), "notify-denied"),
    (State.DENIED, ("notified-denied",), {}, ("litellm",), "settle"),
    (State.DENIED, (), GAVE_UP, ("litellm",), "notify-denied"),
    (State.DENIED, ("notified-denied",), GAVE_UP, ("litellm",), "enter-failed"),
    (State.REVOKING, (), REACHED, ("litellm",), "revoke:litellm"),
    (State.REVOKING, (), {}, ("litellm",), "enter-revoked"),
    (State.REVOKING, (), GAVE_UP, ("litellm",), "enter-failed"),
    (State.FAILED, (), PREPARED, ("litellm",), "forget:litellm"),
    (State.FAILED, (), REACHED, ("litellm",), "revoke:litellm"),
    (State.FAILED, (), {}, ("litellm",), "notify-failed"),
    (State.FAILED, (), GAVE_UP, ("litellm",), "notify-failed"),
    (State.FAILED, ("notified-failed",), GAVE_UP, ("litellm",), "settle"),
    (State.FAILED, ("notified-failed",), {}, None, "settle"),
]


@pytest.mark.parametrize("state, done, references, backends, expected", TABLE)
def test_next_step_of_a_request(state, done, references, backends, expected):
    found = rs.next_step(request(state, steps=done, references=references), backends, NOW)
    assert (found.name if found else None) == expected


STEP_FLAGS = ("notified-review", "notified-denied", "notified-failed", "litellm-issued")
REFERENCE_SETS = ({}, PREPARED, REACHED, LEGACY, GAVE_UP)


@pytest.mark.parametrize("state", list(State))
def test_every_state_and_recorded_steps_combination_has_a_known_step_or_none(state):
    """Every combination of state, steps done, references and settledness: the answer is a named
    step, no step is ever offered for a settled state, and cleanup never offers provisioning."""
    for size in range(len(STEP_FLAGS) + 1):
        for done in itertools.combinations(STEP_FLAGS, size):
            for references in REFERENCE_SETS:
                for backends in (("litellm",), None):
                    for settled in (None, state):
                        found = rs.next_step(request(state, steps=done, references=references, settled=settled),
                                             backends, NOW)
                        if state == State.ACTIVE:  # driven by its life, not by settled: see below
                            assert found is None, "an active key with no expiry and nothing asked has no work"
                            continue
                        if settled == state or state == State.REVOKED:
                            assert found is None
                            continue
                        assert found is not None and found.step in rs.STEP_NAMES
                        if state in (State.DENIED, State.REVOKING, State.FAILED, State.EXPIRED):
                            assert found.step not in (rs.PREPARE, rs.ISSUE, rs.NOTIFY_APPROVED, rs.DECIDE)
                        if references is GAVE_UP:
                            assert found.step not in (rs.REVOKE, rs.FORGET), "a revoke given up is not retried"


def test_cleanup_never_loops_once_every_backend_is_done():
    """Following the answers of next_step as if each step succeeded ends, for every state."""
    for state in (State.DENIED, State.REVOKING, State.FAILED, State.EXPIRED):
        for references in REFERENCE_SETS:
            current = request(state, references=references)
            for _ in range(10):
                found = rs.next_step(current, ("litellm",), NOW)
                if found is None:
                    break
                current = _pretend(current, found)
            assert found is None, f"{state} with {references} did not end"


def _pretend(current: KeyRequest, found: rs.Next) -> KeyRequest:
    if found.step in (rs.REVOKE, rs.FORGET):
        return current.with_changes(NOW, references={k: v for k, v in current.references.items()
                                                     if not k.startswith("litellm-")})
    if found.step == rs.ENTER_FAILED:
        return current.enter(State.FAILED, NOW)
    if found.step == rs.ENTER_REVOKED:
        return current.enter(State.REVOKED, NOW, settled=State.REVOKED)
    if found.step.startswith("notify-"):
        kind = found.step.removeprefix("notify-")
        return current.with_changes(NOW, steps={**current.steps, f"notified-{kind}": NOW})
    return current.with_changes(NOW, settled=current.state)


def test_a_create_in_flight_keeps_the_window_open():
    sent = NOW - timedelta(seconds=30)
    current = request(State.FAILED, references={**REACHED, "litellm-sent-at": sent.isoformat()})
    assert rs.in_flight_until(current, "litellm", 120) == sent + timedelta(seconds=120)
    assert rs.in_flight_until(request(State.FAILED, references=REACHED), "litellm", 120) is None
    assert rs.in_flight_until(request(State.FAILED, references={**PREPARED, "litellm-sent-at": sent.isoformat()}),
                              "litellm", 120) is None


def test_a_dead_holders_backends_count_as_maybe_reached_until_its_lease_ended():
    until = NOW + timedelta(seconds=10)
    marked = rs.with_in_flight(request(State.APPROVED, references=PREPARED), until)
    assert marked["litellm-reached"] == "maybe" and marked["litellm-sent-at"] == until.isoformat()
    issued = {"litellm-prepared": "true", "litellm-reached": "yes"}
    assert rs.with_in_flight(request(State.APPROVED, references=issued), until) == issued


@pytest.mark.parametrize("state, decision, reason, edited, expected", [
    (State.APPROVED, "review", "sent to review by a rule", False, ("approve", "decided by hand with kubectl")),
    (State.DENIED, "review", "budget exhausted", True, ("deny", "budget exhausted")),
    (State.DENIED, None, None, False, ("deny", "decided by hand with kubectl")),
    (State.APPROVED, "approve", "rule", False, None),  # the app's own decision
    (State.DENIED, "deny", "rule", False, None),
    (State.PENDING, None, None, False, None),
    (State.ACTIVE, "review", None, False, None),
])
def test_a_label_set_by_hand_is_recorded_as_a_kubectl_decision(state, decision, reason, edited, expected):
    found = rs.hand_decision(request(state, decision=decision, reason=reason, reason_edited=edited), NOW)
    if expected is None:
        assert found is None
    else:
        assert (found.decision, found.reason, found.decided_by, found.decided_at) == (*expected, "kubectl", NOW)


# --- teams --------------------------------------------------------------------------------------------

SPEC = TeamSpec.model_construct(name="alpha")


def team(*, done=(), deleting=False, phase="provisioning", settled=False, generation=1, observed=0) -> TeamRecord:
    return TeamRecord(name="alpha", spec=SPEC, generation=generation, observed_generation=observed, phase=phase,
                      created_at=NOW, updated_at=NOW, deleting=deleting, settled=settled,
                      steps={s: NOW for s in done})


@pytest.mark.parametrize("done, deleting, phase, settled, expected", [
    ((), False, "pending", False, "product"),
    (ts.LIVE_STEPS[:3], False, "provisioning", False, "subscription"),
    (ts.LIVE_STEPS, False, "provisioning", False, "finish"),
    (ts.LIVE_STEPS, False, "ready", True, None),
    ((), False, "failed", True, None),
    ((), True, "deleting", False, "delete-subscription"),
    (ts.DELETE_STEPS[:4], True, "deleting", False, "notified-removed"),
    (ts.DELETE_STEPS, True, "deleting", False, None),
])
def test_next_step_of_a_team(done, deleting, phase, settled, expected):
    assert ts.next_step(team(done=done, deleting=deleting, phase=phase, settled=settled), NOW) == expected


def test_every_team_combination_names_a_known_step():
    for deleting, settled in itertools.product((False, True), repeat=2):
        for phase in ("pending", "provisioning", "ready", "failed", "deleting"):
            for count in range(len(ts.LIVE_STEPS) + 1):
                done = (ts.DELETE_STEPS if deleting else ts.LIVE_STEPS)[:count]
                found = ts.next_step(team(done=done, deleting=deleting, phase=phase, settled=settled), NOW)
                assert found is None or found in ts.STEP_NAMES
                if settled and phase in ("ready", "failed"):
                    assert found is None


def test_taking_up_a_team():
    assert ts.on_lease(team(phase="ready", observed=1, settled=False)) == {"steps": {}, "phase": "provisioning"}
    assert ts.on_lease(team(phase="failed", deleting=True)) == {"phase": "deleting", "attempts": 0}
    assert ts.removable(team(done=ts.DELETE_STEPS, deleting=True, phase="deleting"))
    assert not ts.removable(team(done=ts.DELETE_STEPS, deleting=True, phase="failed"))


# --- an active key's life -----------------------------------------------------------------------------

LIFE = lifecycle.Life(reminder_days=(14, 3), rotation_grace=timedelta(hours=24))
EXPIRES = NOW + timedelta(days=30)


def active(**fields) -> KeyRequest:
    base = request(State.ACTIVE, references=ISSUED, settled=State.ACTIVE)
    return dataclasses.replace(base, **{"expires_at": EXPIRES, **fields})


def life_step(current: KeyRequest, now=NOW):
    found = rs.next_step(current, ("litellm",), now, LIFE)
    return (found.name, found.days) if found else None


@pytest.mark.parametrize("now, done, expected", [
    (NOW, (), None),                                                    # 30 days left: nothing yet
    (EXPIRES - timedelta(days=14), (), ("remind", 14)),
    (EXPIRES - timedelta(days=10), ("reminded-14d",), None),
    (EXPIRES - timedelta(days=3), ("reminded-14d",), ("remind", 3)),
    (EXPIRES - timedelta(days=2), (), ("remind", 3)),                  # late: only the most urgent one
    (EXPIRES - timedelta(days=1), ("reminded-14d", "reminded-3d"), None),
    (EXPIRES, ("reminded-14d", "reminded-3d"), ("expire", 0)),
    (EXPIRES + timedelta(days=40), (), ("expire", 0)),                  # a timer down for weeks still expires it
])
def test_reminders_then_expiry(now, done, expected):
    assert life_step(active(steps={s: NOW for s in done}), now) == expected


def test_when_the_next_work_of_an_active_key_is_due():
    fresh = active()
    assert lifecycle.due_at(fresh, ("litellm",), NOW, LIFE) == EXPIRES - timedelta(days=14)
    reminded = active(steps={"reminded-14d": NOW})
    assert lifecycle.due_at(reminded, ("litellm",), NOW, LIFE) == EXPIRES - timedelta(days=3)
    assert lifecycle.due_at(active(expires_at=None), ("litellm",), NOW, LIFE) is None, "no expiry: never swept"
    assert lifecycle.due_at(active(renew_requested_at=NOW), ("litellm",), NOW, LIFE) == NOW


@pytest.mark.parametrize("done, expected", [
    ((), "decide-renewal"),
    (("renewal-decided",), "extend:litellm"),
    (("renewal-decided", "litellm-extended"), "notify-renewed"),
])
def test_renewal_steps(done, expected):
    assert life_step(active(renew_requested_at=NOW, steps={s: NOW for s in done}))[0] == expected


def test_a_renewal_an_admin_approved_extends_the_same_key():
    approved = request(State.APPROVED, references=ISSUED)
    approved = dataclasses.replace(approved, renew_requested_at=NOW)
    assert rs.next_step(approved, ("litellm",), NOW, LIFE).name == "extend:litellm"
    extended = dataclasses.replace(approved, steps={"litellm-extended": NOW})
    assert rs.next_step(extended, ("litellm",), NOW, LIFE).name == "notify-renewed"


@pytest.mark.parametrize("done, now, expected", [
    ((), NOW, "prepare-rotation:litellm"),
    (("litellm-rotation-prepared",), NOW, "rotate:litellm"),
    (("litellm-rotation-prepared", "litellm-rotated"), NOW, "notify-rotated"),
    (("litellm-rotation-prepared", "litellm-rotated", "notified-rotated"), NOW + timedelta(hours=23), None),
    (("litellm-rotation-prepared", "litellm-rotated", "notified-rotated"), NOW + timedelta(hours=24), "retire:litellm"),
    (("litellm-rotation-prepared", "litellm-rotated", "notified-rotated", "litellm-retired"), NOW + timedelta(hours=25),
     "finish-rotation"),
])
def test_rotation_keeps_the_old_key_through_the_grace(done, now, expected):
    rotating = active(rotate_requested_at=NOW, steps={s: NOW for s in done})
    found = life_step(rotating, now)
    assert (found[0] if found else None) == expected
    if expected is None:
        assert lifecycle.due_at(rotating, ("litellm",), now, LIFE) == NOW + timedelta(hours=24)


def test_a_key_revoked_by_its_requester_tells_the_admins_first():
    revoking = dataclasses.replace(request(State.REVOKING), decided_by="link:requester")
    assert rs.next_step(revoking, ("litellm",), NOW).name == "notify-revoked"
    told = dataclasses.replace(revoking, steps={"notified-revoked": NOW})
    assert rs.next_step(told, ("litellm",), NOW).name == "enter-revoked"


def test_a_dead_holders_rotation_create_counts_as_in_flight_even_for_an_issued_key():
    until = NOW + timedelta(seconds=10)
    rotating = request(State.ACTIVE, references=ISSUED, steps=("litellm-rotation-prepared",))
    marked = rs.with_in_flight(rotating, until)
    assert marked["litellm-reached"] == "yes" and marked["litellm-sent-at"] == until.isoformat()
    rotated = request(State.ACTIVE, references=ISSUED, steps=("litellm-rotation-prepared", "litellm-rotated"))
    assert "litellm-sent-at" not in rs.with_in_flight(rotated, until)
