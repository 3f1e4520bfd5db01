"""The teams' key Secrets, `{team}-api-key`, in a namespace of their own (TEAM_KEYS_NAMESPACE).

Teams read their Secret with kubectl, so they get read access where it lives: one Role per team,
limited by `resourceNames` to that Secret (docs/teams.md). That namespace holds no request
Secret. A Secret is this app's when it carries the labels `app.kubernetes.io/name=llm-key-requestor`
and `app.kubernetes.io/component=llm-team-api-key`, which this app writes when it creates one. One
without them (the earlier GitOps flow's, someone's own) is never rewritten or deleted: writing the
keys fails with NotOurs, naming the labels an operator adds to hand it over.

Before TEAM_KEYS_NAMESPACE existed, this app kept the Secret beside the team records; once the
keys are written to the keys namespace, such an old copy (ours by its labels) is deleted, so the
records' namespace holds no team key either.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from shared.domain.request import utcnow
from shared.domain.team import keys_secret_name
from shared.services.ports import Conflict, NotFound, StoreError, StoreUnavailable, TransientError
from shared.services.team_ports import NotOurs
from shared.store import codec
from shared.store.secrets import SecretsGateway

log = logging.getLogger(__name__)

KEYS_COMPONENT = "llm-team-api-key"
TEAM_LABEL = codec.PREFIX + "team"
PRIMARY_KEY = "primary-key"
SECONDARY_KEY = "secondary-key"


def owned(secret: dict[str, Any]) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return labels.get(codec.APP_LABEL) == codec.APP_NAME and labels.get(codec.COMPONENT_LABEL) == KEYS_COMPONENT


class TeamKeys:
    """`{team}-api-key` in `gateway`'s namespace; `legacy`: the records' namespace, where this app
    kept them before (None when both are the same)."""

    def __init__(self, gateway: SecretsGateway, legacy: SecretsGateway | None = None) -> None:
        self._secrets = gateway
        self._legacy = legacy if legacy is not None and legacy.namespace != gateway.namespace else None
        self.namespace = gateway.namespace

    def write(self, team: str, primary: str, secondary: str) -> None:
        """Create `{team}-api-key`, or replace the keys of ours (guarded by its resourceVersion).
        NotOurs for one without our labels; TransientError when the namespace is missing or the
        app may not write there (so the team records why, and fails after its attempts)."""
        data = {PRIMARY_KEY: _b64(primary), SECONDARY_KEY: _b64(secondary)}
        try:
            current = self._secrets.read(keys_secret_name(team))
            if current is None:
                current = self._create(team, data)
            if current is not None:
                self._replace(team, current, data)
        except StoreError as exc:
            raise self._explained(exc, "write") from None
        self._forget_legacy(team)

    def _create(self, team: str, data: dict[str, str]) -> dict[str, Any] | None:
        """None once created; the Secret that is there when the name was taken meanwhile."""
        name = keys_secret_name(team)
        try:
            self._secrets.create(self._body(team, data))
            return None
        except NotFound:  # the apiserver's answer to a create in a namespace that does not exist
            raise TransientError(f"namespace {self.namespace} (TEAM_KEYS_NAMESPACE) does not exist: create it "
                                 "(infra/kubernetes/namespace.yaml)") from None
        except Conflict:  # a second worker, or someone else: _replace decides on what is there
            current = self._secrets.read(name)
            if current is None:
                raise StoreUnavailable(f"Secret {name} appeared and vanished; try again") from None
            return current

    def _replace(self, team: str, current: dict[str, Any], data: dict[str, str]) -> None:
        name = keys_secret_name(team)
        if not owned(current):
            raise NotOurs(refusal(name, self.namespace))
        if (current.get("data") or {}) == data:
            return
        meta = current["metadata"]
        meta["labels"] = {**(meta.get("labels") or {}), **_labels(team)}
        meta["annotations"] = {**(meta.get("annotations") or {}), codec.PREFIX + "team": team,
                               codec.PREFIX + "updated-at": utcnow().isoformat()}
        current["data"] = data
        current["type"] = current.get("type") or "Opaque"
        self._secrets.replace(name, current)  # guarded by the resourceVersion it was read with

    def delete(self, team: str) -> bool:
        """Delete `{team}-api-key` if it is ours (and an old copy in the records' namespace); True
        if ours was there. One without our labels stays."""
        deleted = False
        try:
            for gateway in (self._secrets, self._legacy):
                if gateway is not None:
                    deleted = _delete_owned(gateway, keys_secret_name(team)) or deleted
        except StoreError as exc:
            raise self._explained(exc, "delete") from None
        return deleted

    def present(self, team: str) -> bool:
        """Whether our `{team}-api-key` holds both keys (their values are never returned)."""
        current = self._secrets.read(keys_secret_name(team))
        if current is None or not owned(current):
            return False
        data = current.get("data") or {}
        return bool(data.get(PRIMARY_KEY) and data.get(SECONDARY_KEY))

    def _forget_legacy(self, team: str) -> None:
        if self._legacy is None:
            return
        try:
            if _delete_owned(self._legacy, keys_secret_name(team)):
                log.info("team %s: old keys Secret in namespace %s deleted (the keys now live in %s)", team,
                         self._legacy.namespace, self.namespace)
        except StoreError as exc:  # the keys are written; the old copy goes with the next write
            log.warning("team %s: old keys Secret in namespace %s not deleted: %s", team, self._legacy.namespace, exc)

    def _body(self, team: str, data: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": keys_secret_name(team), "labels": _labels(team),
                             "annotations": {codec.PREFIX + "team": team,
                                             codec.PREFIX + "updated-at": utcnow().isoformat()}},
                "data": data}

    def _explained(self, exc: StoreError, verb: str) -> Exception:
        """A refusal (403: RBAC) as a TransientError that names the setting and the manifest: as a
        StoreError the engine would only log it, tick after tick. Outages and conflicts stay as they are."""
        if isinstance(exc, (Conflict, NotFound, StoreUnavailable)):
            return exc
        return TransientError(f"could not {verb} the team's keys Secret in namespace {self.namespace} "
                              f"(TEAM_KEYS_NAMESPACE; RBAC: infra/kubernetes/role.yaml): {exc}")


def refusal(name: str, namespace: str) -> str:
    return (f"Secret {name} in namespace {namespace} already exists and is not managed by llm-key-requestor "
            f"(it lacks the labels {codec.APP_LABEL}={codec.APP_NAME} and {codec.COMPONENT_LABEL}={KEYS_COMPONENT}), "
            "so it was left unchanged. Delete it, or add those labels to hand it over to this app; then re-apply "
            "the team.")


def _delete_owned(gateway: SecretsGateway, name: str) -> bool:
    current = gateway.read(name)
    if current is None:
        return False
    if not owned(current):
        log.warning("Secret %s in namespace %s is not labelled as this app's: left in place", name, gateway.namespace)
        return False
    return gateway.delete(name, current["metadata"]["resourceVersion"])


def _labels(team: str) -> dict[str, str]:
    return {codec.APP_LABEL: codec.APP_NAME, codec.COMPONENT_LABEL: KEYS_COMPONENT, TEAM_LABEL: team}


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()
