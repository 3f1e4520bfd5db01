"""The pages requester links open: `GET /api/links/{token}` shows what will happen and one button,
`POST /api/links/{token}` (that button) acts, once.

A GET changes nothing, so a mail scanner or a link preview that fetches every URL in a message
does nothing to the key. The POST checks the token (signature, expiry, action), that a browser's
`Origin` is the app's own (PUBLIC_BASE_URL), and lets lifecycle.ask record the token id in the
write that acts. Every answer is a small HTML page (text escaped, no script, nothing loaded from
elsewhere); a bad, used or expired link gets a page that says so, never a traceback.

Headers: `Cache-Control: no-store`, `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'` (no
framing, so no click-jacking of the button), `form-action 'self'`. `Referrer-Policy` is `no-referrer`
on every page but the confirmation page, which sends `same-origin`: under `no-referrer` browsers send
`Origin: null` with the page's own form post, which the origin check could not tell from a forged
post; `same-origin` still never sends the link (it is in the URL) to another site.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared import context
from shared.config import CatalogModel
from shared.domain import links
from shared.domain.request import InvalidInput, KeyRequest, State, utcnow
from shared.services import intake, lifecycle
from shared.services.links import LINK_PATH
from shared.services.ports import Conflict, NotFound, Refused, StoreUnavailable

log = logging.getLogger(__name__)
bp = func.Blueprint()
ANONYMOUS = func.AuthLevel.ANONYMOUS
WHO = lifecycle.REQUESTER  # decided-by / lifecycle-requested-by of what a requester does through a link

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
_STYLE = ("body{margin:0;padding:24px;background:#f5f6f8;font-family:Segoe UI,Helvetica,Arial,sans-serif;"
          "color:#1f2328}main{max-width:560px;margin:0 auto;background:#fff;border:1px solid #d8dee4;"
          "border-radius:6px;padding:24px}h1{font-size:18px;margin:0 0 4px}h2{font-size:16px;margin:16px 0 8px}"
          "p{line-height:1.45}.muted{color:#656d76;font-size:13px}button{font-size:15px;padding:8px 18px;"
          "border:0;border-radius:6px;background:#1f6feb;color:#fff;cursor:pointer}button.danger{background:#cf222e}")


class LinkPage(Exception):
    """Answer with this page instead of going on."""

    def __init__(self, status: int, heading: str, *paragraphs: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(heading)
        self.status = status
        self.heading = heading
        self.paragraphs = paragraphs
        self.headers = headers or {}


def _product() -> str:
    try:
        return context.config().notifications.product_name
    except Exception:  # noqa: BLE001 - the error page must render even when config cannot load
        return "LLM Key Requestor"


def page(status: int, heading: str, paragraphs: tuple[str, ...] | list[str], *,
         form: tuple[str, str, bool] | None = None, referrer: str = "no-referrer",
         headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A plain HTML page; every text is escaped. `form`: (action path, button label, danger)."""
    product = html.escape(_product())
    body = [f"<h1>{product}</h1>", f"<h2>{html.escape(heading)}</h2>"]
    body += [f"<p>{html.escape(text)}</p>" for text in paragraphs]
    if form is not None:
        action, label, danger = form
        body.append(f'<form method="post" action="{html.escape(action, quote=True)}">'
                    f'<button type="submit"{" class=danger" if danger else ""}>{html.escape(label)}</button></form>')
        body.append('<p class="muted">Nothing happens until you press the button.</p>')
    document = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<meta name=\"robots\" content=\"noindex\"><title>{product}</title><style>{_STYLE}</style></head>"
                f"<body><main>{''.join(body)}</main></body></html>\n")
    return func.HttpResponse(document, status_code=status, mimetype="text/html", charset="utf-8", headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy": _CSP,
        "Referrer-Policy": referrer, "X-Content-Type-Options": "nosniff", "X-Robots-Tag": "noindex",
        **(headers or {})})


