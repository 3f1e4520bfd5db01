"""Keep the app's teams equal to a folder of access files: `python -m shared.teams sync`.

In this order, and nothing is sent until every check has passed:

1. every file is read and checked against the catalog (the caller did that: `files.read_teams`);
2. the live teams are listed (`GET /api/teams`) and each file is compared with its team by the
   content hash the app stored with it: `create` (no such team, or one being deleted), `update`
   (the file changed, or moved), `retry` (same file, but the team failed), `unchanged`; a live team
   without a file is `delete` with `--prune` (`orphan` without it);
3. the app checks each file to send (`POST /api/teams/validate`, against the catalog it runs
   with) and answers its plan; any error there and nothing is sent either;
4. the deletions' plans are asked for (`DELETE ...?dryRun=true`), and more deletions than
   `max_deletes` (without `force`) refuse the whole run;
5. unless it is a dry run: the files are sent (`PUT`), then, if every one was accepted, the
   deletions (`DELETE`). The timer provisions and removes the resources afterwards.

`plan --url` without credentials is the anonymous variant a pull request from a fork can run:
every file is checked by the app and planned against its team, but without the list of live
teams there are no deletions and no content-hash comparison.

Exit codes: 0 in sync (or every write accepted; a plan that would go through), 1 a file is
invalid, the deletions were refused, or a write was refused by the app, 2 usage, credentials, or the
app cannot be reached (it answers nothing, or 429/5xx after every try).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

from shared.domain.team import Issue
from shared.teams.client import Answer, AppClient, ClientError, Failed, Refused, Unreachable
from shared.teams.files import TeamFile

OK, INVALID, UNUSABLE = 0, 1, 2
WRITES = ("create", "update", "retry", "delete")
# The order of the table and of the summary.
ACTIONS = ("create", "update", "retry", "delete", "unchanged", "deleting", "orphan")
_DONE = {"create": "created", "update": "updated", "retry": "retried", "delete": "deleted"}


@dataclasses.dataclass
class Row:
    """One team: what sync does with it and why, the app's plan, and what happened."""

    team: str
    action: str  # one of ACTIONS
    reason: str
    file: TeamFile | None = None
    live: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    result: str = ""
    status: int | None = None
    ok: bool = True
    sent: bool = False

    @property
    def source(self) -> str | None:
        return self.file.source if self.file else None

    def as_dict(self) -> dict[str, Any]:
        live = None if self.live is None else {k: self.live.get(k) for k in (
            "phase", "deleting", "generation", "observed_generation", "in_sync", "content_sha256", "source",
            "commit", "last_sync_at", "last_error")}
        return {"team": self.team, "action": self.action, "reason": self.reason, "source": self.source,
                "content_sha256": self.file.content_hash if self.file else None, "live": live,
                "plan": self.plan, "result": {"message": self.result, "status": self.status, "ok": self.ok,
                                              "sent": self.sent}}


@dataclasses.dataclass
class Report:
    command: str  # sync | plan
    url: str | None
    dry_run: bool
    prune: bool
    max_deletes: int
    force: bool
    commit: str | None
    files_checked: int
    rows: list[Row] = dataclasses.field(default_factory=list)
    errors: list[Issue] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    refused: str | None = None
    failure: str | None = None  # why the run stopped (exit 2)
    exit_code: int = OK
    anonymous: bool = False

    @property
    def writes(self) -> int:
        return sum(1 for row in self.rows if row.sent)

    @property
    def failed(self) -> int:
        """Writes the app refused, or that got no answer."""
        return sum(1 for row in self.rows if row.sent and not row.ok)

    @property
    def not_sent(self) -> int:
        """Writes held back (refused run, an update that failed first, the app gone)."""
        return sum(1 for row in self.rows if row.action in WRITES and not row.sent and not row.ok)

    def counts(self) -> dict[str, int]:
        return {action: sum(1 for row in self.rows if row.action == action) for action in ACTIONS}

    def summary(self) -> str:
        """The last line: what was (or would be) done, and how many writes."""
        if self.errors:
            return f"{self.command}: {len(self.errors)} problem(s) in {self.files_checked} file(s); nothing sent"
        if self.failure:
            return f"{self.command}: stopped; {self.writes} write(s) sent before that"
        counts = self.counts()
        teams = f"{len(self.rows)} team{'s' if len(self.rows) != 1 else ''}"
        extra = (f", {counts['deleting']} being deleted" if counts["deleting"] else "") + \
            (f", {counts['orphan']} without a folder (kept; --prune deletes them)" if counts["orphan"] else "")
        if self.dry_run or self.refused or self.command == "plan":
            head = "refused" if self.refused else ("plan" if self.command == "plan" else "dry run")
            planned = sum(counts[action] for action in WRITES)
            return (f"{head}: {teams}: {counts['create']} to create, {counts['update']} to update, "
                    f"{counts['retry']} to retry, {counts['delete']} to delete, {counts['unchanged']} unchanged"
                    f"{extra}; {planned} write(s) {'not sent' if self.refused else 'planned'}")
        done = {a: sum(1 for r in self.rows if r.action == a and r.ok and r.sent) for a in WRITES}
        held = f", {self.not_sent} not sent" if self.not_sent else ""
        return (f"sync: {teams}: {done['create']} created, {done['update']} updated, {done['retry']} retried, "
                f"{done['delete']} deleted, {counts['unchanged']} unchanged{extra}; "
                f"{self.writes} write(s), {self.failed} error(s){held}")

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "url": self.url, "dry_run": self.dry_run, "prune": self.prune,
                "max_deletes": self.max_deletes, "force": self.force, "commit": self.commit,
                "anonymous": self.anonymous, "files_checked": self.files_checked,
                "teams": [row.as_dict() for row in self.rows],
                "errors": [{**issue.as_dict(), "line": str(issue)} for issue in self.errors],
                "warnings": list(self.warnings), "refused": self.refused, "failure": self.failure,
                "summary": {**self.counts(), "writes": self.writes, "errors": self.failed,
                            "not_sent": self.not_sent, "text": self.summary()},
                "exit_code": self.exit_code}


