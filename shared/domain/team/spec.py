"""The normalised result of reading a team file: frozen models saying what a team is granted, whatever
shape the file was written in. Everything downstream (the gateway policy, the store, the reconciler)
works from `TeamSpec` alone, never from the file; the models round-trip through JSON
(`to_json`/`from_json`), and `fingerprint` covers what is provisioned but not how the file was
written.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.domain.team.names import workspace_name

Kind = Literal["foundry", "kaito"]
Counter = Literal["team", "model"]
LIMIT_FIELDS = ("tokensPerMinute", "dailyTokenQuota")  # the keys of `ModelGrant.limit_sources`


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Frozen):
    tokens_per_minute: int | None = None
    daily_token_quota: int | None = None

    @property
    def empty(self) -> bool:
        return self.tokens_per_minute is None and self.daily_token_quota is None

    def describe(self) -> str:
        parts = []
        if self.tokens_per_minute is not None:
            parts.append(f"{self.tokens_per_minute:,} tokens/min")
        if self.daily_token_quota is not None:
            parts.append(f"{self.daily_token_quota:,} tokens/day")
        return ", ".join(parts) or "no limit"


class ModelGrant(_Frozen):
    name: str  # the catalog id (foundry) or the catalog name (KAITO)
    kind: Kind
    limits: Limits
    counter: Counter  # "team": shares the team-wide counter; "model": subscription + model
    limit_sources: dict[str, Literal["model", "team"]] = Field(default_factory=dict)
    preset: str | None = None  # KAITO only
    instance_type: str | None = None  # KAITO only

    @property
    def aliases(self) -> tuple[str, ...]:
        """The names a client may send as `model` for this grant (a KAITO model serves under its preset)."""
        names = [self.name]
        if self.preset and self.preset != self.name:
            names.append(self.preset)
        return tuple(names)


class TeamSpec(_Frozen):
    name: str
    display_name: str
    owner: str
    cost_center: str | None = None
    limits: Limits | None = None  # the team-wide limits as written (None: none given)
    models: tuple[ModelGrant, ...]
    shape: str  # documented | per-model | catalog | mixed: how the file was written
    notes: tuple[str, ...] = ()  # every decision about limits and ignored entries, for the plan

    @property
    def foundry(self) -> tuple[ModelGrant, ...]:
        return tuple(m for m in self.models if m.kind == "foundry")

    @property
    def kaito(self) -> tuple[ModelGrant, ...]:
        return tuple(m for m in self.models if m.kind == "kaito")

    def workspaces(self) -> dict[str, ModelGrant]:
        return {workspace_name(self.name, m.preset or m.name): m for m in self.kaito}

    def fingerprint(self) -> str:
        """What the team is granted: equal fingerprints provision the same resources. How the
        file was written (shape, notes) is left out, so rewriting a file in another shape with
        the same effect changes nothing."""
        content = self.model_dump(mode="json", exclude={"shape", "notes"})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TeamSpec:
        return cls.model_validate(json.loads(text))
