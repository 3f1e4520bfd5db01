"""`python -m shared.teams validate|plan|sync <folder-or-file>...` (see shared/teams/__init__.py)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from shared.config import ConfigError, load_config
from shared.domain.team import TeamCatalog
from shared.teams.client import ApiKey, AppClient, Auth, EntraToken, check_url
from shared.teams.files import check_files, find_files, read_file, read_teams
from shared.teams.sync import INVALID, OK, UNUSABLE, Report, Row, render_text, run

__all__ = ["check_files", "find_files", "main", "read_file"]

APP_CONFIG = Path(__file__).resolve().parent.parent.parent / "config.yaml"
COMMIT = re.compile(r"^[0-9a-fA-F]{7,64}$")
COMMIT_VARIABLES = ("GITHUB_SHA", "BUILD_SOURCEVERSION", "CI_COMMIT_SHA")  # GitHub, Azure DevOps, GitLab


class UsageError(Exception):
    """Exit 2: the command line or the environment cannot work."""


def _config_path(given: str | None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("CONFIG_FILE"):
        return Path(os.environ["CONFIG_FILE"])
    local = Path("config.yaml")
    return local if local.is_file() else APP_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shared.teams",
        description="Check teams' access.yaml files against the model catalog, plan them, and keep the app's "
                    "teams equal to a folder of them. Exit codes: 0 ok / in sync, 1 a file is invalid or a "
                    "write was refused, 2 usage, credentials, or the app cannot be reached.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{validate,plan,sync}")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("paths", nargs="+", help="access.yaml files, or folders searched for them")
        sub.add_argument("--config", help="config.yaml with the catalog (default: $CONFIG_FILE, else config.yaml)")
        sub.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    def remote(sub: argparse.ArgumentParser, url_required: bool) -> None:
        sub.add_argument("--url", default=os.environ.get("LLM_KEY_REQUESTOR_URL") or None,
                         help="the app's root URL, e.g. https://<app>.azurewebsites.net "
                              "(default: $LLM_KEY_REQUESTOR_URL)" + ("" if url_required else
                                                                      "; without it the plan is local"))
        sub.add_argument("--prune", action="store_true", help="delete live teams that have no file any more")
        sub.add_argument("--max-deletes", type=_count, default=3, metavar="N",
                         help="refuse the whole run if more than N teams would be deleted (default 3)")
        sub.add_argument("--force", action="store_true", help="delete however many teams --prune finds")
        sub.add_argument("--auth", choices=["auto", "api-key", "entra", "none"], default="auto",
                         help="auto (default): ADMIN_API_KEY if set, else an Entra ID token if a scope is set")
        sub.add_argument("--entra-scope", default=os.environ.get("ADMIN_ENTRA_SCOPE") or None, metavar="SCOPE",
                         help="scope of the app's Entra ID application, e.g. api://llm-key-requestor/.default "
                              "(default: $ADMIN_ENTRA_SCOPE)")
        sub.add_argument("--commit", help="the git commit the files come from, recorded with each team "
                                          "(default: $GITHUB_SHA, $BUILD_SOURCEVERSION, else git rev-parse HEAD)")
        sub.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                         help="timeout of each HTTP call (default 30)")
        sub.add_argument("--retries", type=_count, default=4, metavar="N",
                         help="tries after the first on 429, 5xx, timeouts and dropped connections (default 4)")

    validate = commands.add_parser("validate", help="one line per problem")
    common(validate)

    plan = commands.add_parser("plan", help="what each file grants and would create, change or delete; with "
                                            "--url the plan the app would execute (as sync --dry-run)")
    common(plan)
    plan.add_argument("--api-ids", default=os.environ.get("APIM_TEAM_API_IDS", ""),
                      help="without --url: the APIM API ids a team product links to (default: $APIM_TEAM_API_IDS)")
    remote(plan, url_required=False)

    sync = commands.add_parser("sync", help="send changed files to the app (PUT), delete teams without a file "
                                            "(--prune); validates everything before sending anything")
    common(sync)
    remote(sync, url_required=True)
    sync.add_argument("--dry-run", action="store_true", help="print the plan, send nothing")
    return parser


def _count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}")
    return int(value)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 600 seconds")
    return seconds


def main(argv: Sequence[str] | None = None, *, sleep: Callable[[float], None] = time.sleep,
         transport: httpx.BaseTransport | None = None) -> int:
    """The command line; `sleep` (between retries) and `transport` (httpx) are injected by tests."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(_config_path(args.config))
    except ConfigError as exc:
        return _stop(args, f"cannot load the catalog: {exc}")
    catalog = TeamCatalog.from_config(config)
    if args.command == "validate":
        return _validate(args, catalog)
    if args.command == "plan" and not args.url:
        return _local_plan(args, catalog)
    try:
        return _remote(args, catalog, sleep, transport)
    except UsageError as exc:
        return _stop(args, str(exc))


def _stop(args: argparse.Namespace, message: str) -> int:
    print(message, file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"command": args.command, "failure": message, "exit_code": UNUSABLE}, indent=2))
    return UNUSABLE