def html_errors(handler: Callable[[func.HttpRequest], func.HttpResponse]) -> Callable[..., func.HttpResponse]:
    """Every failure becomes a page: a LinkPage as it is, the store's unavailability a 503, anything
    else a 500 that says nothing of the cause (logged with its traceback)."""

    @functools.wraps(handler)
    def wrapper(req: func.HttpRequest, *args: Any, **kwargs: Any) -> func.HttpResponse:
        try:
            return handler(req, *args, **kwargs)
        except LinkPage as answer:
            log.info("%s %s -> %d %s", req.method, LINK_PATH + "<token>", answer.status, answer.heading)
            return page(answer.status, answer.heading, answer.paragraphs, headers=answer.headers)
        except StoreUnavailable as exc:
            log.warning("%s %s -> 503: %s", req.method, LINK_PATH + "<token>", exc)
            return page(503, "Try again in a moment", ["The service cannot reach its records right now. "
                                                      "Nothing has changed; open the link again shortly."],
                        headers={"Retry-After": "5"})
        except Exception:
            log.exception("unhandled error in %s %s", req.method, LINK_PATH + "<token>")
            return page(500, "Something went wrong", ["Nothing has changed. Try the link again later, or "
                                                      "tell your platform team."])

    return wrapper


# --- what a link says, and whether it can still act ------------------------------------------


def _link(req: func.HttpRequest) -> links.Link:
    token = req.route_params.get("token", "")
    try:
        return context.link_maker().verify(token, utcnow())
    except links.ExpiredLink:
        raise LinkPage(410, "This link has expired",
                       "Links in our emails work for a limited time. Nothing has changed.",
                       "Use a link from a more recent email, or ask your platform team.") from None
    except links.ForgedLink:
        raise LinkPage(403, "This link is not valid",
                       "It was not issued by this service, or it was changed. Nothing has changed.") from None
    except links.InvalidLink:
        raise LinkPage(400, "This link is not valid",
                       "It may have been cut short: copy the whole link from the email into your browser. "
                       "Nothing has changed.") from None


def _request(link: links.Link) -> KeyRequest:
    request = intake.find_request(context.request_store(), link.request_id)
    if request is None:
        raise LinkPage(404, "This request no longer exists", "Nothing has changed.")
    return request


def _used(request: KeyRequest) -> LinkPage:
    return LinkPage(410, "This link has already been used",
                    "Each link in our emails works once. "
                    f"Your request for {request.model} is now {request.state.value}. Nothing more has changed.")


def _not_now(request: KeyRequest, action: str) -> LinkPage:
    if request.state == State.ACTIVE:  # active, so the same ask is already under way
        what = "A renewal" if action == "renew" else "A replacement key"
        return LinkPage(409, f"{what} is already on its way",
                        f"{what} of your key for {request.model} was asked for already; you will get an email. "
                        "Nothing more has changed.")
    return LinkPage(409, "Nothing to do for this key",
                    f"Your key for {request.model} is {request.state.value}: "
                    f"{intake.status_message(request, bool(context.config().notifications.admins))} "
                    "Nothing has changed. To get a key again, ask for one on the requester page.")


def _problem(request: KeyRequest, link: links.Link) -> LinkPage | None:
    """Why this link cannot act now, judged from a read (the POST decides again, in its write)."""
    if link.token_id in request.links_used:
        return _used(request)
    if link.action == "request-again":
        return None
    if request.state != State.ACTIVE:
        return _not_now(request, link.action)
    if (link.action == "renew" and request.renew_requested_at) or \
            (link.action == "rotate" and request.rotate_requested_at):
        return _not_now(request, link.action)
    return None


def _lifetime(model: CatalogModel | None) -> str | None:
    if model is None:
        return None
    if "litellm" in model.provisioning.backends and model.provisioning.litellm.duration:
        return model.provisioning.litellm.duration
    if model.provisioning.apim is not None and model.provisioning.apim.expires_after_days:
        return f"{model.provisioning.apim.expires_after_days}d"
    return None


def _when(request: KeyRequest) -> str:
    return request.expires_at.strftime("%Y-%m-%d %H:%M UTC") if request.expires_at else "no set date"