# --- deciding ------------------------------------------------------------------------------------------


def decide(files: Sequence[TeamFile], live: Sequence[dict[str, Any]], prune: bool) -> list[Row]:
    """What each file and each live team needs, compared by content hash; in team order."""
    by_name = {team["team"]: team for team in live}
    rows: list[Row] = []
    for file in files:
        current = by_name.get(file.spec.name)
        if current is None:
            rows.append(Row(file.spec.name, "create", "no such team in the app", file))
        elif current.get("deleting"):
            rows.append(Row(file.spec.name, "create", "the team is being deleted: sending the file cancels that",
                            file, current))
        elif current.get("content_sha256") != file.content_hash:
            reason = "the file changed" if current.get("content_sha256") else \
                "the app holds no content hash for it (stored before sync kept one)"
            rows.append(Row(file.spec.name, "update", reason, file, current))
        elif current.get("source") != file.source:
            rows.append(Row(file.spec.name, "update", f"the file moved from {current.get('source') or '(none)'}",
                            file, current))
        elif current.get("phase") == "failed":
            rows.append(Row(file.spec.name, "retry", f"same file, but the team failed: {current.get('last_error')}",
                            file, current))
        else:
            rows.append(Row(file.spec.name, "unchanged", f"same file ({current.get('phase')})", file, current))
    named = {file.spec.name for file in files}
    for name, current in by_name.items():
        if name in named:
            continue
        if current.get("deleting"):
            rows.append(Row(name, "deleting", "no folder; the app is removing it already", None, current))
        elif prune:
            rows.append(Row(name, "delete", "no folder any more", None, current))
        else:
            rows.append(Row(name, "orphan", "no folder (kept: --prune deletes it)", None, current))
    return sorted(rows, key=lambda row: row.team)


# --- running -----------------------------------------------------------------------------------------


def run(report: Report, files: Sequence[TeamFile], client: AppClient, anonymous: bool = False) -> Report:
    """Steps 2 to 5 of the module docstring, filling `report` (its `exit_code` included)."""
    try:
        if anonymous:
            report.anonymous = True
            report.warnings.append(
                "no admin credentials (ADMIN_API_KEY or an Entra ID scope): the live teams were not listed, so "
                "this plan shows no deletions, and each file is compared by what it grants, not by content hash")
            report.rows = [Row(f.spec.name, "check", "planned by the app", f) for f in files]
        else:
            live, unreadable = client.list_teams()
            report.warnings.extend(f"{name}: a team record the app cannot read; it is left alone"
                                   for name in unreadable)
            report.rows = decide(files, live, report.prune)
        if not _check_remotely(report, client):
            report.exit_code = INVALID
            return report
        if anonymous:
            for row in report.rows:
                row.action = {"create": "create", "update": "update"}.get((row.plan or {}).get("action", ""),
                                                                           "unchanged")
        deletions = [row for row in report.rows if row.action == "delete"]
        for row in deletions:
            answer = client.delete_team(row.team, dry_run=True)
            if answer.status == 404:
                row.action, row.reason = "unchanged", "gone already"
            else:
                row.plan = answer.body.get("plan") if isinstance(answer.body, dict) else None
        deletions = [row for row in deletions if row.action == "delete"]
        if len(deletions) > report.max_deletes and not report.force:
            report.refused = (f"{len(deletions)} teams would be deleted, more than --max-deletes "
                              f"{report.max_deletes}; nothing was sent (check the folder, or pass --force "
                              "or a higher --max-deletes)")
            for row in report.rows:
                if row.action in WRITES:
                    row.result, row.ok = "not sent: refused", False
            report.exit_code = INVALID
            return report
        if report.dry_run:
            for row in report.rows:
                row.result = f"would be {_DONE[row.action]}" if row.action in WRITES else "-"
            return report
        _apply(report, client)
    except ClientError as exc:
        # No answer, credentials refused, or (before any write) an answer the app should not give.
        report.failure = exc.message
        report.exit_code = INVALID if report.writes and isinstance(exc, Failed) else UNUSABLE
        for row in report.rows:
            if row.action in WRITES and not row.sent:
                row.result, row.ok = "not sent", False
    return report


