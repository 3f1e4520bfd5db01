"""The access file as a file, before any YAML: its accepted names, its size limit, its encoding and the
folder that names the team. These checks come before parsing so that an oversized or non-UTF-8
upload is refused without reaching the YAML parser (MAX_FILE_BYTES), and so that the CLI, the
endpoints and `read` agree on which files are a team's access file.
"""

from __future__ import annotations

import hashlib
import posixpath

from shared.domain.team.issues import Issue, TeamFileError

MAX_FILE_BYTES = 64 * 1024
FILE_NAMES = ("access.yaml", "access.yml")


def decode(data: bytes, source: str) -> str:
    """The file's bytes as text: at most MAX_FILE_BYTES, UTF-8 (a BOM is fine)."""
    if len(data) > MAX_FILE_BYTES:
        raise TeamFileError([too_large(source, len(data))])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TeamFileError([Issue(source, "(file)", f"is not UTF-8 text (byte {exc.start})")]) from None


def content_hash(text: str) -> str:
    """The SHA-256 of a file's text, the same wherever the file was read: the app stores it with the
    team, and `python -m shared.teams sync` compares it with the file in git to send only what
    changed. Line endings are normalised (a Windows checkout hashes like a Linux one); comments and
    layout count, so the hash tells whether the *file* changed, `TeamSpec.fingerprint` whether the
    grant did."""
    normalised = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def too_large(source: str, size: int | None = None) -> Issue:
    shown = f"{size:,} bytes" if size is not None else f"more than {MAX_FILE_BYTES:,} bytes"
    return Issue(source, "(file)", f"is {shown}; an access file may be at most {MAX_FILE_BYTES:,} bytes "
                                   "(64 KiB), so it was not read")


def folder_team(source: str) -> str | None:
    """`developer-requests/alpha/access.yaml` -> `alpha`: the folder names the team when the file
    is called access.yaml (or .yml); None for any other file name."""
    path = source.replace("\\", "/")
    if posixpath.basename(path) not in FILE_NAMES:
        return None
    folder = posixpath.basename(posixpath.dirname(path))
    return folder or None
