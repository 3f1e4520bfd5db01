"""A team's `access.yaml`: the shapes teams already write, read into one normalised `TeamSpec`.

Pure: no I/O. The caller hands in the file's text (at most MAX_FILE_BYTES, checked before parsing)
and the catalog (`TeamCatalog`, built from config.yaml); this module says what the file grants, or
every problem it has, each as (file, field path, reason).

Three shapes are read (see docs/teams.md):

- documented: `models.foundry: {enabled, models: [gpt-4o]}`, `models.kaito: {enabled}` and one
  team-wide `limits: {tokensPerMinute, dailyTokenQuota}`;
- per model: `models.foundry: {enabled, models: [{name, tokensPerMinute, dailyTokenQuota}]}` and
  `models.kaito: {enabled, workspaces: [{name, instanceType}]}`;
- catalog: `models.foundry: [{name, tokensPerMinute, dailyTokenQuota}]` and
  `models.kaito: [{name, tokensPerMinute, dailyTokenQuota}]` (KAITO models named from the catalog).

Which limit applies (never dropped silently: every decision is a note in the plan):
1. A model entry with limits of its own gets its own counter (subscription + model); a limit
   the entry leaves out is taken from the team-wide `limits` (same number, still its own counter).
   Where both give the same limit, the model entry's wins.
2. A model entry without limits shares the team-wide limits: one counter (the subscription) for
   every such model, so the team-wide numbers are the team's total across those models.
3. A model with no limit from either is an error.

Names derive from `team.name`; the longest has to fit its own limit, so `max_team_name_length`
computes how long a team name may be with the current catalog (see its docstring).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import posixpath
import re
from datetime import datetime
from typing import Annotated, Any, Iterable, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.domain.request import InvalidInput, normalise_email

MAX_FILE_BYTES = 64 * 1024
FILE_NAMES = ("access.yaml", "access.yml")

# Kubernetes: a label value and a KAITO Workspace name (its Service and Deployment carry the
# name, so it must be a DNS-1035 label: lowercase, starts with a letter, at most 63).
K8S_LABEL_MAX = 63
# APIM: product ids up to 80 characters (as config.yaml's product_id), subscription ids up to 256.
APIM_PRODUCT_ID_MAX = 80
APIM_SUBSCRIPTION_ID_MAX = 256
K8S_SECRET_NAME_MAX = 253
STORE_PREFIX = "llm-team-access-"  # the team's record (shared/store/teams.py); named here for the length check

TEAM_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# What may appear inside a C# string literal in the product policy without escaping.
SAFE_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
MAX_MODELS = 50
DISPLAY_NAME_MAX = 100
COST_CENTER_MAX = 64

Kind = Literal["foundry", "kaito"]
Counter = Literal["team", "model"]
LIMIT_FIELDS = ("tokensPerMinute", "dailyTokenQuota")


# --- names derived from the team ------------------------------------------------------------------


def product_id(team: str) -> str:
    return f"product-{team}"


def subscription_id(team: str) -> str:
    return f"sub-{team}"


def keys_secret_name(team: str) -> str:
    return f"{team}-api-key"


def record_name(team: str) -> str:
    return STORE_PREFIX + team


def preset_slug(preset: str) -> str:
    """A KAITO preset as part of a DNS label: `llama-3.1-8b-instruct` -> `llama-3-1-8b-instruct`."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", preset.lower())).strip("-")


def workspace_name(team: str, preset: str) -> str:
    return f"{team}-{preset_slug(preset)}"


# --- the catalog as this module needs it ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KaitoEntry:
    name: str
    preset: str
    instance_type: str