def _check_remotely(report: Report, client: AppClient) -> bool:
    """The app checks every file that is to be sent (its catalog may differ from the local one)."""
    for row in report.rows:
        if row.file is None or row.action not in ("create", "update", "retry", "check"):
            continue
        answer = client.validate(row.file.source, row.file.text)
        if answer.status == 422:
            body = answer.body if isinstance(answer.body, dict) else {}
            detail = body.get("detail")
            errors = detail.get("errors") if isinstance(detail, dict) else None
            for error in errors or [{"path": row.file.source, "field": "(file)",
                                                   "reason": str(body.get("message"))}]:
                report.errors.append(Issue(error.get("path") or row.file.source, error.get("field") or "(file)",
                                           f"{error.get('reason')} (says the app)"))
            row.result, row.ok = "invalid for the app", False
        else:
            row.plan = answer.body.get("plan") if isinstance(answer.body, dict) else None
    return not report.errors


def _send(row: Row, call: Callable[[], Answer]) -> Answer | None:
    """One PUT or DELETE for `row`, recorded on it; None when the app refused it (the row says why).
    No answer at all stops the run (raised)."""
    try:
        answer = call()
    except Failed as exc:
        row.sent, row.ok, row.status, row.result = True, False, exc.status, f"error: {exc.message}"
        return None
    except (Unreachable, Refused):
        row.sent, row.ok, row.result = True, False, "error: no answer"
        raise
    row.sent, row.status = True, answer.status
    return answer


def _apply(report: Report, client: AppClient) -> None:
    """PUT every file to send, then, if all were accepted, DELETE the pruned teams."""
    for row in report.rows:
        if row.action in ("create", "update", "retry") and row.file is not None:
            answer = _send(row, functools.partial(client.put_team, row.team, row.file.source, row.file.text,
                                                  report.commit))
            if answer is not None:
                row.result = _put_result(answer.status, answer.body if isinstance(answer.body, dict) else {})
    failed = [row.team for row in report.rows if not row.ok]
    for row in report.rows:
        if row.action != "delete":
            continue
        if failed:
            row.result, row.ok = f"not sent: the update of {', '.join(failed)} failed", False
            continue
        answer = _send(row, functools.partial(client.delete_team, row.team))
        if answer is not None:
            row.result = "gone already (404)" if answer.status == 404 else \
                f"deletion accepted ({answer.status}); the timer removes its resources"
    if any(not row.ok for row in report.rows):
        report.exit_code = INVALID


def _put_result(status: int, body: dict[str, Any]) -> str:
    outcome, generation = body.get("outcome"), body.get("generation")
    if outcome == "created":
        return f"created ({status}), generation {generation}"
    if outcome == "updated":
        return f"updated ({status}), generation {generation}"
    if outcome == "retried":
        return f"retry accepted ({status}), generation {generation}"
    return f"grant unchanged ({status}), file recorded"


# --- output --------------------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """The plans of what changes, the table (team, action, result) and the summary line."""
    lines: list[str] = [str(issue) for issue in report.errors]
    for row in report.rows:
        if row.plan and row.action in WRITES:
            lines.append(f"# {row.source}" if row.file else f"# team {row.team}: {row.reason}")
            lines.append(str(row.plan.get("text", "")).rstrip())
            lines.append("")
    if report.rows:
        width = max(len("TEAM"), *(len(row.team) for row in report.rows))
        lines.append(f"{'TEAM':<{width}}  {'ACTION':<9}  RESULT")
        for row in report.rows:
            result = row.result or "-"
            if row.action not in WRITES or not row.sent:
                result = f"{result}: {row.reason}" if result not in ("", "-") else row.reason
            lines.append(f"{row.team:<{width}}  {row.action:<9}  {result}")
    lines.extend(f"warning: {warning}" for warning in report.warnings)
    if report.refused:
        lines.append(f"refused: {report.refused}")
    if report.failure:
        lines.append(f"error: {report.failure}")
    lines.append(report.summary())
    return "\n".join(lines)
