"""The claims of the layout before keyed request ids, read so that requests stored then keep working.

Then, a request had a random id and a small "claim" Secret `llm-key-claim-<sha256 of mailbox and
model>` (component `llm-key-request-claim`) pointed at the one unfinished request of the pair.
Nothing writes claims any more; where requests were stored before keyed ids, a new request
first looks at its pair's claim (a read by name), so an unfinished request stored before is
still the pair's one request, and a denial stored before still stands. Retention deletes a
claim with the request it names.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

from shared.services.ports import Conflict
from shared.store import codec
from shared.store.secrets import SecretsGateway

CLAIM_REQUEST_ANNOTATION = codec.PREFIX + "request-id"


def claim_name(mailbox: str, model: str) -> str:
    digest = hashlib.sha256(f"{mailbox}\n{model}".encode()).hexdigest()[:40]
    return codec.CLAIM_NAME_PREFIX + digest


class LegacyClaims:
    def __init__(self, secrets: SecretsGateway, stored: Callable[[], bool]) -> None:
        self._secrets = secrets
        self._stored = stored  # whether claims may be stored here at all (shared/store/request_ids.py)

    def request_id(self, mailbox: str, model: str) -> str | None:
        """The id the pair's claim names, if claims are stored at all and this pair has one."""
        if not self._stored():
            return None
        claim = self._secrets.read(claim_name(mailbox, model))
        return _named(claim)

    def forget(self, mailbox: str, model: str, request_id: str) -> None:
        """Delete the pair's claim if it still names `request_id` (as read: a change wins)."""
        if not self._stored():
            return
        name = claim_name(mailbox, model)
        claim = self._secrets.read(name)
        if claim is not None and _named(claim) == request_id:
            with contextlib.suppress(Conflict):
                self._secrets.delete(name, claim["metadata"]["resourceVersion"])



def _named(claim: dict[str, Any] | None) -> str | None:
    return (((claim or {}).get("metadata") or {}).get("annotations") or {}).get(CLAIM_REQUEST_ANNOTATION) or None
