"""Team access: check a file and plan it, submit or delete a team, and reconcile teams on the timer.

Two use cases, kept apart:

- the HTTP side (`check`, `submit`, `request_delete`, `status`) only reads and writes the team's
  record: a new spec is a new `generation`; nothing calls APIM or KAITO on a request;
- the timer (`TeamReconciler.run_tick`, after the approval processor's tick) moves every team whose
  generation is not yet reconciled toward it, in the processor's style: a short lease (a
  resourceVersion-guarded write), then idempotent steps, each recorded before the next; a transient
  failure is retried with backoff, a permanent one (or too many attempts) marks the team failed
  with the reason. A changed spec starts its steps afresh; a deletion undoes everything.

Steps for a live team: product, policy, apis, subscription, keys, workspaces, notified.
Steps for a deletion: delete-subscription, delete-product, delete-keys, delete-workspaces,
notified-removed, then the record itself is removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import socket
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from shared.config import Notifications
from shared.domain import policy as policies
from shared.domain.request import utcnow
from shared.domain.team import (
    Issue,
    ModelGrant,
    TeamCatalog,
    TeamFileError,
    TeamRecord,
    TeamSpec,
    keys_secret_name,
    parse,
    product_id,
    subscription_id,
)
from shared.services import ticks
from shared.services.ticks import TickReport
from shared.services.ports import (
    Conflict,
    NotFound,
    Notifier,
    PermanentError,
    StoreError,
    TransientError,
)

if TYPE_CHECKING:
    from shared.services.messages import TeamEvent

log = logging.getLogger(__name__)
audit = logging.getLogger("shared.audit")

LIVE_STEPS = ("product", "policy", "apis", "subscription", "keys", "workspaces", "notified")
DELETE_STEPS = ("delete-subscription", "delete-product", "delete-keys", "delete-workspaces", "notified-removed")


# --- ports ------------------------------------------------------------------------------------------


class TeamStore(Protocol):
    def get(self, team: str) -> TeamRecord | None: ...
    def create(self, record: TeamRecord) -> TeamRecord: ...
    def update(self, record: TeamRecord) -> TeamRecord: ...
    def delete(self, record: TeamRecord) -> None: ...
    def list_due(self) -> list[TeamRecord]: ...
    def write_keys(self, team: str, primary: str, secondary: str) -> None: ...
    def delete_keys(self, team: str) -> bool: ...
    def keys_present(self, team: str) -> bool: ...


class TeamApim(Protocol):
    def ensure_product(self, product_id: str, display_name: str, description: str) -> None: ...
    def set_policy(self, product_id: str, value: str, policy_format: str = "rawxml") -> None: ...
    def linked_apis(self, product_id: str) -> list[str]: ...
    def link_api(self, product_id: str, api_id: str) -> None: ...
    def unlink_api(self, product_id: str, api_id: str) -> None: ...
    def delete_product(self, product_id: str) -> None: ...
    def ensure_subscription(self, sid: str, product_id: str, display_name: str) -> None: ...
    def subscription_keys(self, sid: str) -> tuple[str, str]: ...
    def delete_subscription(self, sid: str) -> None: ...


class Workspaces(Protocol):
    def apply(self, name: str, team: str, model: str, preset: str, instance_type: str) -> str: ...
    def delete(self, name: str) -> bool: ...
    def names_for_team(self, team: str) -> list[str]: ...


# --- the plan: what a file would create, change or delete -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Change:
    action: str  # create | update | delete | unchanged
    kind: str
    name: str
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "name": self.name, "details": list(self.details)}


@dataclasses.dataclass(frozen=True)
class Plan:
    team: str
    action: str  # create | update | unchanged
    shape: str
    changes: tuple[Change, ...]
    models: tuple[dict[str, Any], ...]
    limits: dict[str, Any] | None
    notes: tuple[str, ...]
    compared_with: dict[str, Any] | None  # the stored team, or None when nothing is stored
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"team": self.team, "action": self.action, "shape": self.shape,
                "compared_with": self.compared_with, "changes": [c.as_dict() for c in self.changes],
                "models": list(self.models), "limits": self.limits, "notes": list(self.notes),
                "warnings": list(self.warnings), "text": plan_text(self)}


_SYMBOL = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}


def plan_text(plan: Plan) -> str:
    against = "nothing stored" if plan.compared_with is None else \
        f"the stored team (generation {plan.compared_with.get('generation')}, {plan.compared_with.get('phase')})"
    lines = [f"Team {plan.team} ({plan.shape} shape): {plan.action}, compared with {against}"]
    width = max((len(c.kind) for c in plan.changes), default=0)
    for change in plan.changes:
        lines.append(f"  {_SYMBOL[change.action]} {change.action:<9} {change.kind:<{width}}  {change.name}")
        lines.extend(f"        {detail}" for detail in change.details)
    lines.append("Models:")
    for model in plan.models:
        lines.append(f"  {model['name']} ({model['kind']}): {model['summary']}")
    if plan.notes:
        lines.append("Notes:")
        lines.extend(f"  - {note}" for note in plan.notes)
    if plan.warnings:
        lines.append("Warnings:")
        lines.extend(f"  ! {warning}" for warning in plan.warnings)
    return "\n".join(lines)


def model_summary(grant: ModelGrant, spec: TeamSpec) -> dict[str, Any]:
    if grant.counter == "team":
        sharing = [g.name for g in spec.models if g.counter == "team"]
        counter = "team-wide counter (subscription), shared by " + ", ".join(sharing)
    else:
        counter = "own counter (subscription + model)"
    inherited = [field for field, source in grant.limit_sources.items() if source == "team"]
    sources = f"{', '.join(inherited)} from the team-wide limits" if grant.counter == "model" and inherited else ""
    summary = f"{grant.limits.describe()}; {counter}"
    if grant.kind == "kaito":
        summary += f"; KAITO preset {grant.preset} on {grant.instance_type}"
    return {"name": grant.name, "kind": grant.kind, "tokensPerMinute": grant.limits.tokens_per_minute,
            "dailyTokenQuota": grant.limits.daily_token_quota, "counter": grant.counter,
            "limitsFrom": dict(grant.limit_sources), "preset": grant.preset, "instanceType": grant.instance_type,
            "summary": summary + (f" ({sources})" if sources else "")}


def _limits_dict(spec: TeamSpec) -> dict[str, Any] | None:
    if spec.limits is None:
        return None
    return {"tokensPerMinute": spec.limits.tokens_per_minute, "dailyTokenQuota": spec.limits.daily_token_quota}


def resources(spec: TeamSpec, api_ids: Sequence[str]) -> dict[tuple[str, str], dict[str, str]]:
    """Every resource the team gets, with the properties a plan compares."""
    product = product_id(spec.name)
    found: dict[tuple[str, str], dict[str, str]] = {
        ("APIM product", product): {"displayName": spec.display_name, "owner": spec.owner,
                                    "costCenter": spec.cost_center or "-", "state": "published",
                                    "subscriptionRequired": "true", "approvalRequired": "false",
                                    "subscriptionsLimit": "1"},
        ("APIM product policy", f"{product}/policy"): {
            grant.name: f"{grant.limits.describe()}, "
                        f"{'own counter' if grant.counter == 'model' else 'team-wide counter'}"
            for grant in spec.models},
    }
    for api in api_ids:
        found[("APIM product API link", f"{product}/apis/{api}")] = {}
    found[("APIM subscription", subscription_id(spec.name))] = {"scope": f"/products/{product}", "state": "active"}
    found[("Kubernetes Secret", keys_secret_name(spec.name))] = {
        "data": f"primary-key, secondary-key of {subscription_id(spec.name)}"}
    for name, grant in spec.workspaces().items():
        found[("KAITO Workspace", name)] = {"preset": grant.preset or "", "instanceType": grant.instance_type or ""}
    return found


def plan(spec: TeamSpec, stored: TeamRecord | None, api_ids: Sequence[str],
         warnings: Sequence[str] = ()) -> Plan:
    """What storing `spec` would change, compared with the stored team (None: nothing stored)."""
    current = stored if stored is not None and not stored.deleting else None
    new = resources(spec, api_ids)
    old = {} if current is None else resources(current.spec, current.applied.get("apis") or api_ids)
    changes: list[Change] = []
    for key, props in new.items():
        if key not in old:
            details = tuple(f"{k}: {v}" for k, v in props.items())
            changes.append(Change("create", key[0], key[1], details))
        elif old[key] != props:
            before = old[key]
            details = []
            for field in sorted(set(before) | set(props)):
                if before.get(field) != props.get(field):
                    if field not in before:
                        details.append(f"{field}: added ({props[field]})")
                    elif field not in props:
                        details.append(f"{field}: removed (was {before[field]})")
                    else:
                        details.append(f"{field}: {before[field]} -> {props[field]}")
            changes.append(Change("update", key[0], key[1], tuple(details)))
        else:
            changes.append(Change("unchanged", key[0], key[1]))
    for key in old:
        if key not in new:
            changes.append(Change("delete", key[0], key[1]))
    if current is None:
        action = "create"
    elif current.spec.fingerprint() == spec.fingerprint():
        action = "unchanged"
    else:
        action = "update"
    compared = None if stored is None else {
        "generation": stored.generation, "observed_generation": stored.observed_generation,
        "phase": stored.phase, "deleting": stored.deleting, "source": stored.source}
    extra = list(warnings)
    if stored is not None and stored.deleting:
        extra.append(f"team {spec.name} is being deleted; storing this file cancels the deletion and re-creates it")
    if stored is not None and stored.phase == "failed" and stored.last_error:
        extra.append(f"the stored team's last reconcile failed: {stored.last_error}")
    return Plan(team=spec.name, action=action, shape=spec.shape, changes=tuple(changes),
                models=tuple(model_summary(g, spec) for g in spec.models), limits=_limits_dict(spec),
                notes=spec.notes, compared_with=compared, warnings=tuple(extra))


# --- the HTTP side ------------------------------------------------------------------------------------


def check(text: str, source: str, catalog: TeamCatalog, store: TeamStore | None,
          api_ids: Sequence[str]) -> tuple[TeamSpec, Plan]:
    """Parse one file (TeamFileError lists its problems) and plan it against what is stored. If
    the store does not answer, the plan compares with nothing and says so."""
    spec = parse(text, source, catalog)
    stored, warnings = None, []
    if store is not None:
        try:
            stored = store.get(spec.name)
        except StoreError as exc:
            warnings.append(f"the stored team could not be read ({exc}); this plan compares with nothing")
    if stored is not None and stored.source and source not in ("(body)", stored.source):
        warnings.append(f"team {spec.name} is stored from {stored.source}, this file is {source}: "
                        "two files must not claim one team (fine if the file moved)")
    return spec, plan(spec, stored, api_ids, warnings)


def submit(store: TeamStore, spec: TeamSpec, source: str | None, who: str,
           now: datetime | None = None) -> tuple[TeamRecord, str]:
    """Store `spec` as the team's desired state: (record, outcome), the outcome one of "created",
    "updated" (a new generation), "retried" (the same generation again after it failed) or
    "unchanged" (the same grant again: an idempotent PUT, no work for the timer)."""
    for _ in range(5):
        now = now or utcnow()
        existing = store.get(spec.name)
        try:
            if existing is None:
                record = TeamRecord(name=spec.name, spec=spec, generation=1, observed_generation=0,
                                    phase="pending", created_at=now, updated_at=now, source=source,
                                    submitted_by=who, submitted_at=now)
                created = store.create(record)
                audit.info("team %s submitted by %s (generation 1) from %s", spec.name, who, source)
                return created, "created"
            if existing.deleting or existing.spec.fingerprint() != spec.fingerprint():
                record = existing.next_generation(now, spec=spec, deleting=False, phase="pending",
                                                  source=source or existing.source, submitted_by=who, submitted_at=now)
                updated = store.update(record)
                audit.info("team %s updated by %s (generation %d) from %s", spec.name, who, updated.generation,
                           source)
                return updated, "updated"
            if existing.phase == "failed":
                # The same file again after a failure: try the same generation once more.
                retried = store.update(existing.with_changes(now, spec=spec, source=source or existing.source,
                                                             settled=False, attempts=0, next_attempt_at=None,
                                                             submitted_by=who, submitted_at=now))
                audit.info("team %s: retry requested by %s (generation %d)", spec.name, who, retried.generation)
                return retried, "retried"
            if existing.spec != spec or (source and source != existing.source):
                # The same grant written differently: keep the file's notes, no new generation.
                existing = store.update(existing.with_changes(now, spec=spec, source=source or existing.source))
            return existing, "unchanged"
        except Conflict:
            continue  # someone else wrote: read again and decide again
    raise Conflict(f"team {spec.name} keeps changing; try again")


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
        "models": [model_summary(g, spec) for g in spec.models], "limits": _limits_dict(spec),
        "notes": list(spec.notes),
        "resources": {"product": product_id(team), "subscription": subscription_id(team),
                      "secret": keys_secret_name(team), "secret_has_keys": keys,
                      "apis": list(record.applied.get("apis") or []),
                      "workspaces": list(record.applied.get("workspaces") or sorted(spec.workspaces()))},
        "steps": {k: when(v) for k, v in sorted(record.steps.items())},
        "attempts": record.attempts, "last_error": record.last_error,
        "next_attempt_at": when(record.next_attempt_at), "source": record.source,
        "submitted_by": record.submitted_by, "submitted_at": when(record.submitted_at),
        "provisioned_at": when(record.provisioned_at), "created_at": when(record.created_at),
        "updated_at": when(record.updated_at),
    }


# --- the timer side ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TeamReconcilerOptions:
    api_ids: tuple[str, ...] = ()  # APIM_TEAM_API_IDS: the APIs every team product is linked to
    namespace: str = "default"  # where the keys Secret and the Workspaces live (shown in emails)
    gateway_url: str | None = None
    concurrency: int = 4
    time_budget_seconds: float = 60.0
    lease_seconds: float = 120.0
    max_attempts: int = 6
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 900.0
    holder: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


class _Wait(Exception):
    """The current step must wait (transient failure); the retry is recorded."""


class TeamReconciler:
    def __init__(self, store: TeamStore, apim: TeamApim | None, workspaces: Workspaces | None,
                 notifier: Notifier, notifications: Notifications, options: TeamReconcilerOptions | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.apim = apim
        self.workspaces = workspaces
        self.notifier = notifier
        self.notifications = notifications
        self.options = options or TeamReconcilerOptions()
        self.clock = clock

    # --- a tick -------------------------------------------------------------------------------------

    def due(self) -> list[TeamRecord]:
        now = self.clock()
        return [r for r in self.store.list_due() if r.next_attempt_at is None or r.next_attempt_at <= now]

    def run_tick(self) -> TickReport:
        report = ticks.run_tick(self.due(), self.reconcile, describe=lambda r: f"team {r.name}",
                                concurrency=self.options.concurrency,
                                budget_seconds=self.options.time_budget_seconds, name="teams")
        if report.due:
            log.info("team tick: %s", report.summary())
        return report

    # --- one team -----------------------------------------------------------------------------------

    def reconcile(self, record: TeamRecord) -> str | None:
        """Advance one team as far as it goes now; its resulting phase ("deleted" once removed), or
        None if skipped (not due, leased elsewhere, changed meanwhile)."""
        now = self.clock()
        if record.next_attempt_at and record.next_attempt_at > now:
            return None
        if record.leased_by_other(self.options.holder, now):
            return None
        changes: dict[str, Any] = {"lease_holder": self.options.holder,
                                   "lease_until": now + timedelta(seconds=self.options.lease_seconds)}
        if not record.deleting:
            if record.observed_generation == record.generation and not record.settled:
                changes["steps"] = {}  # unsettled by hand (kubectl label ... team-settled-): re-apply all
            if record.phase != "provisioning":
                changes["phase"] = "provisioning"
        if record.phase == "failed":
            changes["attempts"] = 0
            if record.deleting:
                changes["phase"] = "deleting"
        try:
            record = self.store.update(record.with_changes(now, **changes))
        except (Conflict, NotFound):
            return None
        try:
            while True:
                step = self._next_step(record)
                if step is None:
                    break
                record = self._run(step, record)
                if record.phase == "failed":
                    break
            if record.deleting and record.phase != "failed" and all(record.done(s) for s in DELETE_STEPS):
                self.store.delete(record)
                log.info("team %s: removed", record.name)
                return "deleted"
        except _Wait as wait:
            record = wait.args[0]
        except (Conflict, NotFound):
            log.info("team %s changed while being reconciled; the next tick takes it up", record.name)
            return None
        except StoreError as exc:
            log.warning("team %s: could not record progress (%s); the next tick resumes it", record.name, exc)
            return None
        return self._release(record).phase

    def _release(self, record: TeamRecord) -> TeamRecord:
        try:
            return self.store.update(record.with_changes(self.clock(), lease_holder=None, lease_until=None))
        except (Conflict, NotFound, StoreError):
            return record

    def _run(self, step: Callable[[TeamRecord], TeamRecord], record: TeamRecord) -> TeamRecord:
        try:
            changed = step(record)
        except TransientError as exc:
            raise _Wait(self._retry_later(record, exc.message, exc.retry_after)) from None
        except PermanentError as exc:
            return self.store.update(self._failed(record, exc.message))
        return self.store.update(changed.with_changes(self.clock(), attempts=0, last_error=None,
                                                      next_attempt_at=None))

    def _retry_later(self, record: TeamRecord, message: str, retry_after: float | None) -> TeamRecord:
        attempts = record.attempts + 1
        now = self.clock()
        if attempts >= self.options.max_attempts:
            log.error("team %s: giving up after %d attempts: %s", record.name, attempts, message)
            return self.store.update(self._failed(record, f"gave up after {attempts} attempts: {message}"))
        delay = min(self.options.backoff_max_seconds, self.options.backoff_base_seconds * 2 ** (attempts - 1))
        delay *= random.uniform(0.5, 1.0)
        if retry_after:
            delay = max(delay, retry_after)
        log.warning("team %s: attempt %d failed, retrying in %.0f s: %s", record.name, attempts, delay, message)
        return self.store.update(record.with_changes(now, attempts=attempts, last_error=message,
                                                     next_attempt_at=now + timedelta(seconds=delay)))

    def _failed(self, record: TeamRecord, reason: str) -> TeamRecord:
        log.error("team %s failed (generation %d): %s", record.name, record.generation, reason)
        return record.with_changes(self.clock(), phase="failed", settled=True, last_error=reason,
                                   next_attempt_at=None)

    def _next_step(self, record: TeamRecord) -> Callable[[TeamRecord], TeamRecord] | None:
        if record.settled and record.phase in ("ready", "failed"):
            return None
        names = DELETE_STEPS if record.deleting else LIVE_STEPS
        for name in names:
            if not record.done(name):
                return lambda r, n=name: self._done(getattr(self, "_" + n.replace("-", "_"))(r), n)
        if record.deleting:
            return None
        return self._finish

    def _done(self, record: TeamRecord, step: str) -> TeamRecord:
        now = self.clock()
        return record.with_changes(now, steps={**record.steps, step: now})

    def _finish(self, record: TeamRecord) -> TeamRecord:
        log.info("team %s: generation %d reconciled", record.name, record.generation)
        return record.with_changes(self.clock(), phase="ready", settled=True,
                                   observed_generation=record.generation,
                                   applied={**record.applied, "generation": record.generation})

    def _apim(self) -> TeamApim:
        if self.apim is None:
            raise PermanentError("APIM is not configured (APIM_SUBSCRIPTION_ID, APIM_RESOURCE_GROUP, "
                                 "APIM_SERVICE_NAME): team products cannot be provisioned")
        return self.apim

    # --- live steps ---------------------------------------------------------------------------------------

    def _product(self, record: TeamRecord) -> TeamRecord:
        spec = record.spec
        description = (f"LLM access for team {spec.name}. Owner: {spec.owner}. "
                       f"Cost center: {spec.cost_center or '-'}. Managed by llm-key-requestor; do not edit by hand.")
        self._apim().ensure_product(product_id(spec.name), spec.display_name, description)
        return record.with_changes(self.clock(), applied={**record.applied, "product": product_id(spec.name)})

    def _policy(self, record: TeamRecord) -> TeamRecord:
        rendered = policies.render(record.spec)
        self._apim().set_policy(product_id(record.name), rendered.rawxml, rendered.format)
        digest = hashlib.sha256(rendered.rawxml.encode()).hexdigest()[:16]
        return record.with_changes(self.clock(), applied={**record.applied, "policy-sha256": digest})

    def _apis(self, record: TeamRecord) -> TeamRecord:
        wanted = list(self.options.api_ids)
        if not wanted:
            raise PermanentError("APIM_TEAM_API_IDS is not set: the team's product would reach no API")
        apim, product = self._apim(), product_id(record.name)
        linked = set(apim.linked_apis(product))
        for api in wanted:
            if api not in linked:
                apim.link_api(product, api)
        for api in sorted(linked - set(wanted)):
            apim.unlink_api(product, api)
        return record.with_changes(self.clock(), applied={**record.applied, "apis": wanted})

    def _subscription(self, record: TeamRecord) -> TeamRecord:
        sid = subscription_id(record.name)
        self._apim().ensure_subscription(sid, product_id(record.name), f"Team {record.name}")
        return record.with_changes(self.clock(), applied={**record.applied, "subscription": sid})

    def _keys(self, record: TeamRecord) -> TeamRecord:
        primary, secondary = self._apim().subscription_keys(subscription_id(record.name))
        self.store.write_keys(record.name, primary, secondary)
        return record.with_changes(self.clock(), applied={**record.applied,
                                                          "keys-secret": keys_secret_name(record.name)})

    def _workspaces(self, record: TeamRecord) -> TeamRecord:
        wanted = record.spec.workspaces()
        if wanted and self.workspaces is None:
            raise PermanentError("KAITO is not available in this deployment: the team's KAITO models cannot be provisioned")
        existing: set[str] = set(record.applied.get("workspaces") or [])
        if self.workspaces is not None:
            existing |= set(self.workspaces.names_for_team(record.name))
            for name, grant in wanted.items():
                outcome = self.workspaces.apply(name, record.name, grant.name, grant.preset or grant.name,
                                                grant.instance_type or "")
                log.info("team %s: KAITO Workspace %s %s", record.name, name, outcome)
            for name in sorted(existing - set(wanted)):
                self.workspaces.delete(name)
                log.info("team %s: KAITO Workspace %s deleted (no longer granted)", record.name, name)
        return record.with_changes(self.clock(), applied={**record.applied, "workspaces": sorted(wanted)})

    def _notified(self, record: TeamRecord) -> TeamRecord:
        event = "provisioned" if record.provisioned_at is None else "updated"
        self._send(record, event, self._details(record))
        now = self.clock()
        return record.with_changes(now, provisioned_at=record.provisioned_at or now)

    # --- deletion steps ---------------------------------------------------------------------------------

    def _delete_subscription(self, record: TeamRecord) -> TeamRecord:
        if self.apim is not None or record.applied.get("subscription"):
            self._apim().delete_subscription(subscription_id(record.name))
        applied = {k: v for k, v in record.applied.items() if k != "subscription"}
        return record.with_changes(self.clock(), applied=applied)

    def _delete_product(self, record: TeamRecord) -> TeamRecord:
        if self.apim is not None or record.applied.get("product"):
            self._apim().delete_product(product_id(record.name))
        applied = {k: v for k, v in record.applied.items() if k not in ("product", "policy-sha256", "apis")}
        return record.with_changes(self.clock(), applied=applied)

    def _delete_keys(self, record: TeamRecord) -> TeamRecord:
        self.store.delete_keys(record.name)
        applied = {k: v for k, v in record.applied.items() if k != "keys-secret"}
        return record.with_changes(self.clock(), applied=applied)

    def _delete_workspaces(self, record: TeamRecord) -> TeamRecord:
        names = set(record.applied.get("workspaces") or [])
        if self.workspaces is not None:
            names |= set(self.workspaces.names_for_team(record.name))
            for name in sorted(names):
                self.workspaces.delete(name)
        elif names:
            raise PermanentError(f"KAITO is not available in this deployment: Workspaces {', '.join(sorted(names))} "
                                 "cannot be deleted")
        applied = {k: v for k, v in record.applied.items() if k != "workspaces"}
        return record.with_changes(self.clock(), applied=applied)

    def _notified_removed(self, record: TeamRecord) -> TeamRecord:
        if record.provisioned_at is not None:  # never told it was provisioned: nothing to take back
            self._send(record, "removed", {"product": product_id(record.name)})
        return record

    # --- notification ---------------------------------------------------------------------------------

    def _details(self, record: TeamRecord) -> dict[str, Any]:
        spec = record.spec
        models = []
        for grant in spec.models:
            entry: dict[str, Any] = {"name": grant.name, "tokensPerMinute": grant.limits.tokens_per_minute,
                                     "dailyTokenQuota": grant.limits.daily_token_quota}
            entry["counter"] = "own" if grant.counter == "model" else "team-wide"
            if grant.kind == "kaito":
                entry["workspace"] = next(n for n, g in spec.workspaces().items() if g.name == grant.name)
            models.append(entry)
        return {"models": models, "limits": _limits_dict(spec) or {}, "secret_name": keys_secret_name(spec.name),
                "namespace": self.options.namespace, "gateway_url": self.options.gateway_url or "",
                "product": product_id(spec.name)}

    def _send(self, record: TeamRecord, event: "TeamEvent", details: Mapping[str, Any]) -> None:
        from shared.services import messages  # templates load on the timer's path, not on a cold start

        email = messages.team_email(event, record.name, record.spec.owner, details, self.notifications)
        try:
            self.notifier.send(email)
        except PermanentError as exc:
            log.error("team %s: %s email undeliverable: %s", record.name, event, exc.message)
        else:
            log.info("team %s: %s email sent to the owner", record.name, event)


def format_issues(issues: Sequence[Issue]) -> list[str]:
    return [str(issue) for issue in issues]


__all__ = ["Change", "Plan", "TeamApim", "TeamFileError", "TeamReconciler", "TeamReconcilerOptions", "TeamStore",
           "Workspaces", "check", "plan", "plan_text", "request_delete", "resources", "status", "submit"]
