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
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from shared.adapters.apim import _arm_message, call_arm  # one error mapping for every APIM call
from shared.adapters.azure_clients import DEFAULT_ARM_ENDPOINT, apim_client, default_credential
from shared.services.ports import BackendError, PermanentError, TransientError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

T = TypeVar("T")

POLICY_ID = "policy"
SUBSCRIPTIONS_LIMIT = 1  # one subscription per team product: `sub-{team}`
DISPLAY_NAME_MAX = 100


class ApimTeamProducts:
    def __init__(self, subscription_id: str, resource_group: str, service_name: str, *,
                 base_url: str = DEFAULT_ARM_ENDPOINT, credential: "TokenCredential | None" = None,
                 managed_identity_client_id: str | None = None, ca_bundle: Path | str | None = None,
                 timeout_seconds: float = 10.0, quick_retries: int = 2, max_inline_wait: float = 5.0) -> None:
        self._azure_subscription = subscription_id
        self._resource_group = resource_group
        self._service = service_name
        self._base_url = base_url
        self._credential = credential
        self._client_id = managed_identity_client_id
        self._ca_bundle = ca_bundle
        self._timeout = timeout_seconds
        self._quick_retries = quick_retries
        self._max_inline_wait = max_inline_wait
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> "ApimTeamProducts":
        missing = [name for name, value in (("APIM_SUBSCRIPTION_ID", settings.apim_subscription_id),
                                            ("APIM_RESOURCE_GROUP", settings.apim_resource_group),
                                            ("APIM_SERVICE_NAME", settings.apim_service_name)) if not value]
        if missing:
            raise ValueError(f"APIM team products need {', '.join(missing)}")
        return cls(settings.apim_subscription_id, settings.apim_resource_group, settings.apim_service_name,
                   base_url=settings.arm_endpoint, managed_identity_client_id=settings.azure_client_id,
                   ca_bundle=settings.ca_bundle)

    def __repr__(self) -> str:
        return f"ApimTeamProducts(service={self._service!r}, resource_group={self._resource_group!r})"

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
                  on_missing=lambda arm: TransientError(f"product {product_id} vanished while its policy was set: {arm}"))

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
                  on_missing=lambda arm: TransientError(f"product {product_id} not found for subscription {sid}: {arm}"))

    def subscription_keys(self, sid: str) -> tuple[str, str]:
        client = self._apim()
        keys = self._run(f"read keys of subscription {sid}",
                         lambda: client.subscription.list_secrets(self._resource_group, self._service, sid),
                         on_missing=lambda arm: TransientError(f"subscription {sid} not found: {arm}"))
        if not keys.primary_key or not keys.secondary_key:
            raise TransientError(f"APIM returned no keys for subscription {sid}")
        return keys.primary_key, keys.secondary_key

    def delete_subscription(self, sid: str) -> None:
        client = self._apim()
        self._gone_ok(f"delete subscription {sid}",
                      lambda: client.subscription.delete(self._resource_group, self._service, sid, if_match="*"))

    # --- SDK calls -------------------------------------------------------------------------------------

    def _service_missing(self, arm: str) -> BackendError:
        return PermanentError(f"APIM service {self._service} (resource group {self._resource_group}) not found: {arm}")

    def _apim(self) -> Any:
        with self._lock:
            if self._client is None:
                credential = self._credential or default_credential(self._client_id)
                self._client = apim_client(self._azure_subscription, self._base_url, credential,
                                           self._ca_bundle, timeout_seconds=self._timeout)
            return self._client

    def _gone_ok(self, what: str, call: Callable[[], Any]) -> None:
        """A delete: 404 (the resource or its parent is gone) counts as done."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._run(what, call, on_missing=None)
        except ResourceNotFoundError as exc:
            log.info("APIM %s: already gone (%s)", what, _arm_message(exc))

    def _run(self, what: str, call: Callable[[], T], on_missing: Callable[[str], BackendError] | None) -> T:
        return call_arm(f"APIM {what}", call, on_missing, timeout=self._timeout,
                        retries=self._quick_retries, max_wait=self._max_inline_wait)
