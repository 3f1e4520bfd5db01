"""The steps of an active key's life (shared/domain/lifecycle.py names them): reminders, expiry,
renewal, rotation, and the emails that go with them. Each is idempotent and recorded before the
next; the processor runs them on the engine like every other step.

Keys are kept only as long as they must: the key email is recorded and the plain key erased in
the same write (what revoke, renewal and rotation need are references: LiteLLM's token id, APIM
ids); a rotated key is kept until its own email is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from shared.config import AppConfig, CatalogModel
from shared.domain import lifecycle, request_steps, rules
from shared.domain.lifecycle import Life
from shared.domain.request import KeyRequest, State
from shared.services import messages
from shared.services.ports import Credentials, Email, Notifier, PermanentError, Provisioner

log = logging.getLogger("shared.services.processor")

# References the engine's cleanup keeps per backend whatever a backend's record becomes.
_BOOKKEEPING = ("-prepared", "-reached", "-sent-at", "-revoke-failed")


class LinkSource(Protocol):
    """What the lifecycle emails need to build a requester link (shared/services/links.py)."""

    def url(self, request: KeyRequest, action: Any, now: datetime) -> str: ...


class KeyLife:
    def __init__(self, config: AppConfig, provisioners: Mapping[str, Provisioner], notifier: Notifier,
                 ask_webhook: rules.AskWebhook, clock: Callable[[], datetime], links: LinkSource | None) -> None:
        self.config = config
        self.provisioners = provisioners
        self.notifier = notifier
        self.ask_webhook = ask_webhook
        self.clock = clock
        self.links = links
        self.life = Life(tuple(config.notifications.expiry_reminders_days),
                         _seconds(config.provisioning.rotation_grace_seconds))

    def steps(self) -> dict[str, Callable[[KeyRequest, str, int], KeyRequest]]:
        return {
            lifecycle.EXPIRE: self.expire, lifecycle.REMIND: self.remind,
            lifecycle.DECIDE_RENEWAL: self.decide_renewal, lifecycle.EXTEND: self.extend,
            lifecycle.NOTIFY_RENEWED: self.notify_renewed, lifecycle.PREPARE_ROTATION: self.prepare_rotation,
            lifecycle.ROTATE: self.rotate, lifecycle.NOTIFY_ROTATED: self.notify_rotated,
            lifecycle.RETIRE: self.retire, lifecycle.FINISH_ROTATION: self.finish_rotation,
            lifecycle.NOTIFY_EXPIRED: self.notify_expired,
        }

    # --- scheduling ---------------------------------------------------------------------------

    def scheduled(self, request: KeyRequest) -> KeyRequest:
        """An active key with its next due moment recorded (`due_at`: the sweep asks for its day,
        and takes it up once it has come)."""
        if request.state != State.ACTIVE:
            return request
        now = self.clock()
        return request.with_changes(now, due_at=lifecycle.due_at(request, self._backends(request), now, self.life))

    def delivered(self, request: KeyRequest) -> KeyRequest:
        """Entering `active` once the key email is recorded: the plain keys go, the expiry and
        the next due moment are recorded."""
        now = self.clock()
        active = request.enter(State.ACTIVE, now, settled=State.ACTIVE, secrets={},
                               expires_at=lifecycle.expiry(request.references))
        return self.scheduled(active)

    # --- expiry and reminders -----------------------------------------------------------------

    def expire(self, request: KeyRequest, _: str, __: int) -> KeyRequest:
        log.info("request %s: the key expired at %s", request.id, request.expires_at)
        return request.enter(State.EXPIRED, self.clock(), due_at=None)

    def remind(self, request: KeyRequest, _: str, days: int) -> KeyRequest:
        model = self.model(request)
        now = self.clock()
        left = max(1, round((request.expires_at - now).total_seconds() / 86400)) if request.expires_at else days
        email = messages.reminder_email(request, model, left, self.url(request, "renew"), self.config.notifications)
        self._send(request, f"reminder-{days}d", email)
        # This reminder and the earlier (larger) ones it stands for are done.
        done = {lifecycle.reminded_step(d): now for d in self.life.reminder_days if d >= days}
        return self.scheduled(request.with_changes(now, steps={**request.steps, **done}))

    def notify_expired(self, request: KeyRequest, _: str, __: int) -> KeyRequest:
        model = self.config.model(request.model)
        email = messages.expired_email(request, model, self.url(request, "request-again"), self.config.notifications)
        self._send(request, "expired", email)
        now = self.clock()
        return request.with_changes(now, steps={**request.steps, "notified-expired": now}, settled=State.EXPIRED)

    # --- renewal ------------------------------------------------------------------------------

    def decide_renewal(self, request: KeyRequest, _: str, __: int) -> KeyRequest:
        decision = rules.decide(request, self.config.model(request.model), self.config.approval, self.ask_webhook,
                                self.config.requests.allowed_email_domains)
        now = self.clock()
        log.info("request %s: renewal %s by %s (%s)", request.id, decision.decision, decision.decided_by,
                 decision.reason)
        if decision.decision == "approve":
            return request.with_changes(now, steps={**request.steps, lifecycle.RENEWAL_DECIDED: now})
        state = State.IN_REVIEW if decision.decision == "review" else State.DENIED
        return request.enter(state, now, decision=decision.decision, reason=decision.reason,
                             decided_by=decision.decided_by, decided_at=now, due_at=None)

    def extend(self, request: KeyRequest, backend: str, _: int) -> KeyRequest:
        extended = self.provisioner(backend).extend(request, self.model(request), recorded(request, backend))
        log.info("request %s: %s extended %s", request.id, backend, dict(extended.references))
        now = self.clock()
        references = {**request.references, **extended.references}
        return request.with_changes(now, references=references, expires_at=lifecycle.expiry(references),
                                    steps={**request.steps, lifecycle.extended_step(backend): now})

    def notify_renewed(self, request: KeyRequest, _: str, __: int) -> KeyRequest:
        email = messages.renewed_email(request, self.model(request), self.config.notifications)
        self._send(request, "renewed", email)
        now = self.clock()
        # A fresh life: the reminders are armed again for the new expiry.
        kept = {k: v for k, v in request.steps.items()
                if not k.startswith("reminded-") and k != lifecycle.RENEWAL_DECIDED and not k.endswith("-extended")}
        renewed = request.with_changes(now, renew_requested_at=None, steps=kept)
        if renewed.state != State.ACTIVE:  # approved by an admin after review
            renewed = renewed.enter(State.ACTIVE, now, settled=State.ACTIVE)
        return self.scheduled(renewed)

    # --- rotation -----------------------------------------------------------------------------

    def prepare_rotation(self, request: KeyRequest, backend: str, _: int) -> KeyRequest:
        prepared = self.provisioner(backend).prepare_rotation(request, self.model(request),
                                                               recorded(request, backend))
        log.info("request %s: %s rotation prepared %s", request.id, backend, dict(prepared.references))
        now = self.clock()
        return request.with_changes(now, secrets={**request.secrets, **prepared.secrets},
                                    references={**request.references, **prepared.references},
                                    steps={**request.steps, lifecycle.rotation_prepared_step(backend): now})

    def rotate(self, request: KeyRequest, backend: str, _: int) -> KeyRequest:
        rotated = self.provisioner(backend).rotate(request, self.model(request), recorded(request, backend))
        log.info("request %s: %s rotated %s", request.id, backend, dict(rotated.references))
        now = self.clock()
        return request.with_changes(
            now, secrets={**request.secrets, **rotated.secrets},
            references={**request.references, **rotated.references,
                        f"{backend}-rotation-keys": ",".join(sorted(rotated.secrets))},
            steps={**request.steps, lifecycle.rotated_step(backend): now})

    def notify_rotated(self, request: KeyRequest, _: str, __: int) -> KeyRequest:
        names = {name for backend in self._backends(request)
                 for name in request.references.get(f"{backend}-rotation-keys", "").split(",") if name}
        keys = {_label(name): request.secrets[name] for name in sorted(names) if name in request.secrets}
        if not keys:
            raise PermanentError("no rotated key was recorded for this request")
        now = self.clock()
        until = now + self.life.rotation_grace
        email = messages.rotated_email(request, self.model(request), keys, until, self.config.notifications)
        self.notifier.send(email)  # a rotated key nobody received is no rotation: errors fail the step
        log.info("request %s: %s email sent to %d recipient(s)", request.id, "rotated", len(email.to))
        # The new keys are delivered: they go from the Secret in the same write.
        secrets = {k: v for k, v in request.secrets.items() if k not in names}
        return self.scheduled(request.with_changes(now, secrets=secrets,
                                                   steps={**request.steps, lifecycle.ROTATION_NOTIFIED: now}))

    def retire(self, request: KeyRequest, backend: str, _: int) -> KeyRequest:
        record = self.provisioner(backend).retire(request, recorded(request, backend))
        log.info("request %s: %s previous key retired", request.id, backend)
        own = f"{backend}-"
        kept = {k: v for k, v in request.references.items()
                if not k.startswith(own) or k.endswith(_BOOKKEEPING)}
        now = self.clock()
        references = {**kept, **record.references}
        return request.with_changes(
            now, references=references, expires_at=lifecycle.expiry(references) or request.expires_at,
            secrets={**{k: v for k, v in request.secrets.items() if not k.startswith(own)}, **record.secrets},
            steps={**request.steps, lifecycle.retired_step(backend): now})

    def finish_rotation(self, request: KeyRequest, _: str, __: int) -> KeyRequest:
        rotation = ("-rotation-prepared", "-rotated", "-retired")
        steps = {k: v for k, v in request.steps.items()
                 if not k.endswith(rotation) and k != lifecycle.ROTATION_NOTIFIED}
        log.info("request %s: rotation finished", request.id)
        return self.scheduled(request.with_changes(self.clock(), rotate_requested_at=None, steps=steps))

    # --- helpers ------------------------------------------------------------------------------

    def _backends(self, request: KeyRequest) -> tuple[str, ...]:
        model = self.config.model(request.model)
        return tuple(model.provisioning.backends) if model else tuple(request_steps.prepared_backends(request))

    def model(self, request: KeyRequest) -> CatalogModel:
        """The request's catalog model; a permanent error once the model left the catalog."""
        model = self.config.model(request.model)
        if model is None:
            raise PermanentError(f"model {request.model} is no longer in the catalog")
        return model

    def provisioner(self, backend: str) -> Provisioner:
        """The backend's adapter; a permanent error when this deployment does not configure it."""
        provisioner = self.provisioners.get(backend)
        if provisioner is None:
            raise PermanentError(f"backend {backend} is not configured in this deployment")
        return provisioner

    def url(self, request: KeyRequest, action: str) -> str | None:
        """A requester link for an email (None when this deployment signs no links)."""
        return self.links.url(request, action, self.clock()) if self.links is not None else None

    def _send(self, request: KeyRequest, kind: str, email: Email) -> None:
        """A lifecycle email that carries no key: a permanent refusal is logged, not fatal."""
        try:
            self.notifier.send(email)
        except PermanentError as exc:
            log.error("request %s: %s email undeliverable: %s", request.id, kind, exc.message)
            return
        log.info("request %s: %s email sent to %d recipient(s)", request.id, kind, len(email.to))


def recorded(request: KeyRequest, backend: str) -> Credentials:
    """What is recorded of `backend` on the request, as its adapter takes it."""
    own = f"{backend}-"
    return Credentials(secrets={k: v for k, v in request.secrets.items() if k.startswith(own)},
                       references={k: v for k, v in request.references.items() if k.startswith(own)})


def _label(name: str) -> str:
    return {"litellm-next-api-key": "LiteLLM API key", "apim-secondary-key": "APIM subscription key",
            "apim-primary-key": "APIM subscription key"}.get(name, name)


def _seconds(seconds: float):

    return timedelta(seconds=seconds)