@dataclasses.dataclass(frozen=True)
class TeamCatalog:
    """Model names a team may ask for: foundry ids (`AppConfig.models`) and KAITO models
    (`AppConfig.kaito_models`, by name; the preset name is accepted too)."""

    foundry: tuple[str, ...]
    kaito: tuple[KaitoEntry, ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> "TeamCatalog":
        return cls(foundry=tuple(m.id for m in config.models),
                   kaito=tuple(KaitoEntry(k.name, k.preset, k.instance_type) for k in config.kaito_models))

    def kaito_entry(self, name: str) -> KaitoEntry | None:
        for entry in self.kaito:
            if name in (entry.name, entry.preset):
                return entry
        return None

    def max_team_name_length(self) -> tuple[int, str]:
        """How long a team name may be, and which derived name sets that bound.

        Every name built from the team must fit its own limit:
        - `{team}-{preset}` (KAITO Workspace, a DNS-1035 label): 63 - 1 - len(longest preset);
        - the `team-phase`-style label values and the Workspace's `apps` label: 63;
        - `product-{team}` (APIM product id): 80 - 8 = 72;
        - `sub-{team}` (APIM subscription id): 256 - 4; `{team}-api-key` and
          `llm-team-access-{team}` (Secret names): 253 - 8 and 253 - 16.
        So: min(63, 72, 62 - longest preset), i.e. 40 with presets up to 22 characters
        (`phi-3-mini-4k-instruct`). The bound uses every preset in the catalog, not only the
        team's own: a team may enable any KAITO model later without having to rename itself.
        """
        bounds = [
            (K8S_LABEL_MAX, "Kubernetes label values carry the team name (63)"),
            (APIM_PRODUCT_ID_MAX - len(product_id("")), f"the APIM product id product-{{team}} (at most {APIM_PRODUCT_ID_MAX})"),
            (APIM_SUBSCRIPTION_ID_MAX - len(subscription_id("")), "the APIM subscription id sub-{team}"),
            (K8S_SECRET_NAME_MAX - len(keys_secret_name("")), "the Secret name {team}-api-key"),
            (K8S_SECRET_NAME_MAX - len(STORE_PREFIX), "the Secret name llm-team-access-{team}"),
        ]
        if self.kaito:
            longest = max(self.kaito, key=lambda e: len(preset_slug(e.preset)))
            slug = preset_slug(longest.preset)
            bounds.append((K8S_LABEL_MAX - 1 - len(slug),
                           f"the KAITO Workspace name {{team}}-{slug} (at most {K8S_LABEL_MAX}; "
                           f"{slug} is the catalog's longest preset)"))
        return min(bounds, key=lambda b: b[0])


# --- problems -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Issue:
    source: str  # the file (or "(body)")
    field: str  # a path such as models.foundry.models[0].tokensPerMinute, or "(file)"
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.reason}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.source, "field": self.field, "reason": self.reason}


class TeamFileError(Exception):
    """The file cannot be used; `issues` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


# --- the normalised result -------------------------------------------------------------------------------


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
    def from_json(cls, text: str) -> "TeamSpec":
        return cls.model_validate(json.loads(text))


# --- the shapes as written ------------------------------------------------------------------------------

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


# --- YAML ------------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (PyYAML keeps the last one silently, which could
    drop a limit without a word)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                    key_node.start_mark) from None
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(text: str, source: str) -> dict[str, Any]:
    """The document as a mapping, or TeamFileError naming the line."""
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TeamFileError([Issue(source, "(file)", f"not valid YAML{where}: {problem}")]) from None
    if raw is None:
        raise TeamFileError([Issue(source, "(file)", "is empty; it needs team and models (see docs/teams.md)")])
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, list) else f"a {type(raw).__name__}"
        raise TeamFileError([Issue(source, "(top level)",
                                   f"must be a mapping with team and models, not {kind}")])
    return raw


def decode(data: bytes, source: str) -> str:
    """The file's bytes as text: at most MAX_FILE_BYTES, UTF-8 (a BOM is fine)."""
    if len(data) > MAX_FILE_BYTES:
        raise TeamFileError([too_large(source, len(data))])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TeamFileError([Issue(source, "(file)", f"is not UTF-8 text (byte {exc.start})")]) from None


def too_large(source: str, size: int | None = None) -> Issue:
    shown = f"{size:,} bytes" if size is not None else f"more than {MAX_FILE_BYTES:,} bytes"
    return Issue(source, "(file)", f"is {shown}; an access file may be at most {MAX_FILE_BYTES:,} bytes "
                                   "(64 KiB), so it was not read")


# --- reading one file ------------------------------------------------------------------------------------


def folder_team(source: str) -> str | None:
    """`developer-requests/alpha/access.yaml` -> `alpha`: the folder names the team when the file
    is called access.yaml (or .yml); None for any other file name."""
    path = source.replace("\\", "/")
    if posixpath.basename(path) not in FILE_NAMES:
        return None
    folder = posixpath.basename(posixpath.dirname(path))
    return folder or None


def parse(text: str, source: str, catalog: TeamCatalog) -> TeamSpec:
    """Read one access file's text; TeamFileError lists every problem found."""
    spec, issues = read(text, source, catalog)
    if issues or spec is None:
        raise TeamFileError(issues or [Issue(source, "(file)", "cannot be read")])
    return spec


def read(text: str, source: str, catalog: TeamCatalog) -> tuple[TeamSpec | None, list[Issue]]:
    """(spec, problems). A file whose only problem is its folder still yields its spec, so a check
    over many files can tell which team each one claims."""
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
    entries: list[tuple[str, Kind, str, _LimitsIn | None, str | None]] = []  # (path, kind, name, limits, instanceType)
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


def _read_foundry(raw: Any, issues: _Collector, entries: list, shapes: set[str], notes: list[str]) -> None:
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


def _read_kaito(raw: Any, issues: _Collector, entries: list, shapes: set[str], notes: list[str]) -> None:
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


def _read_entries(raw: list, path: str, kind: Kind, schema: type[_LimitsIn], issues: _Collector,
                  entries: list, shapes: set[str]) -> None:
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


