"""Intake counters kept as small Kubernetes Secrets, so every instance counts the same requests.

One Secret per scope (`llm-key-limit-<hash of scope>`, component `llm-key-limit`): a mailbox
(`address:<canonical>`) or a domain (`domain:<domain>`). Its annotations hold the current window
(`window`, e.g. a day or an hour), how many requests were recorded in it (`count`) and, for a
mailbox, the ids of its requests that may still be open (`open`). Every change is a
resourceVersion-guarded write: of two instances counting at once, one wins and the other reads
again, so a limit holds across instances. No data: a counter holds nothing secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

from shared.services.ports import Conflict, StoreUnavailable
from shared.store import codec
from shared.store.secrets import SecretsGateway

LIMIT_COMPONENT = "llm-key-limit"
LIMIT_NAME_PREFIX = "llm-key-limit-"
_SCOPE, _WINDOW, _COUNT, _OPEN = (codec.PREFIX + key for key in ("limit-scope", "window", "count", "open"))


def limit_name(scope: str) -> str:
    return LIMIT_NAME_PREFIX + hashlib.sha256(scope.encode()).hexdigest()[:40]


class KubernetesLimitStore:
    def __init__(self, secrets: SecretsGateway) -> None:
        self._secrets = secrets

    def take(self, scope: str, window: str, per_window: int | None, *, request_id: str | None = None,
             max_open: int | None = None, is_open: Callable[[str], bool] | None = None) -> str | None:
        """Count one more request in `scope` for `window` (and, with `request_id`, remember it as
        open). None when admitted; "window" when `per_window` requests were already counted in this
        window, "open" when `max_open` of the remembered requests are still open (`is_open`)."""
        name = limit_name(scope)
        for attempt in range(32):  # one writer wins each round: many instances at once need rounds
            if attempt:
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            current = self._secrets.read(name)
            notes = ((current or {}).get("metadata") or {}).get("annotations") or {}
            count = _int(notes.get(_COUNT)) if notes.get(_WINDOW) == window else 0
            if per_window is not None and count >= per_window:
                return "window"
            still_open = [i for i in _ids(notes.get(_OPEN)) if is_open is None or is_open(i)]
            if max_open is not None and len(still_open) >= max_open:
                return "open"
            annotations = {_SCOPE: scope, _WINDOW: window, _COUNT: str(count + 1)}
            if request_id is not None:
                annotations[_OPEN] = json.dumps([*still_open, request_id])
            body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {
                "name": name, "annotations": annotations,
                "labels": {codec.APP_LABEL: codec.APP_NAME, codec.COMPONENT_LABEL: LIMIT_COMPONENT}}}
            try:
                if current is None:
                    self._secrets.create(body)
                else:
                    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    self._secrets.replace(name, body)
            except Conflict:
                continue  # another instance counted first: read again
            return None
        raise StoreUnavailable("too many requests are being counted at once; try again")


    def delete_stale(self, today: str, is_open: Callable[[str], bool], limit: int = 500,
                     continue_token: str | None = None) -> tuple[int, str | None]:
        """One page of counters: delete those whose window ended before `today` (YYYY-MM-DD; an
        hour's window by its day) and that remember no request still open, each as read (a count
        taken meanwhile wins). How many went, and the next page's token."""
        selector = f"{codec.APP_LABEL}={codec.APP_NAME},{codec.COMPONENT_LABEL}={LIMIT_COMPONENT}"
        secrets, token = self._secrets.list(selector, limit, continue_token)
        deleted = 0
        for secret in secrets:
            meta = secret["metadata"]
            notes = meta.get("annotations") or {}
            if (notes.get(_WINDOW) or "")[:10] >= today or any(is_open(i) for i in _ids(notes.get(_OPEN))):
                continue
            with contextlib.suppress(Conflict):
                deleted += self._secrets.delete(meta["name"], meta["resourceVersion"])
        return deleted, token


def _int(text: str | None) -> int:
    try:
        return max(0, int(text or 0))
    except ValueError:
        return 0


def _ids(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(i) for i in value if isinstance(i, str)] if isinstance(value, list) else []
