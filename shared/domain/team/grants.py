"""From model entries as written to `ModelGrant`s: which catalog model each entry means, and which
limit applies to it. This is where the team-wide `limits` and a model entry's own limits meet (the
rules are in `_grants`'s docstring); every decision is written to `notes` for the plan, so no limit
is dropped or overridden without a word, and every entry that cannot be granted is an issue.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from shared.domain.team.catalog import TeamCatalog
from shared.domain.team.names import SAFE_MODEL_NAME
from shared.domain.team.reasons import _Collector
from shared.domain.team.schema import _LimitsIn
from shared.domain.team.sections import Entry
from shared.domain.team.spec import Counter, Kind, Limits, ModelGrant

Source = Literal["model", "team"]
# What the catalog says an entry is: (catalog name, KAITO preset, KAITO instance type).
CatalogModel = tuple[str, str | None, str | None]
# The limits one grant gets: (limits, counter, where each limit came from).
Applied = tuple[Limits, Counter, dict[str, Source]]


def _grants(entries: list[Entry], team_limits: Limits | None, catalog: TeamCatalog, issues: _Collector,
            notes: list[str], limits_broken: bool = False) -> list[ModelGrant]:
    """One grant per entry that names a catalog model once and has a limit.

    Which limit applies (never dropped silently: every decision is a note in the plan):
    1. A model entry with limits of its own gets its own counter (subscription + model); a limit
       the entry leaves out is taken from the team-wide `limits` (same number, still its own counter).
       Where both give the same limit, the model entry's wins.
    2. A model entry without limits shares the team-wide limits: one counter (the subscription) for
       every such model, so the team-wide numbers are the team's total across those models.
    3. A model with no limit from either is an error (unless the team-wide `limits` was itself
       broken, `limits_broken`: that problem is reported already).
    """
    grants: list[ModelGrant] = []
    seen: dict[str, str] = {}
    team = team_limits or Limits()
    for where, kind, name, own, instance_type in entries:
        model = _from_catalog(where, kind, name, own, instance_type, catalog, issues)
        if model is None:
            continue
        name, preset, catalog_instance = model
        if not _claim(where, own, name, preset, seen, issues):
            continue
        applied = _limits_for(where, name, own, team, issues, notes, limits_broken)
        if applied is None:
            continue
        limits, counter, sources = applied
        grants.append(ModelGrant(name=name, kind=kind, limits=limits, counter=counter, limit_sources=sources,
                                 preset=preset, instance_type=catalog_instance))
    return grants


def _from_catalog(where: str, kind: Kind, name: str, own: _LimitsIn | None, instance_type: str | None,
                  catalog: TeamCatalog, issues: _Collector) -> CatalogModel | None:
    """The catalog model an entry names; None (and an issue) when the catalog has no such model."""
    if kind == "foundry":
        if name not in catalog.foundry:
            close = difflib.get_close_matches(name, catalog.foundry, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            issues.add(_name_field(where, own), f"{name!r} is not a model in the catalog{hint}; known: "
                                                f"{', '.join(catalog.foundry)}")
            return None
        return name, None, None
    entry = catalog.kaito_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in catalog.kaito) or "none (config.yaml has no kaito_models)"
        issues.add(_name_field(where, own), f"{name!r} is not a KAITO model in the catalog; known: {known}")
        return None
    if instance_type is not None and instance_type != entry.instance_type:
        issues.add(f"{where}.instanceType",
                   f"{instance_type!r} is not the catalog's instance type for {entry.name} ({entry.instance_type}); "
                   "the catalog decides the GPU: remove instanceType from the file")
        return None
    return entry.name, entry.preset, entry.instance_type


def _claim(where: str, own: _LimitsIn | None, name: str, preset: str | None, seen: dict[str, str],
           issues: _Collector) -> bool:
    """Whether the model may be granted here: a name the gateway policy can hold, not granted before
    (by its name or its KAITO preset). `seen` records where each name was granted first."""
    if not SAFE_MODEL_NAME.match(name) or (preset and not SAFE_MODEL_NAME.match(preset)):
        issues.add(_name_field(where, own), f"{name!r} cannot be used in a gateway policy")
        return False
    key = name.lower()
    if key in seen:
        issues.add(_name_field(where, own), f"{name} is granted twice (also at {seen[key]}): list it once")
        return False
    seen[key] = where
    if preset:
        seen.setdefault(preset.lower(), where)
    return True


def _limits_for(where: str, name: str, own: _LimitsIn | None, team: Limits, issues: _Collector,
                notes: list[str], limits_broken: bool) -> Applied | None:
    """The limits one entry gets (rules 1 to 3 of `_grants`); None when it has none."""
    own_limits = Limits() if own is None else Limits(tokens_per_minute=own.tokensPerMinute,
                                                     daily_token_quota=own.dailyTokenQuota)
    label = f"{where} ({name})"
    if not own_limits.empty:
        return _own_limits(label, own_limits, team, notes)
    if team.empty:
        if not limits_broken:
            issues.add(where if own is None else f"{where}.tokensPerMinute",
                       f"{name} has no limit: give it tokensPerMinute and/or dailyTokenQuota, or set "
                       "team-wide limits: {tokensPerMinute, dailyTokenQuota}")
        return None
    sources: dict[str, Source] = {f: "team" for f, v in _pairs(team) if v is not None}
    notes.append(f"{label}: no limits of its own, so it shares the team-wide limits ({team.describe()}) "
                 "on one counter with every other such model")
    return team, "team", sources


def _own_limits(label: str, own_limits: Limits, team: Limits, notes: list[str]) -> Applied:
    """Rule 1: the entry's own limits on a counter of its own, gaps filled from the team-wide limits."""
    values: dict[str, int | None] = {}
    sources: dict[str, Source] = {}
    for field, value in _pairs(own_limits):
        team_value = dict(_pairs(team))[field]
        if value is not None:
            values[field] = value
            sources[field] = "model"
            if team_value is not None and team_value != value:
                notes.append(f"{label}: {field} {value:,} from the model entry overrides the team-wide "
                             f"{team_value:,} (per-model limits win)")
        elif team_value is not None:
            values[field] = team_value
            sources[field] = "team"
            notes.append(f"{label}: {field} {team_value:,} taken from the team-wide limits, counted for "
                         "this model alone")
        else:
            values[field] = None
    limits = Limits(tokens_per_minute=values["tokensPerMinute"], daily_token_quota=values["dailyTokenQuota"])
    return limits, "model", sources


def _name_field(where: str, own: Any) -> str:
    return where if own is None else f"{where}.name"


def _pairs(limits: Limits) -> list[tuple[str, int | None]]:
    return [("tokensPerMinute", limits.tokens_per_minute), ("dailyTokenQuota", limits.daily_token_quota)]
