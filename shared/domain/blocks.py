"""Blocks: an admin's standing refusal of a mailbox or a whole email domain. No I/O.

A block names a canonical address (shared/domain/request.py canonical_email) or a domain (lower-case
ASCII); a domain block covers its subdomains too. Intake looks up, by name, the block of the address
and of each domain it belongs to, so the check costs the same however many blocks are stored.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Literal

BlockKind = Literal["address", "domain"]
KINDS: tuple[BlockKind, ...] = ("address", "domain")


@dataclasses.dataclass(frozen=True)
class Block:
    kind: BlockKind
    value: str  # a canonical address, or a domain
    reason: str
    blocked_by: str
    blocked_at: datetime

    def public(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value, "reason": self.reason, "blocked_by": self.blocked_by,
                "blocked_at": self.blocked_at.isoformat()}


def keys_for(canonical_address: str) -> list[tuple[BlockKind, str]]:
    """The blocks that would refuse `canonical_address`: its own, then its domain's and each parent
    domain's (mail.eu.contoso.com, eu.contoso.com, contoso.com), never a bare top-level domain."""
    domain = canonical_address.rsplit("@", 1)[-1]
    labels = domain.split(".")
    keys: list[tuple[BlockKind, str]] = [("address", canonical_address)]
    keys += [("domain", ".".join(labels[i:])) for i in range(len(labels) - 1)]
    return keys
