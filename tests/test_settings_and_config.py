"""App settings and config.yaml: typed, validated, and failing with the field and the reason."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from shared.config import ConfigError, load_config
from shared.settings import Settings, SettingsError
from tests.conftest import ROOT


def test_defaults_match_the_earlier_service():
    settings = Settings.from_env({})
    assert settings.processor_time_budget_seconds == 180 and settings.team_time_budget_seconds == 60
    assert settings.smtp_port == 587 and settings.smtp_use_tls == "starttls"
    assert settings.litellm_base_url == "http://localhost:4000"
    assert settings.namespace == "default"
    assert settings.admin_password is None


@pytest.mark.parametrize("raw,mode", [("true", "starttls"), ("false", "none"), ("tls", "tls"),
                                      ("STARTTLS", "starttls"), ("none", "none")])
def test_smtp_use_tls_accepts_the_earlier_boolean(raw, mode):
    assert Settings.from_env({"SMTP_USE_TLS": raw}).smtp_use_tls == mode


def test_blank_values_mean_unset():
    settings = Settings.from_env({"SMTP_HOST": "", "LITELLM_API_KEY": " ", "KUBERNETES_NAMESPACE": ""})
    assert settings.smtp_host is None and settings.litellm_api_key is None


def test_a_bad_setting_is_named_and_secrets_never_show():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"SMTP_PORT": "seventy", "SMTP_PASSWORD": "hunter2-secret"})
    assert "SMTP_PORT" in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)
    settings = Settings.from_env({"SMTP_PASSWORD": "hunter2-secret", "LITELLM_API_KEY": "sk-secret-123456"})
    assert "hunter2-secret" not in repr(settings) and "sk-secret-123456" not in repr(settings)
    assert settings.smtp_password.get_secret_value() == "hunter2-secret"


def test_ca_bundle_must_exist(tmp_path):
    with pytest.raises(SettingsError, match="CA_BUNDLE"):
        Settings.from_env({"CA_BUNDLE": str(tmp_path / "missing.pem")})
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Settings.from_env({"CA_BUNDLE": str(bundle)}).ca_bundle == bundle


def test_the_shipped_config_is_valid():
    config = load_config(ROOT / "config.yaml")
    assert config.model("gpt-4o") is not None
    assert all(config.model(f.id) for f in config.featured_models)


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


BAD_CONFIGS = [
    ("models: []\n", "models: List should have at least 1 item"),
    ("models:\n  - {id: a, title: A, colour: red}\n", "models[0].colour: Extra inputs are not permitted"),
    ("models:\n  - {id: 'bad id', title: A}\n", "models[0].id: String should match pattern"),
    ("models:\n  - {id: a, title: A}\nfeatured_models:\n  - {id: b, title: B}\n",
     "featured_models name ids not in models: b"),
    ("models:\n  - {id: a, title: A}\n  - {id: a, title: A2}\n", "repeated: a"),
    ("models:\n  - {id: a, title: A, provisioning: {backends: [apim]}}\n",
     "models[0].provisioning: Value error, backends lists apim, so apim.product_id is required"),
    ("models:\n  - {id: a, title: A}\napproval:\n  rules:\n    - {kind: match, decision: maybe, models: [a]}\n",
     "approval.rules[0].decision: Input should be 'approve', 'deny' or 'review'"),
    ("models:\n  - {id: a, title: A}\napproval:\n  rules:\n    - {kind: match, decision: deny}\n",
     "approval.rules[0]: Value error, a match rule needs at least one of emails, domains, models"),
    ("models:\n  - {id: a, title: A}\napproval:\n  rules:\n    - {kind: plugin, name: email}\n",
     "approval.rules[0]: Input tag 'plugin' found using 'kind' does not match any of the expected tags"),
    ("- just\n- a list\n", "(top level): must be a mapping"),
    ("models: [\n", "not valid YAML at line"),
]


@pytest.mark.parametrize("text,expected", BAD_CONFIGS)
def test_a_bad_config_names_the_file_the_field_and_the_reason(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    assert expected in message, message


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_the_app_does_not_start_with_a_bad_config(tmp_path):
    path = write(tmp_path, "models:\n  - {id: a, title: A, colour: red}\n")
    result = subprocess.run([sys.executable, "-c", "import function_app"], cwd=ROOT, capture_output=True,
                            text=True, env={"CONFIG_FILE": str(path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert f"{path}: models[0].colour: Extra inputs are not permitted" in result.stderr


def test_every_setting_is_in_the_sample_and_the_readme():
    import json

    aliases = {field.alias for field in Settings.model_fields.values() if field.alias}
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    readme = (ROOT / "README.md").read_text()
    assert aliases - set(sample) == set()
    assert {alias for alias in aliases if f"`{alias}`" not in readme} == set()


def test_an_unresolved_key_vault_reference_stops_the_app():
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/admin-password/)"
    with pytest.raises(SettingsError, match="ADMIN_PASSWORD: unresolved Key Vault reference"):
        Settings.from_env({"ADMIN_PASSWORD": reference})


def test_a_relative_config_file_is_relative_to_the_app_root():
    assert Settings.from_env({"CONFIG_FILE": "config.yaml"}).config_file == ROOT / "config.yaml"


# --- start-up refusals: time budgets, the lease, the LiteLLM key ---------------------------------------


def host_json(tmp_path, function_timeout: str | None = "00:05:00"):
    import json

    path = tmp_path / "host.json"
    doc = {"version": "2.0"} if function_timeout is None else {"version": "2.0", "functionTimeout": function_timeout}
    path.write_text(json.dumps(doc))
    return path


def test_the_default_and_the_sample_settings_pass_every_start_up_check():
    import json

    from shared import context
    from shared.startup_checks import check_timing, longest_step_seconds

    config = load_config(ROOT / "config.yaml")
    defaults = Settings.from_env({"LITELLM_API_KEY": "sk-x"})
    assert longest_step_seconds(defaults, config) == 3 * 10 + 2 * 5 + 10  # LiteLLM, then its record
    check_timing(defaults, config)  # the shipped host.json
    # What scripts/run starts: local.settings.sample.json, with its placeholder LiteLLM key.
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    settings = Settings.from_env(sample)
    assert settings.litellm_api_key is not None
    context._check_config_against_settings(load_config(settings.config_file), settings)
    check_timing(settings, load_config(settings.config_file))


def test_the_longest_step_counts_each_configured_backend_with_its_tries(tmp_path):
    from shared.startup_checks import longest_step_seconds

    def step(**env) -> float:
        return longest_step_seconds(Settings.from_env({name: str(value) for name, value in env.items()}))

    assert step() == 50  # LiteLLM 10 s x 3 tries + 2 waits of 5 s; + one Kubernetes write of 10 s
    assert step(LITELLM_TIMEOUT_SECONDS=30) == 3 * 30 + 10 + 10
    assert step(KUBERNETES_TIMEOUT_SECONDS=5) == 40 + 5
    assert step(KUBERNETES_TIMEOUT_SECONDS=60) == 60 + 60  # a Kubernetes write is a step's call too
    assert step(SMTP_HOST="smtp.example.com", SMTP_TIMEOUT_SECONDS=70) == 70 + 10
    assert step(SMTP_TIMEOUT_SECONDS=70) == 50  # SMTP not configured: the outbox
    assert step(LITELLM_TIMEOUT_SECONDS=1, ACS_ENDPOINT="https://acs.example.com") == 30 + 10
    apim = {"APIM_SUBSCRIPTION_ID": "s", "APIM_RESOURCE_GROUP": "rg", "APIM_SERVICE_NAME": "apim"}
    assert step(LITELLM_TIMEOUT_SECONDS=1, **apim) == 10 * 3 + 2 * 5 + 10
    config = load_config(write(tmp_path, """\
        models:
          - {id: a, title: A}
        approval:
          rules:
            - {kind: webhook, url: "https://a.example/decide", secret_setting: S1, timeout_seconds: 30}
            - {kind: webhook, url: "https://b.example/decide", secret_setting: S2, timeout_seconds: 25}
        """))
    assert longest_step_seconds(Settings.from_env({"LITELLM_TIMEOUT_SECONDS": "1"}), config) == 30 + 25 + 10


def test_the_longest_step_counts_the_adapters_as_context_builds_them():
    import inspect

    from shared import startup_checks
    from shared.adapters.apim import ApimService
    from shared.adapters.email_acs import AcsNotifier
    from shared.adapters.litellm import LiteLLMProvisioner

    def defaults(function) -> dict:
        return {name: p.default for name, p in inspect.signature(function).parameters.items()}

    for adapter in (LiteLLMProvisioner.__init__, ApimService.__init__):
        assert defaults(adapter)["quick_retries"] + 1 == startup_checks.ADAPTER_TRIES
        assert defaults(adapter)["max_inline_wait"] == startup_checks.ADAPTER_INLINE_WAIT_SECONDS
    assert defaults(ApimService.__init__)["timeout_seconds"] == startup_checks.APIM_TIMEOUT_SECONDS
    assert defaults(AcsNotifier.__init__)["timeout"] == startup_checks.ACS_TIMEOUT_SECONDS


@pytest.mark.parametrize("name,timer", [("PROCESSOR_TIME_BUDGET_SECONDS", "approval_timer"),
                                        ("TEAM_TIME_BUDGET_SECONDS", "team_timer")])
def test_a_budget_that_with_the_longest_step_outlasts_function_timeout_is_refused(tmp_path, name, timer):
    from shared.startup_checks import check_timing

    host = host_json(tmp_path, "00:05:00")
    check_timing(Settings.from_env({name: "250"}), host_json=host)  # 250 + 50 = 300: fits exactly
    with pytest.raises(SettingsError) as caught:
        check_timing(Settings.from_env({name: "251"}), host_json=host)
    message = str(caught.value)
    assert f"{name} (251 s) + the longest step (50 s" in message, message
    assert "functionTimeout (300 s)" in message and timer in message and f"set {name} to at most 250" in message
    # Slower backends make the same budget too long: the timeouts are named.
    with pytest.raises(SettingsError, match="PROCESSOR_TIME_BUDGET_SECONDS .*LITELLM_TIMEOUT_SECONDS"):
        check_timing(Settings.from_env({"LITELLM_TIMEOUT_SECONDS": "60", "PROCESSOR_LEASE_SECONDS": "600"}),
                     host_json=host)


@pytest.mark.parametrize("written,seconds", [("00:05:00", 300), ("01:30:00", 5400), ("00:00:90.5", None),
                                             ("1.02:00:00", 93600), ("00:10:00.5", 600.5), ("-1", "unbounded"),
                                             (None, 1800), ("5 minutes", None), ("00:61:00", None)])
def test_function_timeout_is_read_from_host_json(tmp_path, written, seconds):
    from shared.config import ConfigError
    from shared.startup_checks import function_timeout_seconds

    host = host_json(tmp_path, written)
    if seconds is None:
        with pytest.raises(ConfigError, match=f"{host}: functionTimeout"):
            function_timeout_seconds(host)
    else:
        assert function_timeout_seconds(host) == (None if seconds == "unbounded" else seconds)


def test_function_timeout_absent_or_unbounded(tmp_path):
    from shared.startup_checks import check_timing, function_timeout_seconds

    assert function_timeout_seconds(tmp_path / "no-host.json") == 1800  # Flex Consumption's default
    long_budget = Settings.from_env({"PROCESSOR_TIME_BUDGET_SECONDS": "1750"})
    check_timing(long_budget, host_json=host_json(tmp_path, None))  # 1750 + 50 = 30 min
    with pytest.raises(SettingsError, match="functionTimeout \\(1800 s\\)"):
        check_timing(Settings.from_env({"PROCESSOR_TIME_BUDGET_SECONDS": "1751"}), host_json=host_json(tmp_path, None))
    check_timing(Settings.from_env({"PROCESSOR_TIME_BUDGET_SECONDS": "86400"}), host_json=host_json(tmp_path, "-1"))


def test_a_lease_shorter_than_the_longest_step_is_refused(tmp_path):
    from shared.startup_checks import check_timing

    host = host_json(tmp_path)
    check_timing(Settings.from_env({"PROCESSOR_LEASE_SECONDS": "50"}), host_json=host)
    with pytest.raises(SettingsError) as caught:
        check_timing(Settings.from_env({"PROCESSOR_LEASE_SECONDS": "45"}), host_json=host)
    message = str(caught.value)
    assert "PROCESSOR_LEASE_SECONDS (45 s) is shorter than the longest step (50 s" in message, message
    assert "at least 50" in message
    # A slower backend needs a longer lease: the default lease no longer covers it.
    with pytest.raises(SettingsError,
                       match="PROCESSOR_LEASE_SECONDS \\(120 s\\) is shorter than the longest step \\(130 s"):
        check_timing(Settings.from_env({"SMTP_HOST": "smtp.example.com", "SMTP_TIMEOUT_SECONDS": "120",
                                        "PROCESSOR_TIME_BUDGET_SECONDS": "60"}), host_json=host)


def test_a_litellm_model_without_the_litellm_key_is_refused(tmp_path):
    from shared import context

    config = load_config(write(tmp_path, """\
        models:
          - {id: default-backend, title: A}
          - {id: both, title: B, provisioning: {backends: [litellm, apim], apim: {product_id: p}}}
          - {id: apim-only, title: C, provisioning: {backends: [apim], apim: {product_id: p}}}
        """))
    apim = {"APIM_SUBSCRIPTION_ID": "s", "APIM_RESOURCE_GROUP": "rg", "APIM_SERVICE_NAME": "apim"}
    with pytest.raises(ConfigError) as caught:
        context._check_config_against_settings(config, Settings.from_env({**apim, "LITELLM_API_KEY": " "}))
    message = str(caught.value)
    assert ("models[0] (default-backend), models[1] (both) use backend litellm, but LITELLM_API_KEY "
            "(the LiteLLM master key) is not set") in message, message
    assert "apim-only" not in message
    context._check_config_against_settings(config, Settings.from_env({**apim, "LITELLM_API_KEY": "sk-master"}))
    only_apim = load_config(write(tmp_path, """\
        models:
          - {id: apim-only, title: C, provisioning: {backends: [apim], apim: {product_id: p}}}
        """))
    context._check_config_against_settings(only_apim, Settings.from_env(apim))


def test_the_app_does_not_start_when_a_start_up_check_refuses():
    base = {"CONFIG_FILE": str(ROOT / "config.yaml"), "PATH": "/usr/bin:/bin"}
    for env, expected in (({}, "use backend litellm, but LITELLM_API_KEY"),
                          ({"LITELLM_API_KEY": "sk-x", "PROCESSOR_TIME_BUDGET_SECONDS": "260"},
                           "PROCESSOR_TIME_BUDGET_SECONDS (260 s) + the longest step (50 s")):
        result = subprocess.run([sys.executable, "-c", "import function_app"], cwd=ROOT, capture_output=True,
                                text=True, env={**base, **env})
        assert result.returncode != 0
        assert expected in result.stderr, result.stderr[-2000:]
