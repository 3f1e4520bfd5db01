"""The one place that knows how a key request looks as a Kubernetes Secret.

Contract (compatible with the earlier service's runbook):
- name `llm-key-request-<id>`;
- labels `app.kubernetes.io/name=llm-key-requestor`, `app.kubernetes.io/component=llm-key-request`,
  `request-state=<state>`: the label is the state's source of truth, so
  `kubectl label secret ... request-state=approved --overwrite` is a decision;
- everything else that is not secret in annotations under `llm-key-requestor/`, so
  `kubectl describe` tells the story; keys only ever in `data`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime
from typing import Any

from shared.domain.lifecycle import due_day
from shared.domain.request import KeyRequest, State
from shared.domain.request_steps import holds_access

APP_LABEL = "app.kubernetes.io/name"
APP_NAME = "llm-key-requestor"
COMPONENT_LABEL = "app.kubernetes.io/component"
REQUEST_COMPONENT = "llm-key-request"
CLAIM_COMPONENT = "llm-key-request-claim"
STATE_LABEL = "request-state"
SETTLED_LABEL = "request-settled"
DUE_DAY_LABEL = "request-due-day"
# On a request that may hold issued access (request_steps.holds_access), with the finalizer below:
# `kubectl delete` then only marks it, and the timer revokes that access before the Secret goes.
HOLDS_LABEL = "request-holds-access"
FINALIZER = "llm-key-requestor/revoke-access"
PREFIX = "llm-key-requestor/"

REQUEST_NAME_PREFIX = "llm-key-request-"
CLAIM_NAME_PREFIX = "llm-key-claim-"

# KeyRequest field -> annotation (without prefix). Timestamps as ISO 8601 strings.
_TEXT = {"email": "email", "canonical_email": "canonical-email", "model": "model", "decision": "decision",
         "reason": "reason", "decided_by": "decided-by", "last_error": "last-error",
         "lifecycle_requested_by": "lifecycle-requested-by", "denial_cleared_by": "denial-cleared-by"}
_TIMES = {"created_at": "created-at", "updated_at": "updated-at", "decided_at": "decided-at",
          "next_attempt_at": "next-attempt-at", "expires_at": "expires-at", "due_at": "due-at",
          "renew_requested_at": "renew-requested-at", "rotate_requested_at": "rotate-requested-at",
          "denial_cleared_at": "denial-cleared-at"}
_INTS = {"attempts": "attempts"}
_OPTIONAL_INTS = {"generation": "generation"}


class InvalidRecord(ValueError):
    """A Secret that claims to be a request but cannot be read as one (e.g. a mistyped label)."""


def request_name(request_id: str) -> str:
    return REQUEST_NAME_PREFIX + request_id


def request_selector(states: tuple[State, ...] = (), unsettled_only: bool = False) -> str:
    """Requests in `states`; `unsettled_only` (one state) leaves out those whose work is done.
    (`!=` also matches objects without the label, i.e. never settled.)"""
    selector = f"{APP_LABEL}={APP_NAME},{COMPONENT_LABEL}={REQUEST_COMPONENT}"
    if unsettled_only:
        if len(states) != 1:
            raise ValueError("unsettled_only needs exactly one state")
        selector += f",{SETTLED_LABEL}!={states[0].value}"
    if len(states) == 1:
        selector += f",{STATE_LABEL}={states[0].value}"
    elif states:
        selector += f",{STATE_LABEL} in ({','.join(s.value for s in states)})"
    return selector


def annotations_of(request: KeyRequest) -> dict[str, str | None]:
    """All annotations this app owns; None marks one to remove (a JSON merge patch null)."""
    out: dict[str, str | None] = {}
    for field, key in _TEXT.items():
        out[PREFIX + key] = getattr(request, field)
    for field, key in _TIMES.items():
        value: datetime | None = getattr(request, field)
        out[PREFIX + key] = value.isoformat() if value else None
    for field, key in _INTS.items():
        out[PREFIX + key] = str(getattr(request, field))
    for field, key in _OPTIONAL_INTS.items():
        value = getattr(request, field)
        out[PREFIX + key] = None if value is None else str(value)
    # A digest of the reason this app wrote, so one written by hand (kubectl annotate) is told apart.
    out[PREFIX + "reason-digest"] = _digest(request.reason) if request.reason else None
    out[PREFIX + "lease-holder"] = request.lease_holder
    out[PREFIX + "lease-until"] = request.lease_until.isoformat() if request.lease_until else None
    steps = {name: when.isoformat() for name, when in sorted(request.steps.items())}
    out[PREFIX + "steps"] = json.dumps(steps) if steps else None
    out[PREFIX + "references"] = json.dumps(dict(sorted(request.references.items()))) if request.references else None
    used = {token: when.isoformat() for token, when in sorted(request.links_used.items())}
    out[PREFIX + "links-used"] = json.dumps(used) if used else None
    return out


def labels_of(request: KeyRequest) -> dict[str, str]:
    labels = {APP_LABEL: APP_NAME, COMPONENT_LABEL: REQUEST_COMPONENT, STATE_LABEL: request.state.value}
    if request.settled is not None:
        labels[SETTLED_LABEL] = request.settled.value
    if request.state == State.ACTIVE and request.due_at is not None:
        # The day the timer next has work for this active key: its sweep asks for the days up to
        # today, so it never reads every active request (a label selector cannot compare times).
        labels[DUE_DAY_LABEL] = due_day(request.due_at)
    if holds_access(request):
        labels[HOLDS_LABEL] = "true"
    return labels


def holders_selector() -> str:
    """Requests that may hold issued access (the sweep looks among them for deleted ones)."""
    return f"{APP_LABEL}={APP_NAME},{COMPONENT_LABEL}={REQUEST_COMPONENT},{HOLDS_LABEL}=true"


def due_selector(days: tuple[str, ...]) -> str:
    """Active requests whose next lifecycle work falls on one of `days`."""
    return (f"{APP_LABEL}={APP_NAME},{COMPONENT_LABEL}={REQUEST_COMPONENT},{STATE_LABEL}={State.ACTIVE.value},"
            f"{DUE_DAY_LABEL} in ({','.join(days)})")


def to_secret(request: KeyRequest, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Secret for `request`; with `base` (the object as stored), labels and annotations that
    are not ours (an operator's notes, kubectl's bookkeeping) are kept as they are."""
    meta = (base or {}).get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in _OWN_LABELS}
    labels.update(labels_of(request))
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(PREFIX)}
    annotations.update({k: v for k, v in annotations_of(request).items() if v is not None})
    metadata: dict[str, Any] = {"name": request_name(request.id), "labels": labels, "annotations": annotations}
    finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    if holds_access(request):
        finalizers.append(FINALIZER)
    if finalizers:
        metadata["finalizers"] = finalizers
    if request.resource_version:
        metadata["resourceVersion"] = request.resource_version
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata}
    if request.secrets:
        secret["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in request.secrets.items()}
    return secret


_OWN_LABELS = {APP_LABEL, COMPONENT_LABEL, STATE_LABEL, SETTLED_LABEL, DUE_DAY_LABEL, HOLDS_LABEL}


def from_secret(secret: dict[str, Any]) -> KeyRequest:
    meta = secret.get("metadata") or {}
    name: str = meta.get("name", "")
    labels = meta.get("labels") or {}
    notes = meta.get("annotations") or {}
    raw_state = labels.get(STATE_LABEL, "")
    try:
        state = State(raw_state)
    except ValueError:
        known = ", ".join(s.value for s in State)
        raise InvalidRecord(f"{name}: label {STATE_LABEL}={raw_state!r} is not one of {known}") from None
    raw_settled = labels.get(SETTLED_LABEL)
    values: dict[str, Any] = {"settled": State(raw_settled) if raw_settled in _STATE_VALUES else None}
    try:
        values["lease_holder"] = notes.get(PREFIX + "lease-holder")
        until = notes.get(PREFIX + "lease-until")
        values["lease_until"] = datetime.fromisoformat(until) if until else None
        values["steps"] = {k: datetime.fromisoformat(v) for k, v in
                           json.loads(notes.get(PREFIX + "steps") or "{}").items()}
        values["references"] = dict(json.loads(notes.get(PREFIX + "references") or "{}"))
        values["links_used"] = {k: datetime.fromisoformat(v) for k, v in
                                json.loads(notes.get(PREFIX + "links-used") or "{}").items()}
        values["secrets"] = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        for field, key in _TEXT.items():
            values[field] = notes.get(PREFIX + key)
        digest = notes.get(PREFIX + "reason-digest")
        values["reason_edited"] = bool(values["reason"] and digest and digest != _digest(values["reason"]))
        for field, key in _TIMES.items():
            text = notes.get(PREFIX + key)
            values[field] = datetime.fromisoformat(text) if text else None
        for field, key in _INTS.items():
            values[field] = int(notes.get(PREFIX + key) or 0)
        for field, key in _OPTIONAL_INTS.items():
            text = notes.get(PREFIX + key)
            values[field] = int(text) if text else None
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidRecord(f"{name}: unreadable annotation ({type(exc).__name__})") from None
    created = values.pop("created_at") or _parse_k8s_time(meta.get("creationTimestamp"))
    updated = values.pop("updated_at") or created
    return KeyRequest(
        id=name.removeprefix(REQUEST_NAME_PREFIX),
        email=values.pop("email") or "",
        model=values.pop("model") or "",
        state=state,
        created_at=created,
        updated_at=updated,
        resource_version=meta.get("resourceVersion"),
        deleting=bool(meta.get("deletionTimestamp")),
        **values,
    )


_STATE_VALUES = {s.value for s in State}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parse_k8s_time(text: str | None) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else datetime.min
