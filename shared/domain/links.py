"""Requester links: a signed token that names one request, one action and an expiry. No I/O.

A link in an email ("renew my key", "revoke it") must act only for the request it was made for,
only for the action it names, only until it expires, and only once. The token carries all four
(request id, action, expiry, a random token id for single use) and an HMAC-SHA256 over them with
a secret app setting, so none can be changed without the key. Single use is the store's part:
the token id is recorded on the request in the write that acts (`KeyRequest.links_used`).

Wire format, base64url without padding (URL-safe, no `.` or `/`, 83 characters), fixed length:

    version (1) | action (1) | request id (16, the UUID's bytes) | expiry (4, Unix seconds, big-endian)
    | token id (8, random) | HMAC-SHA256 (32) over everything before it, under a key derived for links

Checks, in order: the shape (`MalformedLink`: not base64url, wrong length or version), then the MAC,
compared in constant time (`ForgedLink`), then, only for a genuine token, the action and the expiry
(`ExpiredLink`). So a forger learns nothing from which check failed but "forged".
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import secrets
import struct
import uuid
from datetime import UTC, datetime
from typing import Literal

Action = Literal["renew", "rotate", "revoke", "request-again"]
ACTIONS: tuple[Action, ...] = ("renew", "rotate", "revoke", "request-again")
_CODE = {action: code for code, action in enumerate(ACTIONS, start=1)}
_ACTION = {code: action for action, code in _CODE.items()}

VERSION = 1
_HEAD = struct.Struct(">BB16sI8s")  # version, action, request id, expiry, token id
MAC_BYTES = 32
TOKEN_BYTES = _HEAD.size + MAC_BYTES  # 62
TOKEN_LENGTH = 83  # base64url of 62 bytes, without padding
# Domain separation: the same app setting could one day sign something else; a link MAC is never
# valid as anything but a link.
_CONTEXT = b"llm-key-requestor/link/v1"
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


class InvalidLink(Exception):
    """A token that cannot be acted on; `kind` says why (malformed, forged, expired)."""

    kind: Literal["malformed", "forged", "expired"] = "malformed"


class MalformedLink(InvalidLink):
    """Not a token at all: cut short by a mail client, mistyped, or made up."""

    kind = "malformed"


class ForgedLink(InvalidLink):
    """Well formed, but not signed with this app's key (or changed since it was signed)."""

    kind = "forged"


class ExpiredLink(InvalidLink):
    """Genuine, but past its expiry."""

    kind = "expired"

    def __init__(self, message: str, link: Link) -> None:
        super().__init__(message)
        self.link = link


@dataclasses.dataclass(frozen=True)
class Link:
    """What a genuine token says."""

    request_id: str
    action: Action
    expires_at: datetime
    token_id: str  # 16 hex characters; the key of `KeyRequest.links_used`


def _as_bytes(key: bytes | str) -> bytes:
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if not raw:
        raise ValueError("the link signing key must not be empty")
    return raw


def _mac(key: bytes | str, head: bytes) -> bytes:
    derived = hmac.new(_as_bytes(key), _CONTEXT, hashlib.sha256).digest()
    return hmac.new(derived, head, hashlib.sha256).digest()


def _seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def new_token_id() -> bytes:
    return secrets.token_bytes(8)


def sign(request_id: str, action: Action, expires_at: datetime, key: bytes | str,
         token_id: bytes | None = None) -> str:
    """A token for `action` on request `request_id` until `expires_at` (whole seconds, rounded down).
    `token_id` (8 bytes) is random unless given (tests)."""
    if action not in _CODE:
        raise ValueError(f"unknown link action {action!r}; one of {', '.join(ACTIONS)}")
    try:
        rid = uuid.UUID(request_id).bytes
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"not a request id: {request_id!r}") from None
    expiry = _seconds(expires_at)
    if not 0 < expiry < 2**32:
        raise ValueError("the expiry must fall between 1970 and 2106")
    tid = new_token_id() if token_id is None else token_id
    if len(tid) != 8:
        raise ValueError("a token id is 8 bytes")
    head = _HEAD.pack(VERSION, _CODE[action], rid, expiry, tid)
    return _encode(head + _mac(key, head))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verify(token: str, key: bytes | str, now: datetime) -> Link:
    """What a genuine, unexpired token says; MalformedLink, ForgedLink or ExpiredLink otherwise."""
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH or not _ALPHABET.fullmatch(token):
        raise MalformedLink("the link is incomplete or not one of ours")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise MalformedLink("the link is incomplete or not one of ours") from None
    # One spelling per token: the last character's spare bits must be zero, as sign() writes them.
    if len(raw) != TOKEN_BYTES or raw[0] != VERSION or _encode(raw) != token:
        raise MalformedLink("the link is incomplete or not one of ours")
    head, mac = raw[: _HEAD.size], raw[_HEAD.size:]
    if not hmac.compare_digest(mac, _mac(key, head)):
        raise ForgedLink("the link was not issued by this service, or was changed")
    _, code, rid, expiry, tid = _HEAD.unpack(head)
    action = _ACTION.get(code)
    if action is None:  # signed by us, yet unknown: a newer version's action
        raise MalformedLink("the link names an action this service does not know")
    link = Link(request_id=str(uuid.UUID(bytes=rid)), action=action,
                expires_at=datetime.fromtimestamp(expiry, UTC), token_id=tid.hex())
    if _seconds(now) >= expiry:
        raise ExpiredLink("the link has expired", link)
    return link
