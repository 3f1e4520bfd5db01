"""The OpenAPI paths of the admin API and the team access endpoints (shared/http/admin.py, teams.py)."""

from __future__ import annotations

from typing import Any

from shared.http.openapi_parts import (
    ADMIN_ERRORS,
    NULLABLE_STRING,
    STRING,
    WRITE_ERRORS,
    answer,
    errors,
    obj,
    op,
)

_ID = [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
_TEAM = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": "alpha"}]
# An access.yaml in the documented shape (docs/teams.md), for the API page's "Try it out".
_EXAMPLE_FILE = ("team:\n  name: alpha\n  displayName: AI Access - Team Alpha\n  owner: alpha-lead@example.com\n"
                 "  costCenter: CC-12345\nmodels:\n  foundry:\n    enabled: true\n    models: [gpt-4o]\n"
                 "limits:\n  tokensPerMinute: 5000\n  dailyTokenQuota: 1000000\n")
_PAGE = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
         {"name": "continue", "in": "query", "schema": {"type": "string"},
          "description": "the previous page's token"}]
_CONTINUE = {"X-Continue-Token": {"description": "the next page's token, when there is one", "schema": STRING}}
_ROW = obj("request_id", "email", "model", "state", "created_at", "updated_at", request_id=STRING, email=STRING,
           model=STRING, state=STRING, created_at=STRING, updated_at=STRING, expires_at=NULLABLE_STRING)
_ACTED = obj("success", "request_id", "state", "message", success={"type": "boolean"}, request_id=STRING,
             state=STRING, message=STRING)
_DECISION = {"content": {"application/json": {"schema": {"type": "object", "properties": {
    "reason": {"type": "string", "maxLength": 1000}}}}}}
_BLOCK = obj("kind", "value", kind={"enum": ["address", "domain"]}, value=STRING)
_ACCESS_YAML = {"required": True, "content": {
    "application/yaml": {"schema": {"type": "string", "description": "the access.yaml text"}, "example": _EXAMPLE_FILE},
    "application/json": {"example": {"path": "developer-requests/alpha/access.yaml", "content": _EXAMPLE_FILE},
                         "schema": {"type": "object", "properties": {
        "path": {"type": "string"}, "content": {"type": "string"},
        "commit": {"type": "string", "pattern": "^[0-9a-fA-F]{7,64}$",
                   "description": "the git commit the file was sent from (PUT records it)"}},
        "required": ["content"]}}}}
_TEAM_ANSWER = obj("team", "message", team=STRING, message=STRING)


def _decisions() -> dict[str, Any]:
    acted = answer("done; the next timer tick does the rest", _ACTED)
    failures = errors(WRITE_ERRORS, _404="no such request")
    paths: dict[str, Any] = {}
    for action, conflict in (("approve", "not pending or in review"), ("deny", "not pending or in review"),
                             ("revoke", "not approved or active"),
                             ("renew", "not active, or a renewal is already in progress"),
                             ("rotate", "not active, or a rotation is already in progress"),
                             ("clear-denial", "the request is not denied")):
        name = "".join(part.capitalize() for part in action.split("-"))
        paths[f"/api/admin/requests/{{request_id}}/{action}"] = {"post": op(
            f"{name} a request", {"200": acted}, {**failures, **errors(WRITE_ERRORS, "409", _409=conflict)},
            operationId=f"admin{name}Request" if action != "clear-denial" else "adminClearDenial",
            parameters=_ID, requestBody=_DECISION)}
    return paths


def _blocks() -> dict[str, Any]:
    block_body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "required": ["reason"],
        "properties": {"address": {"type": "string", "maxLength": 254}, "domain": {"type": "string", "maxLength": 253},
                       "reason": {"type": "string", "minLength": 1, "maxLength": 1000}}}}}}
    put = obj("success", "created", "block", "message", created={"type": "boolean"}, block=_BLOCK)
    listed = obj("blocks", "continue_token", blocks={"type": "array", "items": _BLOCK}, continue_token=NULLABLE_STRING)
    return {"/api/admin/blocks": {
        "get": op("List the blocked addresses and domains", {"200": answer("the blocks", listed, _CONTINUE)},
                  errors({**ADMIN_ERRORS, "422": "bad limit or continue token"}),
                  operationId="adminListBlocks", parameters=_PAGE),
        "put": op("Block an address (its canonical form) or a domain (with its subdomains)",
                  {"201": answer("blocked", put), "200": answer("the block replaced", put)},
                  errors(WRITE_ERRORS, _422="name exactly one of address or domain, and a reason"),
                  operationId="adminPutBlock", requestBody=block_body),
        "delete": op("Lift a block", {"200": answer("lifted", obj("success", "block", "message", block=_BLOCK))},
                     errors(WRITE_ERRORS, "401", "403", "404", "409", "415", "422", "429", "503",
                            _404="no such block", _422="name exactly one of address or domain"),
                     operationId="adminDeleteBlock", parameters=[
                         {"name": "address", "in": "query", "schema": {"type": "string"}},
                         {"name": "domain", "in": "query", "schema": {"type": "string"}}])}}


