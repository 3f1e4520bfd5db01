"""A team as the store keeps it: the desired `TeamSpec`, its generation, and how far reconciling that
generation got (steps done, lease, attempts, last error). It is the reconciler's state rather than a
reading of the file, so it lives apart from the file-reading modules: shared/store/teams.py persists
it, shared/services/teams.py advances it, and it refers only to `TeamSpec`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from shared.domain.team.spec import TeamSpec

Phase = Literal["pending", "provisioning", "ready", "failed", "deleting"]


@dataclasses.dataclass(frozen=True)
class TeamRecord:
    """A team as stored: its desired spec (generation) and how far reconciling it got.

    `generation` grows with every change of what the team is granted (or a deletion request);
    `observed_generation` is the last generation fully reconciled. A team is settled when they
    are equal and its phase is final (ready or failed); the timer's sweep skips settled teams.
    """

    name: str
    spec: TeamSpec
    generation: int
    observed_generation: int
    phase: Phase
    created_at: datetime
    updated_at: datetime
    deleting: bool = False
    settled: bool = False
    source: str | None = None
    commit: str | None = None  # the git commit the file was sent from (the sync CLI sends it)
    content_hash: str | None = None  # files.content_hash of the file as last stored: what sync compares
    submitted_by: str | None = None
    submitted_at: datetime | None = None
    provisioned_at: datetime | None = None  # first time the owner was told "provisioned"
    steps: Mapping[str, datetime] = dataclasses.field(default_factory=dict)  # done in this generation
    applied: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # what is provisioned now
    # A key rotation asked for (POST /api/teams/{name}/rotate): when and by whom, its steps done so
    # far (kept apart from `steps`: a new generation during the rotation must not restart it), and
    # when the key in use before it stops working (fixed once the new key is in the keys Secret).
    rotate_requested_at: datetime | None = None
    rotate_requested_by: str | None = None
    rotation_steps: Mapping[str, datetime] = dataclasses.field(default_factory=dict)
    rotation_retire_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    lease_holder: str | None = None
    lease_until: datetime | None = None
    resource_version: str | None = None

    def done(self, step: str) -> bool:
        return step in self.steps

    @property
    def rotating(self) -> bool:
        return self.rotate_requested_at is not None

    def rotated(self, step: str) -> bool:
        """Whether the running rotation has done `step`."""
        return step in self.rotation_steps

    def leased_by_other(self, holder: str, now: datetime) -> bool:
        return (self.lease_holder not in (None, holder) and self.lease_until is not None
                and self.lease_until > now)

    def with_changes(self, now: datetime, **changes: Any) -> TeamRecord:
        return dataclasses.replace(self, updated_at=now, **changes)

    def next_generation(self, now: datetime, **changes: Any) -> TeamRecord:
        """A new desired state: its work starts from nothing."""
        fresh: dict[str, Any] = {"generation": self.generation + 1, "steps": {}, "settled": False,
                                 "attempts": 0, "last_error": None, "next_attempt_at": None}
        return self.with_changes(now, **{**fresh, **changes})
