"""The emails the service sends, composed from the templates in `shared/templates/`.

Pure functions from (request, config, what was issued) to a `ports.Email`, so the processor
decides *what* to say and a `Notifier` only delivers. Wording lives in template files (an HTML and
a plain-text part each) that operators can read and change without touching code. Everything a
user or admin typed (addresses, reasons, team names) reaches the HTML part escaped by Jinja2's
autoescape, and subjects are flattened to one line so no value can start a new header.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2

from shared.config import CatalogModel, Notifications, SubjectKind
from shared.domain.request import KeyRequest
from shared.services.ports import Email

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

TeamEvent = Literal["provisioned", "updated", "removed", "rotated"]

DEFAULT_SUBJECTS: Mapping[str, str] = {
    "approved": "{product}: your key for {model} is ready",
    "denied": "{product}: your request for {model} was denied",
    "review": "{product}: review needed for {model} ({email})",
    "failed": "{product}: request {request_id} for {model} failed",
    "undeliverable": "{product}: the {email_kind} email for request {request_id} could not be delivered",
    "team": "{product}: access for team {team} {event}",
    "reminder": "{product}: your key for {model} expires in {days} day{plural}",
    "expired": "{product}: your key for {model} has expired",
    "renewed": "{product}: your key for {model} has been renewed",
    "rotated": "{product}: your new key for {model}",
    "revoked-by-requester": "{product}: {email} revoked their key for {model}",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_MAX_SUBJECT = 200


@functools.cache
def _environment() -> jinja2.Environment:
    # auto_reload=False: templates are read once per process, never stat'ed again per message.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails the test, not a user's email
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )


@functools.cache
def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)


def _render(name: str, **context: Any) -> tuple[str, str]:
    return _template(f"{name}.txt").render(**context), _template(f"{name}.html").render(**context)


class _Keep(dict):
    """format_map values: a placeholder the operator misspelt stays visible instead of raising."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def subject(kind: SubjectKind, notifications: Notifications, **values: object) -> str:
    """The configured (or default) subject for `kind`, filled in and flattened to one line."""
    pattern = notifications.subjects.get(kind) or DEFAULT_SUBJECTS[kind]
    fields = _Keep(product=notifications.product_name, **{k: str(v) for k, v in values.items()})
    try:
        text = pattern.format_map(fields)
    except (ValueError, LookupError, AttributeError, TypeError):  # a stray brace in config: send it literally
        text = pattern
    # CR/LF (and other controls) would end the header; collapse them with surrounding spaces.
    flat = " ".join(_CONTROL.sub(" ", text).split())
    return flat if len(flat) <= _MAX_SUBJECT else flat[: _MAX_SUBJECT - 1] + "…"


