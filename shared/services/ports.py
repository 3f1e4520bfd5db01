"""The interfaces the use cases call, and the errors those interfaces may raise.

Adapters (the Kubernetes store, LiteLLM, APIM, ACS, SMTP) implement these at the edge; the use
cases know only this module and the domain, so they run the same against real servers and fakes.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from shared.config import CatalogModel
from shared.domain.blocks import Block, BlockKind
from shared.domain.request import KeyRequest, State


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The store did not answer or answered 5xx: transient, try again later."""


class Conflict(StoreError):
    """Someone else wrote the object since it was read: re-read and decide again."""


class NotFound(StoreError):
    """The object does not exist (any more)."""


class InvalidArgument(StoreError):
    """The store refused an argument (e.g. an expired or foreign list continue token)."""


class Refused(Exception):
    """Intake will not record this request: `kind` "blocked" (an admin blocked the address or its
    domain), "denied" (a denial of the same mailbox and model still stands) or "limited" (over one of
    requests.limits). `retry_after` is in seconds, when waiting helps."""

    def __init__(self, kind: str, message: str, detail: list[dict[str, str]],
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail
        self.retry_after = retry_after


class BlockStore(Protocol):
    def find(self, keys: Iterable[tuple[BlockKind, str]]) -> Block | None:
        """The first of `keys` (kind, value) that is blocked, each read by name; None when none is."""

    def put(self, block: Block) -> tuple[Block, bool]:
        """Record the block (True: new; False: it replaced the one for the same kind and value)."""

    def delete(self, kind: BlockKind, value: str) -> Block | None:
        """Remove it; the block removed, or None when there was none."""

    def list(self, limit: int | None = None, continue_token: str | None = None) -> tuple[list[Block], str | None]:
        """One page of the blocks, and the next page's token."""


class RequestStore(Protocol):
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def get(self, request_id: str) -> KeyRequest | None: ...

    def submit(self, request: KeyRequest, refuse: Callable[[KeyRequest], None] | None = None,
               admit: Callable[[KeyRequest], None] | None = None) -> tuple[KeyRequest, bool]:
        """Store `request` unless an unfinished one exists for its mailbox and model.

        Returns (the stored request, True) or (the existing one, False). Atomic: many callers
        at once with the same mailbox and model create exactly one request. `refuse` sees the
        finished request the new one would replace, and may raise (Refused) to keep it; `admit`
        runs once this caller is the one to create, before anything of the request is written,
        and may raise (Refused: over a limit) so that nothing is.
        """

    def find_block(self, keys: Iterable[tuple[BlockKind, str]]) -> Block | None:
        """As BlockStore.find, in the same namespace."""

    def take_limit(self, scope: str, window: str, per_window: int | None, *, request_id: str | None = None,
                   max_open: int | None = None) -> str | None:
        """Count one more request in `scope` (a mailbox or a domain) for `window`, atomically across
        instances; with `request_id`, remember it as open. None: admitted; "window": `per_window`
        were already counted in this window; "open": `max_open` remembered requests are still open."""

    def update(self, request: KeyRequest) -> KeyRequest:
        """Write the request's labels and annotations; Conflict if its resource_version is stale."""

    def list(self, states: Iterable[State] = (), limit: int | None = None,
             continue_token: str | None = None, unsettled_only: bool = False) -> tuple[list[KeyRequest], str | None]:
        """Requests in the given states (all when empty), a page at a time; `unsettled_only`
        (with one state) leaves out those whose work for that state is done."""

    def list_due(self, days: tuple[str, ...], limit: int | None = None,
                 continue_token: str | None = None) -> tuple[builtins.list[KeyRequest], str | None]:
        """Active requests whose next lifecycle work falls on one of `days` (YYYY-MM-DD, UTC)."""

    def list_deleted(self) -> builtins.list[KeyRequest]:
        """Requests that may hold issued access whose Secret was deleted (kubectl delete)."""

    def delete(self, request: KeyRequest) -> bool:
        """Delete a request as read (Conflict if it changed since), and its claim; False if gone."""

    def archive(self, request: KeyRequest) -> KeyRequest:
        """Move a finished request whose work is done out of what the sweeps read."""

    def delete_stale_limits(self, today: str, limit: int = 500,
                            continue_token: str | None = None) -> tuple[int, str | None]:
        """One page of intake counters; those of windows before `today` holding no open request go."""


# --- provisioning and notification -----------------------------------------------------------


class BackendError(Exception):
    """A provisioning or email backend failed. Messages never contain a key or a password.

    `reached` is False only when no request reached the backend (a connection that was never
    made): then the call cannot have changed anything there.
    """

    def __init__(self, message: str, reached: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.reached = reached


class TransientError(BackendError):
    """Timeout, connection error, 5xx, 429: try again later (after `retry_after` seconds if given).

    `in_flight` says the call went unanswered (a timeout, a connection lost after sending, a
    gateway's 502/504): the backend may still be working on it, and finish it later.
    """

    def __init__(self, message: str, retry_after: float | None = None, reached: bool = True,
                 in_flight: bool = False) -> None:
        super().__init__(message, reached)
        self.retry_after = retry_after
        self.in_flight = in_flight


class PermanentError(BackendError):
    """The backend refused for good (4xx, invalid recipient...): retrying will not help."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a backend issued: `secrets` go to the Secret's data only, `references` (key alias,
    subscription id...) to annotations, so an operator can find them in the backend."""

    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    references: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:  # never print secret values
        return f"Credentials(secrets={sorted(self.secrets)}, references={dict(self.references)})"


class Provisioner(Protocol):
    """Issues and revokes access for one backend (LiteLLM, APIM). Every method is idempotent."""

    backend: str

    def prepare(self, request: KeyRequest, model: CatalogModel) -> Credentials:
        """No I/O: the values chosen before calling the backend (a key chosen by us, deterministic
        ids). The processor records them on the Secret first, so a retry after a crash reuses them
        and never creates a second key."""

    def issue(self, request: KeyRequest, model: CatalogModel, prepared: Credentials) -> Credentials:
        """Create the access (or find it already created from `prepared`); return everything to record."""

    def revoke(self, request: KeyRequest, recorded: Credentials) -> None:
        """Remove the access; already gone counts as success. Works from references alone: the
        plain key is erased from the Secret once it was delivered."""

    # --- the key's life (shared/domain/request_steps.py: renewal and rotation) ---------------------

    def extend(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        """Give the same key the model's full lifetime again, counted from the renewal request
        (`request.renew_requested_at`): LiteLLM `/key/update` with a new `duration`, APIM the
        subscription's `expirationDate`. No new key, no downtime. Idempotent. Returns the
        references to record (the new expiry, `{backend}-...-expires`)."""

    def prepare_rotation(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        """No I/O: what the next key will be, recorded before `rotate` (LiteLLM: a key chosen by us
        and its alias of the next generation; APIM: nothing to choose). Names: `{backend}-next-...`."""

    def rotate(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        """Make the next key live beside the current one (LiteLLM: generate it under its new
        alias; APIM: regenerate the key the requester does not use, the secondary on the first
        rotation, and read it). Idempotent. Returns what to record: `secrets` are exactly the keys
        to deliver to the requester."""

    def retire(self, request: KeyRequest, recorded: Credentials) -> Credentials:
        """After the grace: the previous key stops working (LiteLLM: delete it; APIM: regenerate
        the key used until now, the primary on the first rotation). Idempotent. Returns the
        backend's whole record from now on (the next key is the current one, no secret), which
        replaces every `{backend}-...` secret and reference; `{backend}-` references the adapter
        does not own (the processor's `-prepared`, `-reached`...) are passed through unchanged."""


@dataclasses.dataclass(frozen=True)
class Email:
    to: tuple[str, ...]
    subject: str
    text: str
    html: str
    # Stable per message (e.g. "<request id>-approved"): lets a backend drop a re-send after a crash.
    idempotency_key: str

    def __repr__(self) -> str:  # bodies may carry a key
        return f"Email(to={self.to}, subject={self.subject!r}, idempotency_key={self.idempotency_key!r})"


class Notifier(Protocol):
    """Delivers one email (ACS, SMTP, or a local outbox folder)."""

    def send(self, email: Email) -> None:
        """Raise TransientError to be retried later, PermanentError when retrying cannot help."""
