"""What storing a team's file would create, change or delete, compared with what is stored.

Pure: the plan is computed from the parsed spec and the stored record; the PR check CLI
(`python -m shared.teams`), the check endpoint and the submit endpoint show it, and the delete
endpoint shows `deletion`'s (`python -m shared.teams sync --prune` prints it before deleting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from shared.domain.team import ModelGrant, TeamRecord, TeamSpec, keys_secret_name, product_id, subscription_id


@dataclasses.dataclass(frozen=True)
class Change:
    action: str  # create | update | delete | unchanged
    kind: str
    name: str
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "name": self.name, "details": list(self.details)}


@dataclasses.dataclass(frozen=True)
class Plan:
    team: str
    action: str  # create | update | unchanged | delete (`deletion`)
    shape: str
    changes: tuple[Change, ...]
    models: tuple[dict[str, Any], ...]
    limits: dict[str, Any] | None
    notes: tuple[str, ...]
    compared_with: dict[str, Any] | None  # the stored team, or None when nothing is stored
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"team": self.team, "action": self.action, "shape": self.shape,
                "compared_with": self.compared_with, "changes": [c.as_dict() for c in self.changes],
                "models": list(self.models), "limits": self.limits, "notes": list(self.notes),
                "warnings": list(self.warnings), "text": plan_text(self)}


_SYMBOL = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}


def plan_text(plan: Plan) -> str:
    against = "nothing stored" if plan.compared_with is None else \
        f"the stored team (generation {plan.compared_with.get('generation')}, {plan.compared_with.get('phase')})"
    lines = [f"Team {plan.team} ({plan.shape} shape): {plan.action}, compared with {against}"]
    width = max((len(c.kind) for c in plan.changes), default=0)
    for change in plan.changes:
        lines.append(f"  {_SYMBOL[change.action]} {change.action:<9} {change.kind:<{width}}  {change.name}")
        lines.extend(f"        {detail}" for detail in change.details)
    lines.append("Models (their access is removed):" if plan.action == "delete" else "Models:")
    for model in plan.models:
        lines.append(f"  {model['name']} ({model['kind']}): {model['summary']}")
    if plan.notes:
        lines.append("Notes:")
        lines.extend(f"  - {note}" for note in plan.notes)
    if plan.warnings:
        lines.append("Warnings:")
        lines.extend(f"  ! {warning}" for warning in plan.warnings)
    return "\n".join(lines)


def model_summary(grant: ModelGrant, spec: TeamSpec) -> dict[str, Any]:
    if grant.counter == "team":
        sharing = [g.name for g in spec.models if g.counter == "team"]
        counter = "team-wide counter (subscription), shared by " + ", ".join(sharing)
    else:
        counter = "own counter (subscription + model)"
    inherited = [field for field, source in grant.limit_sources.items() if source == "team"]
    sources = f"{', '.join(inherited)} from the team-wide limits" if grant.counter == "model" and inherited else ""
    summary = f"{grant.limits.describe()}; {counter}"
    if grant.kind == "kaito":
        summary += f"; KAITO preset {grant.preset} on {grant.instance_type}"
    return {"name": grant.name, "kind": grant.kind, "tokensPerMinute": grant.limits.tokens_per_minute,
            "dailyTokenQuota": grant.limits.daily_token_quota, "counter": grant.counter,
            "limitsFrom": dict(grant.limit_sources), "preset": grant.preset, "instanceType": grant.instance_type,
            "summary": summary + (f" ({sources})" if sources else "")}


def limits_dict(spec: TeamSpec) -> dict[str, Any] | None:
    if spec.limits is None:
        return None
    return {"tokensPerMinute": spec.limits.tokens_per_minute, "dailyTokenQuota": spec.limits.daily_token_quota}


def resources(spec: TeamSpec, api_ids: Sequence[str]) -> dict[tuple[str, str], dict[str, str]]:
    """Every resource the team gets, with the properties a plan compares."""
    product = product_id(spec.name)
    found: dict[tuple[str, str], dict[str, str]] = {
        ("APIM product", product): {"displayName": spec.display_name, "owner": spec.owner,
                                    "costCenter": spec.cost_center or "-", "state": "published",
                                    "subscriptionRequired": "true", "approvalRequired": "false",
                                    "subscriptionsLimit": "1"},
        ("APIM product policy", f"{product}/policy"): {
            grant.name: f"{grant.limits.describe()}, "
                        f"{'own counter' if grant.counter == 'model' else 'team-wide counter'}"
            for grant in spec.models},
    }
    for api in api_ids:
        found[("APIM product API link", f"{product}/apis/{api}")] = {}
    found[("APIM subscription", subscription_id(spec.name))] = {"scope": f"/products/{product}", "state": "active"}
    found[("Kubernetes Secret", keys_secret_name(spec.name))] = {
        "data": f"primary-key, secondary-key of {subscription_id(spec.name)}"}
    for name, grant in spec.workspaces().items():
        found[("KAITO Workspace", name)] = {"preset": grant.preset or "", "instanceType": grant.instance_type or ""}
    return found


UNREVEALED = ("owner and costCenter are compared with the stored team for authenticated callers only; "
              "send the admin credentials to see them")


def plan(spec: TeamSpec, stored: TeamRecord | None, api_ids: Sequence[str],
         warnings: Sequence[str] = (), reveal_stored: bool = True) -> Plan:
    """What storing `spec` would change, compared with the stored team (None: nothing stored).
    Without `reveal_stored` (an anonymous caller) the stored owner, cost centre and last error
    are not shown; what the file itself says always is."""
    current = stored if stored is not None and not stored.deleting else None
    new = resources(spec, api_ids)
    stored_spec = None if current is None else current.spec
    if stored_spec is not None and not reveal_stored:
        # Compare as if the stored owner and cost centre were the file's: neither the diff nor the
        # action may tell an anonymous caller whether a guess of them is right.
        stored_spec = stored_spec.model_copy(update={"owner": spec.owner, "cost_center": spec.cost_center})
    old = {} if current is None or stored_spec is None else resources(stored_spec,
                                                                      current.applied.get("apis") or api_ids)
    changes: list[Change] = []
    for key, props in new.items():
        if key not in old:
            details = tuple(f"{k}: {v}" for k, v in props.items())
            changes.append(Change("create", key[0], key[1], details))
        elif old[key] != props:
            before = old[key]
            lines: list[str] = []
            for field in sorted(set(before) | set(props)):
                if before.get(field) != props.get(field):
                    if field not in before:
                        lines.append(f"{field}: added ({props[field]})")
                    elif field not in props:
                        lines.append(f"{field}: removed (was {before[field]})")
                    else:
                        lines.append(f"{field}: {before[field]} -> {props[field]}")
            changes.append(Change("update", key[0], key[1], tuple(lines)))
        else:
            changes.append(Change("unchanged", key[0], key[1]))
    for key in old:
        if key not in new:
            changes.append(Change("delete", key[0], key[1]))
    if current is None:
        action = "create"
    elif stored_spec is not None and stored_spec.fingerprint() == spec.fingerprint():
        action = "unchanged"
    else:
        action = "update"
    compared = None if stored is None else _compared(stored)
    extra = list(warnings)
    if stored is not None and stored.deleting:
        extra.append(f"team {spec.name} is being deleted; storing this file cancels the deletion and re-creates it")
    if current is not None and not reveal_stored:
        extra.append(UNREVEALED)
    if stored is not None and stored.phase == "failed" and stored.last_error:
        extra.append(f"the stored team's last reconcile failed: {stored.last_error}" if reveal_stored
                     else "the stored team's last reconcile failed (authenticate to see why)")
    return Plan(team=spec.name, action=action, shape=spec.shape, changes=tuple(changes),
                models=tuple(model_summary(g, spec) for g in spec.models), limits=limits_dict(spec),
                notes=spec.notes, compared_with=compared, warnings=tuple(extra))


def deletion(stored: TeamRecord, api_ids: Sequence[str]) -> Plan:
    """What removing the stored team deletes: everything `resources` gives it (the API links it
    has, else those of APIM_TEAM_API_IDS), in the order the timer removes them."""
    apis = stored.applied.get("apis") or api_ids
    order = ("APIM subscription", "APIM product API link", "APIM product policy", "APIM product",
             "Kubernetes Secret", "KAITO Workspace")
    found = resources(stored.spec, apis)
    workspaces = set(stored.applied.get("workspaces") or ())
    for name in sorted(workspaces - {n for kind, n in found if kind == "KAITO Workspace"}):
        found[("KAITO Workspace", name)] = {}  # granted once, still there until the timer deletes it
    keys = sorted(found, key=lambda key: (order.index(key[0]), key[1]))
    changes = tuple(Change("delete", kind, name) for kind, name in keys)
    warnings = [f"team {stored.name} is already being deleted"] if stored.deleting else []
    return Plan(team=stored.name, action="delete", shape=stored.spec.shape, changes=changes,
                models=tuple(model_summary(g, stored.spec) for g in stored.spec.models),
                limits=limits_dict(stored.spec), notes=(),
                compared_with=_compared(stored),
                warnings=tuple(warnings))


def _compared(stored: TeamRecord) -> dict[str, Any]:
    return {"generation": stored.generation, "observed_generation": stored.observed_generation,
            "phase": stored.phase, "deleting": stored.deleting, "source": stored.source}