def _when(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _common(notifications: Notifications) -> dict[str, Any]:
    return {"product": notifications.product_name, "admin_url": notifications.admin_url.rstrip("/")}


# --- the requester ----------------------------------------------------------------------------


def _limits(model: CatalogModel) -> list[tuple[str, str]]:
    """What the key allows, as (label, value) rows; only LiteLLM keys carry these limits."""
    if "litellm" not in model.provisioning.backends:
        return []
    litellm = model.provisioning.litellm
    rows: list[tuple[str, str]] = []
    if litellm.tpm_limit:
        rows.append(("Tokens per minute", f"{litellm.tpm_limit:,}"))
    if litellm.rpm_limit:
        rows.append(("Requests per minute", f"{litellm.rpm_limit:,}"))
    if litellm.max_budget:
        period = f" every {litellm.budget_duration}" if litellm.budget_duration else ""
        rows.append(("Budget", f"USD {litellm.max_budget:,.2f}{period}"))
    if litellm.soft_budget:
        rows.append(("Budget warning at", f"USD {litellm.soft_budget:,.2f}"))
    return rows


def _curl(base_url: str, label: str, key: str, model_name: str) -> str:
    # APIM checks its subscription header; LiteLLM (OpenAI-compatible) takes a bearer token.
    header = "Ocp-Apim-Subscription-Key: " if "apim" in label.lower() else "Authorization: Bearer "
    body = json.dumps({"model": model_name, "messages": [{"role": "user", "content": "Hello!"}]})
    return (f"curl {base_url or '<base URL>'}/chat/completions \\\n"
            f"  -H '{header}{key}' \\\n"
            f"  -H 'Content-Type: application/json' \\\n"
            f"  -d '{body}'")


def _usage(model: CatalogModel, api_keys: Mapping[str, str], base_url: str | None) -> dict[str, Any]:
    """What the key emails show about using the key(s): base URL, model names, limits, a curl line."""
    model_names = list(model.provisioning.litellm.models) or [model.id]
    root = (base_url or "").rstrip("/")
    first_label, first_key = next(iter(api_keys.items()))
    return {"keys": list(api_keys.items()), "base_url": root, "model_names": model_names,
            "limits": _limits(model), "curl": _curl(root, first_label, first_key, model_names[0])}


def approved_email(request: KeyRequest, model: CatalogModel, api_keys: Mapping[str, str],
                   base_url: str | None, expires_at: datetime | None,
                   notifications: Notifications, *, rotate_url: str | None = None,
                   revoke_url: str | None = None) -> Email:
    """The requester's key(s) and how to use them. `api_keys` maps a label (the backend) to a key.
    `rotate_url` / `revoke_url` (LinkMaker.url): the requester's own "replace it" and "it leaked" links."""
    if not api_keys:
        raise ValueError("approved_email needs at least one key")
    context = _common(notifications) | _usage(model, api_keys, base_url) | {
        "request": request,
        "model": model,
        "expires": _when(expires_at),
        "rotate_url": rotate_url,
        "revoke_url": revoke_url,
    }
    text, html = _render("approved", **context)
    return Email(
        to=(request.email,),
        subject=subject("approved", notifications, model=model.title, model_id=model.id,
                        email=request.email, request_id=request.id),
        text=text, html=html, idempotency_key=f"{request.id}-approved",
    )


def denied_email(request: KeyRequest, notifications: Notifications) -> Email:
    text, html = _render("denied", **_common(notifications), request=request)
    return Email(
        to=(request.email,),
        subject=subject("denied", notifications, model=request.model, model_id=request.model,
                        email=request.email, request_id=request.id),
        text=text, html=html, idempotency_key=f"{request.id}-denied",
    )


def _model_subject(kind: SubjectKind, request: KeyRequest, model: CatalogModel, notifications: Notifications,
                   **values: object) -> str:
    return subject(kind, notifications, model=model.title, model_id=model.id, email=request.email,
                   request_id=request.id, **values)


def reminder_email(request: KeyRequest, model: CatalogModel, days_left: int, renew_url: str | None,
                   notifications: Notifications) -> Email:
    """Before expiry (`notifications.expiry_reminders_days`): when the key stops working, and the link
    that renews it (None: no link, the email says to ask the platform team). One message per
    reminder day: `<id>-reminder-<days_left>`."""
    context = _common(notifications) | {"request": request, "model": model, "days": days_left,
                                        "expires": _when(request.expires_at), "renew_url": renew_url}
    text, html = _render("reminder", **context)
    return Email(
        to=(request.email,),
        subject=_model_subject("reminder", request, model, notifications, days=days_left,
                               plural="" if days_left == 1 else "s"),
        text=text, html=html, idempotency_key=f"{request.id}-reminder-{days_left}",
    )


def expired_email(request: KeyRequest, model: CatalogModel | None, request_again_url: str | None,
                  notifications: Notifications) -> Email:
    """The key stopped working; one click asks for a new one (a new request, approved as before).
    `model` None: no longer in the catalog (then no link is offered: a new request would be refused)."""
    title = model.title if model is not None else request.model
    context = _common(notifications) | {"request": request, "title": title, "expires": _when(request.expires_at),
                                        "request_again_url": request_again_url if model is not None else None}
    text, html = _render("expired", **context)
    return Email(
        to=(request.email,),
        subject=subject("expired", notifications, model=title, model_id=request.model, email=request.email,
                        request_id=request.id),
        text=text, html=html, idempotency_key=f"{request.id}-expired",
    )


def _stamp(moment: datetime | None) -> str:
    if moment is None:
        return "none"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return str(int(moment.timestamp()))


def renewed_email(request: KeyRequest, model: CatalogModel, notifications: Notifications) -> Email:
    """The same key keeps working, until the new `request.expires_at`. One message per renewal: the
    idempotency key carries the new expiry (`<id>-renewed-<unix seconds>`)."""
    context = _common(notifications) | {"request": request, "model": model, "expires": _when(request.expires_at)}
    text, html = _render("renewed", **context)
    stamp = _stamp(request.expires_at or request.renew_requested_at)
    return Email(
        to=(request.email,),
        subject=_model_subject("renewed", request, model, notifications),
        text=text, html=html, idempotency_key=f"{request.id}-renewed-{stamp}",
    )


def rotated_email(request: KeyRequest, model: CatalogModel, keys: Mapping[str, str], grace_until: datetime,
                  notifications: Notifications, *, base_url: str | None = None,
                  generation: int | str | None = None, rotate_url: str | None = None,
                  revoke_url: str | None = None) -> Email:
    """The new key(s) of a rotation; the previous key keeps working until `grace_until`, then stops.
    `keys` maps a label (the backend) to a key, as in approved_email. The idempotency key is
    `<id>-rotated-<generation>`; without `generation`, the rotation is named by `rotate_requested_at`."""
    if not keys:
        raise ValueError("rotated_email needs at least one key")
    if generation is None:
        if request.rotate_requested_at is None:
            raise ValueError("rotated_email needs a generation, or a request with rotate_requested_at")
        generation = _stamp(request.rotate_requested_at)
    context = _common(notifications) | _usage(model, keys, base_url) | {
        "request": request, "model": model, "grace_until": _when(grace_until),
        "expires": _when(request.expires_at), "rotate_url": rotate_url, "revoke_url": revoke_url,
    }
    text, html = _render("rotated", **context)
    return Email(
        to=(request.email,),
        subject=_model_subject("rotated", request, model, notifications),
        text=text, html=html, idempotency_key=f"{request.id}-rotated-{generation}",
    )


# --- reviewers and admins ---------------------------------------------------------------------


def revoked_by_requester_email(request: KeyRequest, notifications: Notifications, admins: Sequence[str]) -> Email:
    """Tells admins a requester revoked their own key (the "my key leaked" link)."""
    context = _staff_context(request, notifications) | {"decided": _when(request.decided_at)}
    text, html = _render("revoked_by_requester", **context)
    return Email(
        to=tuple(admins),
        subject=subject("revoked-by-requester", notifications, model=request.model, model_id=request.model,
                        email=request.email, request_id=request.id),
        text=text, html=html, idempotency_key=f"{request.id}-revoked-by-requester",
    )


def _staff_context(request: KeyRequest, notifications: Notifications) -> dict[str, Any]:
    return _common(notifications) | {
        "request": request,
        "created": _when(request.created_at),
        "secret_name": f"llm-key-request-{request.id}",
    }


def review_email(request: KeyRequest, notifications: Notifications, reviewers: Sequence[str]) -> Email:
    """Asks reviewers to decide, with the admin API call and the kubectl runbook line."""
    text, html = _render("review", **_staff_context(request, notifications))
    return Email(
        to=tuple(reviewers),
        subject=subject("review", notifications, model=request.model, model_id=request.model,
                        email=request.email, request_id=request.id),
        text=text, html=html, idempotency_key=f"{request.id}-review",
    )


def undeliverable_email(request: KeyRequest, kind: str, error: str, notifications: Notifications,
                        admins: Sequence[str]) -> Email:
    """Tells admins that an email about a request was refused for good (e.g. an invalid recipient)."""
    text, html = _render("failed", **_staff_context(request, notifications), undelivered=kind, error=error)
    return Email(
        to=tuple(admins),
        subject=subject("undeliverable", notifications, email_kind=kind, model=request.model, model_id=request.model,
                        email=request.email, request_id=request.id),
        text=text, html=html, idempotency_key=f"{request.id}-{kind}-undeliverable",
    )


def failed_email(request: KeyRequest, notifications: Notifications, admins: Sequence[str]) -> Email:
    """Tells admins a request gave up, with the reason and error the processor recorded."""
    text, html = _render("failed", **_staff_context(request, notifications), undelivered=None, error=None)
    return Email(
        to=tuple(admins),
        subject=subject("failed", notifications, model=request.model, model_id=request.model,
                        email=request.email, request_id=request.id),
        text=text, html=html, idempotency_key=f"{request.id}-failed",
    )


# --- teams ------------------------------------------------------------------------------------


def _label(key: str) -> str:
    """`dailyTokenQuota` / `daily_token_quota` -> `Daily token quota`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).replace("_", " ").replace("-", " ").split()
    return " ".join(words).capitalize()


def _rows(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(_label(str(k)), f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
            for k, v in values.items() if v is not None and not isinstance(v, (Mapping, list, tuple))]


def _team_models(models: Any) -> list[dict[str, Any]]:
    out = []
    for entry in models or ():
        if isinstance(entry, Mapping):
            name = str(entry.get("name", ""))
            out.append({"name": name, "limits": _rows({k: v for k, v in entry.items() if k != "name"})})
        else:
            out.append({"name": str(entry), "limits": []})
    return out


def team_email(event: TeamEvent, team: str, owner: str, details: Mapping[str, Any],
               notifications: Notifications) -> Email:
    """Tells a team's owner what its access now is. `details` is plain data, never a key:
    `models` (names, or mappings with `name` and limits), `limits` (team-wide), `secret_name`,
    `namespace`, `gateway_url`, `key_name` (the Secret's key in use), and any other scalar shown as
    a labelled row; "rotated" also `new_key`, `old_key` and `retire_at` (when the old key stops
    working). The idempotency key hashes the details, so a re-send of one change is one message
    and the next change is another."""
    if event not in ("provisioned", "updated", "removed", "rotated"):
        raise ValueError(f"unknown team event {event!r}")
    fingerprint = hashlib.sha256(
        json.dumps([event, team, owner, details], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    shown = {"models", "limits", "secret_name", "namespace", "gateway_url", "key_name", "new_key", "old_key",
             "retire_at"}
    retire_at = details.get("retire_at")
    context = _common(notifications) | {
        "event": event,
        "team": team,
        "owner": owner,
        "models": _team_models(details.get("models")),
        "limits": _rows(details.get("limits") or {}),
        "secret_name": details.get("secret_name"),
        "namespace": details.get("namespace"),
        "gateway_url": (details.get("gateway_url") or "").rstrip("/"),
        # the Secret's key to read: the one in use (keys rotate in turns), and for "rotated" the
        # new one, the one it replaces and when that stops working
        "key_name": details.get("key_name") or "primary-key",
        "new_key": details.get("new_key") or "secondary-key",
        "old_key": details.get("old_key") or "primary-key",
        "retire_at": _when(retire_at) if isinstance(retire_at, datetime) else retire_at,
        "extra": _rows({k: v for k, v in details.items() if k not in shown}),
    }
    text, html = _render("team", **context)
    safe_team = re.sub(r"[^A-Za-z0-9._-]", "_", team)[:63]
    return Email(
        to=(owner,),
        subject=subject("team", notifications, team=team, event=event),
        text=text, html=html, idempotency_key=f"team-{safe_team}-{event}-{fingerprint}",
    )
