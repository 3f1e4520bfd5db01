"""The catalog as reading a team file needs it: config.yaml's `AppConfig` reduced to the few facts a
file is checked against (foundry model ids; KAITO models with their preset and instance type), so
that shared/domain never imports shared.config, plus `max_team_name_length`, which ties the
catalog's longest KAITO preset to the name limits in names.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shared.domain.team.names import (
    APIM_PRODUCT_ID_MAX,
    APIM_SUBSCRIPTION_ID_MAX,
    K8S_LABEL_MAX,
    K8S_SECRET_NAME_MAX,
    STORE_PREFIX,
    keys_secret_name,
    preset_slug,
    product_id,
    subscription_id,
)


@dataclasses.dataclass(frozen=True)
class KaitoEntry:
    name: str
    preset: str
    instance_type: str


@dataclasses.dataclass(frozen=True)
class TeamCatalog:
    """Model names a team may ask for: foundry ids (`AppConfig.models`) and KAITO models
    (`AppConfig.kaito_models`, by name; the preset name is accepted too)."""

    foundry: tuple[str, ...]
    kaito: tuple[KaitoEntry, ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> TeamCatalog:
        return cls(foundry=tuple(m.id for m in config.models),
                   kaito=tuple(KaitoEntry(k.name, k.preset, k.instance_type) for k in config.kaito_models))

    def kaito_entry(self, name: str) -> KaitoEntry | None:
        for entry in self.kaito:
            if name in (entry.name, entry.preset):
                return entry
        return None

    def max_team_name_length(self) -> tuple[int, str]:
        """How long a team name may be, and which derived name sets that bound.

        Every name built from the team must fit its own limit:
        - `{team}-{preset}` (KAITO Workspace, a DNS-1035 label): 63 - 1 - len(longest preset);
        - the `team-phase`-style label values and the Workspace's `apps` label: 63;
        - `product-{team}` (APIM product id): 80 - 8 = 72;
        - `sub-{team}` (APIM subscription id): 256 - 4; `{team}-api-key` and
          `llm-team-access-{team}` (Secret names): 253 - 8 and 253 - 16.
        So: min(63, 72, 62 - longest preset), i.e. 40 with presets up to 22 characters
        (`phi-3-mini-4k-instruct`). The bound uses every preset in the catalog, not only the
        team's own: a team may enable any KAITO model later without having to rename itself.
        """
        bounds = [
            (K8S_LABEL_MAX, "Kubernetes label values carry the team name (63)"),
            (APIM_PRODUCT_ID_MAX - len(product_id("")),
             f"the APIM product id product-{{team}} (at most {APIM_PRODUCT_ID_MAX})"),
            (APIM_SUBSCRIPTION_ID_MAX - len(subscription_id("")), "the APIM subscription id sub-{team}"),
            (K8S_SECRET_NAME_MAX - len(keys_secret_name("")), "the Secret name {team}-api-key"),
            (K8S_SECRET_NAME_MAX - len(STORE_PREFIX), "the Secret name llm-team-access-{team}"),
        ]
        if self.kaito:
            longest = max(self.kaito, key=lambda e: len(preset_slug(e.preset)))
            slug = preset_slug(longest.preset)
            bounds.append((K8S_LABEL_MAX - 1 - len(slug),
                           f"the KAITO Workspace name {{team}}-{slug} (at most {K8S_LABEL_MAX}; "
                           f"{slug} is the catalog's longest preset)"))
        return min(bounds, key=lambda b: b[0])
