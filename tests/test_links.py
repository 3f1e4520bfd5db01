"""Requester links: the signed token (pure), its settings, and the pages it opens against the real
kube-apiserver. A GET (a mail scanner fetching every link) changes nothing; the page's button acts
once; a forged, expired, cut-short or used link gets a clear page; no page carries a key. Also the
admin equivalents (renew, rotate) and `expires_at` in the status and admin answers."""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from shared import context
from shared.domain import links
from shared.domain.request import KeyRequest, State, utcnow
from shared.services import lifecycle
from shared.services.links import LinkMaker
from shared.settings import LOCAL_SAMPLE_LINK_KEY, Settings, SettingsError

KEY = "sk-live-" + "q" * 32  # an issued key: no page may show it
ORIGIN = "http://127.0.0.1:7071"  # PUBLIC_BASE_URL's default, the origin of the pages
SIGNING_KEY = "k" * 48
RID = "5b3c1c8e-8a1e-4d7a-9a51-6a2f0c1d9e42"
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


# --- the token -------------------------------------------------------------------------------------


def test_a_token_says_what_it_was_signed_for():
    token = links.sign(RID, "rotate", NOW + timedelta(days=30), SIGNING_KEY)
    assert len(token) == links.TOKEN_LENGTH and set(token) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    link = links.verify(token, SIGNING_KEY, NOW)
    assert (link.request_id, link.action, link.expires_at) == (RID, "rotate", NOW + timedelta(days=30))
    assert len(link.token_id) == 16
    for action in links.ACTIONS:
        assert links.verify(links.sign(RID, action, NOW + timedelta(seconds=5), SIGNING_KEY), SIGNING_KEY,
                            NOW).action == action


def test_every_token_has_its_own_id():
    ids = {links.verify(links.sign(RID, "renew", NOW + timedelta(days=1), SIGNING_KEY), SIGNING_KEY, NOW).token_id
           for _ in range(50)}
    assert len(ids) == 50


def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


# Byte ranges of the wire format: version, action, request id, expiry, token id, MAC.
PARTS = {"version": (0, 1), "action": (1, 2), "request id": (2, 18), "expiry": (18, 22), "token id": (22, 30),
         "mac": (30, 62)}


@pytest.mark.parametrize("part", sorted(PARTS))
def test_tampering_with_any_part_is_refused(part):
    token = links.sign(RID, "renew", NOW + timedelta(days=30), SIGNING_KEY)
    start, end = PARTS[part]
    for index in range(start, end):
        raw = _raw(token)
        raw[index] ^= 0x01
        with pytest.raises(links.InvalidLink) as caught:
            links.verify(_encode(raw), SIGNING_KEY, NOW)
        # A changed version is not our format; any other change breaks the signature.
        assert caught.value.kind == ("malformed" if part == "version" else "forged"), (part, index)


def test_an_action_or_a_later_expiry_cannot_be_swapped_in():
    token = links.sign(RID, "renew", NOW + timedelta(days=1), SIGNING_KEY)
    raw = _raw(token)
    raw[1] = 3  # revoke
    with pytest.raises(links.ForgedLink):
        links.verify(_encode(raw), SIGNING_KEY, NOW)
    raw = _raw(token)
    raw[18:22] = (2**32 - 2).to_bytes(4, "big")
    with pytest.raises(links.ForgedLink):
        links.verify(_encode(raw), SIGNING_KEY, NOW)


def test_another_key_makes_a_forgery():
    token = links.sign(RID, "revoke", NOW + timedelta(days=1), "another-key-" + "x" * 40)
    with pytest.raises(links.ForgedLink) as caught:
        links.verify(token, SIGNING_KEY, NOW)
    assert caught.value.kind == "forged"


def test_expiry_is_checked_after_the_signature():
    token = links.sign(RID, "renew", NOW + timedelta(hours=1), SIGNING_KEY)
    assert links.verify(token, SIGNING_KEY, NOW + timedelta(minutes=59)).action == "renew"
    with pytest.raises(links.ExpiredLink) as caught:
        links.verify(token, SIGNING_KEY, NOW + timedelta(hours=1))
    assert caught.value.kind == "expired" and caught.value.link.request_id == RID
    # A forged token past its (claimed) expiry is a forgery, not "expired": nothing is learnt.
    with pytest.raises(links.ForgedLink):
        links.verify(links.sign(RID, "renew", NOW, "other-" + "y" * 40), SIGNING_KEY, NOW + timedelta(days=9))


