"""GET /api/openapi.json: an OpenAPI 3.1 document of the public API, built from its pydantic schemas."""

from __future__ import annotations

import functools
from typing import Any

import azure.functions as func
from pydantic import BaseModel

from shared.http import schemas
from shared.http.responses import handles_errors, json_response

bp = func.Blueprint()

_ERRORS = {
    "400": "malformed JSON", "404": "not found", "413": "body over 16 KiB",
    "415": "not application/json", "422": "a field is invalid; `detail` names it",
    "403": "the address or its domain is blocked by the platform team",
    "409": "the same mailbox and model were denied less than requests.deny_cooldown ago (Retry-After)",
    "429": "over one of requests.limits; retry after Retry-After seconds",
    "503": "the request store is unavailable; retry after Retry-After seconds",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json(schemas.ErrorBody, _ERRORS[code]) for code in codes}


_ADMIN: list[dict[str, list[str]]] = [{"basicAuth": []}, {"apiKey": []}, {"appServiceAuth": []}]
_SECURITY = {
    "basicAuth": {"type": "http", "scheme": "basic", "description": "ADMIN_USERNAME / ADMIN_PASSWORD"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-functions-key", "description": "ADMIN_API_KEY"},
    "appServiceAuth": {"type": "apiKey", "in": "header", "name": "X-MS-CLIENT-PRINCIPAL",
                       "description": "App Service authentication with the ADMIN_ROLE app role"},
}
_ID = [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}]
_TEAM = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_ACCESS_YAML = {"required": True, "content": {
    "application/yaml": {"schema": {"type": "string", "description": "the access.yaml text"}},
    "application/json": {"schema": {"type": "object", "properties": {
        "path": {"type": "string"}, "content": {"type": "string"},
        "commit": {"type": "string", "pattern": "^[0-9a-fA-F]{7,64}$",
                   "description": "the git commit the file was sent from (PUT records it)"}},
        "required": ["content"]}}}}


def _op(summary: str, responses: dict[str, str], *, security: bool = True, **extra: Any) -> dict[str, Any]:
    """A documented operation whose answers are JSON described in prose."""
    op: dict[str, Any] = {"summary": summary, **extra, "responses": {
        code: {"description": text, "content": {"application/json": {"schema": (
            _ref(schemas.ErrorBody) if code[0] in "45" else {"type": "object"})}}}
        for code, text in responses.items()}}
    if security:
        op["security"] = _ADMIN
    return op


