"""Builds the Azure SDK clients and credential the adapters share (APIM subscriptions, team products).

The SDKs are imported here, on first use: `import function_app` must not pay for azure.mgmt or
azure.identity on a cold start. One place also means one answer to TLS, timeouts and retries.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

DEFAULT_ARM_ENDPOINT = "https://management.azure.com"


def default_credential(managed_identity_client_id: str | None = None) -> TokenCredential:
    """DefaultAzureCredential: the app's managed identity on Azure (a user-assigned one when its
    client id is given), a developer's az login locally."""
    from azure.identity import DefaultAzureCredential

    if managed_identity_client_id:
        return DefaultAzureCredential(managed_identity_client_id=managed_identity_client_id)
    return DefaultAzureCredential()


@functools.lru_cache(maxsize=4)
def trust_bundle(ca_bundle: str) -> str:
    """A PEM file with the public CAs plus `ca_bundle`: requests (under azure-core) treats a
    `verify` path as the only trust, while CA_BUNDLE is meant as an extra one."""
    import certifi

    combined = Path(certifi.where()).read_text() + "\n" + Path(ca_bundle).read_text()
    handle, path = tempfile.mkstemp(prefix="llmkr-ca-", suffix=".pem")
    with os.fdopen(handle, "w") as out:
        out.write(combined)
    return path


def apim_client(subscription_id: str, base_url: str, credential: TokenCredential,
                ca_bundle: Path | str | None = None, *, timeout_seconds: float = 10.0,
                retry_total: int = 0) -> Any:
    """An `ApiManagementClient` (api-version 2024-05-01) with short timeouts.

    `retry_total` defaults to 0 because the callers retry themselves (`http_retry.with_retries`):
    the SDK's policy sleeps for whatever Retry-After ARM sends, which could outlast a timer tick.
    """
    from azure.mgmt.apimanagement import ApiManagementClient

    endpoint = base_url.rstrip("/")
    return ApiManagementClient(
        credential,
        subscription_id,
        base_url=endpoint,
        # The token's audience is the ARM endpoint itself (sovereign clouds have their own).
        credential_scopes=[f"{endpoint}/.default"],
        connection_verify=trust_bundle(str(ca_bundle)) if ca_bundle else True,
        connection_timeout=min(timeout_seconds, 5.0),
        read_timeout=timeout_seconds,
        retry_total=retry_total,
    )
