"""A team's API Management resources: product, product policy, product-API links, subscription.

Every call is a PUT or DELETE with the team's deterministic ids (`product-{team}`, `sub-{team}`),
so a retry after a crash meets what the previous attempt made instead of making a second one.
Errors are mapped as in `apim.py` (same helpers): 429/5xx and connection failures are transient
(a few quick retries in-call, then the reconciler reschedules), 409/412 transient, other 4xx
permanent. Deleting what is not there counts as success. The SDKs are imported on first use
(see azure_clients), never when function_app is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from shared.adapters.apim import ApimService, Slot, _arm_message  # one client and error mapping for every APIM call
from shared.services.ports import BackendError, PermanentError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

POLICY_ID = "policy"
SUBSCRIPTIONS_LIMIT = 1  # one subscription per team product: `sub-{team}`
DISPLAY_NAME_MAX = 100


class ApimTeamProducts(ApimService):
    purpose = "APIM team products"

    # --- product ---------------------------------------------------------------------------------

    def ensure_product(self, product_id: str, display_name: str, description: str) -> None:
        """Published, subscription required, no approval, one subscription at most."""
        from azure.mgmt.apimanagement.models import ProductContract

        client = self._apim()
        product = ProductContract(display_name=display_name[:DISPLAY_NAME_MAX], description=description[:1000],
                                  subscription_required=True, approval_required=False,
                                  subscriptions_limit=SUBSCRIPTIONS_LIMIT, state="published")
        self._run(f"create product {product_id}",
                  lambda: client.product.create_or_update(self._resource_group, self._service, product_id, product),
                  on_missing=self._service_missing)

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
        """Links, then the policy, then the product with its subscriptions (deleteSubscriptions)."""
        client = self._apim()
        rg, service = self._resource_group, self._service
        try:
            apis = self.linked_apis(product_id)
        except TransientError:
            if not self._product_exists(product_id):
                return
            raise
        for api_id in apis:
            self.unlink_api(product_id, api_id)
        self._gone_ok(f"delete policy of product {product_id}",
                      lambda: client.product_policy.delete(rg, service, product_id, POLICY_ID, if_match="*"))
        self._gone_ok(f"delete product {product_id}",
                      lambda: client.product.delete(rg, service, product_id, if_match="*", delete_subscriptions=True))

    def _product_exists(self, product_id: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        client = self._apim()
        try:
            self._run(f"read product {product_id}",
                      lambda: client.product.get(self._resource_group, self._service, product_id), on_missing=None)
        except ResourceNotFoundError:
            return False
        return True

    # --- subscription ----------------------------------------------------------------------------------

    def ensure_subscription(self, sid: str, product_id: str, display_name: str) -> None:
        from azure.mgmt.apimanagement.models import SubscriptionCreateParameters

        client = self._apim()
        create = SubscriptionCreateParameters(scope=f"/products/{product_id}",
                                              display_name=display_name[:DISPLAY_NAME_MAX],
                                              state="active")  # else APIM leaves it "submitted"
        self._run(f"create subscription {sid}",
                  lambda: client.subscription.create_or_update(self._resource_group, self._service, sid, create,
                                                               notify=False),
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

    def delete_subscription(self, sid: str) -> None:
        client = self._apim()
        self._gone_ok(f"delete subscription {sid}",
                      lambda: client.subscription.delete(self._resource_group, self._service, sid, if_match="*"))

    # --- SDK calls -------------------------------------------------------------------------------------

    def _service_missing(self, arm: str) -> BackendError:
        return PermanentError(f"APIM service {self._service} (resource group {self._resource_group}) not found: {arm}")

    def _gone_ok(self, what: str, call: Callable[[], Any]) -> None:
        """A delete: 404 (the resource or its parent is gone) counts as done."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._run(what, call, on_missing=None)
        except ResourceNotFoundError as exc:
            log.info("APIM %s: already gone (%s)", what, _arm_message(exc))

