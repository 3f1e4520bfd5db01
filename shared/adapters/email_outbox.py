"""Writes each email as an `.eml` file into a folder instead of sending it.

The default when neither ACS nor SMTP is configured: a newcomer running the app locally can open
what would have been sent (any mail client reads .eml) without setting up a mail server. The file
is the exact RFC 5322 message SMTP would deliver. One file per idempotency key, written atomically,
so a re-send replaces the file instead of adding a second one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from email.policy import SMTP
from pathlib import Path

from shared.adapters.email_smtp import build_message
from shared.services.ports import Email, TransientError

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,120}$")


class OutboxNotifier:
    def __init__(self, folder: Path, sender: str) -> None:
        self.folder = Path(folder)
        self.sender = sender

    def __repr__(self) -> str:
        return f"OutboxNotifier({str(self.folder)!r})"

    def path_for(self, email: Email) -> Path:
        key = email.idempotency_key
        name = key if _SAFE_NAME.match(key) and not key.startswith(".") else hashlib.sha256(
            key.encode()).hexdigest()[:40]
        return self.folder / f"{name}.eml"

    def send(self, email: Email) -> None:
        data = build_message(email, self.sender).as_bytes(policy=SMTP)
        path = self.path_for(email)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # mkstemp: mode 0600, as an approved message holds a key.
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                os.replace(tmp, path)  # atomic: a reader never sees half a message
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TransientError(f"cannot write to outbox {self.folder}: {exc.strerror or exc}") from None
        log.info("email %s to %d recipient(s) written to %s", email.idempotency_key, len(email.to), path)
