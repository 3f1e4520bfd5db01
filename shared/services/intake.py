"""Use cases of the requester: ask for a key, and ask how that request is doing."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from shared import logfields
from shared.config import AppConfig, IntakeLimits
from shared.domain import blocks
from shared.domain.request import InvalidInput, KeyRequest, State, is_request_id, normalise_email, utcnow
from shared.services.ports import Refused, RequestStore

log = logging.getLogger(__name__)

_MESSAGES: dict[object, str] = {
    State.PENDING: "Your key request for {model} has been received. "
                   "You will be notified by email once it is processed.",
    State.IN_REVIEW: "Your key request for {model} is waiting for a reviewer. "
                     "You will be notified by email once it is decided.",
    State.APPROVED: "Your key request for {model} has been approved; "
                    "your key is being issued and will arrive by email.",
    State.ACTIVE: "Your key request for {model} has been approved. Check your email for the API key.",
    State.DENIED: "Your key request for {model} was denied.",
    State.REVOKING: "Access for {model} is being revoked.",
    State.REVOKED: "Your key for {model} has been revoked.",
    State.FAILED: "Your key request for {model} could not be completed; the platform team has been told.",
    # With no admins configured (notifications.admins), nobody has been told: say what to do instead.
    "failed-untold": "Your key request for {model} could not be completed; please tell your platform team "
                     "the request id.",
    State.EXPIRED: "Your key for {model} has expired.",
}


@dataclasses.dataclass(frozen=True)
class Submitted:
    request: KeyRequest
    created: bool
    admins_told: bool = True

    @property
    def message(self) -> str:
        return status_message(self.request, self.admins_told)


def public_reason(request: KeyRequest) -> str | None:
    """The reason the status endpoint shows: a denial's own reason (the requester is emailed it),
    else a sentence of ours. The recorded text of a failure or a revocation (an ARM, SMTP or LiteLLM
    answer, an admin's note) is for the admin detail only."""
    if request.state == State.DENIED:
        return request.reason
    if request.state == State.FAILED:
        return "The key could not be issued or taken back by the key service."
    if request.state == State.REVOKED:
        if (request.decided_by or "").startswith("link:"):
            return "The key was revoked at your request."
        return "The key was revoked by the platform team."
    return None


def status_message(request: KeyRequest, admins_told: bool = True) -> str:
    key = "failed-untold" if request.state == State.FAILED and not admins_told else request.state
    return _MESSAGES[key].format(model=request.model)


BLOCKED = "Requests from this address are not accepted here; please contact your platform team."


class _InstanceRate:
    """POST /api/request-key calls this instance takes per minute (a fixed window, in memory: the
    only limit that is per instance; the others are counted in the cluster)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._minute = -1
        self._count = 0

    def take(self, limit: int | None, now: datetime) -> int | None:
        """None when admitted, else the seconds until the next minute."""
        if limit is None:
            return None
        minute = int(now.timestamp() // 60)
        with self._lock:
            if minute != self._minute:
                self._minute, self._count = minute, 0
            if self._count >= limit:
                return max(1, 60 - int(now.timestamp()) % 60)
            self._count += 1
        return None

    def reset(self) -> None:
        with self._lock:
            self._minute, self._count = -1, 0


instance_rate = _InstanceRate()


def _limited(message: str, reason: str, retry_after: float) -> Refused:
    return Refused("limited", message, [{"field": "email", "reason": reason}], max(1, int(retry_after)))


def _admit(store: RequestStore, limits: IntakeLimits, now: datetime) -> Callable[[KeyRequest], None]:
    """The cluster-wide limits, checked once this caller is the one to create a new request."""

    def admit(request: KeyRequest) -> None:
        mailbox, domain = request.mailbox, request.mailbox.rsplit("@", 1)[1]
        hour = now.replace(minute=0, second=0, microsecond=0)
        if limits.per_domain_per_hour is not None and store.take_limit(
                f"domain:{domain}", hour.strftime("%Y-%m-%dT%H"), limits.per_domain_per_hour) is not None:
            later = hour + timedelta(hours=1)
            log.info("request refused: %d requests from domain %s this hour", limits.per_domain_per_hour, domain)
            raise _limited(f"Too many key requests from {domain} this hour; please try again after "
                           f"{later:%H:%M} UTC.", f"{domain}: at most {limits.per_domain_per_hour} requests "
                           "an hour", (later - now).total_seconds())
        if limits.per_address_per_day is None and limits.open_per_address is None:
            return  # nothing to count per mailbox: no counter to write
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        over = store.take_limit(f"address:{mailbox}", day.strftime("%Y-%m-%d"), limits.per_address_per_day,
                                request_id=request.id, max_open=limits.open_per_address)
        if over == "window":
            log.info("request refused: %s requests from one mailbox of %s today", limits.per_address_per_day, domain)
            raise _limited("Too many key requests from this address today; please try again tomorrow "
                           "(after 00:00 UTC).", f"at most {limits.per_address_per_day} requests a day",
                           (day + timedelta(days=1) - now).total_seconds())
        if over == "open":
            log.info("request refused: %s open requests of one mailbox of %s", limits.open_per_address, domain)
            raise _limited(f"You already have {limits.open_per_address} key requests that are not finished; "
                           "please wait until one is decided before asking for another.",
                           f"at most {limits.open_per_address} unfinished requests", 600)

    return admit


def submit_request(store: RequestStore, config: AppConfig, email: str, model: str) -> Submitted:
    """Record a new request, or return the unfinished one for the same mailbox and model.

    Refused (no request or claim written) when this instance is over its intake rate, when an admin
    blocked the mailbox or its domain, when the last request for the same mailbox and model was
    denied less than requests.deny_cooldown ago and no admin cleared that denial, or when a new
    request would exceed requests.limits (a domain's hourly count may then include the refused one)."""
    now = utcnow()
    wait = instance_rate.take(config.requests.limits.per_instance_per_minute, now)
    if wait is not None:
        log.warning("request refused: this instance took %s requests this minute",
                    config.requests.limits.per_instance_per_minute)
        raise _limited("The service is busy; please try again in a minute.", "too many requests right now", wait)
    normalised = normalise_email(email, config.requests.allowed_email_domains)
    model_id = model.strip()
    if config.model(model_id) is None:
        raise InvalidInput("llm", f"unknown model {model_id!r}; GET /api/models lists the models")
    canonical = config.requests.canonical(normalised)
    block = store.find_block(blocks.keys_for(canonical))
    if block is not None:
        log.info("request refused: %s %s is blocked (model=%s)", block.kind,
                 block.value if block.kind == "domain" else "of domain " + canonical.split("@")[1], model_id)
        raise Refused("blocked", BLOCKED, [{"field": "email", "reason": "blocked by the platform team"}])
    cooldown = timedelta(seconds=config.requests.deny_cooldown_seconds)

    def refuse(existing: KeyRequest) -> None:
        if existing.state != State.DENIED or existing.denial_cleared_at is not None or not cooldown:
            return
        until = (existing.decided_at or existing.updated_at) + cooldown
        if now >= until:
            return
        reason = existing.reason or "no reason was given"
        log.info("request refused: request %s for the same mailbox and model was denied until %s",
                 existing.id, until.isoformat())
        raise Refused("denied", f"Your request for {model_id} was denied: {reason}. You can ask again after "
                      f"{until:%Y-%m-%d %H:%M} UTC, or ask your platform team to clear the denial.",
                      [{"field": "email", "reason": f"denied for {model_id} until {until.isoformat()}"}],
                      retry_after=max(1, int((until - now).total_seconds())))

    stored, created = store.submit(KeyRequest.new(normalised, model_id, now, canonical_email=canonical), refuse,
                                   _admit(store, config.requests.limits, now))
    if created:
        log.info("request %s created: model=%s domain=%s", stored.id, model_id, normalised.split("@")[1],
                 extra=logfields.fields(request_id=stored.id))
    else:
        log.info("request %s already open (%s): model=%s", stored.id, stored.state, model_id,
                 extra=logfields.fields(request_id=stored.id))
    return Submitted(stored, created, bool(config.notifications.admins))


def find_request(store: RequestStore, request_id: str) -> KeyRequest | None:
    """A request by id; malformed ids are simply not found (they cannot name a Secret)."""
    if not is_request_id(request_id):
        return None
    return store.get(request_id)
