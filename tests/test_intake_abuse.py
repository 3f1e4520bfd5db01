"""The anonymous front door against a hostile internet: safe shipped defaults, one mailbox is one
requester whatever its spelling. End to end against the real kube-apiserver where a store is involved."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml
from pydantic import ValidationError

from shared.config import AppConfig, ConfigError, load_config
from shared.domain import rules
from shared.domain.request import KeyRequest, State, normalise_email
from shared.settings import Settings
from tests.conftest import ROOT, secret_names

REQUESTS = "app.kubernetes.io/component=llm-key-request"
CLAIMS = "app.kubernetes.io/component=llm-key-request-claim"
AZURE = {"WEBSITE_SITE_NAME": "keys-prod", "LINK_SIGNING_KEY": "k" * 48, "LITELLM_API_KEY": "sk-x",
         "SMTP_HOST": "smtp.example.com"}


def post_key(http, body):
    return http.post("/api/request-key", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def no_webhook(rule, request):  # the shipped config has no webhook rule
    raise AssertionError("no webhook expected")


def use_config(tmp_path, monkeypatch, changes: dict) -> None:
    from shared import context

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    monkeypatch.setenv("CONFIG_FILE", str(path))
    context.reset()


# --- 1. shipped defaults that are safe --------------------------------------------------------------


def test_the_shipped_config_never_approves_an_address_outside_its_allowed_domains():
    config = load_config(ROOT / "config.yaml")
    allowed = config.requests.allowed_email_domains
    assert allowed, "the shipped config restricts who may ask"
    with pytest.raises(Exception, match="domain attacker.example is not allowed here"):
        normalise_email("eve@attacker.example", allowed)
    # Even a request that got in some other way (stored before the list changed, written by hand)
    # is never approved without a reviewer, for any model.
    for model in config.models:
        decision = rules.decide(KeyRequest.new("eve@attacker.example", model.id), model, config.approval,
                                no_webhook, allowed)
        assert decision.decision != "approve", (model.id, decision)
        inside = rules.decide(KeyRequest.new("ann@dev.example.com", model.id), model, config.approval,
                              no_webhook, allowed)
        assert inside.decision in ("approve", "review"), inside
    mini = config.model("gpt-4o-mini")
    outside = rules.decide(KeyRequest.new("eve@attacker.example", "gpt-4o-mini"), mini, config.approval,
                           no_webhook, allowed)
    assert outside.decision == "review" and "allowed_email_domains" in outside.reason


def _open_config(tmp_path, approval: str = "approval: {default: approve}", models: str = "") -> AppConfig:
    path = tmp_path / "open.yaml"
    path.write_text(textwrap.dedent(f"""\
        models:
          - {{id: a, title: A}}
        {models}
        requests: {{allowed_email_domains: []}}
        {approval}
        """))
    return load_config(path)


def test_on_azure_an_empty_allow_list_with_anything_approved_without_review_does_not_start(tmp_path):
    from shared import context

    azure = Settings.from_env(AZURE)
    assert azure.on_azure
    with pytest.raises(ConfigError) as caught:
        context._check_config_against_settings(_open_config(tmp_path), azure)
    message = str(caught.value)
    assert "requests.allowed_email_domains is empty" in message and "approval.default: approve" in message
    auto = _open_config(tmp_path, "approval: {default: review}",
                        "  - {id: b, title: B, auto_approve: true}")
    with pytest.raises(ConfigError, match=r"models\[1\] \(b\) auto_approve: true"):
        context._check_config_against_settings(auto, azure)
    rule = _open_config(tmp_path, "approval: {default: deny, rules: [{kind: match, decision: approve, models: [a]}]}")
    with pytest.raises(ConfigError, match=r"approval.rules\[0\] decision: approve"):
        context._check_config_against_settings(rule, azure)
    # Everything reviewed: an open allow-list is fine; so is any rule set with an allow-list; and
    # outside Azure (scripts/run, tests) the check does not apply.
    context._check_config_against_settings(_open_config(tmp_path, "approval: {default: review}"), azure)
    context._check_config_against_settings(load_config(ROOT / "config.yaml"), azure)
    context._check_config_against_settings(_open_config(tmp_path), Settings.from_env({"LITELLM_API_KEY": "sk-x"}))


def test_the_app_does_not_start_on_azure_with_an_open_allow_list(tmp_path):
    config = (ROOT / "config.yaml").read_text().replace("allowed_email_domains: [example.com]",
                                                         "allowed_email_domains: []")
    path = tmp_path / "config.yaml"
    path.write_text(config)
    env = {**AZURE, "CONFIG_FILE": str(path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", "import function_app"], cwd=ROOT, capture_output=True,
                            text=True, env=env)
    assert result.returncode != 0
    assert "requests.allowed_email_domains is empty, so anyone on the internet may ask" in result.stderr
    assert "k" * 48 not in result.stderr


def test_the_local_sample_starts_and_approves_the_example_domain():
    """What scripts/run serves: the sample settings with the shipped config pass every check, and
    the README's example address is approved by the rules."""
    from shared import context

    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    settings = Settings.from_env(sample)
    assert not settings.on_azure
    config = load_config(settings.config_file)
    context._check_config_against_settings(config, settings)
    decision = rules.decide(KeyRequest.new("alice@example.com", "gpt-4o"), config.model("gpt-4o"), config.approval,
                            no_webhook, config.requests.allowed_email_domains)
    assert decision.decision == "approve"


