"""How a team's APIM product and subscription are marked as this app's, and how the mark is read back.

`product-{team}` and `sub-{team}` are deterministic names that someone else may already use (the
earlier GitOps flow, a hand-made product). This app changes or deletes only what carries its mark:

- a **product** carries the APIM tag `llm-key-requestor` (Tag - Assign To Product,
  `PUT .../products/{productId}/tags/{tagId}`). A tag is an entity of its own that a product PUT
  leaves alone and one GET reads back; the description, which people edit, is no mark. The tag
  can only be assigned once the product exists, so a crash between the two calls leaves our
  product untagged: a product without the tag whose description still holds the sentence this
  app has always written (MANAGED_SENTENCE) is one this app made (just before a crash, or before
  the tag existed) and is adopted, i.e. tagged. Nothing else without the tag is touched.
- a **subscription** cannot carry a tag (APIM tags attach to APIs, operations and products only)
  and has no free-form property besides `displayName`, so the mark is a suffix of its display
  name, written in the same PUT that creates it (no window without it). A subscription this app
  made before the mark existed is recognised exactly: the display name it wrote then (`Team
  {team}`) and the scope of the team's own product.
"""

from __future__ import annotations

from typing import Any

OWNER_TAG = "llm-key-requestor"  # the tag's id and display name
MANAGED_SENTENCE = "Managed by llm-key-requestor; do not edit by hand."
SUBSCRIPTION_MARK = " [llm-key-requestor]"
DISPLAY_NAME_MAX = 100  # APIM's limit for product and subscription display names


def product_description(description: str, limit: int = 1000) -> str:
    """The description as stored: the caller's text, then the sentence that says whose it is."""
    return f"{description[:limit - len(MANAGED_SENTENCE) - 1]} {MANAGED_SENTENCE}"


def product_is_ours(tagged: bool, description: str | None) -> bool:
    return tagged or MANAGED_SENTENCE in (description or "")


def subscription_display_name(display_name: str) -> str:
    return display_name[:DISPLAY_NAME_MAX - len(SUBSCRIPTION_MARK)] + SUBSCRIPTION_MARK


def subscription_is_ours(contract: Any, product_id: str, display_name: str) -> bool:
    """Marked, or exactly what this app wrote before the mark existed (its display name, scoped
    to the team's product; ARM answers the scope as a full resource id)."""
    shown = contract.display_name or ""
    if shown.endswith(SUBSCRIPTION_MARK):
        return True
    scope = (contract.scope or "").rstrip("/")
    return shown == display_name[:DISPLAY_NAME_MAX] and scope.lower().endswith(f"/products/{product_id}".lower())


def product_refusal(product_id: str) -> str:
    return (f"APIM product {product_id} already exists and is not managed by llm-key-requestor (it has no tag "
            f"{OWNER_TAG}), so it was left unchanged. Delete or rename it in APIM, or assign it the tag "
            f"{OWNER_TAG} to hand it over to this app; then re-apply the team.")


def subscription_refusal(sid: str, display_name: str) -> str:
    return (f"APIM subscription {sid} already exists and is not managed by llm-key-requestor (its display name "
            f"does not end in '{SUBSCRIPTION_MARK.strip()}'), so it was left unchanged. Delete it in APIM, or rename "
            f"it to '{subscription_display_name(display_name)}' to hand it (and its keys) over to this app; then "
            "re-apply the team.")


def subscribed_refusal(product_id: str, subscriptions: list[str]) -> str:
    shown = ", ".join(subscriptions[:5]) + (" ..." if len(subscriptions) > 5 else "")
    return (f"APIM product {product_id} still has subscriptions this app did not make ({shown}); deleting the "
            "product would delete them too, so it was left in place. Delete them or move them to another product "
            "in APIM; then re-apply the team.")
