"""A team's `access.yaml` read into one normalised `TeamSpec`, and the `TeamRecord` the reconciler
keeps for each team. Pure, no I/O: the caller hands in the file's text (at most MAX_FILE_BYTES,
checked before parsing) and the catalog (`TeamCatalog`, built from config.yaml), and the package
says what the file grants, or every problem it has, each as (file, field path, reason). One concern
per module: names, catalog, issues, spec (output models), schema (input models), reasons (problems
worded for teams), files (size, encoding, folder), yaml_loader (strict YAML), sections and grants
(the three file shapes, and which limit applies), reader (the entry points) and record. Import from
the package itself: the names re-exported here are its public API, and names with a leading
underscore are private to the package.
"""

# `yaml` is re-exported so that `shared.domain.team.yaml` stays the PyYAML module the loader calls
# (tests patch `yaml.load` through it).
import yaml  # noqa: F401

from shared.domain.team.catalog import KaitoEntry, TeamCatalog
from shared.domain.team.files import FILE_NAMES, MAX_FILE_BYTES, content_hash, decode, folder_team, too_large
from shared.domain.team.issues import Issue, TeamFileError
from shared.domain.team.names import (
    APIM_PRODUCT_ID_MAX,
    APIM_SUBSCRIPTION_ID_MAX,
    K8S_LABEL_MAX,
    K8S_SECRET_NAME_MAX,
    SAFE_MODEL_NAME,
    STORE_PREFIX,
    TEAM_NAME,
    keys_secret_name,
    preset_slug,
    product_id,
    record_name,
    subscription_id,
    workspace_name,
)
from shared.domain.team.reader import check_unique, parse, read
from shared.domain.team.record import Phase, TeamRecord
from shared.domain.team.schema import COST_CENTER_MAX, DISPLAY_NAME_MAX, MAX_MODELS, PositiveInt
from shared.domain.team.spec import LIMIT_FIELDS, Counter, Kind, Limits, ModelGrant, TeamSpec
from shared.domain.team.yaml_loader import load_yaml

__all__ = [
    "APIM_PRODUCT_ID_MAX", "APIM_SUBSCRIPTION_ID_MAX", "COST_CENTER_MAX", "DISPLAY_NAME_MAX", "FILE_NAMES",
    "K8S_LABEL_MAX", "K8S_SECRET_NAME_MAX", "LIMIT_FIELDS", "MAX_FILE_BYTES", "MAX_MODELS", "SAFE_MODEL_NAME",
    "STORE_PREFIX", "TEAM_NAME",
    "Counter", "Issue", "KaitoEntry", "Kind", "Limits", "ModelGrant", "Phase", "PositiveInt", "TeamCatalog",
    "TeamFileError", "TeamRecord", "TeamSpec",
    "check_unique", "content_hash", "decode", "folder_team", "keys_secret_name", "load_yaml", "parse", "preset_slug",
    "product_id", "read", "record_name", "subscription_id", "too_large", "workspace_name",
]