# --- 2. canonical addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize("given,sent,canonical", [
    ("Alice@Example.COM", "alice@example.com", "alice@example.com"),
    ("alice+news@example.com", "alice+news@example.com", "alice@example.com"),
    ("alice+a+b@example.com", "alice+a+b@example.com", "alice@example.com"),
    ("+only@example.com", "+only@example.com", "+only@example.com"),
    ("A.Lice+x@GMail.com", "a.lice+x@gmail.com", "alice@gmail.com"),
    ("a.lice@googlemail.com", "a.lice@googlemail.com", "alice@googlemail.com"),
    ("a.lice@example.com", "a.lice@example.com", "a.lice@example.com"),  # dots count elsewhere
    ("bob@Bücher.DE", "bob@xn--bcher-kva.de", "bob@xn--bcher-kva.de"),
])
def test_canonical_addresses(given, sent, canonical):
    config = AppConfig.model_validate({"models": [{"id": "a", "title": "A"}]})
    address = normalise_email(given)
    assert address == sent
    assert config.requests.canonical(address) == canonical


def test_tag_separators_are_configurable_per_domain():
    config = AppConfig.model_validate({"models": [{"id": "a", "title": "A"}], "requests": {
        "allowed_email_domains": ["Bücher.de", "Example.com"], "tag_separators": ["+", "="],
        "mailboxes": [{"domains": ["yahoo.example"], "tag_separators": ["-"]},
                      {"domains": ["dots.example"], "ignore_dots": True, "tag_separators": []}]}})
    canonical = config.requests.canonical
    assert config.requests.allowed_email_domains == ["xn--bcher-kva.de", "example.com"]
    assert canonical("ann-news+x@yahoo.example") == "ann@yahoo.example"
    assert canonical("ann=news@example.com") == "ann@example.com"
    assert canonical("a.n.n+x@dots.example") == "ann+x@dots.example"
    # The gmail default is replaced by a list of one's own.
    assert canonical("a.nn@gmail.com") == "a.nn@gmail.com"
    for bad in ({"tag_separators": ["ab"]}, {"tag_separators": ["@"]},
                {"mailboxes": [{"domains": ["x.example"]}, {"domains": ["X.example"]}]},
                {"allowed_email_domains": ["not a domain"]}):
        with pytest.raises(ValidationError):
            AppConfig.model_validate({"models": [{"id": "a", "title": "A"}], "requests": bad})


