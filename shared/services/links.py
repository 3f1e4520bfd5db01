"""The links emails carry: one signed, single-use URL per request and action (shared/domain/links.py).

A link opens a confirmation page served by the app (`GET /api/links/{token}`); only the button on
that page acts (`POST`), so a mail scanner that fetches every URL in a message changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.domain import links
from shared.domain.request import KeyRequest

LINK_PATH = "/api/links/"


class LinkMaker:
    """Makes the URLs for the email templates: `url(request, "renew", now)`."""

    def __init__(self, base_url: str, key: bytes | str, ttl: timedelta) -> None:
        if ttl <= timedelta(0):
            raise ValueError("a link's lifetime must be positive")
        self.base_url = base_url.rstrip("/")
        self._key = key
        self.ttl = ttl

    def __repr__(self) -> str:  # never the key
        return f"LinkMaker(base_url={self.base_url!r}, ttl={self.ttl})"

    def token(self, request: KeyRequest, action: links.Action, now: datetime) -> str:
        return links.sign(request.id, action, now + self.ttl, self._key)

    def url(self, request: KeyRequest, action: links.Action, now: datetime) -> str:
        """A fresh link (its own token id) for `action` on `request`, valid for `ttl` from `now`."""
        return f"{self.base_url}{LINK_PATH}{self.token(request, action, now)}"

    def verify(self, token: str, now: datetime) -> links.Link:
        """What a token says, or links.InvalidLink (malformed, forged, expired)."""
        return links.verify(token, self._key, now)
