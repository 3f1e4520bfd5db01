"""Every name built from a team's name, and the length limits those names must fit, kept in one place:
the APIM product and subscription, the keys Secret, the stored record and each KAITO Workspace are
all named after `team.name`, so the store, the services and the gateway policy must derive them the
same way, and `TeamCatalog.max_team_name_length` (catalog.py) checks one team name against every
limit at once.
"""

from __future__ import annotations

import re

# Kubernetes: a label value and a KAITO Workspace name (its Service and Deployment carry the
# name, so it must be a DNS-1035 label: lowercase, starts with a letter, at most 63).
K8S_LABEL_MAX = 63
# APIM: product ids up to 80 characters (as config.yaml's product_id), subscription ids up to 256.
APIM_PRODUCT_ID_MAX = 80
APIM_SUBSCRIPTION_ID_MAX = 256
K8S_SECRET_NAME_MAX = 253
STORE_PREFIX = "llm-team-access-"  # the team's record (shared/store/teams.py); named here for the length check

TEAM_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# What may appear inside a C# string literal in the product policy without escaping.
SAFE_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def product_id(team: str) -> str:
    return f"product-{team}"


def subscription_id(team: str) -> str:
    return f"sub-{team}"


def keys_secret_name(team: str) -> str:
    return f"{team}-api-key"


def record_name(team: str) -> str:
    return STORE_PREFIX + team


def preset_slug(preset: str) -> str:
    """A KAITO preset as part of a DNS label: `llama-3.1-8b-instruct` -> `llama-3-1-8b-instruct`."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", preset.lower())).strip("-")


def workspace_name(team: str, preset: str) -> str:
    return f"{team}-{preset_slug(preset)}"
