"""Issues and revokes Azure API Management subscriptions scoped to a model's product.

Idempotent by construction: the subscription id derives from the request id, and a PUT with
that id creates the subscription once and later finds it (its keys unchanged). ARM errors are
mapped by status on purpose, so a throttled or briefly unavailable APIM never turns into a
denial, and a missing product says which product and which service.
The SDKs are imported on first use (see azure_clients).

A subscription has two keys, and rotation without downtime uses both: `rotate` regenerates the
key the requester does not use (`apim-live-key` says which one they use: `primary` until the first
rotation), and `retire`, after the grace, regenerates the one they used. So the roles alternate:
the first rotation delivers a new secondary and retires the primary, the second a new primary and
retires the secondary, and at no moment is the key the requester was told to use regenerated
under them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from shared.adapters.azure_clients import DEFAULT_ARM_ENDPOINT, apim_client, default_credential
from shared.adapters.http_retry import Retryable, parse_retry_after, with_retries
from shared.config import CatalogModel
from shared.domain.request import KeyRequest, utcnow
from shared.services.ports import BackendError, Credentials, PermanentError, TransientError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

T = TypeVar("T")

REF_SUBSCRIPTION = "apim-subscription-id"
REF_PRODUCT = "apim-product-id"
REF_EXPIRES = "apim-subscription-expires"
SECRET_PRIMARY = "apim-primary-key"
SECRET_SECONDARY = "apim-secondary-key"
REF_LIVE_KEY = "apim-live-key"  # the key the requester was told to use: primary (absent) or secondary
REF_ROTATED_AT = "apim-rotated-at"  # this rotation's new key was made (and recorded) at
# What retire replaces; every other `apim-` reference (the processor's own) is passed through.
_KEY_REFERENCES = (REF_SUBSCRIPTION, REF_PRODUCT, REF_EXPIRES, REF_LIVE_KEY, REF_ROTATED_AT)

Slot = Literal["primary", "secondary"]
SECRET_OF: dict[Slot, str] = {"primary": SECRET_PRIMARY, "secondary": SECRET_SECONDARY}


def other_slot(slot: Slot) -> Slot:
    return "secondary" if slot == "primary" else "primary"

DISPLAY_NAME_MAX = 100  # APIM's limit for a subscription's displayName


def subscription_id(request: KeyRequest) -> str:
    return f"llmkr-{request.id}"


class ApimService:
    """One APIM instance through the management SDK: the client (built once, lazily, so the SDK is
    imported only when used), its credential, and every call's timeouts, retries and error mapping.
    Request subscriptions (below) and team products (apim_products.py) build on it."""

    purpose = "APIM"

    def __init__(self, subscription_id: str, resource_group: str, service_name: str, *,
                 base_url: str = DEFAULT_ARM_ENDPOINT, credential: TokenCredential | None = None,
                 managed_identity_client_id: str | None = None, ca_bundle: Path | str | None = None,
                 timeout_seconds: float = 10.0, quick_retries: int = 2, max_inline_wait: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], datetime] = utcnow) -> None:
        self._sleep = sleep
        self._clock = clock
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
    def from_settings(cls, settings: Any) -> Self:
        """From the app settings (`shared.settings.Settings`); the APIM_* names are required."""
        missing = [name for name, value in (("APIM_SUBSCRIPTION_ID", settings.apim_subscription_id),
                                            ("APIM_RESOURCE_GROUP", settings.apim_resource_group),
                                            ("APIM_SERVICE_NAME", settings.apim_service_name)) if not value]
        if missing:
            raise ValueError(f"{cls.purpose} needs {', '.join(missing)}")
        return cls(settings.apim_subscription_id, settings.apim_resource_group, settings.apim_service_name,
                   base_url=settings.arm_endpoint, managed_identity_client_id=settings.azure_client_id,
                   ca_bundle=settings.ca_bundle)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(service={self._service!r}, resource_group={self._resource_group!r})"

    def _apim(self) -> Any:
        with self._lock:  # one client (and one token cache) for all concurrent calls
            if self._client is None:
                credential = self._credential or default_credential(self._client_id)
                self._client = apim_client(self._azure_subscription, self._base_url, credential,
                                           self._ca_bundle, timeout_seconds=self._timeout)
            return self._client

    def _run(self, what: str, call: Callable[[], T],
             on_missing: Callable[[str], BackendError] | None) -> T:
        return call_arm(f"APIM {what}", call, on_missing, timeout=self._timeout,
                        retries=self._quick_retries, max_wait=self._max_inline_wait, sleep=self._sleep)

    def _regenerate(self, sid: str, slot: Slot, on_missing: Callable[[str], BackendError]) -> None:
        """ARM `regeneratePrimaryKey` / `regenerateSecondaryKey` (POST, 204): a new random value
        for that key of the subscription; the other key is untouched."""
        client = self._apim()
        rg, service = self._resource_group, self._service
        if slot == "primary":
            self._run(f"regenerate the primary key of subscription {sid}",
                      lambda: client.subscription.regenerate_primary_key(rg, service, sid), on_missing=on_missing)
        else:
            self._run(f"regenerate the secondary key of subscription {sid}",
                      lambda: client.subscription.regenerate_secondary_key(rg, service, sid), on_missing=on_missing)

    def _keys(self, sid: str, on_missing: Callable[[str], BackendError]) -> tuple[str, str]:
        """(primary, secondary) of the subscription, through `listSecrets` (a GET carries no key)."""
        client = self._apim()
        keys = self._run(f"read keys of subscription {sid}",
                         lambda: client.subscription.list_secrets(self._resource_group, self._service, sid),
                         on_missing=on_missing)
        if not keys.primary_key or not keys.secondary_key:
            raise TransientError(f"APIM returned no keys for subscription {sid}")
        return keys.primary_key, keys.secondary_key


class ApimProvisioner(ApimService):
    backend = "apim"
    purpose = "APIM provisioning"

    # --- the Provisioner protocol -------------------------------------------------------------------

    def prepare(self, request: KeyRequest, model: CatalogModel) -> Credentials:
        return Credentials(references={REF_SUBSCRIPTION: subscription_id(request)})

    def issue(self, request: KeyRequest, model: CatalogModel, prepared: Credentials) -> Credentials:
        from azure.mgmt.apimanagement.models import SubscriptionCreateParameters

        grant = model.provisioning.apim
        if grant is None:
            raise PermanentError(f"model {model.id} has no apim.product_id in config.yaml")
        sid = prepared.references.get(REF_SUBSCRIPTION) or subscription_id(request)
        product = grant.product_id
        client = self._apim()
        rg, service = self._resource_group, self._service
        references = {REF_SUBSCRIPTION: sid, REF_PRODUCT: product}
        create = SubscriptionCreateParameters(
            scope=f"/products/{product}",
            display_name=f"{request.email} ({model.id})"[:DISPLAY_NAME_MAX],
            state="active",  # otherwise APIM creates it "submitted", awaiting a portal approval
        )
        self._run(f"create subscription {sid}",
                  lambda: client.subscription.create_or_update(rg, service, sid, create, notify=False),
                  on_missing=lambda arm: PermanentError(
                      f"product {product} not found in APIM service {service} (resource group {rg}): {arm}"))
        try:
            return self._finish_issue(request, sid, product, grant, references)
        except BackendError as exc:
            exc.reached = True  # the subscription was created: it exists whatever failed after
            raise

    def _finish_issue(self, request: KeyRequest, sid: str, product: str, grant: Any,
                      references: dict[str, str]) -> Credentials:
        from azure.mgmt.apimanagement.models import SubscriptionUpdateParameters

        client = self._apim()
        rg, service = self._resource_group, self._service

        def vanished(arm: str) -> BackendError:
            # Deleted between our calls (a concurrent revoke?): the next attempt's PUT recreates it.
            return TransientError(f"APIM subscription {sid} vanished while being issued: {arm}")

        if grant.expires_after_days:
            # From the decision (else the request), never from now: a retry sets the same date again.
            expires = (request.decided_at or request.created_at) + timedelta(days=grant.expires_after_days)
            update = SubscriptionUpdateParameters(expiration_date=expires)
            self._run(f"set expiry of subscription {sid}",
                      lambda: client.subscription.update(rg, service, sid, "*", update, notify=False),
                      on_missing=vanished)
            references[REF_EXPIRES] = expires.isoformat()
        keys = self._run(f"read keys of subscription {sid}",
                         lambda: client.subscription.list_secrets(rg, service, sid),
                         on_missing=vanished)
        if not keys.primary_key or not keys.secondary_key:
            raise TransientError(f"APIM returned no keys for subscription {sid}")
        log.info("APIM subscription %s to product %s issued (request %s)", sid, product, request.id)
        return Credentials(secrets={SECRET_PRIMARY: keys.primary_key, SECRET_SECONDARY: keys.secondary_key},
                           references=references)

    def revoke(self, request: KeyRequest, recorded: Credentials) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        sid = recorded.references.get(REF_SUBSCRIPTION) or subscription_id(request)
        client = self._apim()
        try:
            self._run(f"delete subscription {sid}",
                      lambda: client.subscription.delete(self._resource_group, self._service, sid, if_match="*"),
                      on_missing=None)
        except ResourceNotFoundError as exc:
            # ARM answers 204 for a subscription that is not there; a 404 means the service (or its
            # resource group) is gone, and the subscription with it.
            log.warning("APIM subscription %s: service %s answered 404 (%s); counted as already gone "
                        "(request %s)", sid, self._service, _arm_message(exc), request.id)
            return
        log.info("APIM subscription %s deleted (request %s)", sid, request.id)

    # --- the key's life ------------------------------------------------------------------------------

    def extend(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        """PATCH the subscription's `expirationDate` to the renewal request's time plus the model's
        `expires_after_days`: never "now", so a retry sets the same date. A model whose
        subscriptions do not expire returns no expiry and changes nothing."""
        from azure.mgmt.apimanagement.models import SubscriptionUpdateParameters

        grant = model.provisioning.apim
        if grant is None:
            raise PermanentError(f"model {model.id} has no apim.product_id in config.yaml")
        if not grant.expires_after_days:
            return Credentials()
        if request.renew_requested_at is None:
            raise PermanentError(f"request {request.id} has no renewal requested; nothing to extend")
        sid = self._sid(request, recorded)
        expires = request.renew_requested_at + timedelta(days=grant.expires_after_days)
        client = self._apim()
        update = SubscriptionUpdateParameters(expiration_date=expires)
        self._run(f"set expiry of subscription {sid}",
                  lambda: client.subscription.update(self._resource_group, self._service, sid, "*", update,
                                                     notify=False),
                  on_missing=self._gone(sid, "renewed"))
        log.info("APIM subscription %s renewed until %s (request %s)", sid, expires.isoformat(), request.id)
        return Credentials(references={REF_EXPIRES: expires.isoformat()})

    def prepare_rotation(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        return Credentials()  # APIM chooses the new key's value; the subscription stays

    def rotate(self, request: KeyRequest, model: CatalogModel, recorded: Credentials) -> Credentials:
        """Regenerate the key the requester does not use (the secondary, until the first rotation
        is retired; see the module's note), read it with `listSecrets`, and return it as the one
        secret to deliver, with `apim-rotated-at`.

        Crash safety: ARM gives no way to regenerate "once", so the value is only fixed once it is
        recorded. A crash before that reruns this and regenerates again: harmless, since nobody
        was told the value that was replaced. Once `apim-rotated-at` is recorded, this never
        regenerates again: it re-reads the key made then (so a retry can never change the key
        after its email went out). The same re-read, made after a regenerate call that went
        unanswered (TransientError `in_flight`) may still land at ARM, picks up its value."""
        sid = self._sid(request, recorded)
        slot = other_slot(_live(recorded))
        rotated_at = recorded.references.get(REF_ROTATED_AT)
        if rotated_at is None:
            self._regenerate(sid, slot, on_missing=self._gone(sid, "rotated"))
            rotated_at = self._clock().isoformat()
            log.info("APIM subscription %s: %s key regenerated (request %s)", sid, slot, request.id)
        primary, secondary = self._keys(sid, on_missing=self._gone(sid, "rotated"))
        return Credentials(secrets={SECRET_OF[slot]: primary if slot == "primary" else secondary},
                           references={REF_ROTATED_AT: rotated_at})

    def retire(self, request: KeyRequest, recorded: Credentials) -> Credentials:
        """After the grace: regenerate the key the requester used until the rotation, so only the
        key delivered by `rotate` works (on the first rotation: the primary is regenerated, and
        the secondary is the requester's only known key). Returns the subscription's record with
        that key as `apim-live-key` and no secret (neither key is kept; the requester has the
        live one); every other `apim-` reference recorded (the processor's own) is passed through.
        Regenerating twice (a crash before the result is recorded) is harmless: nobody knows the
        retired key's new value."""
        if REF_ROTATED_AT not in recorded.references:
            raise PermanentError(f"APIM: no rotation in progress for request {request.id}; nothing to retire")
        sid = self._sid(request, recorded)
        retired = _live(recorded)
        self._regenerate(sid, retired, on_missing=self._gone(sid, "retired"))
        log.info("APIM subscription %s: %s key regenerated; the %s key is the only one known (request %s)",
                 sid, retired, other_slot(retired), request.id)
        references = {k: v for k, v in recorded.references.items() if k not in _KEY_REFERENCES}
        references.update({REF_SUBSCRIPTION: sid, REF_LIVE_KEY: other_slot(retired)})
        for name in (REF_PRODUCT, REF_EXPIRES):
            if recorded.references.get(name):
                references[name] = recorded.references[name]
        return Credentials(references=references)

    def _sid(self, request: KeyRequest, recorded: Credentials) -> str:
        return recorded.references.get(REF_SUBSCRIPTION) or subscription_id(request)

    def _gone(self, sid: str, what: str) -> Callable[[str], BackendError]:
        def missing(arm: str) -> BackendError:
            # Deleted outside the app (or the service is gone): there is no key to keep alive.
            return PermanentError(f"APIM subscription {sid} not found in service {self._service}; it cannot be "
                                  f"{what}: {arm}")
        return missing


def _live(recorded: Credentials) -> Slot:
    return "secondary" if recorded.references.get(REF_LIVE_KEY) == "secondary" else "primary"


def call_arm(label: str, call: Callable[[], T], on_missing: Callable[[str], BackendError] | None, *,
             timeout: float, retries: int, max_wait: float, sleep: Callable[[float], None] = time.sleep) -> T:
    """`call` with quick retries, its errors mapped to TransientError / PermanentError (every
    APIM call of the app goes through here). `on_missing` builds the error for a 404 from ARM's
    message; None lets ResourceNotFoundError through to the caller."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceRequestTimeoutError,
        ServiceResponseError,
        ServiceResponseTimeoutError,
    )

    def attempt() -> T:
        try:
            return call()
        except ServiceRequestTimeoutError:  # no request was sent: nothing changed at APIM
            raise TransientError(f"{label}: could not connect within {timeout:g} s", reached=False) from None
        except ServiceResponseTimeoutError:
            # Already waited the whole timeout: no quick retry, the processor reschedules.
            raise TransientError(f"{label}: timed out after {timeout:g} s", in_flight=True) from None
        except ServiceRequestError as exc:  # "no request was sent"
            raise Retryable(TransientError(f"{label}: connection failed ({type(exc).__name__})",
                                           reached=False)) from None
        except ServiceResponseError as exc:  # lost after sending: ARM may still finish it
            raise Retryable(TransientError(f"{label}: connection failed ({type(exc).__name__})",
                                           in_flight=True)) from None
        except ClientAuthenticationError as exc:
            # No response: the token service failed (e.g. the managed identity endpoint is down);
            # a 401 from ARM: the token was refused. Both may heal without a change to the request.
            reason = "ARM refused the token" if exc.response is not None else "could not get a token"
            raise TransientError(f"{label}: {reason} ({_arm_message(exc)})", reached=False) from None
        except ResourceNotFoundError as exc:
            if on_missing is None:
                raise
            raise on_missing(_arm_message(exc)) from None
        except HttpResponseError as exc:
            raise _mapped(label, exc) from None

    return with_retries(attempt, label, retries=retries, max_wait=max_wait, sleep=sleep)

def _mapped(label: str, exc: Any) -> Exception:
    status = exc.status_code or 0
    message = f"{label}: ARM answered {status}: {_arm_message(exc)}"
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(exc.response.headers.get("Retry-After")) if exc.response else None
        return Retryable(TransientError(message, retry_after, in_flight=status in (502, 504)))
    if status in (409, 412):
        # Someone changed the subscription meanwhile: read it again on the next attempt.
        return TransientError(message)
    return PermanentError(message)


def _arm_message(exc: Any) -> str:
    """ARM's `code: message`, without the SDK's multi-line decoration."""
    error = getattr(exc, "error", None)
    if error is not None and (error.code or error.message):
        return f"{error.code}: {error.message}"
    return str(getattr(exc, "message", None) or exc).splitlines()[0][:300]
