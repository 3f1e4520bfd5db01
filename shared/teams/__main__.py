"""`python -m shared.teams validate|plan <dir-or-file>...` (see shared/teams/__init__.py)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from shared.config import ConfigError, load_config
from shared.domain.team import (
    FILE_NAMES,
    MAX_FILE_BYTES,
    Issue,
    TeamCatalog,
    TeamFileError,
    TeamSpec,
    check_unique,
    decode,
    read,
    too_large,
)

APP_CONFIG = Path(__file__).resolve().parent.parent.parent / "config.yaml"


def _config_path(given: str | None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("CONFIG_FILE"):
        return Path(os.environ["CONFIG_FILE"])
    local = Path("config.yaml")
    return local if local.is_file() else APP_CONFIG


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


def read_file(path: Path) -> str:
    """The file's text; nothing beyond MAX_FILE_BYTES is read."""
    source = path.as_posix()
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                size = os.fstat(handle.fileno()).st_size
                raise TeamFileError([too_large(source, size)])
    except OSError as exc:
        raise TeamFileError([Issue(source, "(file)", f"cannot be read: {exc.strerror or exc}")]) from None
    return decode(data, source)


def check_files(targets: Sequence[str], catalog: TeamCatalog) -> tuple[list[tuple[str, TeamSpec]], list[Issue], int]:
    """(valid files with their spec, every problem, how many files were read)."""
    files, issues = find_files(targets)
    claimed: list[tuple[str, TeamSpec]] = []
    for path in files:
        source = path.as_posix()
        try:
            spec, problems = read(read_file(path), source, catalog)
        except TeamFileError as exc:
            spec, problems = None, exc.issues
        issues.extend(problems)
        if spec is not None:
            claimed.append((source, spec))
    issues.extend(check_unique(claimed))
    bad = {issue.source for issue in issues}
    return [(s, spec) for s, spec in claimed if s not in bad], issues, len(files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.teams",
                                     description="Check teams' access.yaml files against the model catalog.")
    parser.add_argument("command", choices=["validate", "plan"],
                        help="validate: one line per problem; plan: also what each file grants and creates")
    parser.add_argument("paths", nargs="+", help="access.yaml files, or folders searched for them")
    parser.add_argument("--config", help="config.yaml with the catalog (default: $CONFIG_FILE, else config.yaml)")
    parser.add_argument("--api-ids", default=os.environ.get("APIM_TEAM_API_IDS", ""),
                        help="APIM API ids a team product links to, for the plan (default: $APIM_TEAM_API_IDS)")
    args = parser.parse_args(argv)

    try:
        config = load_config(_config_path(args.config))
    except ConfigError as exc:
        print(f"cannot load the catalog: {exc}", file=sys.stderr)
        return 2
    catalog = TeamCatalog.from_config(config)
    specs, issues, count = check_files(args.paths, catalog)
    for issue in issues:
        print(issue)
    if args.command == "plan":
        from shared.services.teams import plan, plan_text

        api_ids = [a.strip() for a in args.api_ids.split(",") if a.strip()] or ["<APIM_TEAM_API_IDS>"]
        for source, spec in specs:
            print(f"# {source}")
            print(plan_text(plan(spec, None, api_ids)))
    verdict = "ok" if not issues else f"{len(issues)} problem(s)"
    print(f"{count} file(s) checked: {verdict}", file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
