"""Problems found while reading one file, collected with their field path and worded for the team that
wrote it: `_Collector` gathers every issue (reading never stops at the first problem) and turns
pydantic's `ValidationError`s into reasons a team can act on, such as the key to write instead of a
known misspelling, the closest allowed key, and the offending value shown briefly.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.domain.team.issues import Issue

# Keys teams have used by mistake (or in the earlier flow's drafts), and what to write instead.
_RENAMES = {
    "tpm": "tokensPerMinute", "tokens_per_minute": "tokensPerMinute", "tokensPerMin": "tokensPerMinute",
    "tokenLimit": "tokensPerMinute", "rateLimit": "tokensPerMinute",
    "dailyQuota": "dailyTokenQuota", "tokensPerDay": "dailyTokenQuota", "daily_token_quota": "dailyTokenQuota",
    "tokenQuota": "dailyTokenQuota", "quota": "dailyTokenQuota", "dailyTokens": "dailyTokenQuota",
    "display_name": "displayName", "cost_center": "costCenter", "costcentre": "costCenter",
    "costCentre": "costCenter", "email": "owner", "ownerEmail": "owner",
    "instance_type": "instanceType", "vmSize": "instanceType", "sku": "instanceType",
    "deployments": "models", "workspace": "workspaces",
}


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[Issue] = []

    def add(self, field: str, reason: str) -> None:
        self.issues.append(Issue(self.source, field or "(top level)", reason))

    def pydantic(self, prefix: str, exc: ValidationError, allowed: Iterable[str] = ()) -> None:
        for error in exc.errors():
            loc = _join(prefix, *error["loc"])
            self.add(loc, _reason(error, list(allowed)))


def _join(prefix: str, *parts: Any) -> str:
    path = prefix
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _reason(error: Mapping[str, Any], allowed: list[str]) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        if key in _RENAMES:
            return f"unknown key; write {_RENAMES[key]} instead"
        close = difflib.get_close_matches(key, allowed, n=1)
        known = ", ".join(allowed)
        return f"unknown key{f' (did you mean {close[0]}?)' if close else ''}; allowed here: {known}"
    if kind == "missing":
        return "is required"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number greater than 0, not {_shown(value)}"
    if kind == "greater_than":
        return f"must be greater than 0, not {_shown(value)}"
    if kind == "string_type":
        hint = " (quote it in YAML: yes, no, on and off read as true/false)" if isinstance(value, bool) else ""
        return f"must be a string, not {_shown(value)}{hint}"
    if kind == "bool_type":
        return f"must be true or false, not {_shown(value)}"
    if kind in ("dict_type", "model_type"):
        return f"must be a mapping, not {_shown(value)}"
    if kind == "list_type":
        return f"must be a list, not {_shown(value)}"
    if kind == "string_too_long":
        return f"must be at most {error.get('ctx', {}).get('max_length')} characters"
    if kind == "string_too_short":
        return "must not be empty"
    return str(error["msg"])


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null (empty)"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)
