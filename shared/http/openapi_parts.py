"""Building blocks of the OpenAPI document: references, JSON answers, the errors every kind of
operation can answer, and the admin security schemes. The fuzzing test (tests/test_openapi_fuzz.py)
holds every answer of the app to what these say, so an error an operation can give is listed here."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.http import schemas

RETRY_AFTER: dict[str, Any] = {"description": "seconds to wait before trying again", "schema": {"type": "string"}}

# What an admin call answers besides its own outcome: authentication, and the store.
ADMIN_ERRORS = {
    "401": "not authenticated (no WWW-Authenticate challenge: the panel has its own login form)",
    "403": "authenticated, but without the ADMIN_ROLE app role",
    "429": "too many failed logins from this address, or for this username (Retry-After)",
    "503": "the request store is unavailable, or the service is misconfigured",
}
# ...and what an admin change answers too: it is never a simple cross-site request.
WRITE_ERRORS = {
    **ADMIN_ERRORS,
    "400": "malformed JSON (or nested too deeply)",
    "403": "without the ADMIN_ROLE app role, or an Origin that is not one of CORS_ALLOWED_ORIGINS "
           "(or the app's own)",
    "409": "not in a state this applies to, or changed by someone else at the same moment",
    "413": "body over 16 KiB",
    "415": "no Content-Type: application/json (send it with an empty body when there is nothing to say)",
    "422": "a field or query parameter is invalid; `detail` names it",
}

ADMIN: list[dict[str, list[str]]] = [{"basicAuth": []}, {"apiKey": []}, {"appServiceAuth": []}]
SECURITY = {
    "basicAuth": {"type": "http", "scheme": "basic", "description": "ADMIN_USERNAME / ADMIN_PASSWORD"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-functions-key", "description": "ADMIN_API_KEY"},
    "appServiceAuth": {"type": "apiKey", "in": "header", "name": "X-MS-CLIENT-PRINCIPAL",
                       "description": "App Service authentication with the ADMIN_ROLE app role"},
}


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def answer(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def error(description: str, code: str) -> dict[str, Any]:
    """An error answer: ErrorBody, with Retry-After where the app always sends one."""
    headers: dict[str, Any] | None = {"Retry-After": {**RETRY_AFTER, "required": True}} if code == "429" else None
    if code == "503":  # a misconfigured service says so without one
        headers = {"Retry-After": RETRY_AFTER}
    return answer(description, ref(schemas.ErrorBody), headers)


def errors(catalog: dict[str, str], *codes: str, **overrides: str) -> dict[str, Any]:
    """The answers for `codes` from `catalog`, a code's text replaced by `overrides` (`_404=...`)."""
    texts = {**catalog, **{code.lstrip("_"): text for code, text in overrides.items()}}
    return {code: error(texts[code], code) for code in (codes or tuple(texts))}


def obj(*required: str, **properties: Any) -> dict[str, Any]:
    """A JSON object schema: these fields are always there; others may be."""
    schema: dict[str, Any] = {"type": "object", "required": list(required)}
    if properties:
        schema["properties"] = properties
    return schema


STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}


def op(summary: str, ok: dict[str, dict[str, Any]], failures: dict[str, Any], *, security: bool = True,
       **extra: Any) -> dict[str, Any]:
    """An operation: its successful answers and its failures."""
    operation: dict[str, Any] = {"summary": summary, **extra, "responses": {**ok, **failures}}
    if security:
        operation["security"] = ADMIN
    return operation
