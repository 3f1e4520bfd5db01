"""The approval timer's work on key requests: the request `Flow` of the engine (engine.py).

`shared.domain.request_steps.next_step` says what a request needs next; this module does each
named step (`Processor._steps`) and says where a failure leads. Every step is idempotent and
recorded before the next one starts, so a crash between any two resumes where it stopped.
Provisioning is two recorded steps, `prepare` (choose the key and ids, no I/O) then `issue` (call
the backend with them), so a retry after a crash reuses the recorded values and never creates a
second key. Transient failures are retried with backoff and never turn into a denial.

Taking access back is as careful as giving it: cleanup revokes only what may have been issued,
and a revoke made while a create call could still complete at the backend is made again once
that call has run out (`lease_seconds` after it went unanswered). A revoke that keeps failing is
recorded and reported to the admins once; it is not retried by itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from shared import telemetry
from shared.config import AppConfig
from shared.domain import lifecycle, rules
from shared.domain import request_steps as steps
from shared.domain.request import KeyRequest, State, utcnow
from shared.domain.request_steps import Next
from shared.services import messages, request_sweep
from shared.services.engine import Engine, EngineOptions, Step
from shared.services.key_life import KeyLife, LinkSource, recorded
from shared.services.ports import (
    BackendError,
    Email,
    Notifier,
    PermanentError,
    Provisioner,
    RequestStore,
    StoreError,
    TransientError,
)
from shared.services.ticks import TickReport

log = logging.getLogger(__name__)
audit = logging.getLogger("shared.audit")

@dataclasses.dataclass(frozen=True)
class ProcessorOptions:
    concurrency: int = 8
    time_budget_seconds: float = 180.0  # with the longest step, inside host.json functionTimeout
    lease_seconds: float = 120.0  # longer than the slowest step, with its timeouts and retries
    max_attempts: int = 6
    max_steps: int = 12
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 900.0
    litellm_base_url: str | None = None
    apim_gateway_url: str | None = None
    holder: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")

    def engine(self) -> EngineOptions:
        return EngineOptions.of(self)


StepFunction = Callable[[KeyRequest, str], KeyRequest]


class Processor:
    """The request flow: what the engine needs to know about key requests."""

    kind = "request"

    def __init__(self, store: RequestStore, config: AppConfig, provisioners: Mapping[str, Provisioner],
                 notifier: Notifier, ask_webhook: rules.AskWebhook, options: ProcessorOptions | None = None,
                 clock: Callable[[], datetime] = utcnow, rng: random.Random | None = None,
                 links: LinkSource | None = None) -> None:
        self.store = store
        self.config = config
        self.provisioners = provisioners
        self.notifier = notifier
        self.ask_webhook = ask_webhook
        self.options = options or ProcessorOptions()
        self.clock = clock
        self.engine = Engine(self, self.options.engine(), clock, rng)
        self.key_life = KeyLife(config, provisioners, notifier, ask_webhook, self._now, links)
        # Every named step of request_steps, and the function that does it (its backend, or "").
        self._steps: dict[str, StepFunction] = {
            steps.DECIDE: self._decide,
            steps.NOTIFY_REVIEW: self._notify_review,
            steps.MODEL_GONE: self._model_gone,
            steps.PREPARE: self._prepare,
            steps.ISSUE: self._issue,
            steps.NOTIFY_APPROVED: self._notify_approved,
            steps.REVOKE: self._revoke,
            steps.FORGET: self._forget,
            steps.ENTER_REVOKED: self._enter_revoked,
            steps.ENTER_FAILED: self._enter_failed,
            steps.NOTIFY_DENIED: self._notify_denied,
            steps.NOTIFY_FAILED: self._notify_failed,
            steps.NOTIFY_REVOKED: self._notify_revoked,
            steps.SETTLE: self._settle,
        }
        self._life_steps = self.key_life.steps()
        assert set(self._steps) | set(self._life_steps) == set(steps.STEP_NAMES), "every named step has a function"

    def _now(self) -> datetime:
        return self.clock()  # late-bound: tests move the clock of a built processor

    # --- a tick -------------------------------------------------------------------------------

    def run_tick(self) -> TickReport:
        report = self.engine.run_tick()
        log.info("tick: %s", report.summary())
        return report

    def process(self, request: KeyRequest) -> str | None:
        """Advance one request as far as it goes now; its resulting state, or None if skipped."""
        return self.engine.advance(request)

    # --- the Flow the engine runs ---------------------------------------------------------------

    def ident(self, request: KeyRequest) -> str:
        return request.id

    def due(self) -> Iterator[KeyRequest]:
        return request_sweep.due(self.store, self.clock())

    def update(self, request: KeyRequest) -> KeyRequest:
        return self.store.update(request)

    def on_lease(self, request: KeyRequest, now: datetime) -> KeyRequest:
        if request.lease_holder not in (None, self.options.holder) and request.lease_until is not None:
            # Its holder died mid-run: whatever it was issuing may have reached the backend.
            request = request.with_changes(now, references=steps.with_in_flight(request, request.lease_until))
        by_hand = steps.hand_decision(request, now)
        if by_hand is not None:
            audit.info("audit: kubectl %s request %s (%s): %s", by_hand.state.value, request.id, request.model,
                       by_hand.reason)
            request = by_hand
        return request

    def next_step(self, request: KeyRequest, now: datetime) -> Step[KeyRequest] | None:
        model = self.config.model(request.model)
        found = steps.next_step(request, tuple(model.provisioning.backends) if model else None, now,
                                self.key_life.life)
        if found is None:
            return None
        backend, days = found.backend or "", found.days
        # A create call (a key issued, or the next key of a rotation) may still complete after it
        # went unanswered: cleanup looks for it again once it has run out.
        creates = found.step in (steps.ISSUE, lifecycle.ROTATE)
        on_error = (lambda r, exc: self._issue_unanswered(r, backend, exc)) if creates else None
        if found.step in self._life_steps:
            life_step = self._life_steps[found.step]
            return Step(found.name, lambda r: life_step(r, backend, days), on_error)
        function = self._steps[found.step]
        return Step(found.name, lambda r: function(r, backend), on_error)

    def fail(self, request: KeyRequest, step: str, reason: str, now: datetime) -> KeyRequest:
        """Where a step that failed for good leads."""
        name, _, backend = step.partition(":")
        if name == steps.REVOKE:
            # Recorded, reported to the admins by the failure path, never retried by itself.
            log.error("request %s: revoking %s access failed: %s", request.id, backend, reason)
            return request.with_changes(now, last_error=f"revoking {backend} access failed: {reason}",
                                        references={**request.references, steps.revoke_failed_ref(backend): reason})
        if name == steps.DECIDE and reason.startswith("gave up"):
            log.warning("request %s: the rules could not decide (%s); sending it to review", request.id, reason)
            return request.enter(State.IN_REVIEW, now, decision="review", decided_by="processor",
                                 reason=f"the approval rules could not decide: {reason}", last_error=reason)
        if name in lifecycle.STEP_NAMES and request.state in (State.ACTIVE, State.APPROVED):
            return self._life_failed(request, name, reason, now)
        if name in (steps.NOTIFY_REVIEW, steps.NOTIFY_DENIED, steps.NOTIFY_FAILED, steps.NOTIFY_REVOKED,
                    lifecycle.NOTIFY_EXPIRED):
            # Nobody is owed a key by this email: record it and go on.
            kind = name.removeprefix("notify-")
            log.error("request %s: %s email not sent: %s", request.id, kind, reason)
            return request.with_changes(now, last_error=f"{kind} email: {reason}",
                                        steps={**request.steps, f"notified-{kind}": now})
        log.error("request %s failed at step %s: %s", request.id, step, reason)
        if request.state == State.FAILED:
            return request.with_changes(now, last_error=reason)
        return request.enter(State.FAILED, now, reason=reason, last_error=reason)

    def _life_failed(self, request: KeyRequest, step: str, reason: str, now: datetime) -> KeyRequest:
        """A renewal or rotation that failed for good: the key stays as it was (the current one
        keeps working), the error is recorded, and the request no longer asks for it."""
        log.error("request %s: %s failed: %s", request.id, step, reason)
        if step == lifecycle.REMIND:  # a reminder that cannot be sent: recorded, not retried
            days = {lifecycle.reminded_step(d): now for d in self.key_life.life.reminder_days}
            return self.key_life.scheduled(request.with_changes(now, last_error=f"reminder email: {reason}",
                                                                steps={**request.steps, **days}))
        action = "rotate" if step in (lifecycle.PREPARE_ROTATION, lifecycle.ROTATE, lifecycle.NOTIFY_ROTATED,
                                      lifecycle.RETIRE, lifecycle.FINISH_ROTATION) else "renew"
        kept = {k: v for k, v in request.steps.items() if k.startswith("reminded-")}
        failed = request.with_changes(now, last_error=f"{action} failed at {step}: {reason}", steps=kept,
                                      **{f"{action}_requested_at": None})
        if failed.state != State.ACTIVE:
            failed = failed.enter(State.ACTIVE, now, settled=State.ACTIVE, steps=kept,
                                  last_error=failed.last_error)
        return self.key_life.scheduled(failed)

    def finish(self, request: KeyRequest) -> str:
        if request.deleting and not steps.holds_access(request):
            audit.info("audit: request %s (%s, %s) was deleted by hand; its access is revoked and its "
                       "Secret is gone", request.id, request.model, request.state.value)
            return "deleted"
        if request.finished and not request.archived:
            try:  # out of what the sweeps read, once its work is done; retention moves it if this fails
                self.store.archive(request)
            except StoreError as exc:
                log.warning("request %s: could not move it to the archive (%s); retention will", request.id, exc)
        return request.state.value

    # --- deciding -----------------------------------------------------------------------------

    def _decide(self, request: KeyRequest, _: str) -> KeyRequest:
        decision = rules.decide(request, self.config.model(request.model), self.config.approval,
                                self.ask_webhook, self.config.requests.allowed_email_domains)
        state = {"approve": State.APPROVED, "deny": State.DENIED, "review": State.IN_REVIEW}[decision.decision]
        now = self.clock()
        log.info("request %s: %s by %s (%s)", request.id, state, decision.decided_by, decision.reason)
        return request.enter(state, now, decision=decision.decision, reason=decision.reason,
                             decided_by=decision.decided_by, decided_at=now)

    def _settle(self, request: KeyRequest, _: str) -> KeyRequest:
        return request.with_changes(self.clock(), settled=request.state)

    def _enter_revoked(self, request: KeyRequest, _: str) -> KeyRequest:
        return request.enter(State.REVOKED, self.clock(), settled=State.REVOKED)

    def _enter_failed(self, request: KeyRequest, _: str) -> KeyRequest:
        # Access could not be taken back: the admins are told by the failed path.
        failures = steps.revoke_failures(request)
        log.error("request %s: %s access could not be revoked; it is failed now", request.id, ", ".join(failures))
        return request.enter(State.FAILED, self.clock())

    def _model_gone(self, request: KeyRequest, _: str) -> KeyRequest:
        raise PermanentError(f"model {request.model} is no longer in the catalog")

    # --- provisioning -------------------------------------------------------------------------

    def _prepare(self, request: KeyRequest, backend: str) -> KeyRequest:
        prepared = self.key_life.provisioner(backend).prepare(request, self.key_life.model(request))
        log.info("request %s: %s prepared %s", request.id, backend, dict(prepared.references))
        return request.with_changes(self.clock(), secrets={**request.secrets, **prepared.secrets},
                                    references={**request.references, **prepared.references,
                                                steps.prepared_ref(backend): "true",
                                                steps.reached_ref(backend): steps.REACHED_NO})

    def _issue(self, request: KeyRequest, backend: str) -> KeyRequest:
        provisioner = self.key_life.provisioner(backend)
        issued = provisioner.issue(request, self.key_life.model(request), recorded(request, backend))
        log.info("request %s: %s issued %s", request.id, backend, dict(issued.references))
        now = self.clock()
        return request.with_changes(
            now, secrets={**request.secrets, **issued.secrets},
            references={**request.references, **issued.references, steps.reached_ref(backend): steps.REACHED_YES},
            steps={**request.steps, steps.issued_step(backend): now})

    def _issue_unanswered(self, request: KeyRequest, backend: str, exc: BackendError) -> KeyRequest:
        """An issue call failed: if it may have reached the backend, the access may exist (or
        appear later, when the backend finishes a call we gave up on)."""
        if not exc.reached:
            return request
        references = dict(request.references)
        if references.get(steps.reached_ref(backend)) != steps.REACHED_YES:
            references[steps.reached_ref(backend)] = steps.REACHED_MAYBE
        if isinstance(exc, TransientError) and exc.in_flight:
            references[steps.sent_at_ref(backend)] = self.clock().isoformat()
        return request.with_changes(self.clock(), references=references)

    def _revoke(self, request: KeyRequest, backend: str) -> KeyRequest:
        self.key_life.provisioner(backend).revoke(request, recorded(request, backend))
        now = self.clock()
        until = steps.in_flight_until(request, backend, self.options.lease_seconds)
        if until is not None and until > now:
            # A create call we gave up on may still complete after this delete: look again then.
            log.info("request %s: %s access revoked; revoking again at %s, once no create call can "
                     "still be in flight", request.id, backend, until.isoformat())
            return request.with_changes(now, next_attempt_at=until)
        log.info("request %s: %s access revoked", request.id, backend)
        return _without(request, backend, now)

    def _forget(self, request: KeyRequest, backend: str) -> KeyRequest:
        log.info("request %s: %s was never reached; nothing to revoke", request.id, backend)
        return _without(request, backend, self.clock())

    # --- notification -------------------------------------------------------------------------

    def _notify_review(self, request: KeyRequest, _: str) -> KeyRequest:
        reviewers = self.config.notifications.reviewers
        email = messages.review_email(request, self.config.notifications, reviewers) if reviewers else None
        return self._notified(self._send(request, "review", email), "review", settle=True)

    def _notify_denied(self, request: KeyRequest, _: str) -> KeyRequest:
        email = messages.denied_email(request, self.config.notifications)
        sent = self._notified(self._send(request, "denied", email), "denied")
        return sent if steps.revoke_failures(sent) else sent.with_changes(self.clock(), settled=State.DENIED)

    def _notify_revoked(self, request: KeyRequest, _: str) -> KeyRequest:
        admins = self.config.notifications.admins
        email = messages.revoked_by_requester_email(request, self.config.notifications, admins) if admins else None
        return self._notified(self._send(request, "revoked", email), "revoked")

    def _notify_failed(self, request: KeyRequest, _: str) -> KeyRequest:
        admins = self.config.notifications.admins
        email = messages.failed_email(request, self.config.notifications, admins) if admins else None
        return self._notified(self._send(request, "failed", email), "failed", settle=True)

    def _notify_approved(self, request: KeyRequest, _: str) -> KeyRequest:
        email = self._approved_email(request)
        try:
            self.notifier.send(email)
        except PermanentError as exc:  # nobody got the key: take it back, tell the admins
            raise PermanentError(f"the approval email could not be delivered: {exc.message}") from None
        log.info("request %s: %s email sent to %d recipient(s)", request.id, "approved", len(email.to))
        telemetry.record_activation((self.clock() - request.created_at).total_seconds())
        # Delivered: active, and the plain keys leave the Secret in this same write.
        return self.key_life.delivered(request)

    def _send(self, request: KeyRequest, kind: str, email: Email | None) -> KeyRequest:
        """Send a notification that carries no key; a permanent refusal is recorded, and reported
        to the admins, rather than failing the request."""
        if email is None:
            return request
        try:
            self.notifier.send(email)
        except PermanentError as exc:
            log.error("request %s: %s email undeliverable: %s", request.id, kind, exc.message)
            self._tell_admins_undeliverable(request, kind, exc.message)
            return request.with_changes(self.clock(), last_error=f"{kind} email: {exc.message}")
        log.info("request %s: %s email sent to %d recipient(s)", request.id, kind, len(email.to))
        return request

    def _notified(self, request: KeyRequest, kind: str, settle: bool = False) -> KeyRequest:
        now = self.clock()
        done = request.with_changes(now, steps={**request.steps, f"notified-{kind}": now})
        return done.with_changes(now, settled=request.state) if settle else done

    def _tell_admins_undeliverable(self, request: KeyRequest, kind: str, error: str) -> None:
        admins = self.config.notifications.admins
        if not admins or kind == "failed":  # the failed email goes to the admins already
            return
        try:
            self.notifier.send(messages.undeliverable_email(request, kind, error, self.config.notifications, admins))
        except (TransientError, PermanentError) as exc:
            log.error("request %s: could not tell the admins either: %s", request.id, exc.message)

    def _approved_email(self, request: KeyRequest) -> Email:
        model = self.key_life.model(request)
        keys = {_KEY_LABELS.get(name, name): value for name, value in request.secrets.items()
                if name in _KEY_LABELS}
        if not keys:
            raise PermanentError("no key was recorded for this approved request")
        backends = model.provisioning.backends
        base_url = self.options.litellm_base_url if "litellm" in backends else self.options.apim_gateway_url
        expires = request.references.get("litellm-key-expires")
        return messages.approved_email(request, model, keys, base_url,
                                       datetime.fromisoformat(expires) if expires else None,
                                       self.config.notifications, rotate_url=self.key_life.url(request, "rotate"),
                                       revoke_url=self.key_life.url(request, "revoke"))


_KEY_LABELS = {"litellm-api-key": "LiteLLM API key", "apim-primary-key": "APIM subscription key"}


def _without(request: KeyRequest, backend: str, now: datetime) -> KeyRequest:
    """The request with nothing left recorded of `backend` (its access is gone)."""
    own = f"{backend}-"
    return request.with_changes(
        now, secrets={k: v for k, v in request.secrets.items() if not k.startswith(own)},
        references={k: v for k, v in request.references.items() if not k.startswith(own)},
        steps={k: v for k, v in request.steps.items() if not k.startswith(own)})


__all__ = ["Next", "Processor", "ProcessorOptions"]
