"""The interfaces the use cases call, and the errors those interfaces may raise.

Adapters (the Kubernetes store, LiteLLM, APIM, ACS, SMTP) implement these at the edge; the use
cases know only this module and the domain, so they run the same against real servers and fakes.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from shared.domain.request import KeyRequest, State


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The store did not answer or answered 5xx: transient, try again later."""


class Conflict(StoreError):
    """Someone else wrote the object since it was read: re-read and decide again."""


class NotFound(StoreError):
    """The object does not exist (any more)."""


class RequestStore(Protocol):
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def get(self, request_id: str) -> KeyRequest | None: ...

    def submit(self, request: KeyRequest) -> tuple[KeyRequest, bool]:
        """Store `request` unless an unfinished one exists for its email and model.

        Returns (the stored request, True) or (the existing one, False). Atomic: many callers
        at once with the same email and model create exactly one request.
        """

    def update(self, request: KeyRequest) -> KeyRequest:
        """Write the request's labels and annotations; Conflict if its resource_version is stale."""

    def list(self, states: Iterable[State] = (), limit: int | None = None,
             continue_token: str | None = None) -> tuple[list[KeyRequest], str | None]:
        """Requests in the given states (all when empty), a page at a time."""