@pytest.mark.parametrize("token", [
    "", "abc", "x" * 82, "x" * 84, "=" * 83, "+" * 83, "/" * 83, "é" * 83, "a b" * 28,
])
def test_malformed_tokens(token):
    with pytest.raises(links.MalformedLink) as caught:
        links.verify(token, SIGNING_KEY, NOW)
    assert caught.value.kind == "malformed"


def test_one_spelling_per_token():
    token = links.sign(RID, "renew", NOW + timedelta(days=1), SIGNING_KEY)
    # The last character carries 2 spare bits; another character with the same 4 data bits decodes
    # to the same bytes but is not the token that was issued.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    for spare in (1, 2, 3):
        variant = token[:-1] + alphabet[last | spare]
        with pytest.raises(links.MalformedLink):
            links.verify(variant, SIGNING_KEY, NOW)


def test_sign_refuses_what_it_cannot_encode():
    with pytest.raises(ValueError, match="unknown link action"):
        links.sign(RID, "delete", NOW, SIGNING_KEY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a request id"):
        links.sign("../../etc", "renew", NOW, SIGNING_KEY)
    with pytest.raises(ValueError, match="must not be empty"):
        links.sign(RID, "renew", NOW, "")


def test_the_link_maker_makes_urls_of_the_app():
    maker = LinkMaker("https://keys.example.com/", SIGNING_KEY, timedelta(days=30))
    request = KeyRequest.new("a@example.com", "gpt-4o", NOW)
    url = maker.url(request, "revoke", NOW)
    assert url.startswith("https://keys.example.com/api/links/")
    link = maker.verify(url.rsplit("/", 1)[1], NOW)
    assert (link.request_id, link.action, link.expires_at) == (request.id, "revoke", NOW + timedelta(days=30))
    assert SIGNING_KEY not in repr(maker)


# --- settings ------------------------------------------------------------------------------------------


def test_the_signing_key_is_required_on_azure_and_the_sample_key_refused():
    with pytest.raises(SettingsError, match="LINK_SIGNING_KEY: required on Azure"):
        Settings.from_env({"WEBSITE_SITE_NAME": "llm-key-requestor", "WEBSITE_HOSTNAME": "app.azurewebsites.net"})
    with pytest.raises(SettingsError, match="the local sample's value cannot be used on Azure"):
        Settings.from_env({"WEBSITE_INSTANCE_ID": "abc", "LINK_SIGNING_KEY": LOCAL_SAMPLE_LINK_KEY})
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"LINK_SIGNING_KEY": "too-short-secret"})
    assert "LINK_SIGNING_KEY: must be at least 32 characters" in str(caught.value)
    assert "too-short-secret" not in str(caught.value)
    on_azure = Settings.from_env({"WEBSITE_SITE_NAME": "app", "WEBSITE_HOSTNAME": "app.azurewebsites.net",
                                  "LINK_SIGNING_KEY": SIGNING_KEY})
    assert on_azure.on_azure and SIGNING_KEY not in repr(on_azure)
    assert on_azure.public_url == "https://app.azurewebsites.net"
    # Outside Azure it may be unset (a random key per process); Core Tools' localhost is not Azure.
    assert Settings.from_env({}).link_signing_key is None
    core_tools = Settings.from_env({"WEBSITE_HOSTNAME": "localhost:7071"})
    assert not core_tools.on_azure and core_tools.public_url == "http://localhost:7071"


def test_public_base_url_and_ttl():
    assert Settings.from_env({}).public_url == "http://127.0.0.1:7071"
    assert Settings.from_env({}).link_ttl_days == 30
    custom = Settings.from_env({"PUBLIC_BASE_URL": "https://Keys.Example.com/", "WEBSITE_HOSTNAME": "localhost:1"})
    assert custom.public_url == "https://Keys.Example.com" and custom.public_origin == "https://keys.example.com"
    for bad in ("keys.example.com", "ftp://x", "https://x/?a=1", "https://"):
        with pytest.raises(SettingsError, match="PUBLIC_BASE_URL"):
            Settings.from_env({"PUBLIC_BASE_URL": bad})
    for bad in ("0", "366", "x"):
        with pytest.raises(SettingsError, match="LINK_TTL_DAYS"):
            Settings.from_env({"LINK_TTL_DAYS": bad})


