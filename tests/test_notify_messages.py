"""The composed emails, checked where it matters: as delivered by a real SMTP server and parsed
there. Hostile text (a `<script>` and a `\\r\\nBcc:` in an address, a reason, a team name) arrives
escaped in HTML and adds no header; the key reaches the requester's message and no log or error;
subjects follow config; the outbox writes the same message as a readable .eml file."""

from __future__ import annotations

import email
import email.policy
import logging
import stat
from datetime import UTC, datetime

import pytest

from shared.adapters.email_outbox import OutboxNotifier
from shared.config import CatalogModel, Notifications
from shared.domain.request import KeyRequest
from shared.services import messages
from shared.services.ports import PermanentError
from tests import test_notify_smtp as smtp
from tests.test_notify_smtp import REFUSED, Received, app_log

# The fixtures of a real STARTTLS + AUTH server, in place of conftest's plain one, for this module too.
smtp_ca, smtp_ca_file = smtp.smtp_ca, smtp.smtp_ca_file
smtp_server, smtp_server_context = smtp.smtp_server, smtp.smtp_server_context

HOSTILE = "<script>alert(1)</script>\r\nBcc: evil@example.com"
HOSTILE_EMAIL = '"<script>alert(1)</script>\r\nBcc: evil@example.com"@example.com'
KEY = "sk-live-1234567890abcdef"
NOTIFY = Notifications(product_name="LLM Keys", admin_url="https://keys.example.com/",
                       reviewers=["reviewer@example.com"], admins=["admin@example.com"])
MODEL = CatalogModel.model_validate({
    "id": "gpt-4o", "title": "OpenAI GPT-4o",
    "provisioning": {"backends": ["litellm"], "litellm": {
        "models": ["gpt-4o", "gpt-4o-2024-08-06"], "duration": "90d", "max_budget": 100,
        "budget_duration": "30d", "tpm_limit": 50000, "rpm_limit": 300}},
})
EXPIRES = datetime(2031, 1, 31, 12, 0, tzinfo=UTC)


def request(email_address: str = "alice@example.com", **changes) -> KeyRequest:
    base = KeyRequest.new(email_address, "gpt-4o", now=datetime(2030, 11, 1, 9, 30, tzinfo=UTC))
    return base.with_changes(**changes) if changes else base


def delivered_once(server) -> tuple[Received, email.message.EmailMessage]:
    [got] = server.received
    return got, got.parsed()


def assert_no_injection(got: Received, message: email.message.EmailMessage, recipients: list[str]) -> None:
    assert got.rcpt_tos == recipients  # no one added to the envelope
    assert message["Bcc"] is None and message["Cc"] is None
    assert all(message.get_all(name) is None or len(message.get_all(name)) == 1
               for name in ("Subject", "To", "From"))
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert set(message.keys()) == {"From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted",
                                   "Content-Type", "MIME-Version"}
    html = message.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_hostile_requester_in_a_review_email_is_escaped_and_adds_no_header(smtp_server):
    hostile = request(HOSTILE_EMAIL, reason=HOSTILE)
    smtp_server.notifier().send(messages.review_email(hostile, NOTIFY, NOTIFY.reviewers))

    got, message = delivered_once(smtp_server)
    assert_no_injection(got, message, ["reviewer@example.com"])
    assert "Bcc: evil@example.com" in message["Subject"]  # shown flat, as text, not as a header
    text = message.get_body(("plain",)).get_content()
    assert f"POST https://keys.example.com/api/admin/requests/{hostile.id}/approve" in text
    assert f"kubectl label secret llm-key-request-{hostile.id} request-state=approved --overwrite" in text


def test_hostile_reason_in_a_denial_is_escaped(smtp_server):
    denied = request(reason=HOSTILE)
    smtp_server.notifier().send(messages.denied_email(denied, NOTIFY))

    got, message = delivered_once(smtp_server)
    assert_no_injection(got, message, ["alice@example.com"])
    assert "alert(1)" in message.get_body(("plain",)).get_content()


def test_hostile_team_name_and_details_are_escaped(smtp_server):
    details = {"models": [{"name": HOSTILE, "tokensPerMinute": 1000}], "display_name": HOSTILE,
               "secret_name": "team-a-api-key", "namespace": "teams"}
    team_email = messages.team_email("provisioned", HOSTILE, "owner@example.com", details, NOTIFY)
    smtp_server.notifier().send(team_email)

    got, message = delivered_once(smtp_server)
    assert_no_injection(got, message, ["owner@example.com"])
    text = message.get_body(("plain",)).get_content()
    assert "tokens per minute 1,000" in text and "Display name:" in text
    assert "kubectl get secret team-a-api-key -n teams" in text


