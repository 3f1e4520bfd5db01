"""What a team needs next: a pure function of (record, now), no I/O.

A live team's generation is reconciled by the steps in LIVE_STEPS, in order, then `finish`
records it as reconciled; a deletion undoes everything by DELETE_STEPS, after which the record
itself is removed. Each step is recorded on the record before the next starts, so a crash
resumes where it stopped; the reconciler maps each name to the code that does it.
"""

from __future__ import annotations

from datetime import datetime

from shared.domain.team.record import TeamRecord

LIVE_STEPS = ("product", "policy", "apis", "subscription", "keys", "workspaces", "notified")
DELETE_STEPS = ("delete-subscription", "delete-product", "delete-keys", "delete-workspaces", "notified-removed")
FINISH = "finish"
STEP_NAMES = (*LIVE_STEPS, *DELETE_STEPS, FINISH)


def next_step(record: TeamRecord, now: datetime) -> str | None:
    """The next step for the team, or None when there is nothing to do now."""
    if record.settled and record.phase in ("ready", "failed"):
        return None
    for name in DELETE_STEPS if record.deleting else LIVE_STEPS:
        if not record.done(name):
            return name
    return None if record.deleting else FINISH


def removable(record: TeamRecord) -> bool:
    """A deletion whose every step is done: the record itself can go."""
    return record.deleting and record.phase != "failed" and all(record.done(s) for s in DELETE_STEPS)


def on_lease(record: TeamRecord) -> dict[str, object]:
    """What taking up a team changes before its steps run."""
    changes: dict[str, object] = {}
    if not record.deleting:
        if record.observed_generation == record.generation and not record.settled:
            changes["steps"] = {}  # unsettled by hand (kubectl label ... team-settled-): re-apply all
        if record.phase != "provisioning":
            changes["phase"] = "provisioning"
    elif record.phase == "failed":
        changes["phase"] = "deleting"
    if record.phase == "failed":
        changes["attempts"] = 0
    return changes