def _validate(args: argparse.Namespace, catalog: TeamCatalog) -> int:
    specs, issues, count = check_files(args.paths, catalog)
    code = INVALID if issues else OK
    if args.json:
        print(json.dumps({"command": "validate", "files_checked": count, "teams": sorted(s.name for _, s in specs),
                          "errors": [{**i.as_dict(), "line": str(i)} for i in issues], "exit_code": code}, indent=2))
    else:
        for issue in issues:
            print(issue)
    verdict = "ok" if not issues else f"{len(issues)} problem(s)"
    print(f"{count} file(s) checked: {verdict}", file=sys.stderr)
    return code


def _local_plan(args: argparse.Namespace, catalog: TeamCatalog) -> int:
    """Each valid file's plan compared with nothing stored (no app asked)."""
    from shared.services.team_plan import plan

    files, issues, count = read_teams(args.paths, catalog)
    api_ids = [a.strip() for a in args.api_ids.split(",") if a.strip()] or ["<APIM_TEAM_API_IDS>"]
    report = Report("plan", None, True, args.prune, args.max_deletes, args.force, None, count, errors=issues)
    report.warnings.append("no --url: each file is planned against nothing stored, with the local catalog")
    for file in files:
        planned = plan(file.spec, None, api_ids).as_dict()
        report.rows.append(Row(file.spec.name, planned["action"], "compared with nothing stored", file,
                               plan=planned, result="-"))
    report.exit_code = INVALID if issues else OK
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for issue in issues:
            print(issue)
        for row in report.rows:
            print(f"# {row.source}")
            print((row.plan or {}).get("text", ""))
    verdict = "ok" if not issues else f"{len(issues)} problem(s)"
    print(f"{count} file(s) checked: {verdict}", file=sys.stderr)
    return report.exit_code


def _remote(args: argparse.Namespace, catalog: TeamCatalog, sleep: Callable[[float], None],
            transport: httpx.BaseTransport | None) -> int:
    if not args.url:
        raise UsageError("sync needs the app's URL: --url https://<app>.azurewebsites.net (or $LLM_KEY_REQUESTOR_URL)")
    try:
        url = check_url(args.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    auth = _auth(args)
    if auth is None and args.command == "sync":
        raise UsageError("sync needs admin credentials: set ADMIN_API_KEY, or --entra-scope (or $ADMIN_ENTRA_SCOPE) "
                         "for an Entra ID token")
    dry_run = args.command == "plan" or args.dry_run
    files, issues, count = read_teams(args.paths, catalog, name_by_repo_path=True)
    commit, warning = _commit(args.commit, args.paths[0])
    report = Report(args.command, url, dry_run, args.prune, args.max_deletes, args.force, commit, count,
                    errors=issues)
    if warning:
        report.warnings.append(warning)
    if issues:
        report.exit_code = INVALID
    else:
        def notice(message: str) -> None:
            print(f"retry: {message}", file=sys.stderr)

        with AppClient(url, auth, timeout=args.timeout, retries=args.retries, sleep=sleep, on_retry=notice,
                       transport=transport) as client:
            run(report, files, client, anonymous=auth is None)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render_text(report))
    if report.failure and args.json:
        print(f"error: {report.failure}", file=sys.stderr)
    return report.exit_code


def _auth(args: argparse.Namespace) -> Auth | None:
    key = os.environ.get("ADMIN_API_KEY", "").strip()
    if args.auth == "none":
        return None
    if args.auth == "api-key" or (args.auth == "auto" and key):
        if not key:
            raise UsageError("--auth api-key: ADMIN_API_KEY is not set")
        return ApiKey(key)
    if args.auth == "entra" or (args.auth == "auto" and args.entra_scope):
        if not args.entra_scope:
            raise UsageError("--auth entra needs --entra-scope (or $ADMIN_ENTRA_SCOPE), "
                             "e.g. api://llm-key-requestor/.default")
        return EntraToken(args.entra_scope)
    return None


def _commit(given: str | None, folder: str) -> tuple[str | None, str | None]:
    """(the commit to record, a warning): --commit, the CI's variable, else the folder's git HEAD
    (none while the folder has uncommitted changes: the files are not that commit's)."""
    if given:
        if not COMMIT.match(given):
            raise UsageError(f"--commit must be a git commit id (7 to 64 hex digits), not {given!r}")
        return given.lower(), None
    for variable in COMMIT_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            return (value.lower(), None) if COMMIT.match(value) else \
                (None, f"${variable} is not a commit id ({value[:80]!r}); no commit recorded")
    where = folder if Path(folder).is_dir() else str(Path(folder).parent)
    head = _git(where, "rev-parse", "HEAD")
    if head is None or not COMMIT.match(head):
        return None, None  # not a git checkout: nothing to record
    if _git(where, "status", "--porcelain", "--", "."):
        return None, f"{folder} has uncommitted changes: no commit recorded with the teams"
    return head.lower(), None


def _git(where: str, *command: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", where, *command], capture_output=True, text=True, timeout=10,
                                check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
