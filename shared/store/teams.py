"""Teams kept as Kubernetes Secrets, one per team, and the teams' key Secrets.

The one place that knows how a team looks in Kubernetes:

- the team's record: Secret `llm-team-access-{team}`, labels `app.kubernetes.io/name=llm-key-requestor`,
  `app.kubernetes.io/component=llm-team-access`, `team-phase=<phase>` and `team-settled=true` once its
  current generation is fully reconciled. The normalised spec, the generation pair, the steps done,
  what is provisioned and the retry state are annotations under `llm-key-requestor/`, so
  `kubectl describe` tells the story. It holds no key. A key rotation in progress adds
  `rotate-requested-at`/`-by`, `rotation-steps` and `rotation-retire-at` (when the key used before
  it stops working).
  Runbook: `kubectl get secrets -l app.kubernetes.io/component=llm-team-access -L team-phase` lists
  teams; `kubectl label secret llm-team-access-<team> team-settled-` makes the timer re-apply
  everything for that team (e.g. after someone changed its APIM product by hand).
- the team's keys: Secret `{team}-api-key` with `primary-key` and `secondary-key`, labelled
  `app.kubernetes.io/component=llm-team-api-key` and `llm-key-requestor/team=<team>`, in a
  namespace of its own (shared/store/team_keys.py).

Reads on the HTTP path go by name; only the timer's sweep lists, by label selector. Every write of
a record carries its resourceVersion, so two writers never both win (409 -> Conflict).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, cast

from shared.domain.request import utcnow
from shared.domain.team import Phase, TeamRecord, TeamSpec, record_name
from shared.services.ports import StoreError
from shared.store import codec
from shared.store.secrets import SecretsGateway
from shared.store.team_keys import TeamKeys

log = logging.getLogger(__name__)

TEAM_COMPONENT = "llm-team-access"
PHASE_LABEL = "team-phase"
SETTLED_LABEL = "team-settled"
TEAM_LABEL = codec.PREFIX + "team"
PREFIX = codec.PREFIX

_TIMES = {"created_at": "created-at", "updated_at": "updated-at", "submitted_at": "submitted-at",
          "provisioned_at": "provisioned-at", "next_attempt_at": "next-attempt-at", "lease_until": "lease-until",
          "rotate_requested_at": "rotate-requested-at", "rotation_retire_at": "rotation-retire-at"}
_TEXT = {"source": "source", "commit": "source-commit", "content_hash": "content-sha256",
         "submitted_by": "submitted-by", "last_error": "last-error", "lease_holder": "lease-holder",
         "rotate_requested_by": "rotate-requested-by"}
_OWN_LABELS = {codec.APP_LABEL, codec.COMPONENT_LABEL, PHASE_LABEL, SETTLED_LABEL, TEAM_LABEL}


class InvalidTeamRecord(StoreError):
    """A Secret labelled as a team record that cannot be read as one."""


def team_selector(unsettled_only: bool = False) -> str:
    selector = f"{codec.APP_LABEL}={codec.APP_NAME},{codec.COMPONENT_LABEL}={TEAM_COMPONENT}"
    if unsettled_only:
        selector += f",{SETTLED_LABEL}!=true"  # `!=` also matches a record without the label
    return selector


# --- the record as a Secret ------------------------------------------------------------------------


def to_secret(record: TeamRecord, base: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = (base or {}).get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in _OWN_LABELS}
    labels.update({codec.APP_LABEL: codec.APP_NAME, codec.COMPONENT_LABEL: TEAM_COMPONENT,
                   PHASE_LABEL: record.phase, TEAM_LABEL: record.name})
    if record.settled:
        labels[SETTLED_LABEL] = "true"
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(PREFIX)}
    own: dict[str, str | None] = {
        "team": record.name,
        "team-spec": record.spec.to_json(),
        "generation": str(record.generation),
        "observed-generation": str(record.observed_generation),
        "deleting": "true" if record.deleting else None,
        "attempts": str(record.attempts),
        "steps": json.dumps({k: v.isoformat() for k, v in sorted(record.steps.items())}) if record.steps else None,
        "rotation-steps": json.dumps({k: v.isoformat() for k, v in sorted(record.rotation_steps.items())})
        if record.rotation_steps else None,
        "applied": json.dumps(dict(record.applied), sort_keys=True) if record.applied else None,
    }
    for field, key in _TEXT.items():
        own[key] = getattr(record, field)
    for field, key in _TIMES.items():
        value: datetime | None = getattr(record, field)
        own[key] = value.isoformat() if value else None
    annotations.update({PREFIX + k: v for k, v in own.items() if v is not None})
    metadata: dict[str, Any] = {"name": record_name(record.name), "labels": labels, "annotations": annotations}
    if record.resource_version:
        metadata["resourceVersion"] = record.resource_version
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata}


def from_secret(secret: dict[str, Any]) -> TeamRecord:
    meta = secret.get("metadata") or {}
    name = meta.get("name", "")
    labels = meta.get("labels") or {}
    notes = meta.get("annotations") or {}
    try:
        values: dict[str, Any] = {}
        for field, key in _TIMES.items():
            text = notes.get(PREFIX + key)
            values[field] = datetime.fromisoformat(text) if text else None
        for field, key in _TEXT.items():
            values[field] = notes.get(PREFIX + key)
        steps = {k: datetime.fromisoformat(v) for k, v in json.loads(notes.get(PREFIX + "steps") or "{}").items()}
        rotation_steps = {k: datetime.fromisoformat(v)
                          for k, v in json.loads(notes.get(PREFIX + "rotation-steps") or "{}").items()}
        applied = dict(json.loads(notes.get(PREFIX + "applied") or "{}"))
        spec = TeamSpec.from_json(notes[PREFIX + "team-spec"])
        phase = labels.get(PHASE_LABEL) or "pending"
        if phase not in ("pending", "provisioning", "ready", "failed", "deleting"):
            raise ValueError(f"label {PHASE_LABEL}={phase!r}")
        created = values.pop("created_at") or utcnow()
        return TeamRecord(
            name=notes.get(PREFIX + "team") or name.removeprefix("llm-team-access-"),
            spec=spec,
            generation=int(notes.get(PREFIX + "generation") or 1),
            observed_generation=int(notes.get(PREFIX + "observed-generation") or 0),
            phase=cast(Phase, phase),  # checked above: one of the five
            created_at=created,
            updated_at=values.pop("updated_at") or created,
            deleting=notes.get(PREFIX + "deleting") == "true",
            settled=labels.get(SETTLED_LABEL) == "true",
            steps=steps,
            rotation_steps=rotation_steps,
            applied=applied,
            attempts=int(notes.get(PREFIX + "attempts") or 0),
            resource_version=meta.get("resourceVersion"),
            **values,
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidTeamRecord(f"{name}: unreadable team record ({type(exc).__name__}: {str(exc)[:200]})") from None


class KubernetesTeamStore:
    """Team records in `namespace`; the keys Secrets in `keys_namespace` (TEAM_KEYS_NAMESPACE; the
    records' namespace when not given)."""

    def __init__(self, api_client: Any, namespace: str, timeout_seconds: float = 10.0,
                 keys_namespace: str | None = None) -> None:
        self._secrets = SecretsGateway(api_client, namespace, timeout_seconds)
        self.namespace = namespace
        keys = SecretsGateway(api_client, keys_namespace, timeout_seconds) if keys_namespace else self._secrets
        self.keys = TeamKeys(keys, legacy=self._secrets)

    # --- records ---------------------------------------------------------------------------------

    def get(self, team: str) -> TeamRecord | None:
        secret = self._secrets.read(record_name(team))
        return None if secret is None else from_secret(secret)

    def create(self, record: TeamRecord) -> TeamRecord:
        """Conflict if the team is already stored (two writers: one wins)."""
        body = to_secret(record)
        body["metadata"].pop("resourceVersion", None)
        return from_secret(self._secrets.create(body))

    def update(self, record: TeamRecord) -> TeamRecord:
        """Replace the record, keeping labels and annotations that are not ours; guarded by its
        resourceVersion (Conflict if someone wrote since it was read)."""
        if record.resource_version is None:
            raise ValueError("update needs a record read from the store")
        return from_secret(self._secrets.replace_guarded(
            record_name(record.name), lambda current: to_secret(record, base=current), record.resource_version,
            what=f"team {record.name}"))

    def delete(self, record: TeamRecord) -> None:
        """Remove the record, only if it is still the version read."""
        self._secrets.delete(record_name(record.name), record.resource_version)

    def list_page(self, limit: int, continue_token: str | None = None
                  ) -> tuple[list[TeamRecord], list[str], str | None]:
        """One page of every team, in name order: (records, the names of Secrets labelled as team
        records that cannot be read as one, the next page's token or None). The admin list's read;
        InvalidArgument when the apiserver refuses the token (it expires after a few minutes)."""
        records: list[TeamRecord] = []
        unreadable: list[str] = []
        secrets, token = self._secrets.list(team_selector(), limit, continue_token)
        for secret in secrets:
            try:
                records.append(from_secret(secret))
            except InvalidTeamRecord as exc:
                log.warning("unreadable team record: %s", exc)
                unreadable.append((secret.get("metadata") or {}).get("name", "?"))
        return records, unreadable, token

    def list_due(self) -> list[TeamRecord]:
        """Records whose current generation is not settled yet (the timer's sweep)."""
        records: list[TeamRecord] = []
        token = None
        while True:
            secrets, token = self._secrets.list(team_selector(unsettled_only=True), 500, token)
            for secret in secrets:
                try:
                    records.append(from_secret(secret))
                except InvalidTeamRecord as exc:
                    log.warning("skipping unreadable team record: %s", exc)
            if not token:
                return records

    # --- the team's key Secret (team_keys.py: its own namespace, never another's Secret) -------------

    def write_keys(self, team: str, primary: str, secondary: str) -> None:
        self.keys.write(team, primary, secondary)

    def delete_keys(self, team: str) -> bool:
        return self.keys.delete(team)

    def keys_present(self, team: str) -> bool:
        return self.keys.present(team)