# --- the pages, against the real apiserver ---------------------------------------------------------


def stored(request_id: str) -> KeyRequest:
    found = context.request_store().get(request_id)
    assert found is not None
    return found


def active(email: str = "alice@example.com", model: str = "gpt-4o", **changes) -> KeyRequest:
    store = context.request_store()
    request = store.submit(KeyRequest.new(email, model))[0]
    return store.update(stored(request.id).enter(
        State.ACTIVE, expires_at=utcnow() + timedelta(days=20), secrets={"litellm-api-key": KEY},
        references={"litellm-key-alias": f"llm-key-request-{request.id}"}, **changes))


def path_of(request: KeyRequest, action: str, now: datetime | None = None) -> str:
    url = context.link_maker().url(request, action, now or utcnow())
    assert url.startswith(ORIGIN + "/api/links/")
    return url.removeprefix(ORIGIN)


def token_id(path: str) -> str:
    return links.verify(path.rsplit("/", 1)[1], context.link_signing_key(), utcnow()).token_id


def body(response) -> str:
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and KEY not in text
    return text


def assert_page_headers(response, referrer: str = "no-referrer") -> None:
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == referrer
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def post(http, path: str, origin: str | None = ORIGIN):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["Origin"] = origin
    return http.post(path, headers=headers, data=b"")


@pytest.mark.parametrize("action,heading,button", [
    ("renew", "Renew your key for OpenAI GPT-4o", "Renew my key"),
    ("rotate", "Get a new key for OpenAI GPT-4o", "Issue a new key"),
    ("revoke", "Revoke your key for OpenAI GPT-4o", "Revoke my key"),
])
def test_a_get_shows_the_page_and_changes_nothing(http, action, heading, button):
    request = active()
    path = path_of(request, action)
    before = stored(request.id)
    for _ in range(3):  # a mail scanner, a link preview, the person
        response = http.get(path)
        assert response.status_code == 200
        assert_page_headers(response, referrer="same-origin")
        text = body(response)
        assert "LLM Key Requestor" in text and heading in text
        assert f'<form method="post" action="{path}">' in text and f">{button}</button>" in text
        assert "<script" not in text
    after = stored(request.id)
    assert after.resource_version == before.resource_version
    assert after.links_used == {} and after.renew_requested_at is None and after.state == State.ACTIVE


def test_renewal_acts_once(http, core_api, app_env, caplog):
    caplog.set_level(logging.INFO, logger="shared")
    request = active()
    path = path_of(request, "renew")
    done = post(http, path)
    assert done.status_code == 200
    assert_page_headers(done)
    assert "Renewal asked for" in body(done)

    renewed = stored(request.id)
    assert renewed.state == State.ACTIVE
    assert renewed.renew_requested_at is not None and renewed.due_at == renewed.renew_requested_at
    assert renewed.lifecycle_requested_by == "link:requester"
    assert set(renewed.links_used) == {token_id(path)}
    labels = core_api.read_namespaced_secret(f"llm-key-request-{request.id}", app_env).metadata.labels
    assert labels["request-due-day"] == renewed.due_at.strftime("%Y-%m-%d")  # the timer's sweep takes it
    assert f"audit: link:requester asked to renew request {request.id}" in caplog.text

    again = post(http, path)
    assert again.status_code == 410 and "already been used" in body(again)
    shown = http.get(path)
    assert shown.status_code == 410 and "already been used" in body(shown)
    assert stored(request.id).resource_version == renewed.resource_version

    # Another renew link while this renewal is under way: nothing to do yet.
    other = post(http, path_of(request, "renew"))
    assert other.status_code == 409 and "already on its way" in body(other)


