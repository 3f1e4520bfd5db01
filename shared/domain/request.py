"""A key request and the states it moves through. No I/O: the store maps it to a Secret.

The value is immutable; every change makes a new one (`with_changes`), so the processor can be
read as a function from (request, outcome) to the next request, and the store writes only what
the caller decided.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email


class State(str, enum.Enum):  # noqa: UP042 - StrEnum would change str() and format() of the members
    PENDING = "pending"  # new: the rules have not decided yet
    IN_REVIEW = "in-review"  # waits for a human (admin API or kubectl label)
    APPROVED = "approved"  # decided: access is to be provisioned and the requester told
    ACTIVE = "active"  # access issued and the requester told
    DENIED = "denied"
    REVOKING = "revoking"  # access is being taken back
    REVOKED = "revoked"
    FAILED = "failed"  # gave up after the configured attempts; the reason is recorded
    EXPIRED = "expired"

    def __str__(self) -> str:
        return self.value


FINISHED_STATES = frozenset({State.DENIED, State.REVOKED, State.FAILED, State.EXPIRED})

REQUEST_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class InvalidInput(ValueError):
    """User input that cannot be accepted: names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def utcnow() -> datetime:
    # Full precision: retry times and leases are compared with it, and a truncated clock would
    # hold a retry due in 50 ms until the next whole second.
    return datetime.now(UTC)


def new_request_id() -> str:
    """Random, so a request's status cannot be guessed from an email address."""
    return str(uuid.uuid4())


def is_request_id(value: str) -> bool:
    return bool(REQUEST_ID.match(value))


def normalise_email(raw: str, allowed_domains: Sequence[str] = ()) -> str:
    """Trim, check the syntax (no DNS lookups) and lower-case; optionally restrict the domain. The
    answer is the address to send to (tags and dots kept, unlike canonical_email), its domain in
    ASCII (IDNA) form, so every mail server can deliver to it."""
    candidate = raw.strip()
    if not candidate:
        raise InvalidInput("email", "must not be empty")
    if len(candidate) > 254:
        raise InvalidInput("email", "must be at most 254 characters")
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", f"is not a valid email address ({exc})") from None
    domain = result.ascii_domain.lower()
    email = f"{result.local_part.lower()}@{domain}"
    if len(email) > 254:
        raise InvalidInput("email", "must be at most 254 characters with its domain in ASCII form")
    if allowed_domains and not any(domain == d or domain.endswith("." + d) for d in allowed_domains):
        raise InvalidInput("email", f"domain {domain} is not allowed here")
    return email


def ascii_domain(raw: str) -> str:
    """A domain as config.yaml writes it (any case, Unicode or not) in its lower-case ASCII form."""
    name = raw.strip().lower().lstrip("@")
    try:
        return validate_email(f"x@{name}", check_deliverability=False).ascii_domain.lower()
    except EmailNotValidError as exc:
        raise ValueError(f"{raw!r} is not a valid email domain ({exc})") from None


def canonical_email(address: str, tag_separators: Sequence[str] = ("+",), ignore_dots: bool = False) -> str:
    """The one spelling of a mailbox, for duplicates, limits and blocks (never to send to):
    lower-case, the sub-address tag cut off at the first of `tag_separators` (alice+news -> alice),
    and with `ignore_dots` every dot of the local part dropped (a.l.ice -> alice, as Gmail reads it).
    `address` is what normalise_email returns (its domain already ASCII)."""
    local, _, domain = address.rpartition("@")
    local = local.lower()
    for separator in tag_separators:
        head = local.split(separator, 1)[0]
        if head:  # "+tag@" alone is not a tag: keep what there is
            local = head
    if ignore_dots and local.replace(".", ""):
        local = local.replace(".", "")
    return f"{local}@{domain.lower()}"


@dataclasses.dataclass(frozen=True)
class KeyRequest:
    id: str
    email: str
    model: str
    state: State
    created_at: datetime
    updated_at: datetime
    # what was decided, by whom and why
    decision: str | None = None
    reason: str | None = None
    # the reason annotation was written by someone else than this app (e.g. kubectl annotate)
    reason_edited: bool = False
    decided_by: str | None = None
    decided_at: datetime | None = None
    # progress of the current step, so a restart resumes where it stopped
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    # steps done in the current state, name -> when ("litellm-issued", "notified-approved"...)
    steps: Mapping[str, datetime] = dataclasses.field(default_factory=dict)
    # the state whose work is all done; the timer's sweeps skip a request whose state is settled
    settled: State | None = None
    # who is working on it until when, so two processors never call a backend for it at once
    lease_holder: str | None = None
    lease_until: datetime | None = None
    # identifiers of issued access in the backends (key alias, subscription id): not secret
    references: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # issued keys: kept only in the Secret's data, never printed, erased once delivered
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    # the key's life once active: when it stops working (the earliest expiry a backend reported),
    # when the timer next has work for it (a reminder, the expiry, the end of a rotation's grace),
    # and what the requester or an admin asked for (renewal, rotation), by whom
    expires_at: datetime | None = None
    due_at: datetime | None = None
    renew_requested_at: datetime | None = None
    rotate_requested_at: datetime | None = None
    lifecycle_requested_by: str | None = None
    # requester links already used (token id -> when): each link acts once
    links_used: Mapping[str, datetime] = dataclasses.field(default_factory=dict)
    # an admin let this denial go before requests.deny_cooldown ran out: the mailbox may ask again
    denial_cleared_by: str | None = None
    denial_cleared_at: datetime | None = None
    # the mailbox's one spelling (canonical_email): duplicates, limits and blocks go by it;
    # None for a request stored before it was recorded (then the lower-cased email stands in)
    canonical_email: str | None = None
    # someone deleted the Secret (kubectl delete): its access is revoked before it goes (the store's
    # finalizer holds it until then); read from the stored object, never written
    deleting: bool = False
    # the n-th request of its mailbox and model (its id is derived from the three, keyed: see
    # shared/store/request_ids.py); None for a request stored with a random id, before that
    generation: int | None = None
    # kept in the archive namespace: finished, its work done (the timer's sweeps never read it)
    archived: bool = False
    # the store's optimistic-concurrency token; None for a request not yet stored
    resource_version: str | None = None

    @classmethod
    def new(cls, email: str, model: str, now: datetime | None = None,
            canonical_email: str | None = None) -> KeyRequest:
        now = now or utcnow()
        return cls(id=new_request_id(), email=email, model=model, state=State.PENDING,
                   created_at=now, updated_at=now, canonical_email=canonical_email)

    @property
    def mailbox(self) -> str:
        """Who asked, as duplicates, limits and blocks count it."""
        return self.canonical_email or self.email.lower()

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def done(self, step: str) -> bool:
        return step in self.steps

    def leased_by_other(self, holder: str, now: datetime) -> bool:
        return (self.lease_holder not in (None, holder) and self.lease_until is not None
                and self.lease_until > now)

    def with_changes(self, now: datetime | None = None, **changes: Any) -> KeyRequest:
        # Any: the values go to dataclasses.replace as they are, one type per field
        return dataclasses.replace(self, updated_at=now or utcnow(), **changes)

    def enter(self, state: State, now: datetime | None = None, **changes: object) -> KeyRequest:
        """Move to `state`: its work starts from nothing (no steps, no retries pending), while issued
        access (secrets, references) stays recorded until it is revoked."""
        fresh: dict[str, object] = {"steps": {}, "settled": None, "attempts": 0, "next_attempt_at": None}
        return self.with_changes(now, state=state, **{**fresh, **changes})
