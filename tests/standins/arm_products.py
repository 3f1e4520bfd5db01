"""The ARM stand-in's product routes: products, their policy, their API links and their tags.

Tags as APIM keeps them: a tag is an entity of the service (`/tags/{tagId}`, PUT/GET/DELETE),
assigned to a product by a link (`/products/{productId}/tags/{tagId}`, PUT/GET/HEAD/DELETE; the
product's list at `/products/{productId}/tags`). A product PUT leaves its links alone; deleting the
product removes them, deleting the tag removes every link to it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from typing import Any

from tests.standins import Call, Reply
from tests.standins.arm_common import ApimService, ArmRoutes, arm_error

_PRODUCT_PROPERTIES = {"displayName", "description", "terms", "subscriptionRequired", "approvalRequired",
                       "subscriptionsLimit", "state"}
_POLICY_FORMATS = {"xml", "xml-link", "rawxml", "rawxml-link"}


class ProductRoutes(ArmRoutes):
    def _product(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        pid = ids["pid"]

        def build(properties: dict[str, Any]) -> dict[str, Any] | Reply:
            if not isinstance(properties.get("displayName"), str) or not properties["displayName"]:
                return arm_error(400, "ValidationError", "One or more fields contain incorrect values:",
                                 [{"code": "ValidationError", "target": "displayName",
                                   "message": "Display name is required."}])
            if properties.get("state", "notPublished") not in ("notPublished", "published"):
                return arm_error(400, "ValidationError", f"Invalid product state '{properties['state']}'.")
            return {"state": "notPublished", **properties}

        def on_delete() -> Reply | None:
            subscribed = [sid for sid, s in service.subscriptions.items()
                          if s.properties["scope"] == f"/products/{pid}"]
            if subscribed and call.query.get("deleteSubscriptions", "").lower() != "true":
                return arm_error(400, "ValidationError", "Product cannot be deleted since it has existing "
                                 "subscriptions. Delete subscriptions before deleting the product or pass in "
                                 "deleteSubscriptions=true as query param")
            for sid in subscribed:
                del service.subscriptions[sid]
            service.policies.pop(pid, None)
            service.product_apis.pop(pid, None)
            service.product_tags.pop(pid, None)
            return None

        return self._entity(call, ids, service.products, pid, f"products/{pid}", "products", "Product not found.",
                            _PRODUCT_PROPERTIES, build, on_delete)

    def _product_policy(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        pid, name = ids["pid"], ids["policy"]
        if pid not in service.products:
            return arm_error(404, "ResourceNotFound", "Product not found.")
        if name != "policy":
            return arm_error(400, "ValidationError", "The only policy id is 'policy'.")

        def build(properties: dict[str, Any]) -> dict[str, Any] | Reply:
            value, fmt = properties.get("value"), properties.get("format", "xml")
            problem = _policy_problem(value, fmt)
            return arm_error(400, "ValidationError", problem) if problem else {"format": fmt, "value": value}

        return self._entity(call, ids, service.policies, pid, f"products/{pid}/policies/{name}", "products/policies",
                            "Policy not found.", {"value", "format"}, build)

    def _product_apis(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        pid = ids["pid"]
        if pid not in service.products:
            return arm_error(404, "ResourceNotFound", "Product not found.")
        if call.method != "GET":
            return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")
        linked = sorted(service.product_apis.get(pid, set()))
        return Reply(200, {"value": [self._resource(ids, f"apis/{a}", "apis", service.apis[a]) for a in linked],
                           "count": len(linked), "nextLink": None})

    def _product_api(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        pid, api = ids["pid"], ids["api"]
        if pid not in service.products:
            return arm_error(404, "ResourceNotFound", "Product not found.")
        linked = service.product_apis.setdefault(pid, set())
        if call.method in ("GET", "HEAD"):
            return Reply(204) if api in linked else arm_error(404, "ResourceNotFound", "API not found in product.")
        if call.method == "PUT":
            if api not in service.apis:
                return arm_error(404, "ResourceNotFound", "API not found.")
            created = api not in linked
            linked.add(api)
            return Reply(201 if created else 200, self._resource(ids, f"apis/{api}", "apis", service.apis[api]))
        if call.method == "DELETE":
            if api not in linked:
                return Reply(204)
            linked.discard(api)
            return Reply(200)
        return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")

    def _product_subscriptions(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        """ProductSubscriptions - List: the subscriptions scoped to the product (a GET, so no keys)."""
        def subscribed(pid: str) -> list[dict]:
            view = self._subscription_view  # arm_server.ArmStandin's: the shape of a subscription GET
            return [view(ids, sid, entity) for sid, entity in sorted(service.subscriptions.items())
                    if entity.properties.get("scope") == f"/products/{pid}"]

        return _product_collection(call, service, ids["pid"], subscribed)

    # --- tags ------------------------------------------------------------------------------------------

    def _tag(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        tag = ids["tag"]

        def build(properties: dict[str, Any]) -> dict[str, Any] | Reply:
            name = properties.get("displayName")
            if not isinstance(name, str) or not 1 <= len(name) <= 160:
                return arm_error(400, "ValidationError", "One or more fields contain incorrect values:",
                                 [{"code": "ValidationError", "target": "displayName",
                                   "message": "Display name is required and must be 1 to 160 characters long."}])
            return {"displayName": name}

        def on_delete() -> None:
            for linked in service.product_tags.values():
                linked.discard(tag)

        return self._entity(call, ids, service.tags, tag, f"tags/{tag}", "tags", "Tag not found.", {"displayName"},
                            build, on_delete)

    def _product_tags(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        def linked(pid: str) -> list[dict]:
            return [self._resource(ids, f"products/{pid}/tags/{t}", "products/tags", service.tags[t].properties)
                    for t in sorted(service.product_tags.get(pid, set()))]

        return _product_collection(call, service, ids["pid"], linked)

    def _product_tag(self, call: Call, service: ApimService, ids: dict[str, str]) -> Reply:
        pid, tag = ids["pid"], ids["tag"]
        if pid not in service.products:
            return arm_error(404, "ResourceNotFound", "Product not found.")
        linked = service.product_tags.setdefault(pid, set())
        path = f"products/{pid}/tags/{tag}"
        if call.method in ("GET", "HEAD"):
            if tag not in linked:
                return arm_error(404, "ResourceNotFound", "Tag not found.")
            entity = service.tags[tag]
            body = None if call.method == "HEAD" else self._resource(ids, path, "products/tags", entity.properties)
            return Reply(200, body, {"ETag": entity.etag})
        if call.method == "PUT":
            if tag not in service.tags:
                return arm_error(404, "ResourceNotFound", "Tag not found.")
            created = tag not in linked
            linked.add(tag)
            return Reply(201 if created else 200,
                         self._resource(ids, path, "products/tags", service.tags[tag].properties))
        if call.method == "DELETE":
            if tag not in linked:
                return Reply(204)
            linked.discard(tag)
            return Reply(200)
        return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")


def _policy_problem(value: Any, fmt: str) -> str | None:
    """Why APIM would refuse this policy document, or None."""
    if fmt not in _POLICY_FORMATS:
        return f"Invalid policy format '{fmt}'."
    if not isinstance(value, str) or not value.strip():
        return "Policy value is required."
    if fmt.endswith("-link"):
        return None if value.startswith("https://") else "A policy link must be an https URL."
    if fmt == "xml":
        try:
            root = ElementTree.fromstring(value)
        except ElementTree.ParseError as exc:
            return f"Policy is not well-formed XML: {exc}"
        return None if root.tag == "policies" else "The root element of a policy must be <policies>."
    # rawxml: not XML-escaped (it may hold @(...) expressions with '<'), so only its frame is checked.
    text = value.strip()
    if not (text.startswith("<policies") and text.endswith("</policies>")):
        return "The root element of a policy must be <policies>."
    return None


def _product_collection(call: Call, service: ApimService, pid: str, items: Callable[[str], list[dict]]) -> Reply:
    """A product's collection (its subscriptions, its tags): GET only, one page of all of them."""
    if pid not in service.products:
        return arm_error(404, "ResourceNotFound", "Product not found.")
    if call.method != "GET":
        return arm_error(405, "MethodNotAllowed", f"{call.method} is not allowed here.")
    value = items(pid)
    return Reply(200, {"value": value, "count": len(value), "nextLink": None})