def test_two_spellings_of_one_mailbox_are_one_request(http, core_api, app_env, tmp_path, monkeypatch):
    use_config(tmp_path, monkeypatch, {"requests": {"allowed_email_domains": ["example.com", "gmail.com",
                                                                              "bücher.de"]}})
    first = post_key(http, {"llm": "gpt-4o", "email": "Carol+keys@Example.com"})
    assert first.status_code == 201
    for spelling in ("carol@example.com", "CAROL+other@EXAMPLE.COM", " carol+@example.com"):
        again = post_key(http, {"llm": "gpt-4o", "email": spelling})
        assert again.status_code == 201 and again.json["request_id"] == first.json["request_id"], spelling
    gmail = post_key(http, {"llm": "gpt-4o", "email": "dan.smith@gmail.com"})
    assert post_key(http, {"llm": "gpt-4o", "email": "D.a.n.Smith+x@GMail.com"}).json["request_id"] == \
        gmail.json["request_id"]
    unicode = post_key(http, {"llm": "gpt-4o", "email": "erik@Bücher.de"})
    assert unicode.status_code == 201
    assert len(secret_names(core_api, app_env, REQUESTS)) == 3
    assert secret_names(core_api, app_env, CLAIMS) == [], "the request's own name settles duplicates"
    # Mail goes to the address as given (lower-case, its domain in ASCII); the canonical one is recorded beside it.
    from shared import context

    stored = context.request_store().get(first.json["request_id"])
    assert (stored.email, stored.canonical_email) == ("carol+keys@example.com", "carol@example.com")
    erik = context.request_store().get(unicode.json["request_id"])
    assert erik.email == "erik@xn--bcher-kva.de"
    secret = core_api.read_namespaced_secret(f"llm-key-request-{first.json['request_id']}", app_env)
    assert secret.metadata.annotations["llm-key-requestor/canonical-email"] == "carol@example.com"


# --- 4. a decision that sticks; admin blocks ----------------------------------------------------------

PASSWORD = "correct horse battery staple"
BLOCKS = "app.kubernetes.io/component=llm-key-block"


def admin_headers() -> dict[str, str]:
    import base64

    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


@pytest.fixture
def admin(http, monkeypatch):
    from shared import context

    monkeypatch.setenv("ADMIN_USERNAME", "admin")
    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    context.reset()
    return http


def test_a_denial_sticks_for_the_cooldown_unless_an_admin_clears_it(admin, core_api, app_env, caplog):
    import logging
    from datetime import timedelta

    from shared import context

    caplog.set_level(logging.INFO)
    first = post_key(admin, {"llm": "gpt-4o", "email": "mallory@example.com"}).json["request_id"]
    denied = admin.post(f"/api/admin/requests/{first}/deny", headers=admin_headers(),
                        data=json.dumps({"reason": "keys are for staff only"}))
    assert denied.status_code == 200
    for spelling in ("mallory@example.com", "Mallory+again@EXAMPLE.com"):
        again = post_key(admin, {"llm": "gpt-4o", "email": spelling})
        assert again.status_code == 409, again.json
        assert "keys are for staff only" in again.json["message"] and "ask again after" in again.json["message"]
        assert again.json["detail"][0]["field"] == "email"
        assert 29 * 86400 < int(again.headers["Retry-After"]) <= 30 * 86400
    assert secret_names(core_api, app_env, REQUESTS) == [f"llm-key-request-{first}"]
    # Another model is another decision.
    assert post_key(admin, {"llm": "gpt-4o-mini", "email": "mallory@example.com"}).status_code == 201
    # An admin clears the denial: the same mailbox may ask again now; that is audited.
    assert admin.post("/api/admin/requests/not-a-request/clear-denial", headers=admin_headers()).status_code == 404
    assert admin.post(f"/api/admin/requests/{first}/clear-denial").status_code == 401
    cleared = admin.post(f"/api/admin/requests/{first}/clear-denial", headers=admin_headers(),
                         data=json.dumps({"reason": "hired"}))
    assert cleared.status_code == 200, cleared.json
    assert any("audit: basic:admin cleared the denial of request" in r.getMessage() for r in caplog.records)
    detail = admin.get(f"/api/admin/requests/{first}", headers=admin_headers()).json
    assert detail["denial_cleared_by"] == "basic:admin" and detail["canonical_email"] == "mallory@example.com"
    renewed = post_key(admin, {"llm": "gpt-4o", "email": "mallory@example.com"})
    assert renewed.status_code == 201 and renewed.json["request_id"] != first
    # Clearing applies to denied requests only.
    pending = admin.post(f"/api/admin/requests/{renewed.json['request_id']}/clear-denial", headers=admin_headers())
    assert pending.status_code == 409 and pending.json["detail"] == {"state": "pending"}
    # Once the cooldown has run out, a denial no longer stands.
    store = context.request_store()
    second = store.get(renewed.json["request_id"])
    store.update(second.enter(State.DENIED, decided_at=second.created_at - timedelta(days=31),
                              reason="no", decision="deny"))
    assert post_key(admin, {"llm": "gpt-4o", "email": "mallory@example.com"}).status_code == 201