def test_a_second_rotation_while_one_is_under_way_is_refused(http):
    request = active()
    assert post(http, path_of(request, "rotate")).status_code == 200
    rotating = stored(request.id)
    assert rotating.rotate_requested_at is not None and rotating.lifecycle_requested_by == "link:requester"
    second = path_of(request, "rotate")
    assert http.get(second).status_code == 409
    refused = post(http, second)
    assert refused.status_code == 409 and "already on its way" in body(refused)
    assert stored(request.id).rotate_requested_at == rotating.rotate_requested_at
    with pytest.raises(lifecycle.InProgress):
        lifecycle.ask(context.request_store(), request.id, "rotate", "basic:admin", utcnow())


def test_revoke_through_a_link_moves_the_request_to_revoking(http, caplog):
    caplog.set_level(logging.INFO, logger="shared")
    request = active()
    renew = path_of(request, "renew")
    done = post(http, path_of(request, "revoke"))
    assert done.status_code == 200 and "being revoked" in body(done)
    revoking = stored(request.id)
    assert revoking.state == State.REVOKING and revoking.decided_by == "link:requester"
    assert revoking.lifecycle_requested_by == "link:requester" and len(revoking.links_used) == 1
    assert f"audit: link:requester revoked request {request.id}" in caplog.text
    # Now no other link of this key can act.
    for response in (http.get(renew), post(http, renew)):
        assert response.status_code == 409 and "is revoking" in body(response)


def test_two_presses_at_once_act_once(http, wsgi_app):
    from werkzeug.test import Client

    request = active()
    path = path_of(request, "revoke")
    codes: list[int] = []
    barrier = threading.Barrier(4)

    def press():
        client = Client(wsgi_app)
        barrier.wait()
        codes.append(post(client, path).status_code)

    threads = [threading.Thread(target=press) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [200, 410, 410, 410]
    assert stored(request.id).state == State.REVOKING


def test_ask_again_after_expiry_makes_a_new_request(http):
    request = active(email="bob@example.com", model="gpt-4o-mini")
    store = context.request_store()
    expired = store.update(stored(request.id).enter(State.EXPIRED, secrets={}))
    path = path_of(expired, "request-again")
    shown = http.get(path)
    assert shown.status_code == 200 and "Ask for a new key" in body(shown)
    done = post(http, path)
    assert done.status_code == 200 and "Request received" in body(done)
    new_ids = [r.id for r in store.list([State.PENDING])[0]]
    assert len(new_ids) == 1 and new_ids[0] != request.id
    fresh = stored(new_ids[0])
    assert (fresh.email, fresh.model, fresh.state) == ("bob@example.com", "gpt-4o-mini", State.PENDING)
    assert new_ids[0] in body(done)
    assert token_id(path) in stored(request.id).links_used
    assert post(http, path).status_code == 410
    assert len(store.list([State.PENDING])[0]) == 1


@pytest.mark.parametrize("kind", ["forged", "expired", "malformed", "cut short"])
def test_bad_links_get_a_clear_page(http, kind):
    request = active()
    if kind == "forged":
        token = links.sign(request.id, "revoke", utcnow() + timedelta(days=1), "someone-else-" + "z" * 40)
        status, says = 403, "not issued by this service"
    elif kind == "expired":
        token = links.sign(request.id, "revoke", utcnow() - timedelta(seconds=1), context.link_signing_key())
        status, says = 410, "expired"
    elif kind == "malformed":
        token = quote("<script>alert(1)<\\script>", safe="")
        status, says = 400, "not valid"
    else:
        token = path_of(request, "revoke").rsplit("/", 1)[1][:60]
        status, says = 400, "copy the whole link"
    for response in (http.get(f"/api/links/{token}"), post(http, f"/api/links/{token}")):
        assert response.status_code == status
        assert_page_headers(response)
        text = body(response)
        assert says in text and "Nothing has changed" in text
        assert "<script>" not in text and "<form" not in text
    assert stored(request.id).state == State.ACTIVE and stored(request.id).links_used == {}


def test_a_link_for_a_request_that_is_gone(http):
    ghost = KeyRequest.new("ghost@example.com", "gpt-4o")
    path = path_of(ghost, "renew")
    assert http.get(path).status_code == 404
    assert post(http, path).status_code == 404


def test_a_post_from_another_origin_changes_nothing(http):
    request = active()
    path = path_of(request, "revoke")
    for origin in ("https://evil.example", "null", "http://127.0.0.1:7072"):
        refused = post(http, path, origin=origin)
        assert refused.status_code == 403 and "another site" in body(refused)
    assert stored(request.id).state == State.ACTIVE and stored(request.id).links_used == {}
    # No Origin at all (an old browser, curl) is let through: the token is the credential.
    assert post(http, path, origin=None).status_code == 200


def test_no_page_ever_carries_the_key(http, caplog):
    caplog.set_level(logging.DEBUG)
    request = active()
    pages = []
    for action in ("renew", "rotate", "revoke", "request-again"):
        path = path_of(request, action)
        pages += [http.get(path), post(http, path), post(http, path)]
    for response in pages:
        body(response)  # asserts the key is absent
    assert KEY not in caplog.text


# --- the admin equivalents --------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


def basic() -> dict[str, str]:
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json",
            "X-Forwarded-For": f"10.1.0.{uuid.uuid4().int % 250}:5555"}