def test_hostile_recipient_address_is_refused_before_sending(smtp_server):
    with pytest.raises(PermanentError, match="not a deliverable email address"):
        smtp_server.notifier().send(messages.denied_email(request(HOSTILE_EMAIL), NOTIFY))
    assert smtp_server.received == []


def test_the_key_reaches_the_requester_and_no_log_or_error(smtp_server, caplog):
    caplog.set_level(logging.DEBUG)
    approved = request()
    composed = messages.approved_email(approved, MODEL, {"litellm": KEY}, "https://llm.example.com/",
                                       EXPIRES, NOTIFY)
    smtp_server.notifier().send(composed)

    got, message = delivered_once(smtp_server)
    assert got.rcpt_tos == ["alice@example.com"]
    assert message["Subject"] == "LLM Keys: your key for OpenAI GPT-4o is ready"
    text, html = message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()
    for part in (text, html):
        assert KEY in part
        assert "https://llm.example.com" in part and "gpt-4o, gpt-4o-2024-08-06" in part
        assert "50,000" in part and "300" in part and "USD 100.00 every 30d" in part
        assert "2031-01-31 12:00 UTC" in part
    assert f"curl https://llm.example.com/chat/completions \\\n  -H 'Authorization: Bearer {KEY}'" \
        in text.replace("\r\n", "\n")

    # A refused delivery of the same message: the error names the recipient, never the key.
    refused = messages.approved_email(request(REFUSED), MODEL, {"litellm": KEY}, None, None, NOTIFY)
    with pytest.raises(PermanentError) as caught:
        smtp_server.notifier().send(refused)
    assert KEY not in str(caught.value)
    assert KEY not in repr(composed) and KEY not in app_log(caplog)
    assert "sent through SMTP server" in app_log(caplog)
    assert "does not expire" in refused.text and "<base URL>/chat/completions" in refused.text


def test_apim_keys_use_the_subscription_header():
    composed = messages.approved_email(request(), MODEL, {"apim": KEY}, "https://apim.example.com/llm",
                                       None, NOTIFY)
    assert f"-H 'Ocp-Apim-Subscription-Key: {KEY}'" in composed.text


def test_failed_email_tells_admins_the_recorded_reason():
    failed = request(reason="LiteLLM kept answering 503", last_error="POST /key/generate: 503", attempts=5)
    composed = messages.failed_email(failed, NOTIFY, NOTIFY.admins)
    assert composed.to == ("admin@example.com",)
    assert composed.idempotency_key == f"{failed.id}-failed"
    assert "LiteLLM kept answering 503" in composed.text and "POST /key/generate: 503" in composed.html
    assert "could not be completed" in composed.text
    assert f"kubectl describe secret llm-key-request-{failed.id}" in composed.text


def test_subjects_come_from_config_flattened_to_one_line():
    notify = Notifications(product_name="Keys\r\nX-Injected: 1", subjects={
        "denied": "[{product}] {model} denied\r\nBcc: evil@example.com {unknown}",
        "review": "{ unbalanced",
    })
    denied = messages.denied_email(request(), notify)
    assert denied.subject == "[Keys X-Injected: 1] gpt-4o denied Bcc: evil@example.com {unknown}"
    assert messages.review_email(request(), notify, ["r@example.com"]).subject == "{ unbalanced"
    assert messages.failed_email(request(), notify, ["a@example.com"]).subject.startswith("Keys X-Injected")


def test_idempotency_keys_are_stable_per_message():
    one = request()
    assert messages.denied_email(one, NOTIFY).idempotency_key == f"{one.id}-denied"
    assert messages.review_email(one, NOTIFY, ["r@example.com"]).idempotency_key == f"{one.id}-review"
    assert messages.approved_email(one, MODEL, {"litellm": KEY}, None, None, NOTIFY).idempotency_key \
        == f"{one.id}-approved"

    details = {"models": ["gpt-4o"], "limits": {"tokensPerMinute": 1000}}
    first = messages.team_email("updated", "team-a", "o@example.com", details, NOTIFY)
    again = messages.team_email("updated", "team-a", "o@example.com", dict(details), NOTIFY)
    changed = messages.team_email("updated", "team-a", "o@example.com", {**details, "limits": {}}, NOTIFY)
    assert first.idempotency_key == again.idempotency_key != changed.idempotency_key
    assert first.idempotency_key.startswith("team-team-a-updated-")
    removed = messages.team_email("removed", "team-a", "o@example.com", {}, NOTIFY)
    assert "has been removed" in removed.text and removed.subject == "LLM Keys: access for team team-a removed"


