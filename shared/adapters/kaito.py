"""KAITO Workspaces (`kaito.sh/v1beta1`, kind Workspace) for teams' open-source models.

One Workspace per team and model, named `{team}-{preset}`, in the app's namespace, with the
instance type and preset from the catalog. KAITO's Workspace keeps `resource` and `inference` at
the top level of the object (no `spec`). Raw dict bodies through the kubernetes client's
CustomObjectsApi; errors mapped like the other adapters: 5xx, 429 and connection errors are
transient, a missing CRD or a refusal is permanent. Idempotent: create, or find it as wanted;
a Workspace whose preset or instance type differs is replaced (KAITO does not change a running
workspace's GPU in place).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shared.services.ports import PermanentError, TransientError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "kaito.sh", "v1beta1", "workspaces", "Workspace"
APP_LABEL, APP_NAME = "app.kubernetes.io/name", "llm-key-requestor"
COMPONENT_LABEL, COMPONENT = "app.kubernetes.io/component", "llm-team-workspace"
TEAM_LABEL = "llm-key-requestor/team"
MODEL_ANNOTATION = "llm-key-requestor/model"


def workspace_body(name: str, team: str, model: str, preset: str, instance_type: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "labels": {APP_LABEL: APP_NAME, COMPONENT_LABEL: COMPONENT, TEAM_LABEL: team},
            "annotations": {MODEL_ANNOTATION: model},
        },
        "resource": {"instanceType": instance_type, "labelSelector": {"matchLabels": {"apps": name}}},
        "inference": {"preset": {"name": preset}},
    }


class KaitoWorkspaces:
    def __init__(self, api_client: Any, namespace: str, timeout_seconds: float = 10.0) -> None:
        from kubernetes.client import CustomObjectsApi

        self._api = CustomObjectsApi(api_client)
        self.namespace = namespace
        self._timeout = timeout_seconds

    def apply(self, name: str, team: str, model: str, preset: str, instance_type: str) -> str:
        """Make the Workspace exist as wanted; returns created | replaced | unchanged."""
        wanted = workspace_body(name, team, model, preset, instance_type)
        current = self._get(name)
        if current is None:
            try:
                self._call(f"create Workspace {name}", self._api.create_namespaced_custom_object,
                           GROUP, VERSION, self.namespace, PLURAL, wanted)
                return "created"
            except _Conflict:
                current = self._get(name)
                if current is None:
                    raise TransientError(f"KAITO Workspace {name} appeared and vanished; try again") from None
        labels = (current.get("metadata") or {}).get("labels") or {}
        if labels.get(TEAM_LABEL) not in (None, team) or labels.get(APP_LABEL) not in (None, APP_NAME):
            raise PermanentError(f"KAITO Workspace {name} exists and belongs to something else "
                                 f"(team label {labels.get(TEAM_LABEL)!r}); rename or remove it")
        if (current.get("resource") or {}).get("instanceType") == instance_type and \
                ((current.get("inference") or {}).get("preset") or {}).get("name") == preset and \
                labels.get(TEAM_LABEL) == team:
            return "unchanged"
        log.info("KAITO Workspace %s differs from the catalog (preset/instance type); replacing it", name)
        self.delete(name)
        try:
            self._call(f"create Workspace {name}", self._api.create_namespaced_custom_object,
                       GROUP, VERSION, self.namespace, PLURAL, wanted)
        except _Conflict:  # still terminating (finalizers): the next attempt creates it
            raise TransientError(f"KAITO Workspace {name} is still being deleted; try again") from None
        return "replaced"

    def delete(self, name: str) -> bool:
        """Delete the Workspace; True if it was there (gone already counts as success)."""
        try:
            self._call(f"delete Workspace {name}", self._api.delete_namespaced_custom_object,
                       GROUP, VERSION, self.namespace, PLURAL, name)
        except (_Missing, MissingCrd):
            return False
        return True

    def names_for_team(self, team: str) -> list[str]:
        """The Workspaces this app made for `team` (label selector)."""
        selector = f"{APP_LABEL}={APP_NAME},{COMPONENT_LABEL}={COMPONENT},{TEAM_LABEL}={team}"
        try:
            body = self._call(f"list Workspaces of team {team}", self._api.list_namespaced_custom_object,
                              GROUP, VERSION, self.namespace, PLURAL, label_selector=selector)
        except (_Missing, MissingCrd):
            return []  # no CRD: no workspace either
        return sorted(item["metadata"]["name"] for item in body.get("items") or [])

    def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call(f"read Workspace {name}", self._api.get_namespaced_custom_object,
                              GROUP, VERSION, self.namespace, PLURAL, name)
        except _Missing:
            return None

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response = method(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
            return json.loads(response.data or b"{}")
        except ApiException as exc:
            message = f"KAITO {what}: Kubernetes answered {exc.status}: {_reason(exc)}"
            if exc.status == 404:
                if _is_missing_kind(exc):
                    raise MissingCrd(f"KAITO {what}: the {PLURAL}.{GROUP}/{VERSION} CRD is not installed in "
                                         "this cluster (is KAITO installed?)") from None
                raise _Missing(message) from None
            if exc.status == 409:
                raise _Conflict(message) from None
            if exc.status == 429 or exc.status >= 500:
                raise TransientError(message) from None
            raise PermanentError(message) from None
        except (HTTPError, OSError) as exc:
            raise TransientError(f"KAITO {what}: the Kubernetes API did not answer ({type(exc).__name__})") from None


class _Missing(Exception):
    pass


class MissingCrd(PermanentError):
    """The Workspace CRD is not installed: nothing can be created, and nothing exists to delete."""


class _Conflict(TransientError):
    pass


def _is_missing_kind(exc: Any) -> bool:
    """A 404 for the resource type itself (no CRD), not for one object: the apiserver then answers
    without details naming the object (`404 page not found`)."""
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        return True
    details = body.get("details") or {}
    return not details.get("name")


def _reason(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)[:300]
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