def _admin_paths() -> dict[str, Any]:
    decision = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "reason": {"type": "string", "maxLength": 1000}}}}}}
    acted = {"200": "done; the next timer tick does the rest", "401": "not authenticated",
             "404": "no such request", "409": "not in a state this applies to"}
    return {
        "/api/admin/verify": {"post": _op("Check admin credentials", {"200": "authenticated",
                                                                      "401": "not authenticated"},
                                          operationId="adminVerify")},
        "/api/admin/requests": {"get": _op(
            "List requests (a JSON array; the next page's token in the X-Continue-Token header)",
            {"200": "an array of {request_id, email, model, state, created_at, updated_at, expires_at}",
             "401": "not authenticated", "422": "bad filter, state, limit or continue token"},
            operationId="adminListRequests", parameters=[
                {"name": "filter", "in": "query", "schema": {"enum": ["pending", "review", "all"]}},
                {"name": "state", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "continue", "in": "query", "schema": {"type": "string"}}])},
        "/api/admin/requests/{request_id}": {"get": _op(
            "A request with its decision, attempts and last error (never a key)",
            {"200": "the request", "401": "not authenticated", "404": "no such request"},
            operationId="adminGetRequest", parameters=_ID)},
        **{f"/api/admin/requests/{{request_id}}/{action}": {"post": _op(
            f"{action.capitalize()} a request", acted, operationId=f"admin{action.capitalize()}Request",
            parameters=_ID, requestBody=decision)} for action in ("approve", "deny", "revoke")},
        **{f"/api/admin/requests/{{request_id}}/{action}": {"post": _op(
            summary, {**acted, "409": f"not active, or a {noun} is already in progress"},
            operationId=f"admin{action.capitalize()}Request", parameters=_ID, requestBody=decision)}
           for action, noun, summary in (
               ("renew", "renewal", "Renew an active key: the same key, a new expiry, after the rules agree again"),
               ("rotate", "rotation", "Rotate an active key: a new key is emailed, the old one stops after "
                                      "provisioning.rotation_grace"))},
        "/api/admin/requests/{request_id}/clear-denial": {"post": _op(
            "Let a denied mailbox and model ask again before requests.deny_cooldown runs out",
            {**acted, "409": "the request is not denied"}, operationId="adminClearDenial", parameters=_ID,
            requestBody=decision)},
        "/api/admin/blocks": {
            "get": _op("List the blocked addresses and domains", {"200": "{blocks: [{kind, value, reason, "
                                                                         "blocked_by, blocked_at}], continue_token}",
                                                                  "401": "not authenticated",
                                                                  "422": "bad limit or continue token"},
                       operationId="adminListBlocks", parameters=[
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                       "maximum": 500}},
                           {"name": "continue", "in": "query", "schema": {"type": "string"}}]),
            "put": _op("Block an address (its canonical form) or a domain (with its subdomains)",
                       {"201": "blocked", "200": "the block replaced", "401": "not authenticated",
                        "422": "name exactly one of address or domain, and a reason"},
                       operationId="adminPutBlock", requestBody={"required": True, "content": {"application/json": {
                           "schema": {"type": "object", "additionalProperties": False, "required": ["reason"],
                                      "properties": {"address": {"type": "string", "maxLength": 254},
                                                     "domain": {"type": "string", "maxLength": 253},
                                                     "reason": {"type": "string", "minLength": 1,
                                                                "maxLength": 1000}}}}}}),
            "delete": _op("Lift a block", {"200": "lifted", "401": "not authenticated", "404": "no such block",
                                           "422": "name exactly one of address or domain"},
                          operationId="adminDeleteBlock", parameters=[
                              {"name": "address", "in": "query", "schema": {"type": "string"}},
                              {"name": "domain", "in": "query", "schema": {"type": "string"}}])},
    }


def _link_paths() -> dict[str, Any]:
    token = [{"name": "token", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{83}$"},
              "description": "the signed, single-use token of a link in an email"}]

    def html_page(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"text/html": {"schema": {"type": "string"}}}}

    problems = {"400": html_page("not a link of ours (cut short, mistyped)"),
                "403": html_page("not signed by this app, or (POST) an Origin other than PUBLIC_BASE_URL's"),
                "404": html_page("the request no longer exists"),
                "409": html_page("nothing to do: the key is not active, or the same ask is under way"),
                "410": html_page("the link expired, or was used already")}
    return {"/api/links/{token}": {
        "get": {"operationId": "linkPage", "parameters": token,
                "summary": "The page a requester link opens: what will happen, and one button. Changes nothing",
                "responses": {"200": html_page("the confirmation page"), **problems}},
        "post": {"operationId": "linkAct", "parameters": token,
                 "summary": "The confirmation page's button: renews, rotates or revokes the key, or asks again, once",
                 "responses": {"200": html_page("done; the next timer tick does the rest"), **problems,
                               "422": html_page("request-again: the model or address is no longer accepted")}},
    }}


