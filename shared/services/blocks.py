"""Use cases of admins: block a mailbox or a whole email domain from asking, list and lift blocks,
and let a denied mailbox ask again before requests.deny_cooldown runs out. Every change is audited.

A block is checked by intake (shared/services/intake.py) before anything is written; it does not
touch requests already recorded (deny or revoke those as usual).
"""

from __future__ import annotations

import logging

from shared.config import AppConfig
from shared.domain.blocks import Block, BlockKind
from shared.domain.request import InvalidInput, KeyRequest, State, ascii_domain, normalise_email, utcnow
from shared.services import review
from shared.services.ports import BlockStore, Conflict, RequestStore

log = logging.getLogger("shared.audit")


class NotDenied(review.AlreadyDecided):
    """A denial can be cleared only on a denied request."""

    def __init__(self, request: KeyRequest) -> None:
        Exception.__init__(self, f"request {request.id} is {request.state.value}, not denied: "
                                 "there is no denial to clear")
        self.request = request


def target(config: AppConfig, address: str | None, domain: str | None) -> tuple[BlockKind, str]:
    """What an admin names, as intake compares it: an address's canonical form, or an ASCII domain."""
    if bool(address) == bool(domain):
        raise InvalidInput("address" if address else "(body)", "name exactly one of address or domain")
    if address:
        return "address", config.requests.canonical(normalise_email(address))
    try:
        return "domain", ascii_domain(domain or "")
    except ValueError as exc:
        raise InvalidInput("domain", str(exc)) from None


def put(blocks: BlockStore, config: AppConfig, who: str, reason: str, *, address: str | None = None,
        domain: str | None = None) -> tuple[Block, bool]:
    kind, value = target(config, address, domain)
    block, created = blocks.put(Block(kind, value, reason, who, utcnow()))
    log.info("audit: %s blocked %s %s (%s): %s", who, kind, value, "new" if created else "replaced", reason)
    return block, created


def remove(blocks: BlockStore, config: AppConfig, who: str, *, address: str | None = None,
           domain: str | None = None) -> Block | None:
    kind, value = target(config, address, domain)
    removed = blocks.delete(kind, value)
    if removed is not None:
        log.info("audit: %s lifted the block of %s %s (blocked by %s: %s)", who, kind, value,
                 removed.blocked_by, removed.reason)
    return removed


def clear_denial(store: RequestStore, request_id: str, who: str, reason: str | None) -> KeyRequest:
    """Let the mailbox and model of a denied request ask again now (recorded on the request)."""
    for _ in range(5):
        request = review.get(store, request_id)
        if request.state != State.DENIED:
            raise NotDenied(request)
        now = utcnow()
        try:
            updated = store.update(request.with_changes(now, denial_cleared_by=who, denial_cleared_at=now))
        except Conflict:
            continue
        log.info("audit: %s cleared the denial of request %s (%s): %s", who, request.id, request.model,
                 reason or "no reason given")
        return updated
    raise Conflict(f"request {request_id} keeps changing; try again")
