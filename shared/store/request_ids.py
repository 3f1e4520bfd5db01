"""Request ids derived from the mailbox, the model and a generation, with a keyed hash.

The n-th request of a mailbox for a model is named `llm-key-request-<id(mailbox, model, n)>`, so
creating it settles a duplicate in the apiserver itself: of 20 identical requests at once, one
create succeeds and the others get 409 and read the winner. One write per new request, no claim.

The hash is keyed (HMAC-SHA256) with a random key kept in the cluster, in the Secret
`llm-key-requestor-request-ids` of the request namespace, created by the first instance that
needs it: every instance derives the same ids, and nobody without the key can compute a request
id from an email address (the id is all the status endpoint asks for). The id is shaped as a
UUID (version 4 bits set), like the random ids of requests stored before, so both read the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import uuid

from shared.services.ports import Conflict, StoreError
from shared.store import codec
from shared.store.secrets import SecretsGateway

log = logging.getLogger(__name__)

KEY_SECRET_NAME = "llm-key-requestor-request-ids"
KEY_COMPONENT = "llm-key-request-id-key"


# On the key's Secret: whether requests of the layout before keyed ids may be stored (there were
# request Secrets when the key was made), so new requests look at the claims of that layout.
LEGACY_ANNOTATION = codec.PREFIX + "legacy-claims"
REQUESTS_SELECTOR = f"{codec.APP_LABEL}={codec.APP_NAME},{codec.COMPONENT_LABEL}={codec.REQUEST_COMPONENT}"


class RequestIds:
    def __init__(self, secrets_gateway: SecretsGateway) -> None:
        self._secrets = secrets_gateway
        self._key: bytes | None = None
        self._legacy = True
        self._lock = threading.Lock()

    @property
    def legacy(self) -> bool:
        """Whether requests stored before keyed ids may exist here (their claims need a look)."""
        self._the_key()
        return self._legacy

    def __repr__(self) -> str:  # never the key
        return f"RequestIds(namespace={self._secrets.namespace!r})"

    def request_id(self, mailbox: str, model: str, generation: int) -> str:
        digest = hmac.new(self._the_key(), f"{mailbox}\n{model}\n{generation}".encode(), hashlib.sha256).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def _the_key(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._read_or_create()
        return self._key

    def _read_or_create(self) -> bytes:
        for _ in range(3):
            stored = self._secrets.read(KEY_SECRET_NAME)
            if stored is not None:
                self._legacy = ((stored["metadata"].get("annotations") or {}).get(LEGACY_ANNOTATION)) != "false"
                try:
                    return base64.b64decode((stored.get("data") or {})["key"], validate=True)
                except (KeyError, ValueError):
                    raise StoreError(f"Secret {KEY_SECRET_NAME} holds no readable `key`") from None
            key = secrets.token_bytes(32)
            # Requests stored already (one page of one is enough to tell: they are most of what
            # the namespace holds) were stored before keyed ids, with claims.
            legacy = bool(self._secrets.list(REQUESTS_SELECTOR, limit=1)[0])
            try:
                self._secrets.create({
                    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": KEY_SECRET_NAME, "labels": {codec.APP_LABEL: codec.APP_NAME,
                                                                     codec.COMPONENT_LABEL: KEY_COMPONENT},
                                 "annotations": {LEGACY_ANNOTATION: str(legacy).lower()}},
                    "data": {"key": base64.b64encode(key).decode()}})
            except Conflict:
                continue  # another instance created it first: use theirs
            log.info("created the request id key (Secret %s)%s", KEY_SECRET_NAME,
                     "; requests stored before it are looked up by their claims" if legacy else "")
            self._legacy = legacy
            return key
        raise Conflict("could not read or create the request id key")
