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
    "503": "the request store is unavailable; retry after Retry-After seconds",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json(schemas.ErrorBody, _ERRORS[code]) for code in codes}


@functools.cache
def document() -> dict[str, Any]:
    models = [schemas.KeyRequestBody, schemas.KeyRequestAnswer, schemas.RequestStatus, schemas.ModelInfo,
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
        "paths": {
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
                "summary": "Ask for a key; a second ask for the same email and model returns the first",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref(schemas.KeyRequestBody)}}},
                "responses": {"201": _json(schemas.KeyRequestAnswer, "a new request was recorded"),
                              "200": _json(schemas.KeyRequestAnswer, "an open request already exists"),
                              **_errors("400", "413", "415", "422", "503")}}},
            "/api/requests/{request_id}": {"get": {
                "operationId": "getRequestStatus", "summary": "A request's status (never its key)",
                "parameters": [{"name": "request_id", "in": "path", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}],
                "responses": {"200": _json(schemas.RequestStatus, "the status"), **_errors("404", "503")}}},
        },
        "components": {"schemas": components},
    }


@bp.function_name("openapi")
@bp.route(route="api/openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@handles_errors
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(document())
