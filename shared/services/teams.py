"""Team access use cases of the HTTP side: check a file and plan it, submit or delete a team, ask
for a key rotation, read its status. They only read and write the team's record: a new spec is a
new `generation`, and the timer (shared/services/team_reconciler.py) does the provisioning; nothing
here calls APIM or KAITO.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.domain.request import utcnow
from shared.domain.team import (
    TeamCatalog,
    TeamFileError,
    TeamRecord,
    TeamSpec,
    keys_secret_name,
    parse,
    product_id,
    subscription_id,
)
from shared.domain.team import steps as team_steps
from shared.services.ports import Conflict, NotFound, StoreError
from shared.services.team_plan import Change, Plan, limits_dict, model_summary, plan, plan_text, resources
from shared.services.team_ports import TeamApim, TeamStore, Workspaces

audit = logging.getLogger("shared.audit")
log = logging.getLogger(__name__)


def check(text: str, source: str, catalog: TeamCatalog, store: TeamStore | None,
          api_ids: Sequence[str], reveal_stored: bool = True) -> tuple[TeamSpec, Plan]:
    """Parse one file (TeamFileError lists its problems) and plan it against what is stored. If
    the store does not answer, the plan compares with nothing and says so. Without `reveal_stored`
    the plan hides the stored owner, cost centre and last error (team_plan.plan)."""
    spec = parse(text, source, catalog)
    stored, warnings = None, []
    if store is not None:
        try:
            stored = store.get(spec.name)
        except StoreError as exc:  # its text (a Kubernetes message) goes to the log, not to the caller
            log.warning("team %s: the stored team could not be read: %s", spec.name, exc)
            warnings.append("the stored team could not be read (the store did not answer); this plan compares "
                            "with nothing")
    if stored is not None and stored.source and source not in ("(body)", stored.source):
        warnings.append(f"team {spec.name} is stored from {stored.source}, this file is {source}: "
                        "two files must not claim one team (fine if the file moved)")
    return spec, plan(spec, stored, api_ids, warnings, reveal_stored=reveal_stored)


def submit(store: TeamStore, spec: TeamSpec, source: str | None, who: str,
           now: datetime | None = None, *, content_hash: str | None = None,
           commit: str | None = None) -> tuple[TeamRecord, str]:
    """Store `spec` as the team's desired state: (record, outcome), the outcome one of "created",
    "updated" (a new generation), "retried" (the same generation again after it failed) or
    "unchanged" (the same grant again: an idempotent PUT, no work for the timer).

    `content_hash` (`shared.domain.team.content_hash` of the file) and `commit` (the git commit it
    was sent from) are recorded with the file, so that `python -m shared.teams sync` can tell
    which files changed since. A file that changed but grants the same (a comment, another shape)
    is recorded without a new generation, and the outcome is "unchanged"."""
    for _ in range(5):
        now = now or utcnow()
        existing = store.get(spec.name)
        try:
            if existing is None:
                record = TeamRecord(name=spec.name, spec=spec, generation=1, observed_generation=0,
                                    phase="pending", created_at=now, updated_at=now, source=source,
                                    commit=commit, content_hash=content_hash, submitted_by=who, submitted_at=now)
                created = store.create(record)
                audit.info("team %s submitted by %s (generation 1) from %s", spec.name, who, _where(source, commit))
                return created, "created"
            origin = _origin(existing, source, content_hash, commit)
            if existing.deleting or existing.spec.fingerprint() != spec.fingerprint():
                record = existing.next_generation(now, spec=spec, deleting=False, phase="pending",
                                                  **{**origin, "content_hash": content_hash},
                                                  submitted_by=who, submitted_at=now)
                updated = store.update(record)
                audit.info("team %s updated by %s (generation %d) from %s", spec.name, who, updated.generation,
                           _where(source, commit))
                return updated, "updated"
            if existing.phase == "failed":
                # The same file again after a failure: try the same generation once more.
                retried = store.update(existing.with_changes(now, spec=spec, **origin,
                                                             settled=False, attempts=0, next_attempt_at=None,
                                                             submitted_by=who, submitted_at=now))
                audit.info("team %s: retry requested by %s (generation %d)", spec.name, who, retried.generation)
                return retried, "retried"
            if existing.spec != spec or any(origin[k] != getattr(existing, k) for k in origin):
                # The same grant written differently, or from elsewhere: keep the file's notes and
                # where it came from, no new generation.
                existing = store.update(existing.with_changes(now, spec=spec, **origin,
                                                              submitted_by=who, submitted_at=now))
            return existing, "unchanged"
        except Conflict:
            continue  # someone else wrote: read again and decide again
    raise Conflict(f"team {spec.name} keeps changing; try again")


def _origin(existing: TeamRecord, source: str | None, content_hash: str | None,
            commit: str | None) -> dict[str, str | None]:
    """Where the stored file comes from after this submit: what was sent, else what is stored. A
    stored commit is kept only while the file is the one it was sent from."""
    same_file = content_hash is None or content_hash == existing.content_hash
    return {"source": source or existing.source, "content_hash": content_hash or existing.content_hash,
            "commit": commit or (existing.commit if same_file else None)}


def _where(source: str | None, commit: str | None) -> str:
    return f"{source} at {commit}" if commit else str(source)


def request_delete(store: TeamStore, team: str, who: str, now: datetime | None = None) -> TeamRecord:
    for _ in range(5):
        existing = store.get(team)
        if existing is None:
            raise NotFound(f"no team {team}")
        if existing.deleting:
            return existing
        try:
            record = store.update(existing.next_generation(now or utcnow(), deleting=True, phase="deleting",
                                                           submitted_by=who, submitted_at=now or utcnow()))
        except Conflict:
            continue
        audit.info("team %s deletion requested by %s (generation %d)", team, who, record.generation)
        return record
    raise Conflict(f"team {team} keeps changing; try again")


class RotationRefused(Exception):
    """A rotation cannot be asked for now; the message says why (the team is not ready, or one runs)."""


def request_rotation(store: TeamStore, team: str, who: str, now: datetime | None = None) -> tuple[TeamRecord, str]:
    """Ask the timer to rotate the team's keys: (record, "requested"), or (record, "resumed") for a
    rotation that failed (it is retried where it stopped, after the team is re-applied).
    NotFound for an unknown team; RotationRefused unless the team is ready and no rotation runs."""
    for _ in range(5):
        existing = store.get(team)
        if existing is None:
            raise NotFound(f"no team {team}")
        when = now or utcnow()
        if existing.rotating and existing.phase == "failed" and not existing.deleting:
            changes: dict[str, Any] = {"settled": False, "attempts": 0, "next_attempt_at": None}
            outcome = "resumed"
        else:
            reason = team_steps.rotatable(existing)
            if reason is not None:
                raise RotationRefused(f"Team {team} {reason}")
            changes = {"rotate_requested_at": when, "rotate_requested_by": who, "rotation_steps": {},
                       "rotation_retire_at": None, "settled": False, "attempts": 0, "next_attempt_at": None,
                       "last_error": None}
            outcome = "requested"
        try:
            record = store.update(existing.with_changes(when, **changes))
        except Conflict:
            continue
        audit.info("team %s: key rotation %s by %s", team, outcome, who)
        return record, outcome
    raise Conflict(f"team {team} keeps changing; try again")


def status(store: TeamStore, team: str) -> dict[str, Any]:
    """What an admin may see about a team: never a key."""
    record = store.get(team)
    if record is None:
        raise NotFound(f"no team {team}")

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    spec = record.spec
    try:
        keys = store.keys_present(team)
    except StoreError:
        keys = None
    return {
        "team": record.name, "display_name": spec.display_name, "owner": spec.owner,
        "cost_center": spec.cost_center, "phase": record.phase, "deleting": record.deleting,
        "settled": record.settled, "generation": record.generation,
        "observed_generation": record.observed_generation, "shape": spec.shape,
        "models": [model_summary(g, spec) for g in spec.models], "limits": limits_dict(spec),
        "notes": list(spec.notes),
        "resources": {"product": product_id(team), "subscription": subscription_id(team),
                      "secret": keys_secret_name(team), "secret_has_keys": keys,
                      "apis": list(record.applied.get("apis") or []),
                      "workspaces": list(record.applied.get("workspaces") or sorted(spec.workspaces()))},
        "steps": {k: when(v) for k, v in sorted(record.steps.items())},
        "key_in_use": f"{team_steps.live_key(record)}-key",
        "rotation": None if not record.rotating else {
            "requested_at": when(record.rotate_requested_at), "requested_by": record.rotate_requested_by,
            "new_key": f"{team_steps.new_key(record)}-key", "retire_at": when(record.rotation_retire_at),
            "steps": {k: when(v) for k, v in sorted(record.rotation_steps.items())}},
        "attempts": record.attempts, "last_error": record.last_error,
        "next_attempt_at": when(record.next_attempt_at), "source": record.source, "commit": record.commit,
        "content_sha256": record.content_hash,
        "submitted_by": record.submitted_by, "submitted_at": when(record.submitted_at),
        "provisioned_at": when(record.provisioned_at), "created_at": when(record.created_at),
        "updated_at": when(record.updated_at),
    }


def list_teams(store: TeamStore, limit: int, continue_token: str | None = None) -> dict[str, Any]:
    """One page of every stored team, in name order, as `summary` gives each (InvalidArgument for
    a continue token the store no longer knows)."""
    records, unreadable, token = store.list_page(limit, continue_token)
    return {"teams": [summary(r) for r in records], "unreadable": unreadable, "continue": token}


def summary(record: TeamRecord) -> dict[str, Any]:
    """A team in the list: what sync compares (`content_sha256`), its state, and its last sync.

    `last_sync_at`/`last_sync_by`: when and by whom a file was last stored for it (with its
    `source` and `commit`); `reconciled_at`: when the timer finished the current generation, if it
    did (`in_sync`: the current generation is provisioned)."""
    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    # A key rotation leaves the team unsettled for its grace, while its generation is provisioned.
    in_sync = (record.phase == "ready" and (record.settled or record.rotating)
               and record.observed_generation == record.generation)
    return {
        "team": record.name, "owner": record.spec.owner, "phase": record.phase, "deleting": record.deleting,
        "settled": record.settled, "in_sync": in_sync, "generation": record.generation,
        "observed_generation": record.observed_generation, "content_sha256": record.content_hash,
        "source": record.source, "commit": record.commit, "last_sync_at": when(record.submitted_at),
        "last_sync_by": record.submitted_by,
        "reconciled_at": when(max(record.steps.values())) if in_sync and record.steps else None,
        "last_error": record.last_error, "next_attempt_at": when(record.next_attempt_at),
    }


__all__ = ["Change", "Plan", "RotationRefused", "TeamApim", "TeamFileError", "TeamStore", "Workspaces", "check",
           "list_teams", "plan", "plan_text", "request_delete", "request_rotation", "resources", "status", "submit",
           "summary"]