@pytest.fixture
def admin(http, monkeypatch):
    monkeypatch.setenv("ADMIN_USERNAME", "admin")
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    context.reset()
    return http


def test_admin_renew_and_rotate(admin, caplog):
    caplog.set_level(logging.INFO, logger="shared")
    request = active()
    for action in ("renew", "rotate"):
        assert admin.post(f"/api/admin/requests/{request.id}/{action}").status_code == 401
    assert stored(request.id).renew_requested_at is None

    renewed = admin.post(f"/api/admin/requests/{request.id}/renew", headers=basic(),
                         data=b'{"reason": "project extended"}')
    assert renewed.status_code == 200 and renewed.json["state"] == "active"
    assert "Renewal of request" in renewed.json["message"]
    after = stored(request.id)
    assert after.renew_requested_at is not None and after.lifecycle_requested_by == "basic:admin"
    assert f"audit: basic:admin asked to renew request {request.id} (gpt-4o, active): project extended" \
        in caplog.text

    rotated = admin.post(f"/api/admin/requests/{request.id}/rotate", headers=basic())  # no body, as the panel
    assert rotated.status_code == 200 and stored(request.id).rotate_requested_at is not None
    again = admin.post(f"/api/admin/requests/{request.id}/rotate", headers=basic())
    assert again.status_code == 409 and again.json["detail"] == {"state": "active"}
    assert "already in progress" in again.json["message"]

    pending = context.request_store().submit(KeyRequest.new("p@example.com", "gpt-4o"))[0]
    refused = admin.post(f"/api/admin/requests/{pending.id}/renew", headers=basic())
    assert refused.status_code == 409 and refused.json["detail"] == {"state": "pending"}
    assert admin.post(f"/api/admin/requests/{uuid.uuid4()}/rotate", headers=basic()).status_code == 404
    for response in (renewed, rotated, again, refused):
        assert KEY not in response.get_data(as_text=True)


def test_expires_at_in_the_status_and_the_admin_answers(admin):
    request = active()
    expires = stored(request.id).expires_at
    assert expires is not None
    status = admin.get(f"/api/requests/{request.id}").json
    assert status["expires_at"] == expires.isoformat() and KEY not in str(status)
    detail = admin.get(f"/api/admin/requests/{request.id}", headers=basic()).json
    assert detail["expires_at"] == expires.isoformat()
    [row] = admin.get("/api/admin/requests?state=active", headers=basic()).json
    assert row["expires_at"] == expires.isoformat()
    pending = context.request_store().submit(KeyRequest.new("q@example.com", "gpt-4o"))[0]
    assert admin.get(f"/api/requests/{pending.id}").json["expires_at"] is None


def test_the_link_routes_are_documented(http):
    paths = http.get("/api/openapi.json").json["paths"]
    assert {"get", "post"} <= set(paths["/api/links/{token}"])
    assert "text/html" in paths["/api/links/{token}"]["get"]["responses"]["200"]["content"]
    for action in ("renew", "rotate"):
        assert "post" in paths[f"/api/admin/requests/{{request_id}}/{action}"]
