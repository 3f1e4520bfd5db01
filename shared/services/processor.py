"""The approval timer's work: move every due request one or more steps toward its goal.

Level-triggered, like a Kubernetes controller. Each tick sweeps the states that have work (by
label selector), and for each request:

1. takes a short lease on it (a resourceVersion-guarded write), so two processors never call a
   backend for the same request at once; a crashed holder's lease simply runs out;
2. does the next step for its state, records the outcome on the Secret, and goes on until the
   state's work is done (`settled`) or a step must wait.

Every step is idempotent and recorded before the next one starts, so a crash between any two
steps resumes where it stopped. Provisioning is split in two recorded steps: `prepare` (choose the
key and ids, no I/O) then `issue` (call the backend with them), so a retry after a crash reuses
the recorded values and never creates a second key. Transient failures are retried with
exponential backoff and jitter; they never turn into a denial.

Goals per state (the label is the source of truth; a human may set it with kubectl):
  pending   -> decide by the rules: approved, denied or in-review
  in-review -> tell the reviewers, then wait for a human
  approved  -> provision every backend, email the key, then active
  denied    -> revoke anything issued, email the reason
  revoking  -> revoke anything issued, then revoked
  failed    -> revoke anything issued, tell the admins
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import uuid
from datetime import datetime, timedelta
from typing import Callable, Mapping

from shared.config import AppConfig, CatalogModel
from shared.domain import rules
from shared.domain.request import KeyRequest, State, utcnow
from shared.services import messages, ticks
from shared.services.ticks import TickReport
from shared.services.ports import (
    Conflict,
    Credentials,
    Email,
    NotFound,
    Notifier,
    PermanentError,
    Provisioner,
    RequestStore,
    StoreError,
    TransientError,
)

log = logging.getLogger(__name__)

# States whose requests always have work, and states whose work ends when they are settled.
ALWAYS_DUE = (State.PENDING, State.APPROVED, State.REVOKING)
DUE_UNTIL_SETTLED = (State.IN_REVIEW, State.DENIED, State.FAILED)
MAX_STEPS_PER_TICK = 12


@dataclasses.dataclass(frozen=True)
class ProcessorOptions:
    concurrency: int = 8
    time_budget_seconds: float = 240.0  # below host.json functionTimeout (5 min)
    lease_seconds: float = 120.0  # longer than the slowest step, with its timeouts and retries
    max_attempts: int = 6
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 900.0
    litellm_base_url: str | None = None
    apim_gateway_url: str | None = None
    holder: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


class _Wait(Exception):
    """The current step must wait (its backend failed transiently); the retry is recorded."""


class Processor:
    def __init__(self, store: RequestStore, config: AppConfig, provisioners: Mapping[str, Provisioner],
                 notifier: Notifier, ask_webhook: rules.AskWebhook, options: ProcessorOptions | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.config = config
        self.provisioners = provisioners
        self.notifier = notifier
        self.ask_webhook = ask_webhook
        self.options = options or ProcessorOptions()
        self.clock = clock

    # --- a tick -----------------------------------------------------------------------------

    def due(self) -> list[KeyRequest]:
        found: list[KeyRequest] = []
        for state in ALWAYS_DUE + DUE_UNTIL_SETTLED:
            token = None
            while True:
                page, token = self.store.list([state], limit=500, continue_token=token,
                                              unsettled_only=state in DUE_UNTIL_SETTLED)
                found.extend(page)
                if not token:
                    break
        now = self.clock()
        return [r for r in found if r.next_attempt_at is None or r.next_attempt_at <= now]

    def run_tick(self) -> TickReport:
        def work(request: KeyRequest) -> str | None:
            state = self.process(request)
            return state.value if state else None

        report = ticks.run_tick(self.due(), work, describe=lambda r: f"request {r.id}",
                                concurrency=self.options.concurrency,
                                budget_seconds=self.options.time_budget_seconds, name="process")
        log.info("tick: %s", report.summary())
        return report

    # --- one request ------------------------------------------------------------------------

    def process(self, request: KeyRequest) -> State | None:
        """Advance one request as far as it goes now; its resulting state, or None if skipped."""
        now = self.clock()
        if request.next_attempt_at and request.next_attempt_at > now:
            return None
        if request.leased_by_other(self.options.holder, now):
            return None
        try:
            request = self.store.update(request.with_changes(
                now, lease_holder=self.options.holder,
                lease_until=now + timedelta(seconds=self.options.lease_seconds)))
        except (Conflict, NotFound):
            return None  # another processor or a human got there first; the next tick re-reads
        try:
            for _ in range(MAX_STEPS_PER_TICK):
                step = self._next_step(request)
                if step is None:
                    break
                request = self._run(step, request)
        except _Wait as wait:
            request = wait.args[0]
        except (Conflict, NotFound):
            log.info("request %s changed while being processed; the next tick takes it up", request.id)
            return None
        except StoreError as exc:  # the step's outcome was not recorded: it is redone next tick
            log.warning("request %s: could not record progress (%s); the next tick resumes it", request.id, exc)
            return None
        return self._release(request).state

    def _release(self, request: KeyRequest) -> KeyRequest:
        if request.lease_holder is None:
            return request  # released with the last step's record
        try:
            return self.store.update(request.with_changes(lease_holder=None, lease_until=None))
        except (Conflict, NotFound, StoreError):
            return request  # the lease runs out by itself

    def _run(self, step: Callable[[KeyRequest], KeyRequest], request: KeyRequest) -> KeyRequest:
        """Do one step and record its outcome; a backend failure is recorded as a retry or a failure."""
        try:
            changed = step(request)
        except TransientError as exc:
            raise _Wait(self._retry_later(request, exc)) from None
        except PermanentError as exc:
            return self.store.update(self._failed(request, exc.message))
        now = self.clock()
        # Each recorded step renews the lease, so a long series of steps keeps the request ours;
        # the last one (nothing left to do now) releases it in the same write.
        last = self._next_step(changed) is None
        # A step that succeeded clears the error of its earlier tries, but keeps one it recorded.
        error = changed.last_error if changed.last_error != request.last_error else None
        return self.store.update(changed.with_changes(
            now, attempts=0, last_error=error, next_attempt_at=None,
            lease_holder=None if last else changed.lease_holder,
            lease_until=None if last else now + timedelta(seconds=self.options.lease_seconds)))

    def _retry_later(self, request: KeyRequest, exc: TransientError) -> KeyRequest:
        attempts = request.attempts + 1
        now = self.clock()
        if attempts >= self.options.max_attempts:
            if request.state == State.PENDING:  # the rules could not decide: a human will
                log.warning("request %s: rules failed %d times (%s); sending it to review",
                            request.id, attempts, exc.message)
                return self.store.update(request.enter(State.IN_REVIEW, now, decision="review",
                                                     reason=f"the approval rules could not decide: {exc.message}",
                                                     decided_by="processor", last_error=exc.message))
            log.error("request %s: giving up after %d attempts: %s", request.id, attempts, exc.message)
            return self.store.update(self._failed(request, f"gave up after {attempts} attempts: {exc.message}"))
        delay = min(self.options.backoff_max_seconds, self.options.backoff_base_seconds * 2 ** (attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: retries of many requests do not arrive together
        if exc.retry_after:
            delay = max(delay, exc.retry_after)
        log.warning("request %s (%s): attempt %d failed, retrying in %.0f s: %s",
                    request.id, request.state, attempts, delay, exc.message)
        return self.store.update(request.with_changes(
            now, attempts=attempts, last_error=exc.message, next_attempt_at=now + timedelta(seconds=delay),
            lease_holder=None, lease_until=None))

    def _failed(self, request: KeyRequest, reason: str) -> KeyRequest:
        log.error("request %s failed: %s", request.id, reason)
        return request.enter(State.FAILED, self.clock(), reason=reason, last_error=reason)

    # --- what to do next ----------------------------------------------------------------------

    def _next_step(self, request: KeyRequest) -> Callable[[KeyRequest], KeyRequest] | None:
        state = request.state
        if request.settled == state:
            return None
        if state == State.PENDING:
            return self._decide
        if state == State.IN_REVIEW:
            return self._notify_step("review", self._review_email) if not request.done("notified-review") \
                else self._settle
        if state == State.APPROVED:
            return self._next_provisioning_step(request)
        if state in (State.DENIED, State.REVOKING, State.FAILED):
            backend = self._issued_backend(request)
            if backend is not None:
                return lambda r: self._revoke(r, backend)
            if state == State.REVOKING:
                return lambda r: r.enter(State.REVOKED, self.clock(), settled=State.REVOKED)
            kind = "denied" if state == State.DENIED else "failed"
            if not request.done(f"notified-{kind}"):
                compose = self._denied_email if kind == "denied" else self._failed_email
                return self._notify_step(kind, compose)
            return self._settle
        return None  # active, revoked, expired: nothing to do

    def _settle(self, request: KeyRequest) -> KeyRequest:
        return request.with_changes(self.clock(), settled=request.state)

    def _decide(self, request: KeyRequest) -> KeyRequest:
        decision = rules.decide(request, self.config.model(request.model), self.config.approval,
                                self.ask_webhook)
        state = {"approve": State.APPROVED, "deny": State.DENIED, "review": State.IN_REVIEW}[decision.decision]
        now = self.clock()
        log.info("request %s: %s by %s (%s)", request.id, state, decision.decided_by, decision.reason)
        return request.enter(state, now, decision=decision.decision, reason=decision.reason,
                           decided_by=decision.decided_by, decided_at=now)

    # --- provisioning -------------------------------------------------------------------------

    def _model(self, request: KeyRequest) -> CatalogModel:
        model = self.config.model(request.model)
        if model is None:
            raise PermanentError(f"model {request.model} is no longer in the catalog")
        return model

    def _provisioner(self, backend: str) -> Provisioner:
        provisioner = self.provisioners.get(backend)
        if provisioner is None:
            raise PermanentError(f"backend {backend} is not configured in this deployment")
        return provisioner

    def _next_provisioning_step(self, request: KeyRequest) -> Callable[[KeyRequest], KeyRequest]:
        model = self.config.model(request.model)
        if model is None:
            return lambda r: self._failed(r, f"model {r.model} is no longer in the catalog")
        for backend in model.provisioning.backends:
            if not _prepared(request, backend):
                return lambda r, b=backend: self._prepare(r, b)
            if not request.done(f"{backend}-issued"):
                return lambda r, b=backend: self._issue(r, b)
        return self._notify_step("approved", self._approved_email, then=State.ACTIVE)

    def _prepare(self, request: KeyRequest, backend: str) -> KeyRequest:
        prepared = self._provisioner(backend).prepare(request, self._model(request))
        log.info("request %s: %s prepared %s", request.id, backend, dict(prepared.references))
        return request.with_changes(self.clock(), secrets={**request.secrets, **prepared.secrets},
                                    references={**request.references, **prepared.references,
                                                f"{backend}-prepared": "true"})

    def _issue(self, request: KeyRequest, backend: str) -> KeyRequest:
        provisioner = self._provisioner(backend)
        prepared = _recorded(request, backend)
        issued = provisioner.issue(request, self._model(request), prepared)
        log.info("request %s: %s issued %s", request.id, backend, dict(issued.references))
        return request.with_changes(
            self.clock(), secrets={**request.secrets, **issued.secrets},
            references={**request.references, **issued.references},
            steps={**request.steps, f"{backend}-issued": self.clock()})

    def _issued_backend(self, request: KeyRequest) -> str | None:
        """A backend that may hold access for this request (prepared counts: issue may have run)."""
        for backend in sorted({key.split("-", 1)[0] for key in request.references}):
            if _prepared(request, backend):
                return backend
        return None

    def _revoke(self, request: KeyRequest, backend: str) -> KeyRequest:
        self._provisioner(backend).revoke(request, _recorded(request, backend))
        log.info("request %s: %s access revoked", request.id, backend)
        own = f"{backend}-"
        return request.with_changes(
            self.clock(),
            secrets={k: v for k, v in request.secrets.items() if not k.startswith(own)},
            references={k: v for k, v in request.references.items() if not k.startswith(own)},
            steps={k: v for k, v in request.steps.items() if not k.startswith(own)})

    # --- notification -------------------------------------------------------------------------

    def _notify_step(self, kind: str, compose: Callable[[KeyRequest], Email | None],
                     then: State | None = None) -> Callable[[KeyRequest], KeyRequest]:
        def step(request: KeyRequest) -> KeyRequest:
            email = compose(request)
            if email is not None:
                try:
                    self.notifier.send(email)
                except PermanentError as exc:
                    if kind == "approved":  # nobody got the key: take it back, tell the admins
                        raise PermanentError(f"the approval email could not be delivered: {exc.message}") from None
                    log.error("request %s: %s email undeliverable: %s", request.id, kind, exc.message)
                    request = request.with_changes(self.clock(), last_error=f"{kind} email: {exc.message}")
                    self._tell_admins_undeliverable(request, kind, exc.message)
                else:
                    log.info("request %s: %s email sent to %d recipient(s)", request.id, kind, len(email.to))
            now = self.clock()
            done = request.with_changes(now, steps={**request.steps, f"notified-{kind}": now})
            if then is not None:
                return done.enter(then, now, settled=then)
            return done.with_changes(now, settled=request.state)

        return step

    def _tell_admins_undeliverable(self, request: KeyRequest, kind: str, error: str) -> None:
        admins = self.config.notifications.admins
        if not admins or kind == "failed":  # the failed email goes to the admins already
            return
        try:
            self.notifier.send(messages.undeliverable_email(request, kind, error, self.config.notifications, admins))
        except (TransientError, PermanentError) as exc:
            log.error("request %s: could not tell the admins either: %s", request.id, exc.message)

    def _approved_email(self, request: KeyRequest) -> Email:
        model = self._model(request)
        keys = {_KEY_LABELS.get(name, name): value for name, value in request.secrets.items()
                if name in _KEY_LABELS}
        if not keys:
            raise PermanentError("no key was recorded for this approved request")
        backends = model.provisioning.backends
        base_url = self.options.litellm_base_url if "litellm" in backends else self.options.apim_gateway_url
        expires = request.references.get("litellm-key-expires")
        return messages.approved_email(request, model, keys, base_url,
                                       datetime.fromisoformat(expires) if expires else None,
                                       self.config.notifications)

    def _denied_email(self, request: KeyRequest) -> Email:
        return messages.denied_email(request, self.config.notifications)

    def _review_email(self, request: KeyRequest) -> Email | None:
        reviewers = self.config.notifications.reviewers
        return messages.review_email(request, self.config.notifications, reviewers) if reviewers else None

    def _failed_email(self, request: KeyRequest) -> Email | None:
        admins = self.config.notifications.admins
        return messages.failed_email(request, self.config.notifications, admins) if admins else None


_KEY_LABELS = {"litellm-api-key": "LiteLLM API key", "apim-primary-key": "APIM subscription key"}


def _prepared(request: KeyRequest, backend: str) -> bool:
    return request.references.get(f"{backend}-prepared") == "true"


def _recorded(request: KeyRequest, backend: str) -> Credentials:
    own = f"{backend}-"
    return Credentials(secrets={k: v for k, v in request.secrets.items() if k.startswith(own)},
                       references={k: v for k, v in request.references.items() if k.startswith(own)})

