"""The tool catalogue: what each MCP tool is called, what it does, and the arguments it takes.

One table serves three readers: the trigger bindings (`toolProperties`, from which the Functions
host builds each tool's JSON input schema: types, enums, required), the argument check of every
call (`Tool.check`: the host only checks that required arguments are there), and the README's
tool list. Limits that JSON types cannot say (lengths, ranges) are in the descriptions too, so an
agent reads them before it calls.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from shared.domain.request import InvalidInput, State

STATES = tuple(state.value for state in State)
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "boolean": (bool,)}


@dataclasses.dataclass(frozen=True)
class Prop:
    name: str
    type: str  # string | integer | boolean
    description: str
    required: bool = False
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def binding(self) -> dict[str, Any]:
        """The property as the MCP extension's `toolProperties` entry."""
        return {"propertyName": self.name, "propertyType": self.type, "description": self.description,
                "isRequired": self.required, "isArray": False, "enumValues": list(self.enum)}

    def check(self, value: Any) -> Any:
        expected = _JSON_TYPES[self.type]
        # JSON has no int/bool distinction problem, Python does: True is an int.
        if not isinstance(value, expected) or (self.type == "integer" and isinstance(value, bool)):
            raise InvalidInput(self.name, f"must be a {self.type}, not {_json_type(value)}")
        if self.enum and value not in self.enum:
            raise InvalidInput(self.name, f"must be one of {', '.join(self.enum)}, not {str(value)[:64]!r}")
        if isinstance(value, int) and self.minimum is not None and value < self.minimum:
            raise InvalidInput(self.name, f"must be at least {self.minimum}")
        if isinstance(value, int) and self.maximum is not None and value > self.maximum:
            raise InvalidInput(self.name, f"must be at most {self.maximum}")
        return value


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    description: str
    props: tuple[Prop, ...] = ()

    @property
    def function_name(self) -> str:
        """The Functions function that serves this tool (what the Portal lists)."""
        return f"mcp_{self.name}"

    def binding(self) -> dict[str, Any]:
        """Keyword arguments of `Blueprint.mcp_tool_trigger` for this tool."""
        return {"arg_name": "context", "tool_name": self.name, "description": self.description,
                "tool_properties": json.dumps([p.binding() for p in self.props]), "use_result_schema": True}

    def check(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments, type-checked; InvalidInput names the first wrong one. An argument left
        out or sent as null is absent."""
        known = {p.name: p for p in self.props}
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise InvalidInput(unknown[0], f"is not an argument of {self.name} (it takes: "
                                           f"{', '.join(known) or 'no arguments'})")
        checked = {}
        for prop in self.props:
            value = arguments.get(prop.name)
            if value is None:
                if prop.required:
                    raise InvalidInput(prop.name, "is required")
                continue
            checked[prop.name] = prop.check(value)
        return checked


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


REQUEST_ID = Prop("request_id", "string", "The request id (a UUID), as the list tools return it.", required=True)
LIMIT = Prop("limit", "integer", f"How many requests at most, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT}).",
             minimum=1, maximum=MAX_LIMIT)
CONTINUE = Prop("continue_token", "string", "The `continue_token` of the previous page, to read the next one.")


def _reason(purpose: str, required: bool = False) -> Prop:
    return Prop("reason", "string", f"{purpose} At most 1000 characters.", required=required)


def _list_description(what: str) -> str:
    return (f"{what} Newest first within a page; each item has request_id, email, model, state, created_at and "
            "updated_at. A page holds at most `limit` requests; `continue_token` in the result (null "
            "on the last page) reads the next one. Never shows a key.")


_DECIDE = ("Only a request that is `pending` or `in-review` can be decided; any other state is refused "
           "with a tool error naming it (nothing changes). The decision is recorded on the request with "
           "who made it (decided-by `mcp:<client>`), when and why, and audited.")

TOOLS: dict[str, Tool] = {tool.name: tool for tool in (
    Tool("list_pending_requests", _list_description(
        "List the key requests in state `pending`: new, and not yet decided by the approval rules (the "
        "approval timer evaluates them on its next tick, every 30 seconds by default)."), (LIMIT, CONTINUE)),
    Tool("list_review_requests", _list_description(
        "List the key requests in state `in-review`: the review queue, waiting for a human. Decide each "
        "with approve_request or deny_request, or hand it back to the rules with set_pending."),
         (LIMIT, CONTINUE)),
    Tool("list_requests", _list_description("List the key requests in one state."), (
        Prop("state", "string", "The state: pending (new), in-review (waits for a human), approved "
             "(the key is being issued), active (issued and emailed), denied, revoking, revoked, failed, "
             "expired.", required=True, enum=STATES),
        LIMIT, CONTINUE)),
    Tool("get_request",
         "One key request in detail: email, model, state, decision, reason, decided_by, decided_at, "
         "attempts, last_error, next_attempt_at and the backend references (LiteLLM key alias, APIM "
         "subscription id). Never the key itself: keys reach the requester by email only.", (REQUEST_ID,)),
    Tool("approve_request",
         "Approve a key request. The approval timer then issues the key as the catalog says (LiteLLM "
         "and/or API Management) and emails it to the requester; the key never passes through this "
         "tool. " + _DECIDE, (REQUEST_ID, _reason("Why it is approved (recorded and audited)."))),
    Tool("deny_request",
         "Deny a key request; the requester is emailed the reason, and anything already issued for it "
         "is taken back. " + _DECIDE,
         (REQUEST_ID, _reason("Why it is denied: required, and sent to the requester.", required=True))),
    Tool("revoke_request",
         "Revoke the access of an `approved` or `active` request: the approval timer deletes its keys in "
         "the backends, then the request is `revoked`. Any other state is refused with a tool error "
         "naming it. Recorded with who (decided-by `mcp:<client>`), when and why, and audited.",
         (REQUEST_ID, _reason("Why access is revoked (recorded and audited)."))),
    Tool("set_pending",
         "Hand an `in-review` request back to the approval rules: it becomes `pending` and the next "
         "timer tick evaluates the rules again (for instance after an approval webhook that was down "
         "sent it to review). Only from in-review; any other state is refused with a tool error naming "
         "it. Recorded and audited like a decision.",
         (REQUEST_ID, _reason("Why it goes back to the rules (recorded and audited)."))),
    Tool("set_review",
         "Hold a `pending` request for a human: it becomes `in-review`, the reviewers are emailed, and "
         "the rules no longer decide it. Only from pending; any other state is refused with a tool error "
         "naming it. Recorded and audited like a decision.",
         (REQUEST_ID, _reason("Why it needs a human (recorded and audited)."))),
    Tool("request_new_key",
         "Request a key for someone, exactly as the requester page does: the same email checks (syntax, "
         "allowed domains), the catalog, and the approval rules afterwards. If that email already has an "
         "unfinished request for that model, that one is returned (created: false) instead of a new one. "
         "Once approved, the key is emailed to `email`; it is never returned here.", (
             Prop("email", "string", "The requester's email address (the key goes there). At most 254 "
                  "characters.", required=True),
             Prop("llm", "string", "A model id from get_available_models. At most 128 characters.",
                  required=True))),
    Tool("get_available_models",
         "The model catalog: id, title, description, icon and color of every model a key can be requested "
         "for. Pass the id as `llm` to request_new_key."),
    Tool("list_teams",
         "The teams that have access through an access.yaml file, in name order: team, owner, phase "
         "(pending, provisioning, ready, failed, deleting), generation and observed_generation, in_sync, source file "
         "and commit, when and by whom it was last synced, last_error. Never shows a key. Paged like the "
         "request lists (`teams`, `continue_token`).", (
             Prop("limit", "integer", f"How many teams at most, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT}).",
                  minimum=1, maximum=MAX_LIMIT),
             CONTINUE)),
    Tool("get_team",
         "One team's status: owner, models and limits, phase, the API Management product, subscription "
         "and Kubernetes Secret that hold its access (whether the Secret has keys, never the keys), KAITO "
         "workspaces, the steps done and the last error.",
         (Prop("name", "string", "The team name, as in its access.yaml (`team.name`).", required=True),)),
)}
