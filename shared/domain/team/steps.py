"""What a team needs next: a pure function of (record, now), no I/O.

A live team's generation is reconciled by the steps in LIVE_STEPS, in order, then `finish`
records it as reconciled; a deletion undoes everything by DELETE_STEPS, after which the record
itself is removed. Each step is recorded on the record before the next starts, so a crash
resumes where it stopped; the reconciler maps each name to the code that does it.

A key rotation (asked for on a ready team) runs once the current generation is reconciled, by
ROTATION_STEPS, recorded apart from the generation's steps so a new generation meanwhile does not
restart it. The subscription's two keys take turns: the rotation regenerates the key the team does
not use (`applied["live-key"]`, the primary until the first rotation), writes both keys to the
keys Secret, tells the owner to switch to the new one, waits out the grace (`rotate-wait`, a step
that is never recorded: it only sets the time to come back, `rotation_retire_at`), then
regenerates the key used before, writes the Secret again, and `rotated` makes the new key the one
in use and ends the rotation. At every moment the key the owner was told to use works.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from shared.domain.team.record import TeamRecord

LIVE_STEPS = ("product", "policy", "apis", "subscription", "keys", "workspaces", "notified")
DELETE_STEPS = ("delete-subscription", "delete-product", "delete-keys", "delete-workspaces", "notified-removed")
FINISH = "finish"

ROTATE_NEW = "rotate-new-key"  # APIM: regenerate the key the team does not use
ROTATE_KEYS_NEW = "rotate-keys-new"  # both keys into {team}-api-key; fixes when the old one stops
NOTIFIED_ROTATED = "notified-rotated"  # the owner: switch to the new key before then
ROTATE_WAIT = "rotate-wait"  # not recorded: come back when the grace is over
ROTATE_OLD = "rotate-old-key"  # APIM: regenerate the key used before the rotation
ROTATE_KEYS_OLD = "rotate-keys-old"  # both keys into {team}-api-key again
ROTATED = "rotated"  # the new key is the one in use; the rotation request is cleared
ROTATION_STEPS = (ROTATE_NEW, ROTATE_KEYS_NEW, NOTIFIED_ROTATED, ROTATE_OLD, ROTATE_KEYS_OLD)
_BEFORE_GRACE = ROTATION_STEPS[:3]
_AFTER_GRACE = ROTATION_STEPS[3:]

STEP_NAMES = (*LIVE_STEPS, *DELETE_STEPS, *ROTATION_STEPS, ROTATE_WAIT, ROTATED, FINISH)

KeySlot = Literal["primary", "secondary"]


def live_key(record: TeamRecord) -> KeySlot:
    """The key of the subscription the team was last told to use."""
    return "secondary" if record.applied.get("live-key") == "secondary" else "primary"


def new_key(record: TeamRecord) -> KeySlot:
    """The key a rotation regenerates first: the one the team does not use."""
    return "primary" if live_key(record) == "secondary" else "secondary"


def next_step(record: TeamRecord, now: datetime) -> str | None:
    """The next step for the team, or None when there is nothing to do now."""
    if record.settled and record.phase in ("ready", "failed"):
        return None
    if record.deleting:
        return next((name for name in DELETE_STEPS if not record.done(name)), None)
    for name in LIVE_STEPS:
        if not record.done(name):
            return name
    if record.observed_generation != record.generation or not record.rotating:
        return FINISH
    for name in _BEFORE_GRACE:
        if not record.rotated(name):
            return name
    if record.rotation_retire_at is None or now < record.rotation_retire_at:
        return ROTATE_WAIT
    for name in _AFTER_GRACE:
        if not record.rotated(name):
            return name
    return ROTATED


def removable(record: TeamRecord) -> bool:
    """A deletion whose every step is done: the record itself can go."""
    return record.deleting and record.phase != "failed" and all(record.done(s) for s in DELETE_STEPS)


def rotatable(record: TeamRecord) -> str | None:
    """Why a rotation cannot be asked for now (None: it can): only a ready team, one at a time."""
    if record.deleting:
        return "is being deleted"
    if record.rotating:
        since = record.rotate_requested_at.isoformat() if record.rotate_requested_at else "?"
        state = "failed" if record.phase == "failed" else "is running"
        return f"has a key rotation that {state} (asked for at {since})"
    if record.phase != "ready" or record.observed_generation != record.generation:
        return (f"is not ready (phase {record.phase}; generation {record.generation}, "
                f"{record.observed_generation} reconciled)")
    return None


def on_lease(record: TeamRecord) -> dict[str, object]:
    """What taking up a team changes before its steps run."""
    changes: dict[str, object] = {}
    if not record.deleting:
        reconciled = record.observed_generation == record.generation
        if reconciled and record.rotating and record.phase != "failed":
            # Only the rotation is left: the team's access stays as reconciled meanwhile.
            if record.phase != "ready":
                changes["phase"] = "ready"
        else:
            if reconciled and not record.settled:
                # Unsettled by hand (kubectl label ... team-settled-), or a failed rotation retried:
                # re-apply all (a rotation then resumes where it stopped).
                changes["steps"] = {}
            if record.phase != "provisioning":
                changes["phase"] = "provisioning"
    elif record.phase == "failed":
        changes["phase"] = "deleting"
    if record.phase == "failed":
        changes["attempts"] = 0
    return changes
