"""GET /api/openapi.json: an OpenAPI 3.1 document of the public API, built from its pydantic schemas."""

from __future__ import annotations

import functools
from typing import Any

import azure.functions as func
from pydantic import BaseModel

from shared.http import schemas
from shared.http.openapi_admin import admin_paths, team_paths
from shared.http.openapi_parts import SECURITY, answer, errors, ref
from shared.http.responses import handles_errors, json_response

bp = func.Blueprint()

_ERRORS = {
    "400": "malformed JSON (or nested too deeply)", "404": "not found", "413": "body over 16 KiB",
    "415": "not application/json", "422": "a field is invalid; `detail` names it",
    "403": "the address or its domain is blocked by the platform team",
    "409": "the same mailbox and model were denied less than requests.deny_cooldown ago (Retry-After)",
    "429": "over one of requests.limits; retry after Retry-After seconds",
    "503": "the request store is unavailable; retry after Retry-After seconds",
}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return answer(description, ref(model))


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


def _public_paths() -> dict[str, Any]:
    return {
        "/api/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": answer("OpenAPI 3.1", {
                                          "type": "object", "required": ["openapi", "paths"]})}}},
        "/api/docs": {"get": {"operationId": "apiDocs", "summary": "This document as a page (Swagger UI)",
                              "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        "/api/docs/{asset}": {"get": {
            "operationId": "apiDocsAsset",
            "summary": "A file of the API page (swagger-ui.css, swagger-ui-bundle.js, init.js)",
            "parameters": [{"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file"}, **errors(_ERRORS, "404")}}},
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
                "schema": ref(schemas.KeyRequestBody)}}},
            "responses": {"201": answer(
                "recorded: a new request, or the unfinished one for the same mailbox and model (the same "
                "answer either way, so a caller cannot tell whether an address asked before)",
                ref(schemas.KeyRequestAnswer),
                {"Location": {"required": True, "description": "the request's status", "schema": {"type": "string"}}}),
                **errors(_ERRORS, "400", "403", "409", "413", "415", "422", "429", "503")}}},
        "/api/requests/{request_id}": {"get": {
            "operationId": "getRequestStatus", "summary": "A request's status (never its key)",
            "parameters": [{"name": "request_id", "in": "path", "required": True,
                            "schema": {"type": "string", "format": "uuid"}}],
            "responses": {"200": _json(schemas.RequestStatus, "the status"), **errors(_ERRORS, "404", "503")}}},
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
        "paths": {**_public_paths(), **admin_paths(), **_link_paths(), **team_paths()},
        "components": {"schemas": components, "securitySchemes": SECURITY},
    }


@bp.function_name("openapi")
@bp.route(route="api/openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@handles_errors
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(document())
