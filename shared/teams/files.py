"""The teams' folder on disk: which files are access files, reading them within the size limit, and
checking them all together (one team, one file) before anything is sent anywhere.

`validate` and `plan` name files as they were given on the command line; `sync` names them by
their path in the repository (relative to the working directory, as CI runs from the checkout's
root), because that path is what the app records as the team's source.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from shared.domain.team import (
    FILE_NAMES,
    MAX_FILE_BYTES,
    Issue,
    TeamCatalog,
    TeamFileError,
    TeamSpec,
    check_unique,
    content_hash,
    decode,
    read,
    too_large,
)


@dataclasses.dataclass(frozen=True)
class TeamFile:
    """One valid access file: where it is, its text as read, what it grants, and its content hash."""

    source: str
    text: str
    spec: TeamSpec
    content_hash: str


def find_files(targets: Sequence[str]) -> tuple[list[Path], list[Issue]]:
    """Files named on the command line, and every access.yaml / access.yml under named folders."""
    files: list[Path] = []
    issues: list[Issue] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.name in FILE_NAMES and p.is_file())
            if not found:
                issues.append(Issue(target, "(folder)", f"holds no {' or '.join(FILE_NAMES)}"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            issues.append(Issue(target, "(file)", "does not exist"))
    return list(dict.fromkeys(files)), issues


def read_file(path: Path, source: str | None = None) -> str:
    """The file's text; nothing beyond MAX_FILE_BYTES is read."""
    source = source or path.as_posix()
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                size = os.fstat(handle.fileno()).st_size
                raise TeamFileError([too_large(source, size)])
    except OSError as exc:
        raise TeamFileError([Issue(source, "(file)", f"cannot be read: {exc.strerror or exc}")]) from None
    return decode(data, source)


def repo_path(path: Path) -> str:
    """The path as the repository knows it: relative to the working directory when it is inside it."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def read_teams(targets: Sequence[str], catalog: TeamCatalog,
               name_by_repo_path: bool = False) -> tuple[list[TeamFile], list[Issue], int]:
    """(every valid file, every problem, how many files were read). A file with any problem is
    left out of the first list; two files claiming one team are both problems."""
    files, issues = find_files(targets)
    claimed: list[TeamFile] = []
    for path in files:
        source = repo_path(path) if name_by_repo_path else path.as_posix()
        try:
            text = read_file(path, source)
            spec, problems = read(text, source, catalog)
        except TeamFileError as exc:
            spec, problems = None, exc.issues
        issues.extend(problems)
        if spec is not None:
            claimed.append(TeamFile(source, text, spec, content_hash(text)))
    issues.extend(check_unique((f.source, f.spec) for f in claimed))
    bad = {issue.source for issue in issues}
    return [f for f in claimed if f.source not in bad], issues, len(files)


def check_files(targets: Sequence[str], catalog: TeamCatalog) -> tuple[list[tuple[str, TeamSpec]], list[Issue], int]:
    """(valid files with their spec, every problem, how many files were read)."""
    valid, issues, count = read_teams(targets, catalog)
    return [(f.source, f.spec) for f in valid], issues, count
