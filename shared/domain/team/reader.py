"""Reading one access file end to end, and checking many together: the entry points the CLI, the
endpoints and the reconciler call. `read` runs the steps in order (size, strict YAML, the top-level
keys, each section, the grants, the folder name) and collects every issue instead of stopping at the
first; `parse` is the same for callers that want a spec or a `TeamFileError`, and `check_unique` is
the one rule that needs all files at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from shared.domain.team.catalog import TeamCatalog
from shared.domain.team.files import MAX_FILE_BYTES, folder_team, too_large
from shared.domain.team.grants import _grants
from shared.domain.team.issues import Issue, TeamFileError
from shared.domain.team.reasons import _Collector, _fields
from shared.domain.team.schema import _FileIn, _ModelsIn
from shared.domain.team.sections import Entry, _read_foundry, _read_kaito, _read_limits, _read_team
from shared.domain.team.spec import LIMIT_FIELDS, TeamSpec
from shared.domain.team.yaml_loader import load_yaml


def parse(text: str, source: str, catalog: TeamCatalog) -> TeamSpec:
    """Read one access file's text; TeamFileError lists every problem found."""
    spec, issues = read(text, source, catalog)
    if issues or spec is None:
        raise TeamFileError(issues or [Issue(source, "(file)", "cannot be read")])
    return spec


def read(text: str, source: str, catalog: TeamCatalog) -> tuple[TeamSpec | None, list[Issue]]:
    """(spec, problems). A file whose only problem is its folder still yields its spec, so a check
    over many files can tell which team each one claims.

    Three shapes are read (see docs/teams.md):

    - documented: `models.foundry: {enabled, models: [gpt-4o]}`, `models.kaito: {enabled}` and one
      team-wide `limits: {tokensPerMinute, dailyTokenQuota}`;
    - per model: `models.foundry: {enabled, models: [{name, tokensPerMinute, dailyTokenQuota}]}` and
      `models.kaito: {enabled, workspaces: [{name, instanceType}]}`;
    - catalog: `models.foundry: [{name, tokensPerMinute, dailyTokenQuota}]` and
      `models.kaito: [{name, tokensPerMinute, dailyTokenQuota}]` (KAITO models named from the catalog).

    Which limit applies to each model: see `grants._grants`.
    """
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        return None, [too_large(source)]
    try:
        raw = load_yaml(text, source)
    except TeamFileError as exc:
        return None, exc.issues
    issues = _Collector(source)
    spec = _read(raw, issues, catalog)
    expected = folder_team(source)
    if spec is not None and expected is not None and expected != spec.name:
        issues.add("team.name", f"is {spec.name!r} but the folder is {expected!r}: the folder name must "
                                f"match team.name (rename the folder to {spec.name}/ or set team.name: {expected})")
    return spec, issues.issues


def check_unique(specs: Iterable[tuple[str, TeamSpec]]) -> list[Issue]:
    """Two files claiming one team is an error, reported on each of them."""
    owners: dict[str, list[str]] = {}
    for source, spec in specs:
        owners.setdefault(spec.name, []).append(source)
    issues = []
    for team, sources in owners.items():
        if len(sources) > 1:
            for source in sources:
                others = ", ".join(s for s in sources if s != source)
                issues.append(Issue(source, "team.name", f"team {team!r} is also claimed by {others}; "
                                                         "one team, one file"))
    return issues


def _read(raw: dict[str, Any], issues: _Collector, catalog: TeamCatalog) -> TeamSpec | None:
    try:
        top = _FileIn.model_validate(raw)
    except ValidationError as exc:
        issues.pydantic("", exc, _fields(_FileIn))
        if not isinstance(raw.get("team"), dict):
            return None
        top = None
    team = _read_team(raw.get("team") if top is None else top.team, issues, catalog)
    before = len(issues.issues)
    team_limits = _read_limits(raw.get("limits") if top is None else top.limits, "limits", issues)
    limits_broken = len(issues.issues) > before  # then "has no limit" would only repeat the problem
    models_raw = raw.get("models") if top is None else top.models
    if not isinstance(models_raw, dict):
        return None
    try:
        models_in = _ModelsIn.model_validate(models_raw)
    except ValidationError as exc:
        issues.pydantic("models", exc, _fields(_ModelsIn))
        return None

    notes: list[str] = []
    shapes: set[str] = set()
    entries: list[Entry] = []
    _read_foundry(models_in.foundry, issues, entries, shapes, notes)
    _read_kaito(models_in.kaito, issues, entries, shapes, notes)

    grants = _grants(entries, team_limits, catalog, issues, notes, limits_broken)
    if not grants and not issues.issues:
        issues.add("models", "grants no model: enable foundry or kaito and list at least one model "
                             "(to remove the team's access, delete its folder instead)")
    if team is None or issues.issues:
        return None
    if team_limits is not None and not team_limits.empty and not any(g.limit_sources.get(f) == "team"
                                                                     for g in grants for f in LIMIT_FIELDS):
        notes.append("limits (team-wide) apply to no model: every model entry sets all of its own limits")
    name, display_name, owner, cost_center = team
    shape = shapes.pop() if len(shapes) == 1 else ("mixed" if shapes else "documented")
    return TeamSpec(name=name, display_name=display_name, owner=owner, cost_center=cost_center,
                    limits=team_limits, models=tuple(grants), shape=shape, notes=tuple(notes))