def _team_paths() -> dict[str, Any]:
    return {
        "/api/teams": {"get": _op(
            "List every team (paged): content hash of its stored file, state, last sync, source and commit",
            {"200": "{teams: [{team, content_sha256, phase, in_sync, last_sync_at, source, commit, ...}], "
                    "unreadable, continue, count}",
             "401": "not authenticated", "422": "bad limit or continue token"},
            operationId="listTeams", parameters=[
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "continue", "in": "query", "schema": {"type": "string"},
                 "description": "the previous page's `continue`"}])},
        "/api/teams/validate": {"post": _op(
            "Validate an access.yaml and show the plan (what would be created, changed, deleted)",
            {"200": "the plan", "413": "over 64 KiB", "415": "not YAML or JSON", "422": "the file's errors"},
            security=False, operationId="validateTeam", requestBody=_ACCESS_YAML)},
        "/api/teams/{name}": {
            "put": _op("Submit or update a team's access", {"201": "created; the timer provisions it",
                                                            "200": "unchanged",
                                                            "202": "updated; the timer reconciles it",
                                                            "401": "not authenticated", "422": "the file's errors"},
                       operationId="putTeam", parameters=_TEAM, requestBody=_ACCESS_YAML),
            "delete": _op("Remove a team's access", {"202": "accepted; the timer removes what `plan` lists",
                                                     "200": "with dryRun: the plan of the deletion, nothing changed",
                                                     "401": "not authenticated", "404": "no such team"},
                          operationId="deleteTeam", parameters=[*_TEAM, {
                              "name": "dryRun", "in": "query", "schema": {"type": "boolean"},
                              "description": "only answer what the deletion would remove"}]),
            "get": _op("A team's status (never its keys)", {"200": "the status", "401": "not authenticated",
                                                            "404": "no such team"},
                       operationId="getTeam", parameters=_TEAM),
        },
        "/api/teams/{name}/rotate": {"post": _op(
            "Rotate a team's keys without downtime: the key not in use is regenerated and written to "
            "{team}-api-key, the owner is told to switch, and the other key is regenerated after "
            "provisioning.rotation_grace (no body; never answers a key)",
            {"202": "requested (or a failed rotation resumed); the timer does it", "401": "not authenticated",
             "404": "no such team", "409": "the team is not ready, or a rotation is already running"},
            operationId="rotateTeamKeys", parameters=_TEAM)},
    }


def _public_paths() -> dict[str, Any]:
    return {
        "/api/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        "/api/docs": {"get": {"operationId": "apiDocs", "summary": "This document as a page (Swagger UI)",
                              "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        "/api/docs/{asset}": {"get": {
            "operationId": "apiDocsAsset",
            "summary": "A file of the API page (swagger-ui.css, swagger-ui-bundle.js, init.js)",
            "parameters": [{"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file"}, **_errors("404")}}},
        "/health": {"get": {"operationId": "health", "summary": "Liveness, and whether the store answers",
                            "responses": {"200": _json(schemas.Health, "healthy"),
                                          "503": _json(schemas.Health, "the store does not answer")}}},
        "/api/models": {"get": {"operationId": "listModels", "summary": "The model catalog",
                                "responses": {"200": _json(schemas.ModelList, "the models")}}},
        "/api/featured-models": {"get": {
            "operationId": "listFeaturedModels", "summary": "The featured models",
            "responses": {"200": _json(schemas.FeaturedModelList, "the featured models")}}},
        "/api/request-key": {"post": {
            "operationId": "requestKey",
            "summary": "Ask for a key; a second ask for the same mailbox and model returns the first",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref(schemas.KeyRequestBody)}}},
            "responses": {"201": _json(schemas.KeyRequestAnswer, "a new request was recorded"),
                          "200": _json(schemas.KeyRequestAnswer, "an open request already exists"),
                          **_errors("400", "403", "409", "413", "415", "422", "429", "503")}}},
        "/api/requests/{request_id}": {"get": {
            "operationId": "getRequestStatus", "summary": "A request's status (never its key)",
            "parameters": [{"name": "request_id", "in": "path", "required": True,
                            "schema": {"type": "string", "format": "uuid"}}],
            "responses": {"200": _json(schemas.RequestStatus, "the status"), **_errors("404", "503")}}},
    }


@functools.cache
def document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        schemas.KeyRequestBody, schemas.KeyRequestAnswer, schemas.RequestStatus, schemas.ModelInfo,
        schemas.ModelList, schemas.FeaturedModelInfo, schemas.FeaturedModelList, schemas.Health,
        schemas.ErrorBody]
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM key requestor", "version": "1.0.0",
                 "description": "Ask for a key to a large language model; get it by email once approved."},
        "paths": {**_public_paths(), **_admin_paths(), **_link_paths(), **_team_paths()},
        "components": {"schemas": components, "securitySchemes": _SECURITY},
    }


@bp.function_name("openapi")
@bp.route(route="api/openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@handles_errors
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(document())
