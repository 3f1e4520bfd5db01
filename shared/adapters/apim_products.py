"""A team's API Management resources: product, product policy, product-API links, subscription.

Every write is a PUT or DELETE with the team's deterministic ids (`product-{team}`, `sub-{team}`),
so a retry after a crash meets what the previous attempt made instead of making a second one.
Errors are mapped as in `apim.py` (same helpers): 429/5xx and connection failures are transient
(a few quick retries in-call, then the reconciler reschedules), 409/412 transient, other 4xx
permanent. Deleting what is not there counts as success. The product and the subscription carry
this app's mark and one without it is never changed or deleted (apim_marks.py says what the mark
is and why). The SDKs are imported on first use (see azure_clients), never when function_app is
imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from shared.adapters import apim_marks
from shared.adapters.apim import ApimService, Slot, _arm_message  # one client and error mapping for every APIM call
from shared.adapters.apim_marks import DISPLAY_NAME_MAX
from shared.services.ports import BackendError, PermanentError, TransientError
from shared.services.team_ports import NotOurs

log = logging.getLogger(__name__)

T = TypeVar("T")

POLICY_ID = "policy"
SUBSCRIPTIONS_LIMIT = 1  # one subscription per team product: `sub-{team}`


class ApimTeamProducts(ApimService):
    purpose = "APIM team products"

    # --- product ---------------------------------------------------------------------------------

    def ensure_product(self, product_id: str, display_name: str, description: str) -> None:
        """Published, subscription required, no approval, one subscription at most, tagged as this
        app's (apim_marks). One that exists without the mark: NotOurs, and nothing is written."""
        from azure.mgmt.apimanagement.models import ProductContract

        client = self._apim()
        rg, service = self._resource_group, self._service
        current = self._get(f"read product {product_id}", lambda: client.product.get(rg, service, product_id))
        tagged = current is not None and self._tagged(product_id)
        if current is not None and not apim_marks.product_is_ours(tagged, current.description):
            raise NotOurs(apim_marks.product_refusal(product_id))
        product = ProductContract(display_name=display_name[:DISPLAY_NAME_MAX],
                                  description=apim_marks.product_description(description),
                                  subscription_required=True, approval_required=False,
                                  subscriptions_limit=SUBSCRIPTIONS_LIMIT, state="published")
        self._run(f"create product {product_id}",
                  lambda: client.product.create_or_update(rg, service, product_id, product),
                  on_missing=self._service_missing)
        if not tagged:
            self._tag(product_id)

    def _tagged(self, product_id: str) -> bool:
        client = self._apim()
        return self._get(f"read tag {apim_marks.OWNER_TAG} of product {product_id}",
                         lambda: client.tag.get_by_product(self._resource_group, self._service, product_id,
                                                           apim_marks.OWNER_TAG)) is not None

    def _tag(self, product_id: str) -> None:
        """The tag entity (one per service, shared by every team product), then its link to the product."""
        from azure.mgmt.apimanagement.models import TagCreateUpdateParameters

        client = self._apim()
        rg, service, tag = self._resource_group, self._service, apim_marks.OWNER_TAG
        self._run(f"create tag {tag}",
                  lambda: client.tag.create_or_update(rg, service, tag, TagCreateUpdateParameters(display_name=tag)),
                  on_missing=self._service_missing)
        self._run(f"tag product {product_id} {tag}",
                  lambda: client.tag.assign_to_product(rg, service, product_id, tag),
                  on_missing=lambda arm: TransientError(f"product {product_id} vanished while it was tagged: {arm}"))
        log.info("APIM product %s tagged %s", product_id, tag)

    def set_policy(self, product_id: str, value: str, policy_format: str = "rawxml") -> None:
        from azure.mgmt.apimanagement.models import PolicyContract

        client = self._apim()
        policy = PolicyContract(value=value, format=policy_format)
        self._run(f"set policy of product {product_id}",
                  lambda: client.product_policy.create_or_update(self._resource_group, self._service, product_id,
                                                                 POLICY_ID, policy),
                  on_missing=lambda arm: TransientError(
                      f"product {product_id} vanished while its policy was set: {arm}"))

    def linked_apis(self, product_id: str) -> list[str]:
        client = self._apim()
        contracts = self._run(f"list APIs of product {product_id}",
                              lambda: list(client.product_api.list_by_product(self._resource_group, self._service,
                                                                              product_id)),
                              on_missing=lambda arm: TransientError(f"product {product_id} vanished: {arm}"))
        return sorted(c.name for c in contracts)

    def link_api(self, product_id: str, api_id: str) -> None:
        client = self._apim()
        self._run(f"link API {api_id} to product {product_id}",
                  lambda: client.product_api.create_or_update(self._resource_group, self._service, product_id, api_id),
                  on_missing=lambda arm: PermanentError(
                      f"API {api_id} (APIM_TEAM_API_IDS) or product {product_id} not found in APIM service "
                      f"{self._service}: {arm}"))

    def unlink_api(self, product_id: str, api_id: str) -> None:
        client = self._apim()
        self._gone_ok(f"unlink API {api_id} from product {product_id}",
                      lambda: client.product_api.delete(self._resource_group, self._service, product_id, api_id))

    def delete_product(self, product_id: str) -> None:
        """Links, then the policy, then the product. A product without this app's mark is left as
        it is; so is one that still has subscriptions (the team's own went in the step before):
        they are not this app's, and deleting the product would delete them with it."""
        client = self._apim()
        rg, service = self._resource_group, self._service
        current = self._get(f"read product {product_id}", lambda: client.product.get(rg, service, product_id))
        if current is None:
            return
        if not apim_marks.product_is_ours(self._tagged(product_id), current.description):
            log.warning("APIM product %s is not managed by llm-key-requestor (no tag %s): left in place",
                        product_id, apim_marks.OWNER_TAG)
            return
        subscribed = self._subscriptions_of(product_id)
        if subscribed:
            raise NotOurs(apim_marks.subscribed_refusal(product_id, subscribed))
        for api_id in self.linked_apis(product_id):
            self.unlink_api(product_id, api_id)
        self._gone_ok(f"delete policy of product {product_id}",
                      lambda: client.product_policy.delete(rg, service, product_id, POLICY_ID, if_match="*"))
        # Without deleteSubscriptions: should a subscription appear meanwhile, APIM refuses the delete.
        self._gone_ok(f"delete product {product_id}",
                      lambda: client.product.delete(rg, service, product_id, if_match="*"))

    def _subscriptions_of(self, product_id: str) -> list[str]:
        client = self._apim()
        contracts = self._run(f"list subscriptions of product {product_id}",
                              lambda: list(client.product_subscriptions.list(self._resource_group, self._service,
                                                                             product_id)),
                              on_missing=lambda arm: TransientError(f"product {product_id} vanished: {arm}"))
        return sorted(c.name for c in contracts)

    # --- subscription ----------------------------------------------------------------------------------

    def ensure_subscription(self, sid: str, product_id: str, display_name: str) -> None:
        """Active, scoped to the product, its display name marked (apim_marks). One that exists
        without the mark: NotOurs, and nothing is written."""
        from azure.mgmt.apimanagement.models import SubscriptionCreateParameters

        client = self._apim()
        rg, service = self._resource_group, self._service
        current = self._get(f"read subscription {sid}", lambda: client.subscription.get(rg, service, sid))
        if current is not None and not apim_marks.subscription_is_ours(current, product_id, display_name):
            raise NotOurs(apim_marks.subscription_refusal(sid, display_name))
        create = SubscriptionCreateParameters(scope=f"/products/{product_id}",
                                              display_name=apim_marks.subscription_display_name(display_name),
                                              state="active")  # else APIM leaves it "submitted"
        self._run(f"create subscription {sid}",
                  lambda: client.subscription.create_or_update(rg, service, sid, create, notify=False),
                  on_missing=lambda arm: TransientError(
                      f"product {product_id} not found for subscription {sid}: {arm}"))

    def subscription_keys(self, sid: str) -> tuple[str, str]:
        client = self._apim()
        keys = self._run(f"read keys of subscription {sid}",
                         lambda: client.subscription.list_secrets(self._resource_group, self._service, sid),
                         on_missing=lambda arm: TransientError(f"subscription {sid} not found: {arm}"))
        if not keys.primary_key or not keys.secondary_key:
            raise TransientError(f"APIM returned no keys for subscription {sid}")
        return keys.primary_key, keys.secondary_key

    def regenerate_key(self, sid: str, slot: Slot) -> None:
        """regeneratePrimaryKey / regenerateSecondaryKey (the team's key rotation); the other key is
        untouched. A subscription that is not there (deleted by hand) is permanent: retrying the
        rotation re-applies the team first, which creates it again."""
        self._regenerate(sid, slot, on_missing=lambda arm: PermanentError(
            f"subscription {sid} not found in APIM service {self._service}; its keys cannot be rotated: {arm}"))
        log.info("APIM subscription %s: %s key regenerated", sid, slot)

    def delete_subscription(self, sid: str, product_id: str, display_name: str) -> None:
        """Deleted if it is this app's (apim_marks); one without the mark is left as it is."""
        client = self._apim()
        rg, service = self._resource_group, self._service
        current = self._get(f"read subscription {sid}", lambda: client.subscription.get(rg, service, sid))
        if current is None:
            return
        if not apim_marks.subscription_is_ours(current, product_id, display_name):
            log.warning("APIM subscription %s is not managed by llm-key-requestor: left in place", sid)
            return
        self._gone_ok(f"delete subscription {sid}",
                      lambda: client.subscription.delete(rg, service, sid, if_match="*"))

    # --- SDK calls -------------------------------------------------------------------------------------

    def _service_missing(self, arm: str) -> BackendError:
        return PermanentError(f"APIM service {self._service} (resource group {self._resource_group}) not found: {arm}")

    def _get(self, what: str, call: Callable[[], T]) -> T | None:
        """A read: None for a 404 (the resource, or its parent, is not there)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._run(what, call, on_missing=None)
        except ResourceNotFoundError:
            return None

    def _gone_ok(self, what: str, call: Callable[[], Any]) -> None:
        """A delete: 404 (the resource or its parent is gone) counts as done."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._run(what, call, on_missing=None)
        except ResourceNotFoundError as exc:
            log.info("APIM %s: already gone (%s)", what, _arm_message(exc))

