"""TLS for outbound HTTP clients: the public CAs plus the operator's optional CA bundle."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi


def ssl_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """The usual public CAs plus the operator's extra bundle (a private CA, a corporate proxy)."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context
