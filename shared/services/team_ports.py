"""The interfaces team use cases call: the team store, APIM team products, KAITO Workspaces.

Adapters implement them at the edge (shared/store/teams.py, shared/adapters/apim_products.py,
shared/adapters/kaito.py); the use cases and the reconciler know only these.
"""

from __future__ import annotations

from typing import Literal, Protocol

from shared.domain.team import TeamRecord
from shared.services.ports import PermanentError


class NotOurs(PermanentError):
    """A team's product, subscription or keys Secret exists under its deterministic name without
    this app's mark: it is left exactly as it is, and the team fails with this message. The message
    names the object and how to hand it over, never anything read from it."""


class TeamStore(Protocol):
    def get(self, team: str) -> TeamRecord | None: ...
    def create(self, record: TeamRecord) -> TeamRecord: ...
    def update(self, record: TeamRecord) -> TeamRecord: ...
    def delete(self, record: TeamRecord) -> None: ...
    def list_due(self) -> list[TeamRecord]: ...
    def list_page(self, limit: int, continue_token: str | None = None
                  ) -> tuple[list[TeamRecord], list[str], str | None]: ...
    def write_keys(self, team: str, primary: str, secondary: str) -> None:
        """NotOurs if `{team}-api-key` exists without this app's labels."""
    def delete_keys(self, team: str) -> bool:
        """Deletes `{team}-api-key` only if it is this app's (one without the labels stays)."""
    def keys_present(self, team: str) -> bool: ...


class TeamApim(Protocol):
    def ensure_product(self, product_id: str, display_name: str, description: str) -> None:
        """Create or update the product, marked as this app's; NotOurs if it exists unmarked."""
    def set_policy(self, product_id: str, value: str, policy_format: str = "rawxml") -> None: ...
    def linked_apis(self, product_id: str) -> list[str]: ...
    def link_api(self, product_id: str, api_id: str) -> None: ...
    def unlink_api(self, product_id: str, api_id: str) -> None: ...
    def delete_product(self, product_id: str) -> None:
        """Delete the product if it is this app's; one without the mark is left in place."""
    def ensure_subscription(self, sid: str, product_id: str, display_name: str) -> None:
        """Create or update the subscription, marked as this app's; NotOurs if it exists unmarked."""
    def subscription_keys(self, sid: str) -> tuple[str, str]: ...
    def regenerate_key(self, sid: str, slot: Literal["primary", "secondary"]) -> None:
        """A new value for that key of the subscription (ARM regeneratePrimaryKey /
        regenerateSecondaryKey); the other key keeps working."""
    def delete_subscription(self, sid: str, product_id: str, display_name: str) -> None:
        """Delete the subscription if it is this app's; one without the mark is left in place."""


class Workspaces(Protocol):
    def apply(self, name: str, team: str, model: str, preset: str, instance_type: str) -> str: ...
    def delete(self, name: str) -> bool: ...
    def names_for_team(self, team: str) -> list[str]: ...
