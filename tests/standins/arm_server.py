"""A stand-in for Azure Resource Manager's API Management endpoints (api-version 2024-05-01).

APIM has no emulator, so the real `azure-mgmt-apimanagement` client talks to this over HTTPS
(a trustme CA: the SDK refuses a bearer token over plain http) with a bearer token required.
It keeps subscriptions (PUT/GET/PATCH/DELETE, POST listSecrets, regeneratePrimaryKey and
regenerateSecondaryKey; here), products, product policies, product-API links and tags
(arm_products.py) in plain dicts the tests inspect, answers with ARM resource shapes (id, name,
type, properties) and ARM error bodies, and honours If-Match (arm_common.py).
Behaviour taken from REAL-COMPONENTS.md and APIM's documented errors: a subscription is created
`submitted` unless `state` says otherwise, a GET never returns keys, expiry is set by PATCH, and a
product with subscriptions is not deleted without `deleteSubscriptions=true`. Stricter than ARM
on purpose: an unknown property in a body is a 400, so a misspelt field fails the test.
"""

from __future__ import annotations

import re
import secrets
import ssl
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import trustme

from tests.standins import Call, Reply, StandinServer
from tests.standins.arm_common import API_VERSION, PROVIDER, ApimService, Entity, arm_error, new_etag, now_text
from tests.standins.arm_products import ProductRoutes

__all__ = ["API_VERSION", "ApimService", "ArmStandin", "Entity", "arm_error"]

_SERVICE_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ApiManagement"
    r"/service/(?P<svc>[^/]+)(?P<rest>/.*)?$", re.IGNORECASE)
_ROUTES = [  # (kind, pattern of the path below the service)
    ("subscription/listSecrets", re.compile(r"^/subscriptions/(?P<sid>[^/]+)/listSecrets$")),
    ("subscription/regeneratePrimaryKey", re.compile(r"^/subscriptions/(?P<sid>[^/]+)/regeneratePrimaryKey$")),
    ("subscription/regenerateSecondaryKey", re.compile(r"^/subscriptions/(?P<sid>[^/]+)/regenerateSecondaryKey$")),
    ("subscription", re.compile(r"^/subscriptions/(?P<sid>[^/]+)$")),
    ("product/policy", re.compile(r"^/products/(?P<pid>[^/]+)/policies/(?P<policy>[^/]+)$")),
    ("product/apis", re.compile(r"^/products/(?P<pid>[^/]+)/apis$")),
    ("product/api", re.compile(r"^/products/(?P<pid>[^/]+)/apis/(?P<api>[^/]+)$")),
    ("product/subscriptions", re.compile(r"^/products/(?P<pid>[^/]+)/subscriptions$")),
    ("product/tags", re.compile(r"^/products/(?P<pid>[^/]+)/tags$")),
    ("product/tag", re.compile(r"^/products/(?P<pid>[^/]+)/tags/(?P<tag>[^/]+)$")),
    ("product", re.compile(r"^/products/(?P<pid>[^/]+)$")),
    ("tag", re.compile(r"^/tags/(?P<tag>[^/]+)$")),
]
_SUBSCRIPTION_PROPERTIES = {"ownerId", "scope", "displayName", "primaryKey", "secondaryKey", "state",
                            "allowTracing"}
_SUBSCRIPTION_PATCH_PROPERTIES = {"ownerId", "scope", "expirationDate", "displayName", "primaryKey",
                                  "secondaryKey", "state", "stateComment", "allowTracing"}
_SUBSCRIPTION_STATES = {"suspended", "active", "expired", "submitted", "rejected", "cancelled"}