def test_deny_cooldown_is_configurable(http, tmp_path, monkeypatch):
    from shared import context

    use_config(tmp_path, monkeypatch, {"requests": {"deny_cooldown": "0d"}})
    first = post_key(http, {"llm": "gpt-4o", "email": "oscar@example.com"}).json["request_id"]
    store = context.request_store()
    store.update(store.get(first).enter(State.DENIED, reason="no", decision="deny"))
    assert post_key(http, {"llm": "gpt-4o", "email": "oscar@example.com"}).status_code == 201
    with pytest.raises(ConfigError, match="deny_cooldown"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("models: [{id: a, title: A}]\nrequests: {deny_cooldown: 30 days}\n")
        load_config(bad)


def test_admins_block_addresses_and_domains_in_the_cluster(admin, core_api, app_env, caplog):
    import logging

    caplog.set_level(logging.INFO)
    headers = admin_headers()
    body = json.dumps({"address": "x@example.com", "reason": "r"})
    assert admin.put("/api/admin/blocks", data=body).status_code == 401
    put = admin.put("/api/admin/blocks", headers=headers,
                    data=json.dumps({"address": "Eve+spam@Example.com", "reason": "abuse ticket 42"}))
    assert put.status_code == 201, put.json
    assert put.json["block"]["kind"] == "address" and put.json["block"]["value"] == "eve@example.com"
    again = admin.put("/api/admin/blocks", headers=headers,
                      data=json.dumps({"address": "eve@example.com", "reason": "abuse ticket 43"}))
    assert again.status_code == 200 and again.json["created"] is False
    domain = admin.put("/api/admin/blocks", headers=headers,
                       data=json.dumps({"domain": "Contractors.Example.com", "reason": "use the shared pool"}))
    assert domain.status_code == 201 and domain.json["block"]["value"] == "contractors.example.com"
    for body in ({"reason": "r"}, {"address": "a@example.com", "domain": "example.com", "reason": "r"},
                 {"address": "not an address", "reason": "r"}, {"domain": "example.com"},
                 {"domain": "example.com", "reason": "r", "extra": 1}):
        refused = admin.put("/api/admin/blocks", headers=headers, data=json.dumps(body))
        assert refused.status_code == 422, (body, refused.json)
        assert isinstance(refused.json["message"], str) and refused.json["detail"][0]["field"]
    assert len(secret_names(core_api, app_env, BLOCKS)) == 2

    for address in ("eve@example.com", "EVE+other@example.com", "bob@contractors.example.com",
                    "ann@eu.contractors.example.com"):
        refused = post_key(admin, {"llm": "gpt-4o", "email": address})
        assert refused.status_code == 403, (address, refused.json)
        assert refused.json["detail"] == [{"field": "email", "reason": "blocked by the platform team"}]
        assert "abuse ticket" not in refused.json["message"]  # the admin's reason stays internal
    assert secret_names(core_api, app_env, REQUESTS) == []
    assert post_key(admin, {"llm": "gpt-4o", "email": "eve2@example.com"}).status_code == 201

    listed = admin.get("/api/admin/blocks", headers=headers)
    assert listed.status_code == 200
    assert [(b["kind"], b["value"], b["reason"], b["blocked_by"]) for b in listed.json["blocks"]] == [
        ("address", "eve@example.com", "abuse ticket 43", "basic:admin"),
        ("domain", "contractors.example.com", "use the shared pool", "basic:admin")]

    assert admin.delete("/api/admin/blocks?address=nobody@example.com", headers=headers).status_code == 404
    assert admin.delete("/api/admin/blocks?user=eve@example.com", headers=headers).status_code == 422
    lifted = admin.delete("/api/admin/blocks?address=Eve%2Bx@example.com", headers=headers)
    assert lifted.status_code == 200 and lifted.json["block"]["value"] == "eve@example.com"
    assert post_key(admin, {"llm": "gpt-4o", "email": "eve@example.com"}).status_code == 201
    assert len(secret_names(core_api, app_env, BLOCKS)) == 1
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit:")]
    assert "audit: basic:admin blocked address eve@example.com (new): abuse ticket 42" in audit
    assert any(line.startswith("audit: basic:admin lifted the block of address eve@example.com") for line in audit)


def test_a_blocked_mailbox_cannot_ask_through_the_mcp_tool_either(admin):
    from shared import context
    from shared.domain.blocks import Block
    from shared.domain.request import utcnow
    from shared.http.responses import as_http_error
    from shared.services import intake
    from shared.services.ports import Refused

    context.block_store().put(Block("domain", "example.com", "closed", "test", utcnow()))
    with pytest.raises(Refused) as caught:
        intake.submit_request(context.request_store(), context.config(), "zed@example.com", "gpt-4o")
    assert as_http_error(caught.value).status == 403


# --- 3. limits that hold across instances -------------------------------------------------------------

LIMITS = "app.kubernetes.io/component=llm-key-limit"
NO_LIMITS = {"open_per_address": None, "per_address_per_day": None, "per_domain_per_hour": None,
             "per_instance_per_minute": None}


def limits(tmp_path, monkeypatch, **values) -> None:
    use_config(tmp_path, monkeypatch, {"requests": {"limits": {**NO_LIMITS, **values}}})


def test_open_requests_per_mailbox_are_limited(http, core_api, app_env, tmp_path, monkeypatch):
    from shared import context

    limits(tmp_path, monkeypatch, open_per_address=2)
    a = post_key(http, {"llm": "gpt-4o", "email": "una@example.com"})
    b = post_key(http, {"llm": "gpt-4o-mini", "email": "Una+b@example.com"})
    assert a.status_code == b.status_code == 201
    assert post_key(http, {"llm": "gpt-4o", "email": "una@example.com"}).status_code == 201  # not counted
    over = post_key(http, {"llm": "claude-3-5-sonnet", "email": "una+c@example.com"})
    assert over.status_code == 429, over.json
    assert "2 key requests that are not finished" in over.json["message"]
    assert over.json["detail"] == [{"field": "email", "reason": "at most 2 unfinished requests"}]
    assert int(over.headers["Retry-After"]) > 0
    assert len(secret_names(core_api, app_env, REQUESTS)) == 2, "the refused one is not left behind"
    store = context.request_store()
    store.update(store.get(a.json["request_id"]).enter(State.FAILED))
    assert post_key(http, {"llm": "claude-3-5-sonnet", "email": "una@example.com"}).status_code == 201


def test_requests_per_mailbox_per_day_and_per_domain_per_hour(http, core_api, app_env, tmp_path, monkeypatch):
    from shared import context

    limits(tmp_path, monkeypatch, per_address_per_day=2)
    store = context.request_store()
    for model in ("gpt-4o", "gpt-4o-mini"):
        created = post_key(http, {"llm": model, "email": "vic@example.com"})
        assert created.status_code == 201
        store.update(store.get(created.json["request_id"]).enter(State.FAILED))
    over = post_key(http, {"llm": "claude-3-5-sonnet", "email": "VIC+x@example.com"})
    assert over.status_code == 429 and "today" in over.json["message"]
    assert 0 < int(over.headers["Retry-After"]) <= 86400
    assert post_key(http, {"llm": "claude-3-5-sonnet", "email": "wes@example.com"}).status_code == 201

    limits(tmp_path, monkeypatch, per_domain_per_hour=3)
    answers = [post_key(http, {"llm": "gpt-4o", "email": f"user{i}@mail.example.com"}) for i in range(4)]
    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert "mail.example.com this hour" in answers[3].json["message"]
    assert 0 < int(answers[3].headers["Retry-After"]) <= 3600
    assert post_key(http, {"llm": "gpt-4o", "email": "user9@other.example.com"}).status_code == 201
    # The counters are small Secrets, one per mailbox or domain, holding no data.
    counters = core_api.list_namespaced_secret(app_env, label_selector=LIMITS).items
    assert counters and all(not c.data for c in counters)


def test_a_limit_holds_across_instances(app_env, kube_api_client, tmp_path, monkeypatch):
    """Eight instances (each its own store and client) take 16 new requests of one domain at once:
    exactly the limit gets in."""
    import threading

    from kubernetes import config as kube_config

    from shared import context
    from shared.services import intake
    from shared.services.ports import Refused
    from shared.store.requests import KubernetesRequestStore

    limits(tmp_path, monkeypatch, per_domain_per_hour=5)
    config = context.config()
    kubeconfig = context.settings().kubeconfig
    stores = [KubernetesRequestStore(kube_config.new_client_from_config(config_file=kubeconfig), app_env)
              for _ in range(8)]
    barrier = threading.Barrier(16)
    outcomes: list[str] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        barrier.wait()
        try:
            intake.submit_request(stores[i % 8], config, f"p{i}@crowd.example.com", "gpt-4o")
            outcome = "created"
        except Refused as exc:
            outcome = exc.kind
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] * 5 + ["limited"] * 11


