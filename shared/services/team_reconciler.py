"""The timer's work on teams: the team `Flow` of the engine (engine.py).

`shared.domain.team.steps.next_step` says what a team needs next; this module does each named
step (`TeamReconciler._steps`): a live generation gets its APIM product, policy, API links,
subscription, keys Secret and KAITO Workspaces, and the owner an email; a deletion undoes all of
it, then the record goes; a key rotation regenerates the subscription's keys one at a time, with
`rotation_grace_seconds` between them (see shared/domain/team/steps.py). Every step is idempotent
and recorded before the next.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.config import Notifications
from shared.domain import policy as policies
from shared.domain.request import utcnow
from shared.domain.team import TeamRecord, keys_secret_name, product_id, subscription_id
from shared.domain.team import steps as team_steps
from shared.services.engine import Engine, EngineOptions, Step
from shared.services.ports import Notifier, PermanentError
from shared.services.team_plan import limits_dict
from shared.services.team_ports import TeamApim, TeamStore, Workspaces
from shared.services.ticks import TickReport

if TYPE_CHECKING:
    from shared.services.messages import TeamEvent

log = logging.getLogger(__name__)

# What ends a rotation (done, or moot once the subscription is deleted).
_NO_ROTATION: dict[str, Any] = {"rotate_requested_at": None, "rotate_requested_by": None, "rotation_steps": {},
                                "rotation_retire_at": None}


@dataclasses.dataclass(frozen=True)
class TeamReconcilerOptions:
    api_ids: tuple[str, ...] = ()  # APIM_TEAM_API_IDS: the APIs every team product is linked to
    keys_namespace: str = "default"  # TEAM_KEYS_NAMESPACE: where the keys Secret lives (shown in emails)
    gateway_url: str | None = None
    concurrency: int = 4
    time_budget_seconds: float = 60.0
    lease_seconds: float = 120.0
    max_attempts: int = 6
    max_steps: int = 16
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 900.0
    # config.yaml provisioning.rotation_grace: how long a rotated team key keeps working
    rotation_grace_seconds: float = 86400.0
    holder: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")

    def engine(self) -> EngineOptions:
        return EngineOptions.of(self)


class TeamReconciler:
    """The team flow: what the engine needs to know about teams."""

    kind = "team"

    def __init__(self, store: TeamStore, apim: TeamApim | None, workspaces: Workspaces | None,
                 notifier: Notifier, notifications: Notifications, options: TeamReconcilerOptions | None = None,
                 clock: Callable[[], datetime] = utcnow, rng: random.Random | None = None) -> None:
        self.store = store
        self.apim = apim
        self.workspaces = workspaces
        self.notifier = notifier
        self.notifications = notifications
        self.options = options or TeamReconcilerOptions()
        self.clock = clock
        self.engine = Engine(self, self.options.engine(), clock, rng)
        # Every named step of shared.domain.team.steps, and the function that does it.
        self._steps: dict[str, Callable[[TeamRecord], TeamRecord]] = {
            "product": self._product, "policy": self._policy, "apis": self._apis,
            "subscription": self._subscription, "keys": self._keys, "workspaces": self._workspaces,
            "notified": self._notified, "delete-subscription": self._delete_subscription,
            "delete-product": self._delete_product, "delete-keys": self._delete_keys,
            "delete-workspaces": self._delete_workspaces, "notified-removed": self._notified_removed,
            team_steps.ROTATE_NEW: self._rotate_new, team_steps.ROTATE_KEYS_NEW: self._rotate_keys_new,
            team_steps.NOTIFIED_ROTATED: self._notified_rotated, team_steps.ROTATE_WAIT: self._rotate_wait,
            team_steps.ROTATE_OLD: self._rotate_old, team_steps.ROTATE_KEYS_OLD: self._rotate_keys_old,
            team_steps.ROTATED: self._rotated,
            team_steps.FINISH: self._finish,
        }
        assert set(self._steps) == set(team_steps.STEP_NAMES), "every named step has a function"

    # --- a tick -------------------------------------------------------------------------------------

    def run_tick(self) -> TickReport:
        report = self.engine.run_tick()
        if report.due:
            log.info("team tick: %s", report.summary())
        return report

    def reconcile(self, record: TeamRecord) -> str | None:
        """Advance one team as far as it goes now; its resulting phase ("deleted" once removed), or
        None if skipped (not due, leased elsewhere, changed meanwhile)."""
        return self.engine.advance(record)

    # --- the Flow the engine runs -------------------------------------------------------------------

    def ident(self, record: TeamRecord) -> str:
        return record.name

    def due(self) -> Iterable[TeamRecord]:
        return self.store.list_due()

    def update(self, record: TeamRecord) -> TeamRecord:
        return self.store.update(record)

    def on_lease(self, record: TeamRecord, now: datetime) -> TeamRecord:
        changes = team_steps.on_lease(record)
        return record.with_changes(now, **changes) if changes else record

    def next_step(self, record: TeamRecord, now: datetime) -> Step[TeamRecord] | None:
        name = team_steps.next_step(record, now)
        if name is None:
            return None
        function = self._steps[name]
        if name in (team_steps.FINISH, team_steps.ROTATE_WAIT, team_steps.ROTATED):
            return Step(name, function)  # they record themselves (or, the wait, nothing)
        if name in team_steps.ROTATION_STEPS:
            return Step(name, lambda r: self._rotation_done(function(r), name))
        return Step(name, lambda r: self._done(function(r), name))

    def fail(self, record: TeamRecord, step: str, reason: str, now: datetime) -> TeamRecord:
        log.error("team %s failed (generation %d) at step %s: %s", record.name, record.generation, step, reason)
        return record.with_changes(now, phase="failed", settled=True, last_error=reason)

    def finish(self, record: TeamRecord) -> str:
        if team_steps.removable(record):
            self.store.delete(record)
            log.info("team %s: removed", record.name)
            return "deleted"
        return record.phase

    # --- steps ----------------------------------------------------------------------------------------

    def _done(self, record: TeamRecord, step: str) -> TeamRecord:
        now = self.clock()
        return record.with_changes(now, steps={**record.steps, step: now})

    def _rotation_done(self, record: TeamRecord, step: str) -> TeamRecord:
        now = self.clock()
        return record.with_changes(now, phase="ready", rotation_steps={**record.rotation_steps, step: now})

    def _finish(self, record: TeamRecord) -> TeamRecord:
        log.info("team %s: generation %d reconciled", record.name, record.generation)
        # A rotation asked for meanwhile goes on after the generation: the team stays unsettled.
        return record.with_changes(self.clock(), phase="ready", settled=not record.rotating,
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
        # The adapter adds the sentence that marks it as this app's (shared/adapters/apim_marks.py).
        description = f"LLM access for team {spec.name}. Owner: {spec.owner}. Cost center: {spec.cost_center or '-'}."
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
        self._apim().ensure_subscription(sid, product_id(record.name), _subscription_name(record))
        return record.with_changes(self.clock(), applied={**record.applied, "subscription": sid})

    def _keys(self, record: TeamRecord) -> TeamRecord:
        primary, secondary = self._apim().subscription_keys(subscription_id(record.name))
        self.store.write_keys(record.name, primary, secondary)
        return record.with_changes(self.clock(), applied={**record.applied,
                                                          "keys-secret": keys_secret_name(record.name)})

    def _workspaces(self, record: TeamRecord) -> TeamRecord:
        wanted = record.spec.workspaces()
        if wanted and self.workspaces is None:
            raise PermanentError("KAITO is not available in this deployment: "
                                 "the team's KAITO models cannot be provisioned")
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
        event: TeamEvent = "provisioned" if record.provisioned_at is None else "updated"
        self._send(record, event, self._details(record))
        now = self.clock()
        return record.with_changes(now, provisioned_at=record.provisioned_at or now)

    # --- deletion steps ---------------------------------------------------------------------------------

    def _delete_subscription(self, record: TeamRecord) -> TeamRecord:
        if self.apim is not None or record.applied.get("subscription"):
            self._apim().delete_subscription(subscription_id(record.name), product_id(record.name),
                                             _subscription_name(record))
        # Its keys are gone with it: a rotation in progress has nothing left to rotate.
        applied = {k: v for k, v in record.applied.items() if k not in ("subscription", "live-key")}
        return record.with_changes(self.clock(), applied=applied, **_NO_ROTATION)

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

    # --- key rotation (POST /api/teams/{name}/rotate) ----------------------------------------------------

    def _rotate_new(self, record: TeamRecord) -> TeamRecord:
        """Regenerate the key the team does not use. Run twice (a crash before it was recorded), it
        regenerates twice: harmless, nobody has that key yet."""
        self._apim().regenerate_key(subscription_id(record.name), team_steps.new_key(record))
        return record

    def _rotate_keys_new(self, record: TeamRecord) -> TeamRecord:
        """Both keys into the keys Secret; from now on the team can switch, so the grace counts from
        here. Fixed when recorded (a rerun after a crash before that, when nobody was told yet, moves it)."""
        self._write_keys(record)
        now = self.clock()
        return record.with_changes(now, rotation_retire_at=now + timedelta(seconds=self.options.rotation_grace_seconds))

    def _notified_rotated(self, record: TeamRecord) -> TeamRecord:
        new, old = team_steps.new_key(record), team_steps.live_key(record)
        self._send(record, "rotated", {"secret_name": keys_secret_name(record.name),
                                       "namespace": self.options.keys_namespace,
                                       "new_key": f"{new}-key", "old_key": f"{old}-key",
                                       "retire_at": record.rotation_retire_at})
        return record

    def _rotate_wait(self, record: TeamRecord) -> TeamRecord:
        """Not recorded: comes back when the grace is over (the engine waits for `next_attempt_at`)."""
        retire_at = record.rotation_retire_at
        if retire_at is None:  # never the case after rotate-keys-new; a record edited by hand
            retire_at = self.clock() + timedelta(seconds=self.options.rotation_grace_seconds)
        log.info("team %s: the %s key keeps working until %s", record.name, team_steps.live_key(record),
                 retire_at.isoformat())
        return record.with_changes(self.clock(), phase="ready", rotation_retire_at=retire_at,
                                   next_attempt_at=retire_at)

    def _rotate_old(self, record: TeamRecord) -> TeamRecord:
        """The grace is over: the key used before the rotation stops working (regenerated, so no
        one knows it; twice after a crash is just as harmless)."""
        self._apim().regenerate_key(subscription_id(record.name), team_steps.live_key(record))
        return record

    def _rotate_keys_old(self, record: TeamRecord) -> TeamRecord:
        self._write_keys(record)
        return record

    def _rotated(self, record: TeamRecord) -> TeamRecord:
        new = team_steps.new_key(record)
        log.info("team %s: keys rotated; the %s key is the one in use", record.name, new)
        return record.with_changes(self.clock(), phase="ready", settled=True,
                                   applied={**record.applied, "live-key": new}, **_NO_ROTATION)

    def _write_keys(self, record: TeamRecord) -> None:
        primary, secondary = self._apim().subscription_keys(subscription_id(record.name))
        self.store.write_keys(record.name, primary, secondary)

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
        return {"models": models, "limits": limits_dict(spec) or {}, "secret_name": keys_secret_name(spec.name),
                "namespace": self.options.keys_namespace, "gateway_url": self.options.gateway_url or "",
                "product": product_id(spec.name), "key_name": f"{team_steps.live_key(record)}-key"}

    def _send(self, record: TeamRecord, event: TeamEvent, details: Mapping[str, Any]) -> None:
        from shared.services import messages  # templates load on the timer's path, not on a cold start

        email = messages.team_email(event, record.name, record.spec.owner, details, self.notifications)
        try:
            self.notifier.send(email)
        except PermanentError as exc:
            log.error("team %s: %s email undeliverable: %s", record.name, event, exc.message)
        else:
            log.info("team %s: %s email sent to the owner", record.name, event)


def _subscription_name(record: TeamRecord) -> str:
    """The subscription's display name, before the adapter marks it (as this app always named it)."""
    return f"Team {record.name}"
