"""The approval webhook: asks an HTTP endpoint to decide a request.

POST JSON `{request_id, email, model}` signed with HMAC-SHA256 over the exact body
(`X-Signature-256: sha256=<hex>`, as GitHub signs webhooks) with a shared secret, and a
timestamp header so a receiver can refuse replays. The answer `{decision, reason}` decides
(`approve`, `deny`, `review`); `none`/`continue`/null passes to the next rule. Anything else,
a timeout, a connection error or a non-2xx is a TransientError: a webhook error never approves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import cast

import httpx

from shared.adapters.tls import ssl_context
from shared.config import WebhookRule
from shared.domain.request import KeyRequest
from shared.domain.rules import Decision, DecisionKind
from shared.services.ports import TransientError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature-256"
TIMESTAMP_HEADER = "X-Request-Timestamp"
_PASS = {None, "", "none", "continue", "abstain"}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over `timestamp.body`, hex, prefixed `sha256=`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class WebhookApprover:
    """Callable as `rules.AskWebhook`. The shared secret is read from the app setting the rule names."""

    def __init__(self, ca_bundle: Path | str | None = None, environ: dict[str, str] | None = None) -> None:
        self._verify = ssl_context(ca_bundle)
        self._environ = environ if environ is not None else os.environ

    def __call__(self, rule: WebhookRule, request: KeyRequest) -> Decision | None:
        secret = self._environ.get(rule.secret_setting, "")
        if not secret:
            raise TransientError(f"app setting {rule.secret_setting} (the webhook's secret) is not set")
        body = json.dumps({"request_id": request.id, "email": request.email, "model": request.model},
                          separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(secret, timestamp, body)}
        try:
            with httpx.Client(timeout=rule.timeout_seconds, verify=self._verify) as client:
                response = client.post(rule.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise TransientError(f"approval webhook {rule.url} timed out after {rule.timeout_seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise TransientError(f"approval webhook {rule.url} failed: {type(exc).__name__}") from None
        if not response.is_success:
            raise TransientError(f"approval webhook {rule.url} answered {response.status_code}")
        try:
            answer = response.json()
            decision = answer.get("decision")
            reason = str(answer.get("reason") or "")[:500]
        except (ValueError, AttributeError):
            raise TransientError(f"approval webhook {rule.url} answered something that is not a JSON object") from None
        decision = decision.lower() if isinstance(decision, str) else decision
        if decision in _PASS:
            return None
        if decision not in ("approve", "deny", "review"):
            raise TransientError(f"approval webhook {rule.url} answered an unknown decision {decision!r}")
        kind = cast(DecisionKind, decision)  # checked just above: one of the three
        return Decision(kind, reason or f"decided by the approval webhook ({kind})", "webhook")
