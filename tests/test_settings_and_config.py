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
    assert settings.approval_schedule == "*/30 * * * * *"
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