class ArmStandin(ProductRoutes, StandinServer):
    """Fault keys: "<METHOD> <kind>", kind one of subscription, subscription/listSecrets,
    subscription/regeneratePrimaryKey, subscription/regenerateSecondaryKey, product, product/policy,
    product/apis, product/api, product/subscriptions, product/tags, product/tag, tag; or "*" for any call."""

    def __init__(self, token: str = "arm-token-" + secrets.token_urlsafe(12)) -> None:
        self._ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        super().__init__(ssl_context=context)
        self.token = token
        self.services: dict[tuple[str, str, str], ApimService] = {}
        self.issued_keys: set[str] = set()  # every subscription key ever made, for leak checks
        self._ca_dir = tempfile.TemporaryDirectory(prefix="arm-standin-")
        self.ca_pem_path = Path(self._ca_dir.name) / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem_path))

    def add_service(self, subscription_id: str, resource_group: str, name: str) -> ApimService:
        with self._lock:
            return self.services.setdefault((subscription_id, resource_group.lower(), name.lower()), ApimService())

    def add_product(self, service: ApimService, product_id: str, display_name: str | None = None,
                    state: str = "published") -> None:
        with self._lock:
            service.products[product_id] = Entity({"displayName": display_name or product_id,
                                                   "subscriptionRequired": True, "approvalRequired": False,
                                                   "state": state})

    def close(self) -> None:
        self.stop()
        self._ca_dir.cleanup()

    # --- dispatch -------------------------------------------------------------------------------

    def _match(self, path: str) -> tuple[str, dict[str, str]] | None:
        base = _SERVICE_PATH.match(path)
        if base is None:
            return None
        for kind, pattern in _ROUTES:
            found = pattern.match(base["rest"] or "")
            if found:
                return kind, {**base.groupdict(), **found.groupdict()}
        return None

    def fault_key(self, call: Call) -> str:
        matched = self._match(call.path)
        return f"{call.method} {matched[0] if matched else call.path}"

    def serve(self, call: Call) -> Reply:
        if call.headers.get("authorization") != f"Bearer {self.token}":
            reason = "is missing" if "authorization" not in call.headers else "is invalid"
            return arm_error(401, "AuthenticationFailed",
                             f"Authentication failed. The 'Authorization' header {reason}.")
        version = call.query.get("api-version")
        if version is None:
            return arm_error(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) "
                                                                 "is required for all requests.")
        if version != API_VERSION:
            return arm_error(400, "InvalidApiVersionParameter", f"The api-version '{version}' is invalid. "
                                                                 f"This stand-in speaks '{API_VERSION}'.")
        matched = self._match(call.path)
        if matched is None:
            return arm_error(404, "NotFound", f"No route for {call.method} {call.path}")
        kind, ids = matched
        with self._lock:
            service = self.services.get((ids["sub"], ids["rg"].lower(), ids["svc"].lower()))
            if service is None:
                return arm_error(404, "ResourceNotFound",
                                 f"The Resource '{PROVIDER}/{ids['svc']}' under resource group '{ids['rg']}' "
                                 "was not found.")
            handler = getattr(self, "_" + kind.replace("/", "_"))
            return handler(call, service, ids)

    # --- subscriptions -----------------------------------------------------------------------------------

    def _subscription_view(self, ids: dict[str, str], sid: str, entity: Entity) -> dict[str, Any]:
        shown = {k: v for k, v in entity.properties.items() if k not in ("primaryKey", "secondaryKey")}
        scope = shown.get("scope", "")
        if scope.startswith("/"):  # ARM answers with the scope's full resource id
            shown["scope"] = self._base_id(ids) + scope
        # A GET never carries keys: listSecrets does.
        return self._resource(ids, f"subscriptions/{sid}", "subscriptions",
                              {**shown, "primaryKey": None, "secondaryKey": None})

    def _subscription(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        sid = ids["sid"]
        entity = service.subscriptions.get(sid)
        if call.method == "GET":
            if entity is None:
                return arm_error(404, "ResourceNotFound", "Subscription not found.")
            return Reply(200, self._subscription_view(ids, sid, entity), {"ETag": entity.etag})
        if call.method == "DELETE":
            refused = self._precondition(call, entity, required=True) if entity else None
            if refused:
                return refused
            if entity is None:
                return Reply(204)  # ARM: deleting what is not there succeeds
            del service.subscriptions[sid]
            return Reply(200)
        if call.method == "PATCH":
            if entity is None:
                return arm_error(404, "ResourceNotFound", "Subscription not found.")
            refused = self._precondition(call, entity, required=True)
            if refused:
                return refused
            changes, refused = self._properties(call, _SUBSCRIPTION_PATCH_PROPERTIES)
            if refused:
                return refused
            if "state" in changes and changes["state"] not in _SUBSCRIPTION_STATES:
                return arm_error(400, "ValidationError", f"Invalid subscription state '{changes['state']}'.")
            if "expirationDate" in changes and not _is_datetime(changes["expirationDate"]):
                return arm_error(400, "ValidationError", "One or more fields contain incorrect values:",
                                 [{"code": "ValidationError", "target": "expirationDate",
                                   "message": "expirationDate must be an ISO 8601 date and time."}])
            entity.properties.update(changes)
            entity.etag = new_etag()
            return Reply(200, self._subscription_view(ids, sid, entity), {"ETag": entity.etag})
        if call.method == "PUT":
            return self._put_subscription(call, service, ids, sid, entity)
        return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")

    def _put_subscription(self, call: Call, service: ApimService, ids: dict[str, str], sid: str,
                          entity: Entity | None) -> Reply:
        refused = self._precondition(call, entity, required=False)
        if refused:
            return refused
        properties, refused = self._properties(call, _SUBSCRIPTION_PROPERTIES)
        if refused:
            return refused
        scope = str(properties.get("scope") or "")
        display_name = properties.get("displayName")
        if not isinstance(display_name, str) or not 1 <= len(display_name) <= 100:
            return arm_error(400, "ValidationError", "One or more fields contain incorrect values:",
                             [{"code": "ValidationError", "target": "displayName",
                               "message": "Display name is required and must be 1 to 100 characters long."}])
        short_scope = scope[len(self._base_id(ids)):] if scope.lower().startswith(self._base_id(ids).lower()) else scope
        product = re.fullmatch(r"/products/([^/]+)", short_scope)
        if not (product or short_scope == "/apis" or re.fullmatch(r"/apis/[^/]+", short_scope)):
            return arm_error(400, "ValidationError", "One or more fields contain incorrect values:",
                             [{"code": "ValidationError", "target": "scope", "message":
                               "Subscription scope should be one of '/apis', '/apis/{apiId}', "
                               "'/products/{productId}'"}])
        if product and product[1] not in service.products:
            return arm_error(404, "ResourceNotFound", f"Product '{product[1]}' not found.")
        state = properties.get("state") or "submitted"
        if state not in _SUBSCRIPTION_STATES:
            return arm_error(400, "ValidationError", f"Invalid subscription state '{state}'.")
        now = now_text()
        stored = {**(entity.properties if entity else {}), **properties, "scope": short_scope, "state": state}
        stored.setdefault("createdDate", now)
        stored.setdefault("primaryKey", secrets.token_hex(16))
        stored.setdefault("secondaryKey", secrets.token_hex(16))
        self.issued_keys.update((stored["primaryKey"], stored["secondaryKey"]))
        if state == "active":
            stored.setdefault("startDate", now)
        created = entity is None
        entity = entity or Entity({})
        entity.properties, entity.etag = stored, new_etag()
        service.subscriptions[sid] = entity
        return Reply(201 if created else 200, self._subscription_view(ids, sid, entity), {"ETag": entity.etag})

    def _subscription_listSecrets(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        entity = service.subscriptions.get(ids["sid"])
        if call.method != "POST":
            return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")
        if entity is None:
            return arm_error(404, "ResourceNotFound", "Subscription not found.")
        return Reply(200, {"primaryKey": entity.properties["primaryKey"],
                           "secondaryKey": entity.properties["secondaryKey"]}, {"ETag": entity.etag})

    def _regenerate(self, call: Call, service: ApimService, ids: dict[str, str], name: str) -> Reply:
        """ARM's regeneratePrimaryKey / regenerateSecondaryKey: POST, no body, 204; the subscription's
        other key and its ETag-guarded properties stay as they are, except the ETag itself."""
        if call.method != "POST":
            return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")
        entity = service.subscriptions.get(ids["sid"])
        if entity is None:
            return arm_error(404, "ResourceNotFound", "Subscription not found.")
        key = secrets.token_hex(16)
        self.issued_keys.add(key)
        entity.properties[name] = key
        entity.etag = new_etag()
        return Reply(204)

    def _subscription_regeneratePrimaryKey(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        return self._regenerate(call, service, ids, "primaryKey")

    def _subscription_regenerateSecondaryKey(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        return self._regenerate(call, service, ids, "secondaryKey")



def _is_datetime(value: Any) -> bool:
    if value is None:
        return True  # no expiry
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return False
    return True