def _grants(entries: list, team_limits: Limits | None, catalog: TeamCatalog, issues: _Collector,
            notes: list[str], limits_broken: bool = False) -> list[ModelGrant]:
    grants: list[ModelGrant] = []
    seen: dict[str, str] = {}
    team = team_limits or Limits()
    for where, kind, name, own, instance_type in entries:
        preset = None
        catalog_instance = None
        if kind == "foundry":
            if name not in catalog.foundry:
                close = difflib.get_close_matches(name, catalog.foundry, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                issues.add(_name_field(where, own), f"{name!r} is not a model in the catalog{hint}; known: "
                                                    f"{', '.join(catalog.foundry)}")
                continue
        else:
            entry = catalog.kaito_entry(name)
            if entry is None:
                known = ", ".join(e.name for e in catalog.kaito) or "none (config.yaml has no kaito_models)"
                issues.add(_name_field(where, own), f"{name!r} is not a KAITO model in the catalog; known: {known}")
                continue
            name, preset, catalog_instance = entry.name, entry.preset, entry.instance_type
            if instance_type is not None and instance_type != catalog_instance:
                issues.add(f"{where}.instanceType",
                           f"{instance_type!r} is not the catalog's instance type for {name} ({catalog_instance}); "
                           "the catalog decides the GPU: remove instanceType from the file")
                continue
        if not SAFE_MODEL_NAME.match(name) or (preset and not SAFE_MODEL_NAME.match(preset)):
            issues.add(_name_field(where, own), f"{name!r} cannot be used in a gateway policy")
            continue
        key = name.lower()
        if key in seen:
            issues.add(_name_field(where, own), f"{name} is granted twice (also at {seen[key]}): list it once")
            continue
        seen[key] = where
        if preset:
            seen.setdefault(preset.lower(), where)

        own_limits = Limits() if own is None else Limits(tokens_per_minute=own.tokensPerMinute,
                                                         daily_token_quota=own.dailyTokenQuota)
        label = f"{where} ({name})"
        if own_limits.empty:
            if team.empty:
                if limits_broken:
                    continue
                issues.add(where if own is None else f"{where}.tokensPerMinute",
                           f"{name} has no limit: give it tokensPerMinute and/or dailyTokenQuota, or set "
                           "team-wide limits: {tokensPerMinute, dailyTokenQuota}")
                continue
            limits, counter = team, "team"
            sources = {f: "team" for f, v in _pairs(team) if v is not None}
            notes.append(f"{label}: no limits of its own, so it shares the team-wide limits ({team.describe()}) "
                         "on one counter with every other such model")
        else:
            counter = "model"
            values: dict[str, int | None] = {}
            sources = {}
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
        grants.append(ModelGrant(name=name, kind=kind, limits=limits, counter=counter, limit_sources=sources,
                                 preset=preset, instance_type=catalog_instance))
    return grants


def _name_field(where: str, own: Any) -> str:
    return where if own is None else f"{where}.name"


def _pairs(limits: Limits) -> list[tuple[str, int | None]]:
    return [("tokensPerMinute", limits.tokens_per_minute), ("dailyTokenQuota", limits.daily_token_quota)]


# --- the stored team --------------------------------------------------------------------------------------

Phase = Literal["pending", "provisioning", "ready", "failed", "deleting"]


@dataclasses.dataclass(frozen=True)
class TeamRecord:
    """A team as stored: its desired spec (generation) and how far reconciling it got.

    `generation` grows with every change of what the team is granted (or a deletion request);
    `observed_generation` is the last generation fully reconciled. A team is settled when they
    are equal and its phase is final (ready or failed); the timer's sweep skips settled teams.
    """

    name: str
    spec: TeamSpec
    generation: int
    observed_generation: int
    phase: Phase
    created_at: datetime
    updated_at: datetime
    deleting: bool = False
    settled: bool = False
    source: str | None = None
    submitted_by: str | None = None
    submitted_at: datetime | None = None
    provisioned_at: datetime | None = None  # first time the owner was told "provisioned"
    steps: Mapping[str, datetime] = dataclasses.field(default_factory=dict)  # done in this generation
    applied: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # what is provisioned now
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    lease_holder: str | None = None
    lease_until: datetime | None = None
    resource_version: str | None = None

    def done(self, step: str) -> bool:
        return step in self.steps

    def leased_by_other(self, holder: str, now: datetime) -> bool:
        return (self.lease_holder not in (None, holder) and self.lease_until is not None
                and self.lease_until > now)

    def with_changes(self, now: datetime, **changes: Any) -> "TeamRecord":
        return dataclasses.replace(self, updated_at=now, **changes)

    def next_generation(self, now: datetime, **changes: Any) -> "TeamRecord":
        """A new desired state: its work starts from nothing."""
        fresh: dict[str, Any] = {"generation": self.generation + 1, "steps": {}, "settled": False,
                                 "attempts": 0, "last_error": None, "next_attempt_at": None}
        return self.with_changes(now, **{**fresh, **changes})
