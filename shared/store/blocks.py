"""Admin blocks kept as Kubernetes Secrets, one per blocked address or domain.

Name `llm-key-block-<hash of kind and value>`, labels `app.kubernetes.io/name=llm-key-requestor`,
`app.kubernetes.io/component=llm-key-block`, the rest in annotations (`kubectl describe` tells who
blocked what, when and why). No data: a block holds nothing secret. Intake reads blocks by name;
only the admin list uses the label selector.

What intake read is remembered for CACHE_SECONDS in the process (blocked or not), so a request
for a domain already looked up costs no apiserver call: a block or unblock takes effect at once in
the instance that made it, and within CACHE_SECONDS in every other.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shared.domain.blocks import KINDS, Block, BlockKind
from shared.services.ports import Conflict
from shared.store import codec
from shared.store.secrets import SecretsGateway

BLOCK_COMPONENT = "llm-key-block"
BLOCK_NAME_PREFIX = "llm-key-block-"
_KIND, _VALUE, _REASON, _BY, _AT = (codec.PREFIX + key for key in
                                    ("block-kind", "block-value", "reason", "blocked-by", "blocked-at"))
SELECTOR = f"{codec.APP_LABEL}={codec.APP_NAME},{codec.COMPONENT_LABEL}={BLOCK_COMPONENT}"
CACHE_SECONDS = 5.0
CACHE_MAX = 4096


class _Recent:
    """Block lookups of this process: (namespace, name) -> (the block or None, when read). Shared by
    every store instance, so the admin API's writes are seen at once by intake's reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[Block | None, float]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> tuple[bool, Block | None]:
        with self._lock:
            found = self._items.get(key)
        if found is None or time.monotonic() - found[1] > CACHE_SECONDS:
            return False, None
        return True, found[0]

    def put(self, key: tuple[str, str], block: Block | None) -> None:
        with self._lock:
            self._items[key] = (block, time.monotonic())
            self._items.move_to_end(key)
            if len(self._items) > CACHE_MAX:
                self._items.popitem(last=False)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._items.pop(key, None)


_recent = _Recent()


def block_name(kind: BlockKind, value: str) -> str:
    return BLOCK_NAME_PREFIX + hashlib.sha256(f"{kind}\n{value}".encode()).hexdigest()[:40]


class KubernetesBlockStore:
    def __init__(self, secrets: SecretsGateway) -> None:
        self._secrets = secrets

    def find(self, keys: Iterable[tuple[BlockKind, str]]) -> Block | None:
        """The first of `keys` that is blocked (GETs by name), or None."""
        for kind, value in keys:
            key = (self._secrets.namespace, block_name(kind, value))
            known, block = _recent.get(key)
            if not known:
                secret = self._secrets.read(key[1])
                block = _decode(secret) if secret is not None else None
                _recent.put(key, block)
            if block is not None:
                return block
        return None

    def put(self, block: Block) -> tuple[Block, bool]:
        """Record `block`; (the block, True) when new, (the block, False) when it replaced one."""
        name = block_name(block.kind, block.value)
        body = _encode(name, block)
        _recent.forget((self._secrets.namespace, name))
        for _ in range(5):
            try:
                self._secrets.create(body)
                _recent.forget((self._secrets.namespace, name))  # a lookup may have run meanwhile
                return block, True
            except Conflict:
                current = self._secrets.read(name)
                if current is None:
                    continue
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                try:
                    self._secrets.replace(name, body)
                except Conflict:
                    continue
                _recent.forget((self._secrets.namespace, name))
                return block, False
        raise Conflict(f"block of {block.kind} {block.value} keeps changing; try again")

    def delete(self, kind: BlockKind, value: str) -> Block | None:
        """Remove the block; the block removed, or None when there was none."""
        name = block_name(kind, value)
        _recent.forget((self._secrets.namespace, name))
        secret = self._secrets.read(name)
        block = _decode(secret) if secret is not None else None
        if secret is None or block is None:
            return None
        deleted = self._secrets.delete(name, secret["metadata"].get("resourceVersion"))
        _recent.forget((self._secrets.namespace, name))
        return block if deleted else None

    def list(self, limit: int | None = None, continue_token: str | None = None) -> tuple[list[Block], str | None]:
        secrets, token = self._secrets.list(SELECTOR, limit, continue_token)
        blocks = [block for block in map(_decode, secrets) if block is not None]
        return sorted(blocks, key=lambda b: (b.kind, b.value)), token


def _encode(name: str, block: Block) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {
        "name": name, "labels": {codec.APP_LABEL: codec.APP_NAME, codec.COMPONENT_LABEL: BLOCK_COMPONENT},
        "annotations": {_KIND: block.kind, _VALUE: block.value, _REASON: block.reason, _BY: block.blocked_by,
                        _AT: block.blocked_at.isoformat()}}}


def _decode(secret: dict[str, Any]) -> Block | None:
    notes = (secret.get("metadata") or {}).get("annotations") or {}
    kind, value = notes.get(_KIND), notes.get(_VALUE)
    if kind not in KINDS or not value:
        return None
    try:
        at = datetime.fromisoformat(notes.get(_AT) or "")
    except ValueError:
        at = datetime.min
    return Block(kind=kind, value=value, reason=notes.get(_REASON) or "", blocked_by=notes.get(_BY) or "",
                 blocked_at=at)