def admin_paths() -> dict[str, Any]:
    return {
        "/api/admin/verify": {"post": op(
            "Check admin credentials (changes nothing: no Content-Type or Origin rule)",
            {"200": answer("authenticated", obj("authenticated", "username", "method"))},
            errors(ADMIN_ERRORS), operationId="adminVerify")},
        "/api/admin/requests": {"get": op(
            "List requests (a JSON array; the next page's token in the X-Continue-Token header)",
            {"200": answer("newest first", {"type": "array", "items": _ROW}, _CONTINUE)},
            errors({**ADMIN_ERRORS, "422": "bad filter, state, limit or continue token"}),
            operationId="adminListRequests", parameters=[
                {"name": "filter", "in": "query", "schema": {"enum": ["pending", "review", "all"]}},
                {"name": "state", "in": "query", "schema": {"type": "string"}}, *_PAGE])},
        "/api/admin/requests/{request_id}": {"get": op(
            "A request with its decision, attempts and last error (never a key)",
            {"200": answer("the request", _ROW)}, errors({**ADMIN_ERRORS, "404": "no such request"}),
            operationId="adminGetRequest", parameters=_ID)},
        **_decisions(),
        **_blocks(),
    }


def team_paths() -> dict[str, Any]:
    team_errors = {**ADMIN_ERRORS, "404": "no such team (or not a team name)"}
    file_errors = {"400": "not UTF-8, or malformed JSON", "413": "over 64 KiB", "415": "not YAML or JSON",
                   "422": "the file's errors"}
    change = {**WRITE_ERRORS, **file_errors, "404": "not a team name", "415": "not YAML or JSON"}
    return {
        "/api/teams": {"get": op(
            "List every team (paged): content hash of its stored file, state, last sync, source and commit",
            {"200": answer("{teams: [{team, content_sha256, phase, in_sync, last_sync_at, source, commit, ...}], "
                           "unreadable, continue, count}", obj("teams", "count", teams={"type": "array"}))},
            errors({**ADMIN_ERRORS, "422": "bad limit or continue token"}), operationId="listTeams",
            parameters=_PAGE)},
        "/api/teams/validate": {"post": op(
            "Validate an access.yaml and show the plan (what would be created, changed, deleted); "
            "with admin credentials the plan also shows the stored owner, cost centre and last error",
            {"200": answer("the plan", obj("valid", "team", "message", "plan"))},
            errors({**file_errors, **ADMIN_ERRORS, "401": "credentials were sent, and they are wrong"}),
            security=False, operationId="validateTeam", requestBody=_ACCESS_YAML)},
        "/api/teams/{name}": {
            "put": op("Submit or update a team's access",
                      {"201": answer("created; the timer provisions it", _TEAM_ANSWER),
                       "200": answer("unchanged", _TEAM_ANSWER),
                       "202": answer("updated; the timer reconciles it", _TEAM_ANSWER)},
                      errors(change), operationId="putTeam", parameters=_TEAM, requestBody=_ACCESS_YAML),
            "delete": op("Remove a team's access",
                         {"202": answer("accepted; the timer removes what `plan` lists", _TEAM_ANSWER),
                          "200": answer("with dryRun: the plan of the deletion, nothing changed", _TEAM_ANSWER)},
                         errors({**WRITE_ERRORS, **team_errors, "422": "dryRun is not true or false"},
                                "401", "403", "404", "409", "415", "422", "429", "503"),
                         operationId="deleteTeam", parameters=[*_TEAM, {
                             "name": "dryRun", "in": "query", "schema": {"type": "boolean"},
                             "description": "only answer what the deletion would remove"}]),
            "get": op("A team's status (never its keys)", {"200": answer("the status", {"type": "object"})},
                      errors(team_errors), operationId="getTeam", parameters=_TEAM),
        },
        "/api/teams/{name}/rotate": {"post": op(
            "Rotate a team's keys without downtime: the key not in use is regenerated and written to "
            "{team}-api-key, the owner is told to switch, and the other key is regenerated after "
            "provisioning.rotation_grace (no body; never answers a key)",
            {"202": answer("requested (or a failed rotation resumed); the timer does it", _TEAM_ANSWER)},
            errors({**WRITE_ERRORS, **team_errors, "409": "the team is not ready, or a rotation is already running"},
                   "401", "403", "404", "409", "415", "429", "503"),
            operationId="rotateTeamKeys", parameters=_TEAM)},
    }
