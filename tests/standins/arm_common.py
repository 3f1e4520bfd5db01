"""What the ARM stand-in's routes share (tests/standins/arm_server.py, arm_products.py): the
api-version, ARM error bodies, entities with ETags, one APIM service's state, and the resource
shapes, If-Match and body checks every route answers with."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.standins import Call, Reply

API_VERSION = "2024-05-01"
PROVIDER = "Microsoft.ApiManagement/service"


def arm_error(status: int, code: str, message: str, details: list[dict[str, str]] | None = None) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message, "details": details}})


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_etag() -> str:
    return f'"{uuid.uuid4().hex}"'


@dataclasses.dataclass
class Entity:
    properties: dict[str, Any]
    etag: str = dataclasses.field(default_factory=new_etag)


@dataclasses.dataclass
class ApimService:
    """One APIM instance's state. Subscription entities keep their keys in `properties`."""

    subscriptions: dict[str, Entity] = dataclasses.field(default_factory=dict)
    products: dict[str, Entity] = dataclasses.field(default_factory=dict)
    policies: dict[str, Entity] = dataclasses.field(default_factory=dict)  # product id -> its policy
    apis: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # API id -> properties
    product_apis: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # product id -> API ids
    tags: dict[str, Entity] = dataclasses.field(default_factory=dict)  # tag id -> {displayName}
    product_tags: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # product id -> tag ids


class ArmRoutes:
    """Resource shapes and request checks, for the route handlers of the stand-in."""

    @staticmethod
    def _base_id(ids: dict[str, str]) -> str:
        return (f"/subscriptions/{ids['sub']}/resourceGroups/{ids['rg']}/providers/"
                f"{PROVIDER}/{ids['svc']}")

    def _resource(self, ids: dict[str, str], path: str, kind: str, properties: dict[str, Any]) -> dict[str, Any]:
        """An ARM resource at `{service id}/{path}` of type `Microsoft.ApiManagement/service/{kind}`."""
        return {"id": f"{self._base_id(ids)}/{path}", "type": f"{PROVIDER}/{kind}", "name": path.rsplit("/", 1)[-1],
                "properties": properties}

    @staticmethod
    def _precondition(call: Call, entity: Entity | None, required: bool) -> Reply | None:
        if_match = call.headers.get("if-match")
        if if_match is None:
            if required:
                return arm_error(400, "ValidationError", "If-Match header is required.")
            return None
        if entity is None or (if_match != "*" and if_match != entity.etag):
            return arm_error(412, "PreconditionFailed", "The entity's ETag does not match the If-Match header.")
        return None

    @staticmethod
    def _properties(call: Call, allowed: set[str]) -> tuple[dict[str, Any], Reply | None]:
        body = call.body
        if not isinstance(body, dict) or not isinstance(body.get("properties", {}), dict):
            return {}, arm_error(400, "ValidationError", "The request body must be a JSON object with 'properties'.")
        properties = body.get("properties") or {}
        unknown = sorted(set(properties) - allowed)
        if unknown:
            return {}, arm_error(400, "ValidationError", "One or more fields contain incorrect values:",
                                 [{"code": "ValidationError", "target": name,
                                   "message": f"Unknown property '{name}'"} for name in unknown])
        return properties, None

    def _entity(self, call: Call, ids: dict[str, str], store: dict[str, Entity], key: str, path: str, kind: str,
                missing: str, allowed: set[str], build: Callable[[dict[str, Any]], dict[str, Any] | Reply],
                on_delete: Callable[[], Reply | None] | None = None) -> Reply:
        """GET, PUT (If-Match optional) and DELETE (If-Match required) of the ETagged entity
        `store[key]` at `{service id}/{path}`. `build(properties)` is what a PUT stores, or the
        Reply refusing it; `on_delete()` may refuse a DELETE (a Reply) or do what it cascades to."""
        entity = store.get(key)
        if call.method == "GET":
            if entity is None:
                return arm_error(404, "ResourceNotFound", missing)
            return Reply(200, self._resource(ids, path, kind, entity.properties), {"ETag": entity.etag})
        if call.method == "PUT":
            refused = self._precondition(call, entity, required=False)
            if refused:
                return refused
            properties, refused = self._properties(call, allowed)
            if refused:
                return refused
            built = build(properties)
            if isinstance(built, Reply):
                return built
            created = entity is None
            entity = store[key] = Entity(built)
            return Reply(201 if created else 200, self._resource(ids, path, kind, entity.properties),
                         {"ETag": entity.etag})
        if call.method == "DELETE":
            if entity is None:
                return Reply(204)
            refused = self._precondition(call, entity, required=True) or (on_delete() if on_delete else None)
            if refused:
                return refused
            del store[key]
            return Reply(200)
        return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")