def _confirmation(request: KeyRequest, action: str) -> tuple[str, list[str], str, bool]:
    """(heading, paragraphs, button, danger) of the page that asks to confirm."""
    config = context.config()
    model = config.model(request.model)
    title = model.title if model else request.model
    if action == "renew":
        lifetime = _lifetime(model)
        return (f"Renew your key for {title}", [
            f"Your key currently expires on {_when(request)}.",
            "Renewing keeps the same key working" + (f" for another {lifetime}" if lifetime else "")
            + ": nothing changes in your code. The approval rules are checked again, so a reviewer may "
            "have to agree first. You will get an email when it is done."], "Renew my key", False)
    if action == "rotate":
        grace = config.provisioning.rotation_grace
        return (f"Get a new key for {title}", [
            "A new key is issued and emailed to you.",
            f"Your current key keeps working for {grace} after that, then stops: switch to the new one "
            "before then. Use this if you lost your key or think someone else has it."], "Issue a new key", False)
    if action == "revoke":
        return (f"Revoke your key for {title}", [
            "Your key stops working within a minute or two, for good. Use this if it leaked.",
            "The platform team is told. You can ask for a new key afterwards."], "Revoke my key", True)
    return (f"Ask for a new key for {title}", [
        f"A new request for {title} is recorded for the address this email was sent to. "
        "It is approved as before, and the new key arrives by email."], "Ask for a new key", False)


def _result(before: KeyRequest, after: KeyRequest, action: str) -> tuple[str, list[str]]:
    config = context.config()
    model = config.model(before.model)
    title = model.title if model else before.model
    if action == "renew":
        return "Renewal asked for", [f"Your key for {title} will be renewed shortly; you will get an email. "
                                     "Keep using the same key."]
    if action == "rotate":
        return "A new key is on its way", [
            f"Your new key for {title} arrives by email shortly. The current one keeps working for "
            f"{config.provisioning.rotation_grace} after that."]
    if action == "revoke":
        return "Your key is being revoked", [f"Your key for {title} stops working within a minute or two. "
                                             "The platform team has been told."]
    return "Request received", [intake.status_message(after, bool(config.notifications.admins)),
                                f"Request id: {after.id}"]


# --- the two functions ----------------------------------------------------------------------------


@bp.function_name("link_page")
@bp.route(route="api/links/{token}", methods=["GET"], auth_level=ANONYMOUS)
@html_errors
def link_page(req: func.HttpRequest) -> func.HttpResponse:
    """What the link will do, and the button that does it. Reads only: a GET changes nothing."""
    link = _link(req)
    request = _request(link)
    problem = _problem(request, link)
    if problem is not None:
        raise problem
    heading, paragraphs, button, danger = _confirmation(request, link.action)
    token = req.route_params["token"]
    return page(200, heading, paragraphs, form=(LINK_PATH + token, button, danger), referrer="same-origin")


@bp.function_name("link_act")
@bp.route(route="api/links/{token}", methods=["POST"], auth_level=ANONYMOUS)
@html_errors
def link_act(req: func.HttpRequest) -> func.HttpResponse:
    """The confirmation page's button: acts once (the token id is recorded in the write that acts)."""
    origin = (req.headers.get("origin") or "").strip().lower().rstrip("/")
    if origin and origin != context.settings().public_origin:
        log.warning("link POST from foreign origin %s", origin[:200])
        raise LinkPage(403, "This request came from another site",
                       "Open the link from your email and press the button on that page. Nothing has changed.")
    link = _link(req)
    before = _request(link)
    try:
        after = lifecycle.ask(context.request_store(), link.request_id, link.action, WHO, utcnow(), link.token_id,
                              config=context.config())
    except lifecycle.LinkUsed as exc:
        raise _used(exc.request) from None
    except (lifecycle.NotActive, lifecycle.InProgress) as exc:
        raise _not_now(exc.request, link.action) from None
    except NotFound:
        raise LinkPage(404, "This request no longer exists", "Nothing has changed.") from None
    except InvalidInput as exc:
        raise LinkPage(422, "A new key cannot be asked for this way",
                       f"The {'model' if exc.field == 'llm' else exc.field} is no longer accepted here. "
                       "Nothing has changed; ask your platform team.") from None
    except Refused as exc:  # ask again: the mailbox is blocked, or a denial still stands
        raise LinkPage({"blocked": 403, "denied": 409}.get(exc.kind, 429), "A new key cannot be asked for now",
                       f"{exc.message} Nothing has changed.") from None
    except Conflict:
        raise LinkPage(409, "Please try again", "The request changed while we were recording this. "
                                                "Nothing has changed; open the link from your email again.") from None
    heading, paragraphs = _result(before, after, link.action)
    return page(200, heading, paragraphs)