def test_the_intake_rate_per_instance(http, tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from shared.services import intake

    limits(tmp_path, monkeypatch, per_instance_per_minute=2)
    monkeypatch.setattr(intake, "utcnow", lambda: datetime(2026, 5, 1, 12, 0, 15, tzinfo=UTC))
    assert post_key(http, {"llm": "gpt-4o", "email": "xan@example.com"}).status_code == 201
    assert post_key(http, {"llm": "gpt-4o", "email": "xan@example.com"}).status_code == 201
    busy = post_key(http, {"llm": "gpt-4o", "email": "yul@example.com"})
    assert busy.status_code == 429 and busy.json["message"] == "The service is busy; please try again in a minute."
    assert busy.headers["Retry-After"] == "45"
    monkeypatch.setattr(intake, "utcnow", lambda: datetime(2026, 5, 1, 12, 1, 0, tzinfo=UTC))
    assert post_key(http, {"llm": "gpt-4o", "email": "yul@example.com"}).status_code == 201


# --- 13. small holes ------------------------------------------------------------------------------------


def test_deeply_nested_json_is_a_400_not_a_500(http, core_api, app_env):
    for path in ("/api/request-key", "/api/teams/validate"):
        response = http.post(path, data=b"[" * 16000, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (path, response.status_code)
        assert "nests too deeply" in response.json["message"] and "Traceback" not in response.get_data(as_text=True)
    yaml_bomb = http.post("/api/teams/validate", data=b"[" * 16000, headers={"Content-Type": "application/yaml"})
    assert yaml_bomb.status_code == 422 and "nests too deeply" in yaml_bomb.json["message"]
    assert secret_names(core_api, app_env, REQUESTS) == []


def test_a_create_that_times_out_but_was_stored_is_the_pairs_request(app_env, kube_api_client, core_api):
    """The apiserver stored the request but its answer was lost: the caller is told it was created
    (it was), and the pair has that one request. A create that failed for good stores nothing."""
    from shared.services.ports import StoreUnavailable
    from shared.store.requests import KubernetesRequestStore

    store = KubernetesRequestStore(kube_api_client, app_env, timeout_seconds=10)
    real_create = store._secrets.create

    def stored_then_timed_out(body):
        created = real_create(body)
        if body["metadata"]["name"].startswith("llm-key-request-"):
            raise StoreUnavailable("Kubernetes API create failed: ReadTimeoutError")
        return created

    store._secrets.create = stored_then_timed_out
    stored, created = store.submit(KeyRequest.new("tim@example.com", "gpt-4o", canonical_email="tim@example.com"))
    assert created and len(secret_names(core_api, app_env, REQUESTS)) == 1
    again, created_again = store.submit(KeyRequest.new("tim@example.com", "gpt-4o", canonical_email="tim@example.com"))
    assert (again.id, created_again) == (stored.id, False)

    def refused(body):
        if body["metadata"]["name"].startswith("llm-key-request-"):
            raise StoreUnavailable("Kubernetes API create answered 503")
        return real_create(body)

    store._secrets.create = refused
    with pytest.raises(StoreUnavailable):
        store.submit(KeyRequest.new("uma@example.com", "gpt-4o", canonical_email="uma@example.com"))
    assert len(secret_names(core_api, app_env, REQUESTS)) == 1  # tim's only
    assert secret_names(core_api, app_env, CLAIMS) == []


def test_azure_without_acs_or_smtp_does_not_start(tmp_path):
    from shared import context
    from shared.settings import SettingsError

    no_mail = {k: v for k, v in AZURE.items() if k != "SMTP_HOST"}
    with pytest.raises(SettingsError, match="neither ACS_CONNECTION_STRING / ACS_ENDPOINT nor SMTP_HOST"):
        context.check_azure_email(Settings.from_env(no_mail))
    context.check_azure_email(Settings.from_env(AZURE))
    context.check_azure_email(Settings.from_env({**no_mail, "ACS_ENDPOINT": "https://acs.example.com"}))
    context.check_azure_email(Settings.from_env({}))  # locally the outbox is fine
    env = {**no_mail, "CONFIG_FILE": str(ROOT / "config.yaml"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", "import function_app"], cwd=ROOT, capture_output=True,
                            text=True, env=env)
    assert result.returncode != 0 and "neither ACS_CONNECTION_STRING" in result.stderr


def test_unicode_domains_are_sent_in_ascii_form():
    from shared.services import intake, messages

    class Store:  # what submit_request asks of a store, in memory
        def find_block(self, keys):
            return None

        def submit(self, request, refuse=None, admit=None):
            return request, True

    config = AppConfig.model_validate({"models": [{"id": "a", "title": "A"}]})
    request = intake.submit_request(Store(), config, " Jörg+ai@Bücher.DE ", "a").request
    assert (request.email, request.canonical_email) == ("jörg+ai@xn--bcher-kva.de", "jörg@xn--bcher-kva.de")
    email = messages.approved_email(request, config.model("a"), {"litellm": "sk-" + "x" * 20},
                                    "http://gw", None, config.notifications)
    assert email.to == ("jörg+ai@xn--bcher-kva.de",)


# --- 12. public answers leak nothing (status reasons, store errors) -----------------------------------


@pytest.mark.parametrize("state,decided_by,expected", [
    (State.FAILED, "processor", "The key could not be issued or taken back by the key service."),
    (State.REVOKED, "basic:admin", "The key was revoked by the platform team."),
    (State.REVOKED, "link:requester", "The key was revoked at your request."),
    (State.DENIED, "rule 1", "ARM said: AuthorizationFailed for /subscriptions/0000-secret"),
])
def test_the_status_reason_is_a_public_sentence(http, app_env, state, decided_by, expected):
    from shared import context

    raw = "ARM said: AuthorizationFailed for /subscriptions/0000-secret"
    request_id = post_key(http, {"llm": "gpt-4o", "email": "zoe@example.com"}).json["request_id"]
    store = context.request_store()
    store.update(store.get(request_id).enter(state, reason=raw, last_error=raw, decided_by=decided_by))
    status = http.get(f"/api/requests/{request_id}").json
    assert status["reason"] == expected  # a denial's reason is the requester's (it is emailed to them)
    if state != State.DENIED:
        assert "0000-secret" not in json.dumps(status)


def test_store_errors_carry_no_kubernetes_message(http, app_env, monkeypatch, caplog):
    import logging

    from shared import context
    from shared.services.ports import StoreError, StoreUnavailable

    caplog.set_level(logging.INFO)
    store = context.request_store()
    for error, status in ((StoreUnavailable("Kubernetes API create answered 503: etcdserver: leader changed"), 503),
                          (StoreError('Kubernetes API read answered 403: secrets "x" is forbidden: User '
                                      '"system:serviceaccount:llm:app" cannot get'), 502)):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(store, "find_block", fail)
        response = post_key(http, {"llm": "gpt-4o", "email": "zed@example.com"})
        assert response.status_code == status
        body = response.get_data(as_text=True)
        assert "etcd" not in body and "serviceaccount" not in body and "Kubernetes" not in body
        assert response.json["detail"] is None and isinstance(response.json["message"], str)
    assert any("etcdserver" in r.getMessage() for r in caplog.records), "the log keeps the store's words"


# --- 11. login limits that cannot be dodged -------------------------------------------------------------


def test_the_client_is_the_last_forwarded_hop():
    import azure.functions as func

    from shared.http.auth import client_of

    def client(forwarded: str | None) -> str:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        return client_of(func.HttpRequest("POST", "http://x/api/admin/verify", headers=headers, body=b""))

    assert client("1.2.3.4, 10.0.0.9:5555") == "10.0.0.9"
    assert client("spoofed, [2001:db8::1]:443") == "2001:db8::1"
    assert client("2001:db8::2") == "2001:db8::2"
    assert client(None) == client("") == "no-address"


def test_a_username_has_a_budget_across_addresses_and_wrong_api_keys_count(http, monkeypatch):
    import base64

    from shared import context

    monkeypatch.setenv("ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("ADMIN_API_KEY", "ak-" + "k" * 40)
    monkeypatch.setenv("ADMIN_LOGIN_ATTEMPTS_PER_MINUTE", "2")
    context.reset()
    wrong = {"Authorization": "Basic " + base64.b64encode(b"admin:guess").decode()}
    codes = [http.post("/api/admin/verify", headers=wrong, environ_base={"REMOTE_ADDR": f"203.0.113.{i}"}).status_code
             for i in range(7)]
    assert codes == [401] * 6 + [429]  # 3 x 2 failures for one username, from six addresses
    assert http.post("/api/admin/verify", headers=admin_headers(),
                     environ_base={"REMOTE_ADDR": "198.51.100.1"}).status_code == 429
    # Another username from a fresh address is not held up by that budget.
    other = {"Authorization": "Basic " + base64.b64encode(b"root:guess").decode()}
    elsewhere = {"REMOTE_ADDR": "198.51.100.2"}
    assert http.post("/api/admin/verify", headers=other, environ_base=elsewhere).status_code == 401

    at = {"REMOTE_ADDR": "192.0.2.50"}
    keys = [http.post("/api/admin/verify", headers={"x-functions-key": f"wrong-{i}"}, environ_base=at).status_code
            for i in range(3)]
    assert keys == [401, 401, 429]
    right_key = http.post("/api/admin/verify", headers={"x-functions-key": "ak-" + "k" * 40}, environ_base=at)
    assert right_key.status_code == 429  # the address used up its budget
    assert http.post("/api/admin/verify", headers={"x-functions-key": "ak-" + "k" * 40},
                     environ_base={"REMOTE_ADDR": "192.0.2.51"}).status_code == 200


def test_a_block_made_elsewhere_applies_once_this_instance_looks_again(admin, core_api, app_env, monkeypatch):
    """Block lookups are remembered for blocks.CACHE_SECONDS per process: a block another instance
    (or kubectl) writes applies here once that has passed; one made through this instance at once."""
    from datetime import UTC, datetime

    from shared.store import blocks

    assert post_key(admin, {"llm": "gpt-4o", "email": "early@example.com"}).status_code == 201
    # Another instance blocks example.com: written straight into the cluster, as it would.
    body = blocks._encode(blocks.block_name("domain", "example.com"), blocks.Block(
        kind="domain", value="example.com", reason="elsewhere", blocked_by="other-instance",
        blocked_at=datetime.now(UTC)))
    core_api.create_namespaced_secret(app_env, body)
    assert post_key(admin, {"llm": "gpt-4o", "email": "soon@example.com"}).status_code == 201, \
        "remembered: not looked up again within CACHE_SECONDS"
    monkeypatch.setattr(blocks, "CACHE_SECONDS", 0.0)  # ... and once they have passed
    assert post_key(admin, {"llm": "gpt-4o", "email": "later@example.com"}).status_code == 403
    # A removal through the admin API applies here at once.
    monkeypatch.setattr(blocks, "CACHE_SECONDS", 3600.0)
    gone = admin.delete("/api/admin/blocks?domain=example.com", headers=admin_headers())
    assert gone.status_code == 200, gone.json
    assert post_key(admin, {"llm": "gpt-4o", "email": "after@example.com"}).status_code == 201
