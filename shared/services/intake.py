"""Use cases of the requester: ask for a key, and ask how that request is doing."""

from __future__ import annotations

import dataclasses
import logging

from shared.config import AppConfig
from shared.domain.request import InvalidInput, KeyRequest, State, is_request_id, normalise_email
from shared.services.ports import RequestStore

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


def status_message(request: KeyRequest, admins_told: bool = True) -> str:
    key = "failed-untold" if request.state == State.FAILED and not admins_told else request.state
    return _MESSAGES[key].format(model=request.model)


def submit_request(store: RequestStore, config: AppConfig, email: str, model: str) -> Submitted:
    """Record a new request, or return the unfinished one for the same email and model."""
    normalised = normalise_email(email, config.requests.allowed_email_domains)
    model_id = model.strip()
    if config.model(model_id) is None:
        raise InvalidInput("llm", f"unknown model {model_id!r}; GET /api/models lists the models")
    stored, created = store.submit(KeyRequest.new(normalised, model_id))
    if created:
        log.info("request %s created: model=%s domain=%s", stored.id, model_id, normalised.split("@")[1])
    else:
        log.info("request %s already open (%s): model=%s", stored.id, stored.state, model_id)
    return Submitted(stored, created, bool(config.notifications.admins))


def find_request(store: RequestStore, request_id: str) -> KeyRequest | None:
    """A request by id; malformed ids are simply not found (they cannot name a Secret)."""
    if not is_request_id(request_id):
        return None
    return store.get(request_id)
