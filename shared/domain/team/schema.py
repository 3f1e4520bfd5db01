"""The shapes a team file may be written in, as strict pydantic input models using the camelCase keys
teams write. They check only types and known keys; every rule about meaning (catalog names, limits,
the team name) is applied afterwards by sections.py and grants.py, pydantic's errors are reworded by
reasons.py, and sections whose shape varies stay `Any` here and are read by hand.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

MAX_MODELS = 50
DISPLAY_NAME_MAX = 100
COST_CENTER_MAX = 64

PositiveInt = Annotated[int, Field(strict=True, gt=0)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _LimitsIn(_In):
    tokensPerMinute: PositiveInt | None = None
    dailyTokenQuota: PositiveInt | None = None


class _TeamIn(_In):
    name: str
    displayName: str | None = Field(None, min_length=1, max_length=DISPLAY_NAME_MAX)
    owner: str
    costCenter: str | int | None = None


class _ModelIn(_LimitsIn):
    name: str


class _WorkspaceIn(_LimitsIn):
    name: str
    instanceType: str | None = None


class _FoundryIn(_In):
    enabled: bool | None = None
    models: list[Any] = Field(default_factory=list)


class _KaitoIn(_In):
    enabled: bool | None = None
    workspaces: list[Any] = Field(default_factory=list)


class _ModelsIn(_In):
    foundry: Any = None
    kaito: Any = None


class _FileIn(_In):
    team: dict[str, Any]
    models: dict[str, Any]
    limits: dict[str, Any] | None = None
