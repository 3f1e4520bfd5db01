"""Each top-level section of a team file read on its own (`team`, `limits`, `models.foundry`,
`models.kaito`). Every reader adds what is wrong to the shared `_Collector` and carries on, so one
pass reports every problem; the model sections accept all three shapes (documented, per model,
catalog) and reduce them to a flat list of `Entry`s, which grants.py then checks against the catalog
and the limits.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared.domain.request import InvalidInput, normalise_email
from shared.domain.team.catalog import TeamCatalog
from shared.domain.team.names import TEAM_NAME
from shared.domain.team.reasons import _Collector, _fields, _shown
from shared.domain.team.schema import (
    COST_CENTER_MAX,
    MAX_MODELS,
    _FoundryIn,
    _KaitoIn,
    _LimitsIn,
    _ModelIn,
    _TeamIn,
    _WorkspaceIn,
)
from shared.domain.team.spec import Kind, Limits

# One model entry as written: (path, kind, name, limits, instanceType).
Entry = tuple[str, Kind, str, _LimitsIn | None, str | None]


def _read_team(raw: Any, issues: _Collector, catalog: TeamCatalog) -> tuple[str, str, str, str | None] | None:
    if not isinstance(raw, dict):
        return None
    try:
        team = _TeamIn.model_validate(raw)
    except ValidationError as exc:
        issues.pydantic("team", exc, _fields(_TeamIn))
        return None
    ok = True
    name = team.name.strip()
    limit, why = catalog.max_team_name_length()
    if not TEAM_NAME.match(name):
        hint = f" (write {name.lower()!r})" if TEAM_NAME.match(name.lower()) else ""
        issues.add("team.name", f"{name!r} is not a DNS label: use lowercase letters, digits and '-', start "
                                f"with a letter, end with a letter or digit{hint}")
        ok = False
    elif len(name) > limit:
        issues.add("team.name", f"is {len(name)} characters; at most {limit} fit {why}")
        ok = False
    try:
        owner = normalise_email(team.owner)
    except InvalidInput as exc:
        issues.add("team.owner", exc.reason)
        ok = False
    cost_center = None if team.costCenter is None else str(team.costCenter).strip()
    if cost_center is not None and (not cost_center or len(cost_center) > COST_CENTER_MAX
                                    or not cost_center.isprintable()):
        issues.add("team.costCenter", f"must be 1 to {COST_CENTER_MAX} printable characters")
        ok = False
    display_name = (team.displayName or f"Team {name}").strip()
    if not display_name.isprintable():
        issues.add("team.displayName", "must be one line of printable text")
        ok = False
    elif "{{" in display_name or "}}" in display_name:
        # It reaches the team's APIM policy (the 403 body), where APIM replaces {{named-value}} at
        # run time: a secret named value would be shown to every caller refused a model.
        issues.add("team.displayName", "must not contain {{ or }}: APIM would replace {{name}} in the "
                                       "policy with the named value of that name")
        ok = False
    return (name, display_name, owner, cost_center) if ok else None


def _read_limits(raw: Any, path: str, issues: _Collector) -> Limits | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        issues.add(path, f"must be a mapping with tokensPerMinute and/or dailyTokenQuota, not {_shown(raw)}")
        return None
    try:
        limits = _LimitsIn.model_validate(raw)
    except ValidationError as exc:
        issues.pydantic(path, exc, _fields(_LimitsIn))
        return None
    return Limits(tokens_per_minute=limits.tokensPerMinute, daily_token_quota=limits.dailyTokenQuota)


def _read_foundry(raw: Any, issues: _Collector, entries: list[Entry], shapes: set[str], notes: list[str]) -> None:
    if raw is None:
        return
    if isinstance(raw, list):  # catalog shape
        shapes.add("catalog")
        _read_entries(raw, "models.foundry", "foundry", _ModelIn, issues, entries, shapes)
        return
    if not isinstance(raw, dict):
        issues.add("models.foundry", "must be a mapping {enabled, models: [...]} or a list of models "
                                     f"[{{name, tokensPerMinute, dailyTokenQuota}}], not {_shown(raw)}")
        return
    try:
        section = _FoundryIn.model_validate(raw)
    except ValidationError as exc:
        issues.pydantic("models.foundry", exc, _fields(_FoundryIn))
        return
    enabled = section.enabled if section.enabled is not None else bool(section.models)
    if not enabled:
        if section.models:
            listed = ", ".join(_entry_name(m) for m in section.models)
            notes.append(f"models.foundry is disabled (enabled: false): {listed} not granted")
        return
    if not section.models:
        issues.add("models.foundry.models", "foundry is enabled but lists no model: add models: [gpt-4o] "
                                            "(names from the catalog), or set enabled: false")
        return
    shapes.add("documented" if all(isinstance(m, str) for m in section.models) else "per-model")
    _read_entries(section.models, "models.foundry.models", "foundry", _ModelIn, issues, entries, shapes)


def _read_kaito(raw: Any, issues: _Collector, entries: list[Entry], shapes: set[str], notes: list[str]) -> None:
    if raw is None:
        return
    if isinstance(raw, list):  # catalog shape
        shapes.add("catalog")
        _read_entries(raw, "models.kaito", "kaito", _ModelIn, issues, entries, shapes)
        return
    if not isinstance(raw, dict):
        issues.add("models.kaito", "must be a mapping {enabled, workspaces: [...]} or a list of models "
                                   f"[{{name, tokensPerMinute, dailyTokenQuota}}], not {_shown(raw)}")
        return
    try:
        section = _KaitoIn.model_validate(raw)
    except ValidationError as exc:
        issues.pydantic("models.kaito", exc, _fields(_KaitoIn))
        return
    enabled = section.enabled if section.enabled is not None else bool(section.workspaces)
    if not enabled:
        if section.workspaces:
            listed = ", ".join(_entry_name(m) for m in section.workspaces)
            notes.append(f"models.kaito is disabled (enabled: false): {listed} not granted")
        return
    if not section.workspaces:
        issues.add("models.kaito", "kaito is enabled but names no model, and each KAITO model is a GPU "
                                   "workspace of its own: list them, e.g. workspaces: [{name: phi-3-mini}] "
                                   "(names from the catalog), or set enabled: false")
        return
    shapes.add("per-model")
    _read_entries(section.workspaces, "models.kaito.workspaces", "kaito", _WorkspaceIn, issues, entries, shapes)


def _entry_name(entry: Any) -> str:
    return str(entry.get("name", "?")) if isinstance(entry, dict) else str(entry)


def _read_entries(raw: list, path: str, kind: Kind, schema: type[_ModelIn] | type[_WorkspaceIn], issues: _Collector,
                  entries: list[Entry], shapes: set[str]) -> None:
    if len(raw) > MAX_MODELS:
        issues.add(path, f"lists {len(raw)} models; at most {MAX_MODELS}")
        return
    for index, item in enumerate(raw):
        where = f"{path}[{index}]"
        if isinstance(item, str):
            entries.append((where, kind, item.strip(), None, None))
        elif isinstance(item, dict):
            try:
                parsed = schema.model_validate(item)
            except ValidationError as exc:
                issues.pydantic(where, exc, _fields(schema))
                continue
            entries.append((where, kind, parsed.name.strip(), parsed, getattr(parsed, "instanceType", None)))
        else:
            issues.add(where, f"must be a model name or a mapping {{name, tokensPerMinute, dailyTokenQuota}}, "
                              f"not {_shown(item)}")