def test_outbox_writes_a_readable_eml(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "not" / "yet" / "there"
    outbox = OutboxNotifier(folder, "noreply@example.com")
    composed = messages.approved_email(request(), MODEL, {"litellm": KEY}, "https://llm.example.com",
                                       EXPIRES, NOTIFY)
    outbox.send(composed)
    outbox.send(composed)  # a re-send replaces the file

    [path] = folder.iterdir()
    assert path.name == f"{composed.idempotency_key}.eml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds a key
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"] == "alice@example.com" and message["Subject"] == composed.subject
    assert KEY in message.get_body(("plain",)).get_content()
    assert KEY in message.get_body(("html",)).get_content()
    assert str(path) in caplog.text and KEY not in caplog.text


# --- a key's life: reminders, expiry, renewal, rotation, revoked by the requester ------------------

RENEW_URL = "https://keys.example.com/api/links/" + "R" * 83
AGAIN_URL = "https://keys.example.com/api/links/" + "A" * 83
ROTATE_URL = "https://keys.example.com/api/links/" + "T" * 83
REVOKE_URL = "https://keys.example.com/api/links/" + "V" * 83
NEW_KEY = "sk-live-rotated-0987654321fedcba"
GRACE = datetime(2031, 1, 2, 9, 0, tzinfo=UTC)


def test_the_key_email_carries_the_rotate_and_revoke_links():
    composed = messages.approved_email(request(), MODEL, {"litellm": KEY}, "https://llm.example.com", EXPIRES,
                                       NOTIFY, rotate_url=ROTATE_URL, revoke_url=REVOKE_URL)
    for part in (composed.text, composed.html):
        assert ROTATE_URL in part and REVOKE_URL in part and "changes nothing" in part
    assert f'<a href="{REVOKE_URL}">' in composed.html
    # The processor's call without links stays valid and says what it always said.
    plain = messages.approved_email(request(), MODEL, {"litellm": KEY}, None, None, NOTIFY)
    assert "/api/links/" not in plain.text + plain.html and "ask for it to be revoked" in plain.text


def test_a_reminder_says_when_and_links_the_renewal():
    soon = request(expires_at=EXPIRES)
    composed = messages.reminder_email(soon, MODEL, 3, RENEW_URL, NOTIFY)
    assert composed.to == ("alice@example.com",)
    assert composed.subject == "LLM Keys: your key for OpenAI GPT-4o expires in 3 days"
    assert composed.idempotency_key == f"{soon.id}-reminder-3"
    for part in (composed.text, composed.html):
        assert "2031-01-31 12:00 UTC" in part and RENEW_URL in part and "same key" in part
    assert messages.reminder_email(soon, MODEL, 1, RENEW_URL, NOTIFY).subject.endswith("expires in 1 day")
    no_link = messages.reminder_email(soon, MODEL, 14, None, NOTIFY)
    assert "/api/links/" not in no_link.text + no_link.html and "platform team" in no_link.text
    assert no_link.idempotency_key == f"{soon.id}-reminder-14"


def test_the_expiry_email_offers_to_ask_again():
    gone = request(expires_at=EXPIRES)
    composed = messages.expired_email(gone, MODEL, AGAIN_URL, NOTIFY)
    assert composed.subject == "LLM Keys: your key for OpenAI GPT-4o has expired"
    assert composed.idempotency_key == f"{gone.id}-expired"
    assert AGAIN_URL in composed.text and AGAIN_URL in composed.html and "no longer works" in composed.text
    # A model no longer in the catalog: a new request would be refused, so no link.
    orphan = messages.expired_email(gone, None, AGAIN_URL, NOTIFY)
    assert AGAIN_URL not in orphan.text + orphan.html and "gpt-4o" in orphan.subject


def test_renewed_names_the_new_expiry_once_per_renewal():
    first = request(expires_at=EXPIRES)
    composed = messages.renewed_email(first, MODEL, NOTIFY)
    assert composed.subject == "LLM Keys: your key for OpenAI GPT-4o has been renewed"
    assert "2031-01-31 12:00 UTC" in composed.text and "same key" in composed.html
    assert composed.idempotency_key == messages.renewed_email(first, MODEL, NOTIFY).idempotency_key
    later = first.with_changes(expires_at=datetime(2031, 5, 1, tzinfo=UTC))
    assert messages.renewed_email(later, MODEL, NOTIFY).idempotency_key != composed.idempotency_key
    assert composed.idempotency_key.startswith(f"{first.id}-renewed-")


def test_the_rotated_key_reaches_the_requester_with_the_end_of_the_old_one(smtp_server, caplog):
    caplog.set_level(logging.DEBUG)
    rotating = request(expires_at=EXPIRES, rotate_requested_at=datetime(2031, 1, 1, 9, 0, tzinfo=UTC))
    composed = messages.rotated_email(rotating, MODEL, {"litellm": NEW_KEY}, GRACE, NOTIFY,
                                      base_url="https://llm.example.com/", generation=2,
                                      rotate_url=ROTATE_URL, revoke_url=REVOKE_URL)
    assert composed.idempotency_key == f"{rotating.id}-rotated-2"
    smtp_server.notifier().send(composed)
    got, message = delivered_once(smtp_server)
    assert got.rcpt_tos == ["alice@example.com"]
    assert message["Subject"] == "LLM Keys: your new key for OpenAI GPT-4o"
    text, html = message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()
    for part in (text, html):
        assert NEW_KEY in part and "2031-01-02 09:00 UTC" in part and "stops working" in part
        assert "https://llm.example.com" in part and REVOKE_URL in part
    assert NEW_KEY not in repr(composed) and NEW_KEY not in app_log(caplog)
    # Without a generation, the rotation is named by when it was asked for: stable across re-sends.
    derived = messages.rotated_email(rotating, MODEL, {"litellm": NEW_KEY}, GRACE, NOTIFY)
    assert derived.idempotency_key == messages.rotated_email(rotating, MODEL, {"litellm": NEW_KEY}, GRACE,
                                                             NOTIFY).idempotency_key
    assert derived.idempotency_key.startswith(f"{rotating.id}-rotated-")
    with pytest.raises(ValueError):
        messages.rotated_email(request(), MODEL, {"litellm": NEW_KEY}, GRACE, NOTIFY)  # no generation
    with pytest.raises(ValueError):
        messages.rotated_email(rotating, MODEL, {}, GRACE, NOTIFY)


def test_admins_are_told_of_a_revoke_by_the_requester_and_hostile_text_is_escaped(smtp_server):
    hostile = request(HOSTILE_EMAIL, decided_at=datetime(2031, 1, 5, 8, 0, tzinfo=UTC),
                      decided_by="link:requester")
    composed = messages.revoked_by_requester_email(hostile, NOTIFY, NOTIFY.admins)
    assert composed.idempotency_key == f"{hostile.id}-revoked-by-requester"
    smtp_server.notifier().send(composed)
    got, message = delivered_once(smtp_server)
    assert_no_injection(got, message, ["admin@example.com"])
    text = message.get_body(("plain",)).get_content()
    assert "2031-01-05 08:00 UTC" in text and f"kubectl describe secret llm-key-request-{hostile.id}" in text


def test_hostile_model_titles_are_escaped_in_the_lifecycle_emails():
    hostile_model = MODEL.model_copy(update={"title": HOSTILE})
    soon = request(expires_at=EXPIRES, rotate_requested_at=EXPIRES)
    for composed in (messages.reminder_email(soon, hostile_model, 3, RENEW_URL, NOTIFY),
                     messages.expired_email(soon, hostile_model, AGAIN_URL, NOTIFY),
                     messages.renewed_email(soon, hostile_model, NOTIFY),
                     messages.rotated_email(soon, hostile_model, {"litellm": NEW_KEY}, GRACE, NOTIFY)):
        assert "<script>" not in composed.html and "&lt;script&gt;" in composed.html
        assert "\n" not in composed.subject and "\r" not in composed.subject


def test_lifecycle_subjects_come_from_config():
    notify = NOTIFY.model_copy(update={"subjects": {"reminder": "[{product}] {days}d left for {model_id}",
                                                    "revoked-by-requester": "revoked: {request_id}"}})
    soon = request(expires_at=EXPIRES)
    assert messages.reminder_email(soon, MODEL, 14, RENEW_URL, notify).subject == "[LLM Keys] 14d left for gpt-4o"
    assert messages.revoked_by_requester_email(soon, notify, ["a@example.com"]).subject == f"revoked: {soon.id}"
