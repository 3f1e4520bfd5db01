"""Checks of infra/ that run without Azure.

Terraform providers cannot be downloaded here, so `terraform validate` cannot run. Instead:
- every .tf file is parsed with python-hcl2 and the deployment is asserted on: resources, the
  managed identity, role assignments (names and scopes), app settings (every setting the app reads
  is there, secrets are Key Vault references, no storage key anywhere), HTTPS/TLS/FTP and CORS;
- the app settings Terraform writes, filled from terraform.tfvars.example and the variables'
  defaults, are validated by the app's own Settings model and Kubernetes client;
- checkov scans infra/ (Terraform and the Kubernetes manifests) once per session: nothing may fail,
  and every skip carries its reason inline;
- the Kubernetes manifests are applied to the real kube-apiserver, and the ServiceAccount variant's
  token is used to prove what the Role allows and refuses.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

INFRA = ROOT / "infra"
MANIFESTS = INFRA / "kubernetes"
CHECKOV_VERSION = "3.3.30"
ENTRA_PLACEHOLDER = "REPLACE-WITH-MANAGED-IDENTITY-OBJECT-ID"

# Settings the app reads that are not app settings of the function app.
NOT_APP_SETTINGS = {
    "KUBERNETES_SERVICE_HOST": "set by the kubelet inside a pod; tells the client it runs in-cluster",
    "WEBSITE_HOSTNAME": "set by App Service: the app's default host name, the default of PUBLIC_BASE_URL",
    # OpenTelemetry's own variables, for local telemetry only (shared/telemetry.py): in Azure the
    # app exports to Application Insights.
    "OTEL_TRACES_EXPORTER": "local only: console telemetry",
    "OTEL_SERVICE_NAME": "local only: the service name of console or OTLP telemetry",
}
SECRET_SETTINGS = {"LITELLM_API_KEY", "ADMIN_PASSWORD", "ADMIN_API_KEY", "SMTP_PASSWORD", "APPROVAL_WEBHOOK_SECRET",
                   "LINK_SIGNING_KEY"}
# Flex Consumption rejects these (it takes the runtime from runtime_name/runtime_version).
FLEX_FORBIDDEN_SETTINGS = {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
                           "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE"}


# --- parsing ------------------------------------------------------------------------------------------

def _unquote(text: str) -> str:
    # python-hcl2 8.x keeps the quotes of string literals and block labels; 7.x did not.
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1].replace('\\"', '"')
    return text


def _normalize(value):
    if isinstance(value, dict):
        # python-hcl2 8.x adds bookkeeping keys: __is_block__, __comments__, __inline_comments__, ...
        return {_unquote(key): _normalize(item) for key, item in value.items()
                if not (key.startswith("__") and key.endswith("__"))}
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


class Terraform:
    """Every .tf file of infra/, parsed: resources, data sources, variables, locals, outputs."""

    def __init__(self, directory: Path) -> None:
        import hcl2

        self.files = sorted(directory.glob("*.tf"))
        self.text = {path.name: path.read_text() for path in self.files}
        self.resources: dict[tuple[str, str], dict] = {}
        self.data: dict[tuple[str, str], dict] = {}
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        self.outputs: dict[str, dict] = {}
        self.terraform: list[dict] = []
        for path in self.files:
            with path.open() as handle:
                parsed = _normalize(hcl2.load(handle))
            for block in parsed.get("resource", []):
                for kind, named in block.items():
                    for name, body in named.items():
                        self.resources[(kind, name)] = body
            for block in parsed.get("data", []):
                for kind, named in block.items():
                    for name, body in named.items():
                        self.data[(kind, name)] = body
            for block in parsed.get("variable", []):
                self.variables.update(block)
            for block in parsed.get("locals", []):
                self.locals.update(block)
            for block in parsed.get("output", []):
                self.outputs.update(block)
            self.terraform.extend(parsed.get("terraform", []))

    def resource(self, kind: str, name: str) -> dict:
        assert (kind, name) in self.resources, f"{kind}.{name} is missing; have {sorted(self.resources)}"
        return self.resources[(kind, name)]

    def of_kind(self, kind: str) -> dict[str, dict]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}

    @property
    def all_text(self) -> str:
        return "\n".join(self.text.values())


@pytest.fixture(scope="module")
def tf() -> Terraform:
    return Terraform(INFRA)


def block(body: dict, name: str) -> dict:
    value = body[name]
    return value[0] if isinstance(value, list) else value


def app_settings(tf: Terraform) -> dict[str, object]:
    function_app = tf.resource("azurerm_function_app_flex_consumption", "app")
    assert function_app["app_settings"] == "${local.app_settings}"
    assert tf.locals["app_settings"] == "${merge(local.plain_app_settings, local.secret_app_settings)}"
    return tf.locals["plain_app_settings"]


IDENTITY = "${azurerm_user_assigned_identity.app.id}"
CLIENT_ID = "${azurerm_user_assigned_identity.app.client_id}"


def settings_the_app_reads() -> set[str]:
    """From the code itself: the Settings model, os.environ reads, and secret settings of config.yaml."""
    from shared.config import WebhookRule, load_config
    from shared.settings import Settings

    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias or field.alias
        if alias is None:
            continue  # derived, not an app setting (in_cluster: from KUBERNETES_SERVICE_HOST, set by Kubernetes)
        choices = getattr(alias, "choices", None)
        names.add(str(choices[0] if choices else alias))
    pattern = re.compile(r"""(?:os\.environ(?:\.get)?|env(?:iron)?\.get|getenv)\(\s*["']([A-Z][A-Z0-9_]+)["']"""
                         r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]+)["']""")
    app_code = [path for path in sorted((ROOT / "shared").rglob("*.py"))
                 if (ROOT / "shared" / "teams") not in path.parents]  # the teams' CLI runs in CI, not in the app
    for path in [ROOT / "function_app.py", *app_code]:
        for match in pattern.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    # kube.py reads its settings through a helper: _setting(value, env, "NAME")
    kube = (ROOT / "shared/store/kube.py").read_text()
    names.update(re.findall(r"""_setting\([^)]*["']([A-Z][A-Z0-9_]+)["']\)""", kube))
    config = load_config(ROOT / "config.yaml")
    names.update(rule.secret_setting for rule in config.approval.rules if isinstance(rule, WebhookRule))
    return names - set(NOT_APP_SETTINGS)


# --- providers, resources, identity --------------------------------------------------------------------

def test_every_tf_file_parses_and_the_expected_files_exist(tf):
    names = {path.name for path in tf.files}
    assert {"versions.tf", "variables.tf", "main.tf", "outputs.tf"} <= names
    assert (INFRA / "terraform.tfvars.example").is_file()
    assert (INFRA / "README.md").is_file()


def test_providers_are_azurerm_4_and_azapi(tf):
    providers = {}
    for block_ in tf.terraform:
        for required in block_.get("required_providers", []):
            providers.update(required)
    assert providers["azurerm"]["source"] == "hashicorp/azurerm"
    assert re.fullmatch(r"~> ?4\.\d+(\.\d+)?", providers["azurerm"]["version"])
    assert providers["azapi"]["source"] == "Azure/azapi"
    # Shared keys are off: the provider must use Entra ID for storage data-plane calls.
    assert 'storage_use_azuread = true' in tf.text["versions.tf"]


def test_resources_of_the_deployment(tf):
    expected = {
        ("azurerm_resource_group", "app"), ("azurerm_user_assigned_identity", "app"),
        ("azurerm_log_analytics_workspace", "app"), ("azurerm_application_insights", "app"),
        ("azurerm_storage_account", "functions"), ("azurerm_storage_container", "deployment"),
        ("azurerm_service_plan", "app"), ("azurerm_function_app_flex_consumption", "app"),
        ("azapi_update_resource", "ftp_basic_auth_disabled"),
    }
    assert expected <= set(tf.resources)
    # One function app, and none of the older kinds (Consumption/Premium Linux apps, deprecated ones).
    assert not {kind for kind, _ in tf.resources} & {"azurerm_linux_function_app", "azurerm_function_app",
                                                       "azurerm_windows_function_app"}


def test_flex_consumption_plan_and_python_311(tf):
    plan = tf.resource("azurerm_service_plan", "app")
    assert plan["sku_name"] == "FC1" and plan["os_type"] == "Linux"
    app = tf.resource("azurerm_function_app_flex_consumption", "app")
    assert app["service_plan_id"] == "${azurerm_service_plan.app.id}"
    assert app["runtime_name"] == "python" and app["runtime_version"] == "3.11"


def test_user_assigned_identity_everywhere(tf):
    app = tf.resource("azurerm_function_app_flex_consumption", "app")
    identity = block(app, "identity")
    assert identity["type"] == "UserAssigned" and identity["identity_ids"] == [IDENTITY]
    assert app["key_vault_reference_identity_id"] == IDENTITY
    # Deployment package: blob container, read with the identity (not a connection string).
    assert app["storage_container_type"] == "blobContainer"
    assert app["storage_authentication_type"] == "UserAssignedIdentity"
    assert app["storage_user_assigned_identity_id"] == IDENTITY
    assert "azurerm_storage_container.deployment.name" in app["storage_container_endpoint"]
    assert "storage_access_key" not in app


def test_storage_account_takes_no_keys(tf):
    account = tf.resource("azurerm_storage_account", "functions")
    assert account["shared_access_key_enabled"] is False
    assert account["min_tls_version"] == "TLS1_2"
    assert account["https_traffic_only_enabled"] is True
    assert account["allow_nested_items_to_be_public"] is False
    assert tf.resource("azurerm_storage_container", "deployment")["container_access_type"] == "private"


def test_no_storage_key_or_connection_string_anywhere(tf):
    text = tf.all_text + (INFRA / "terraform.tfvars.example").read_text()
    for needle in ("primary_access_key", "secondary_access_key", "primary_connection_string",
                   "secondary_connection_string", "AccountKey=", "SharedAccessSignature=",
                   "storage_account_access_key", "storage_access_key", "DefaultEndpointsProtocol"):
        assert needle not in text, f"{needle} in infra/"
    settings = app_settings(tf)
    assert "AzureWebJobsStorage" not in settings  # the connection-string form
    assert settings["AzureWebJobsStorage__accountName"] == "${azurerm_storage_account.functions.name}"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == CLIENT_ID
    assert settings["ACS_CONNECTION_STRING"] == ""


def test_application_insights_with_log_analytics_and_entra_ingestion(tf):
    insights = tf.resource("azurerm_application_insights", "app")
    assert insights["workspace_id"] == "${azurerm_log_analytics_workspace.app.id}"
    assert insights["local_authentication_disabled"] is True
    site = block(tf.resource("azurerm_function_app_flex_consumption", "app"), "site_config")
    assert site["application_insights_connection_string"] == "${azurerm_application_insights.app.connection_string}"
    assert app_settings(tf)["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == f"ClientId={CLIENT_ID};Authorization=AAD"


def test_https_tls_ftp_and_basic_auth(tf):
    app = tf.resource("azurerm_function_app_flex_consumption", "app")
    assert app["https_only"] is True
    assert app["webdeploy_publish_basic_authentication_enabled"] is False
    site = block(app, "site_config")
    assert site["minimum_tls_version"] == "1.2" and site["scm_minimum_tls_version"] == "1.2"
    assert site["remote_debugging_enabled"] is False
    ftp = tf.resource("azapi_update_resource", "ftp_basic_auth_disabled")
    assert ftp["type"].startswith("Microsoft.Web/sites/basicPublishingCredentialsPolicies@")
    assert ftp["name"] == "ftp" and ftp["parent_id"] == "${azurerm_function_app_flex_consumption.app.id}"
    assert ftp["body"] == {"properties": {"allow": False}}


def test_cors_from_a_variable_without_wildcards(tf):
    cors = block(block(tf.resource("azurerm_function_app_flex_consumption", "app"), "site_config"), "cors")
    assert cors["allowed_origins"] == "${var.cors_allowed_origins}"
    assert cors["support_credentials"] is False
    variable = tf.variables["cors_allowed_origins"]
    assert "default" not in variable  # every deployment names its origins
    assert "validation" in variable and "*" in tf.text["variables.tf"]


def test_app_service_auth_and_trusting_its_header_go_together(tf):
    app = tf.resource("azurerm_function_app_flex_consumption", "app")
    dynamic = {name: body for item in app["dynamic"] for name, body in item.items()}
    auth = dynamic["auth_settings_v2"]
    assert auth["for_each"] == "${var.app_service_auth.enabled ? [var.app_service_auth] : []}"
    content = block(auth, "content")
    assert content["auth_enabled"] is True
    assert content["unauthenticated_action"] == "AllowAnonymous"  # the requester API stays public
    assert app_settings(tf)["ADMIN_TRUST_APP_SERVICE_AUTH"] == '${var.app_service_auth.enabled ? "true" : "false"}'
    assert tf.variables["app_service_auth"]["default"] == {"enabled": False}


# --- role assignments --------------------------------------------------------------------------------

def test_role_assignments_names_and_scopes(tf):
    assignments = tf.of_kind("azurerm_role_assignment")
    found = {(body["role_definition_name"], body["scope"]) for body in assignments.values()}
    storage = "${azurerm_storage_account.functions.id}"
    assert found == {
        ("Storage Blob Data Owner", storage),
        ("Storage Queue Data Contributor", storage),
        ("Storage Table Data Contributor", storage),
        ("Monitoring Metrics Publisher", "${azurerm_application_insights.app.id}"),
        ("Key Vault Secrets User", "${var.key_vault_id}"),
        ("API Management Service Contributor", "${local.apim_id}"),
        ("Communication and Email Service Owner", "${var.acs_id}"),
        ("Azure Kubernetes Service Cluster User Role", "${var.aks_cluster_id}"),
    }
    for name, body in assignments.items():
        assert body["principal_id"] == "${local.principal_id}", name
        assert body["principal_type"] == "ServicePrincipal", name
    assert tf.locals["principal_id"] == "${azurerm_user_assigned_identity.app.principal_id}"
    # The APIM scope is the one instance, not its resource group.
    assert "providers/Microsoft.ApiManagement/service" in tf.locals["apim_id"]
    # Optional ones follow their inputs; the AKS role is off unless asked for.
    assert assignments["apim_service_contributor"]["count"] == "${local.apim_enabled ? 1 : 0}"
    assert assignments["acs_email_sender"]["count"] == "${local.acs_enabled ? 1 : 0}"
    assert assignments["aks_cluster_user"]["count"] == "${var.aks_grant_cluster_user_role ? 1 : 0}"
    assert tf.variables["aks_grant_cluster_user_role"]["default"] is False


def test_no_broad_roles(tf):
    names = {body["role_definition_name"] for body in tf.of_kind("azurerm_role_assignment").values()}
    for broad in ("Owner", "Contributor", "User Access Administrator", "Azure Kubernetes Service RBAC Writer",
                  "Azure Kubernetes Service RBAC Admin", "Azure Kubernetes Service RBAC Cluster Admin",
                  "Azure Kubernetes Service Cluster Admin Role", "Key Vault Secrets Officer",
                  "Key Vault Administrator"):
        assert broad not in names
    # Each role's choice is explained where it is granted.
    rbac = tf.text["rbac.tf"]
    for phrase in ("no built-in \"email sender\" role", "listClusterUserCredential", "Kubernetes RBAC"):
        assert phrase in rbac


# --- app settings ---------------------------------------------------------------------------------------

def test_every_setting_the_app_reads_is_set(tf):
    settings = app_settings(tf)
    secret_settings = set(tf.locals["secret_names"])
    provided = set(settings) | secret_settings
    missing = settings_the_app_reads() - provided
    assert not missing, f"app settings missing from infra/app_settings.tf: {sorted(missing)}"
    for name in ("KUBERNETES_AUTH", "KUBERNETES_SERVER", "KUBERNETES_CA_DATA", "AZURE_CLIENT_ID",
                 "APPROVAL_SCHEDULE", "TEAM_SCHEDULE", "ACS_ENDPOINT", "ACS_SENDER_ADDRESS", "LOG_LEVEL",
                 "CONFIG_FILE"):
        assert name in provided
    assert not FLEX_FORBIDDEN_SETTINGS & provided


def test_kubernetes_and_identity_settings(tf):
    settings = app_settings(tf)
    assert settings["KUBERNETES_AUTH"] == "entra"
    assert settings["KUBERNETES_SERVER"] == "${var.aks_api_server_url}"
    assert settings["KUBERNETES_CA_DATA"] == "${var.aks_ca_certificate}"
    assert settings["AZURE_CLIENT_ID"] == CLIENT_ID


def test_secret_settings_are_key_vault_references(tf):
    settings = app_settings(tf)
    assert set(tf.locals["secret_names"]) == SECRET_SETTINGS
    assert not SECRET_SETTINGS & set(settings), "a secret setting has a plain value"
    references = tf.locals["secret_references"]
    uri = "${data.azapi_resource.key_vault_secret[setting].output.properties.secretUri}"
    assert f"@Microsoft.KeyVault(SecretUri={uri}/)" in references
    assert tf.locals["secret_app_settings"].startswith("${{for setting in keys(local.secret_names)")
    # Secret metadata through Resource Manager, from the given vault: the value is never read.
    secret = tf.data[("azapi_resource", "key_vault_secret")]
    assert secret["type"].startswith("Microsoft.KeyVault/vaults/secrets@")
    assert secret["parent_id"] == "${var.key_vault_id}"
    assert not any(kind == "azurerm_key_vault_secret" for kind, _ in tf.data)
    assert "@Microsoft.KeyVault" not in json.dumps(settings)


def _variable_default(tf: Terraform, name: str, attribute: str | None = None):
    variable = tf.variables[name]
    if attribute is None:
        return variable.get("default")
    default = variable.get("default") or {}
    if attribute in default:
        return default[attribute]
    match = re.search(rf"{attribute}\s*=\s*optional\(\w+,\s*([^)]+)\)", str(variable["type"]))
    return None if match is None else json.loads(match.group(1))


def resolved_app_settings(tf: Terraform) -> dict[str, str]:
    """The app settings as Terraform would write them for terraform.tfvars.example: `${var.x}`
    from the example, else the variable's default; literals as they are. Settings computed from
    other resources or conditions are left out (unset) and checked by the tests above."""
    import hcl2

    with (INFRA / "terraform.tfvars.example").open() as handle:
        example = _normalize(hcl2.load(handle))
    resolved = {}
    for name, value in app_settings(tf).items():
        if not isinstance(value, str):
            resolved[name] = json.dumps(value) if isinstance(value, bool) else str(value)
            continue
        if "${" not in value:
            resolved[name] = value
            continue
        match = re.fullmatch(r"\$\{var\.(\w+)(?:\.(\w+))?\}", value)
        if not match:
            continue
        variable, attribute = match.groups()
        if variable in example:
            found = example[variable] if attribute is None else example[variable].get(attribute)
        else:
            found = _variable_default(tf, variable, attribute)
        assert found is not None, f"{name}: var.{variable} has neither a default nor an example value"
        resolved[name] = json.dumps(found) if isinstance(found, bool) else str(found)
    return resolved


def test_the_settings_terraform_writes_pass_the_apps_own_validation(tf, tmp_path):
    from shared.settings import Settings

    env = resolved_app_settings(tf)
    assert {"KUBERNETES_NAMESPACE", "APPROVAL_SCHEDULE", "SMTP_PORT", "PROCESSOR_CONCURRENCY",
            "LOG_LEVEL", "LITELLM_BASE_URL", "KUBERNETES_CA_DATA"} <= set(env)
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    env["CONFIG_FILE"] = str(tmp_path / env["CONFIG_FILE"])  # relative to the app root on Azure
    settings = Settings.from_env(env)
    assert settings.namespace == "llm-key-requestor"
    assert settings.smtp_port == 587 and settings.smtp_verify_tls is True
    assert env["APPROVAL_SCHEDULE"] == env["TEAM_SCHEDULE"] == "*/30 * * * * *"
    assert settings.admin_trust_app_service_auth is False
    # The budgets and the lease Terraform writes pass the start-up checks against host.json.
    from shared.config import load_config
    from shared.startup_checks import check_timing

    check_timing(settings, load_config(settings.config_file))


def test_the_kubernetes_settings_terraform_writes_build_an_entra_client(tf):
    from shared.settings import Settings
    from shared.store.kube import EntraTokenProvider, api_client

    env = resolved_app_settings(tf)
    env["KUBERNETES_AUTH"] = app_settings(tf)["KUBERNETES_AUTH"]
    s = Settings.from_env(env)
    client = api_client(None, auth=s.kubernetes_auth, server=s.kubernetes_server, ca_data=s.kubernetes_ca_data,
                        client_id=s.azure_client_id, in_cluster=s.in_cluster, credential=object())  # nothing sent
    assert client.configuration.host == env["KUBERNETES_SERVER"].rstrip("/")
    assert isinstance(client.configuration.refresh_api_key_hook.__self__, EntraTokenProvider)


def test_tfvars_example_and_variables_agree(tf):
    import hcl2

    with (INFRA / "terraform.tfvars.example").open() as handle:
        example = _normalize(hcl2.load(handle))
    unknown = set(example) - set(tf.variables)
    assert not unknown, f"terraform.tfvars.example sets undeclared variables: {sorted(unknown)}"
    required = {name for name, body in tf.variables.items() if "default" not in body}
    assert required <= set(example), f"required variables missing from the example: {sorted(required - set(example))}"
    for name, body in tf.variables.items():
        assert body.get("description"), f"variable {name} has no description"


def test_outputs_the_readme_needs(tf):
    assert {"function_app_name", "function_app_default_hostname", "managed_identity_client_id",
            "managed_identity_principal_id", "application_insights_name"} <= set(tf.outputs)
    assert tf.outputs["managed_identity_principal_id"]["value"] == "${azurerm_user_assigned_identity.app.principal_id}"
    assert tf.outputs["managed_identity_client_id"]["value"] == CLIENT_ID
    assert tf.outputs["function_app_default_hostname"]["value"] == \
        "${azurerm_function_app_flex_consumption.app.default_hostname}"


def test_terraform_fmt(tmp_path):
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH")
    result = subprocess.run([terraform, "fmt", "-check", "-diff", "-recursive", str(INFRA)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "CHECKPOINT_DISABLE": "1",
                                                        "TF_CLI_CONFIG_FILE": "/dev/null"})
    assert result.returncode == 0, result.stdout + result.stderr


# --- monitoring: workbook and alert rules (infra/monitoring.tf) -------------------------------------------

# The metrics shared/telemetry.py exports (README "Telemetry").
METRICS = ("llmkr.request.count", "llmkr.request.due", "llmkr.tick.duration", "llmkr.tick.budget.utilization",
           "llmkr.request.activation.duration", "llmkr.provisioning.results", "llmkr.email.results",
           "llmkr.intake.rejections")


def test_the_metrics_the_workbook_reads_are_the_ones_the_app_exports():
    source = (ROOT / "shared" / "telemetry.py").read_text()
    for name in METRICS:
        assert f'"{name}"' in source, name


def test_the_workbook_is_deployed_from_its_json_over_application_insights(tf):
    workbook = tf.resource("azurerm_application_insights_workbook", "operations")
    assert workbook["data_json"] == '${file("${path.module}/workbook.json")}'
    assert workbook["source_id"] == "${lower(azurerm_application_insights.app.id)}"
    assert workbook["category"] == "workbook"
    assert workbook["name"].startswith("${uuidv5(")  # a GUID, stable across applies
    doc = json.loads((INFRA / "workbook.json").read_text())
    assert doc["version"] == "Notebook/1.0"
    queries = {item["name"]: item["content"]["query"] for item in doc["items"] if item["type"] == 3}
    text = "\n".join(queries.values())
    # The backlog, the state counts, time-to-key, failures by backend and the audit trail.
    assert "llmkr.request.due" in queries["backlog"]
    assert "llmkr.request.count" in queries["states"] and "llmkr.request.state" in queries["states"]
    assert "llmkr.request.activation.duration" in queries["time-to-key"]
    assert "llmkr.backend" in queries["failures-by-backend"] and '"failed"' in queries["failures-by-backend"]
    assert 'startswith "audit:"' in queries["audit"] and "customDimensions.request_id" in queries["audit"]
    read = [name for clause in re.findall(r"name (?:==|in) \(?([^)\n|]+)", text)
            for name in re.findall(r'"([^"]+)"', clause)]
    assert len(read) >= 8
    for name in read:
        assert name in METRICS, f"the workbook reads {name}, which the app does not export"
    for item in doc["items"]:
        if item["type"] == 3:
            assert item["content"]["resourceType"] == "microsoft.insights/components"


def test_alert_rules_for_backlog_failures_budget_and_store_with_an_action_group_variable(tf):
    rule = tf.resource("azurerm_monitor_scheduled_query_rules_alert_v2", "app")
    assert rule["for_each"] == "${local.alerts}"
    assert rule["scopes"] == ["${azurerm_application_insights.app.id}"]
    assert rule["skip_query_validation"] is True and rule["auto_mitigation_enabled"] is True
    criteria = block(rule, "criteria")
    assert criteria["query"] == "${each.value.query}"
    assert (criteria["operator"], criteria["threshold"], criteria["time_aggregation_method"]) == \
        ("GreaterThan", 0, "Count")
    action = block(rule, "dynamic")["action"]
    action = action[0] if isinstance(action, list) else action
    assert "local.alert_action_groups" in json.dumps(action)
    assert tf.locals["alert_action_groups"] == \
        "${var.alert_action_group_id == null ? [] : [var.alert_action_group_id]}"
    assert tf.variables["alert_action_group_id"]["default"] is None
    alerts = tf.locals["alerts"]
    assert set(alerts) == {"backlog-growing", "requests-failed", "tick-over-budget", "store-unavailable"}
    assert "llmkr.request.due" in alerts["backlog-growing"]["query"]
    assert "var.alert_backlog_threshold" in alerts["backlog-growing"]["query"]
    assert "failed at step" in alerts["requests-failed"]["query"]
    assert "llmkr.tick.budget.utilization" in alerts["tick-over-budget"]["query"]
    assert "value > 1" in alerts["tick-over-budget"]["query"]
    assert "store unavailable" in alerts["store-unavailable"]["query"]
    for name, alert in alerts.items():
        assert 0 <= alert["severity"] <= 4 and alert["window"].startswith("PT"), name
        assert alert["description"] and alert["display_name"], name


def test_the_alert_queries_match_what_the_app_logs():
    """The rules look for lines the app really writes."""
    processor = (ROOT / "shared" / "services" / "processor.py").read_text()
    assert '"request %s failed at step %s: %s"' in processor
    assert "store unavailable" in (ROOT / "shared" / "http" / "public.py").read_text()
    assert "could not record progress" in (ROOT / "shared" / "services" / "engine.py").read_text()
    assert "The request store is unavailable" in (ROOT / "shared" / "http" / "responses.py").read_text()


def test_host_json_and_app_settings_turn_on_opentelemetry(tf):
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    assert app_settings(tf)["PYTHON_ENABLE_OPENTELEMETRY"] == "true"


# --- checkov --------------------------------------------------------------------------------------------

def _cache_root() -> Path:
    override = os.environ.get("LLM_KEY_REQUESTOR_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "llm-key-requestor"


def checkov_executable() -> Path:
    """checkov, pinned, in a virtualenv of its own: its pins (importlib-metadata < 8, python-dateutil
    < 3 through botocore) conflict with litellm and kubernetes, so it cannot share the app's.
    $CHECKOV overrides; else it is installed once into the cache (about 40 s, 290 MB)."""
    if os.environ.get("CHECKOV"):
        return Path(os.environ["CHECKOV"])
    venv = _cache_root() / f"checkov-{CHECKOV_VERSION}"
    executable, complete = venv / "bin" / "checkov", venv / ".complete"
    if complete.is_file():
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".checkov-{CHECKOV_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel sessions)
        if not complete.is_file():
            shutil.rmtree(venv, ignore_errors=True)  # a half-made one from an interrupted run
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            f"checkov=={CHECKOV_VERSION}"], check=True, timeout=900)
            complete.write_text(CHECKOV_VERSION + "\n")
    return executable


@pytest.fixture(scope="session")
def checkov_results() -> dict:
    """One checkov run over infra/ per session (Terraform and the Kubernetes manifests).

    `checkov -d infra/ --compact` with JSON output; not --quiet, which drops the skipped checks
    (and their reasons) from the JSON. --skip-download: offline, no Prisma Cloud metadata."""
    executable = checkov_executable()
    started = time.monotonic()
    result = subprocess.run(
        [str(executable), "-d", str(INFRA), "--compact", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    elapsed = time.monotonic() - started
    try:
        parsed = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov did not answer JSON (exit {result.returncode}): {result.stderr[-3000:]}")
    reports = parsed if isinstance(parsed, list) else [parsed]
    return {"reports": {report["check_type"]: report for report in reports}, "seconds": elapsed,
            "returncode": result.returncode,
            "version": subprocess.run([str(executable), "--version"], capture_output=True, text=True).stdout.strip()}


def test_checkov_is_the_pinned_version(checkov_results):
    assert checkov_results["version"] == CHECKOV_VERSION


def test_checkov_scans_terraform_and_kubernetes_with_no_failure(checkov_results):
    reports = checkov_results["reports"]
    assert {"terraform", "kubernetes"} <= set(reports), sorted(reports)
    failures = []
    for kind, report in reports.items():
        assert report["summary"]["parsing_errors"] == 0, (kind, report["summary"])
        for check in report["results"].get("failed_checks", []):
            failures.append(f"{kind}: {check['check_id']} {check['check_name']} on {check['resource']} "
                            f"({check['file_path']}:{check['file_line_range']})")
    assert not failures, "checkov failed checks (fix them, or skip inline with the reason):\n" + "\n".join(failures)
    assert checkov_results["returncode"] == 0
    assert reports["terraform"]["summary"]["passed"] > 0 and reports["kubernetes"]["summary"]["passed"] > 0


def test_every_checkov_skip_has_its_reason_and_is_still_needed(checkov_results, tf):
    skipped = {}
    for report in checkov_results["reports"].values():
        for check in report["results"].get("skipped_checks", []):
            reason = check.get("suppress_comment") or (check.get("check_result") or {}).get("suppress_comment") or ""
            assert len(reason.strip()) >= 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"
            skipped[(check["check_id"], check["resource"])] = reason
    inline = []
    for name, text in tf.text.items():
        for match in re.finditer(r"#\s*checkov:skip=([^\n]*)", text):
            inline.append(match.group(1))
            assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+:.{20,}", match.group(1).strip()), \
                f"{name}: checkov skip without an inline reason: {match.group(0)}"
    for path in MANIFESTS.glob("*.yaml"):
        for match in re.finditer(r"checkov\.io/skip\d+:\s*([^\n]*)", path.read_text()):
            inline.append(match.group(1))
            assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+=.{20,}", match.group(1).strip()), path.name
    # No stale skip: each inline skip suppressed a check that would otherwise have failed.
    assert len(inline) == len(skipped), (sorted(inline), sorted(skipped))


# --- Kubernetes manifests against the real apiserver ----------------------------------------------------

def kubectl(cluster, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    executable = shutil.which("kubectl")
    if executable is None:
        pytest.skip("kubectl is not on PATH")
    result = subprocess.run([executable, "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def load_manifests() -> dict[str, list[dict]]:
    return {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
            for path in sorted(MANIFESTS.glob("*.yaml"))}


APP_NAMESPACE, KEYS_NAMESPACE = "llm-key-requestor", "developer-requests"  # as shipped
ARCHIVE_NAMESPACE = APP_NAMESPACE + "-archive"


def manifests_for(namespace: str, names: tuple[str, ...], object_id: str | None = None) -> str:
    """The given manifest files with their namespaces renamed (each test its own: the app's
    `namespace`, the team keys' `namespace`-keys) and the Entra placeholder filled, as an operator does."""
    def renamed(name: str) -> str:
        return f"{namespace}-keys" if name == KEYS_NAMESPACE else name.replace(APP_NAMESPACE, namespace, 1)

    docs = []
    for name, file_docs in load_manifests().items():
        if name not in names:
            continue
        for doc in file_docs:
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = renamed(doc["metadata"]["name"])
            if "namespace" in doc["metadata"]:
                doc["metadata"]["namespace"] = renamed(doc["metadata"]["namespace"])
            for subject in doc.get("subjects", []):
                if "namespace" in subject:
                    subject["namespace"] = renamed(subject["namespace"])
                if object_id and subject["name"] == ENTRA_PLACEHOLDER:
                    subject["name"] = object_id
            docs.append(doc)
    return yaml.safe_dump_all(docs)


def test_manifests_are_what_the_app_needs():
    manifests = load_manifests()
    assert set(manifests) == {"namespace.yaml", "role.yaml", "rolebinding-entra.yaml", "serviceaccount.yaml",
                              "resourcequota.yaml"}
    assert [doc["metadata"]["name"] for doc in manifests["namespace.yaml"]] == [
        APP_NAMESPACE, ARCHIVE_NAMESPACE, KEYS_NAMESPACE]
    role, archive_role, keys_role = manifests["role.yaml"]
    assert role["kind"] == archive_role["kind"] == keys_role["kind"] == "Role"  # namespaced, never a ClusterRole
    # In the archive, what shared/store/requests.py does there: no patch.
    assert archive_role["metadata"]["namespace"] == ARCHIVE_NAMESPACE
    assert archive_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                      "verbs": ["get", "list", "create", "update", "delete"]}]
    quotas = manifests["resourcequota.yaml"]
    assert [(q["kind"], q["metadata"]["namespace"]) for q in quotas] == [
        ("ResourceQuota", APP_NAMESPACE), ("ResourceQuota", ARCHIVE_NAMESPACE)]
    assert all(int(q["spec"]["hard"]["count/secrets"]) > 0 for q in quotas)
    rules = {(tuple(rule["apiGroups"]), tuple(rule["resources"])): set(rule["verbs"]) for rule in role["rules"]}
    needed = {"get", "list", "create", "update", "patch", "delete"}
    assert rules == {(("",), ("secrets",)): needed, (("kaito.sh",), ("workspaces",)): needed}
    # In the team keys namespace only what shared/store/team_keys.py does: by name, never a list.
    assert keys_role["metadata"]["namespace"] == KEYS_NAMESPACE
    assert keys_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                   "verbs": ["get", "create", "update", "delete"]}]
    bindings = manifests["rolebinding-entra.yaml"]
    assert [(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings] == [
        (APP_NAMESPACE, role["metadata"]["name"]), (ARCHIVE_NAMESPACE, archive_role["metadata"]["name"]),
        (KEYS_NAMESPACE, keys_role["metadata"]["name"])]
    for binding in bindings:
        assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                        "name": ENTRA_PLACEHOLDER}]
    kinds = [doc["kind"] for doc in manifests["serviceaccount.yaml"]]
    assert kinds == ["ServiceAccount", "RoleBinding", "RoleBinding", "RoleBinding"]
    for docs in manifests.values():
        for doc in docs:
            namespace = doc["metadata"].get("namespace", doc["metadata"]["name"])
            assert namespace in (APP_NAMESPACE, ARCHIVE_NAMESPACE, KEYS_NAMESPACE), doc["metadata"]


def test_manifests_apply_with_server_dry_run(kube_cluster):
    """The files as shipped, validated by the apiserver (dry run: nothing is stored)."""
    kubectl(kube_cluster, "apply", "--dry-run=server", "-f", str(MANIFESTS / "namespace.yaml"))
    # The namespaced objects need their namespaces to exist for a server-side dry run.
    exists = kubectl(kube_cluster, "get", "namespace", APP_NAMESPACE, check=False).returncode == 0
    if not exists:
        kubectl(kube_cluster, "apply", "-f", str(MANIFESTS / "namespace.yaml"))
    try:
        result = kubectl(kube_cluster, "apply", "--dry-run=server", "-f", str(MANIFESTS))
        stored = kubectl(kube_cluster, "-n", APP_NAMESPACE, "get", "role", "llm-key-requestor", check=False)
    finally:
        if not exists:
            for name in (APP_NAMESPACE, ARCHIVE_NAMESPACE, KEYS_NAMESPACE):
                kubectl(kube_cluster, "delete", "namespace", name, "--wait=false", check=False)
    for expected in ("role.rbac.authorization.k8s.io/llm-key-requestor",
                     "role.rbac.authorization.k8s.io/llm-key-requestor-archive",
                     "role.rbac.authorization.k8s.io/llm-key-requestor-team-keys",
                     "resourcequota/llm-key-requestor-secrets",
                     "rolebinding.rbac.authorization.k8s.io/llm-key-requestor-entra",
                     "rolebinding.rbac.authorization.k8s.io/llm-key-requestor-serviceaccount",
                     "serviceaccount/llm-key-requestor"):
        assert expected in result.stdout, result.stdout
    assert "(server dry run)" in result.stdout
    assert stored.returncode != 0, "the dry run stored the Role"


@pytest.fixture
def rbac_namespace(kube_cluster, core_api):
    """namespace + Role + ServiceAccount + RoleBinding (the in-cluster variant), applied for real."""
    namespace = f"rbac-{uuid.uuid4().hex[:10]}"
    manifest = manifests_for(namespace, ("namespace.yaml", "role.yaml", "serviceaccount.yaml"))
    kubectl(kube_cluster, "apply", "-f", "-", stdin=manifest)
    yield namespace
    for name in (namespace, f"{namespace}-archive", f"{namespace}-keys"):
        kubectl(kube_cluster, "delete", "namespace", name, "--wait=false", check=False)


def service_account_client(kube_cluster, core_api, namespace: str):
    from kubernetes import client

    token = core_api.create_namespaced_service_account_token(
        "llm-key-requestor", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}).status.token
    configuration = client.Configuration()
    configuration.host = kube_cluster.server
    configuration.ssl_ca_cert = str(kube_cluster.ca_file)
    configuration.api_key = {"authorization": "Bearer " + token}
    return client.ApiClient(configuration)


def test_the_service_account_can_do_what_the_app_does_with_secrets(kube_cluster, core_api, rbac_namespace):
    from kubernetes import client

    api = client.CoreV1Api(service_account_client(kube_cluster, core_api, rbac_namespace))
    body = {"metadata": {"name": "llm-key-request-rbac", "labels": {"app.kubernetes.io/component": "llm-key-request"}},
            "stringData": {"k": "v"}}
    created = api.create_namespaced_secret(rbac_namespace, body)
    read = api.read_namespaced_secret("llm-key-request-rbac", rbac_namespace)
    assert read.metadata.uid == created.metadata.uid
    listed = api.list_namespaced_secret(rbac_namespace, label_selector="app.kubernetes.io/component=llm-key-request")
    assert [item.metadata.name for item in listed.items] == ["llm-key-request-rbac"]
    read.metadata.annotations = {"llm-key-requestor/note": "replaced"}
    replaced = api.replace_namespaced_secret("llm-key-request-rbac", rbac_namespace, read)
    assert replaced.metadata.annotations["llm-key-requestor/note"] == "replaced"
    api.patch_namespaced_secret("llm-key-request-rbac", rbac_namespace,
                                {"metadata": {"labels": {"request-state": "approved"}}})
    api.delete_namespaced_secret("llm-key-request-rbac", rbac_namespace)
    assert api.list_namespaced_secret(rbac_namespace).items == []


def test_in_the_team_keys_namespace_the_service_account_does_only_what_the_app_does(kube_cluster, core_api,
                                                                                     rbac_namespace):
    """shared/store/team_keys.py: read by name, create, replace, delete; never a list or a patch."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    sa_client = service_account_client(kube_cluster, core_api, rbac_namespace)
    api, keys = client.CoreV1Api(sa_client), f"{rbac_namespace}-keys"
    api.create_namespaced_secret(keys, {"metadata": {"name": "alpha-api-key"}, "stringData": {"primary-key": "k"}})
    read = api.read_namespaced_secret("alpha-api-key", keys)
    read.string_data = {"primary-key": "k2"}
    api.replace_namespaced_secret("alpha-api-key", keys, read)
    api.delete_namespaced_secret("alpha-api-key", keys)
    for verb in ("list", "watch", "patch", "deletecollection"):
        assert not _review(kube_cluster, core_api, keys, verb, "secrets", client_=sa_client), verb
    assert not _review(kube_cluster, core_api, keys, "create", "workspaces", "kaito.sh", client_=sa_client)
    with pytest.raises(ApiException) as error:
        api.list_namespaced_secret(keys)
    assert error.value.status == 403


def test_the_service_account_is_refused_elsewhere(kube_cluster, core_api, rbac_namespace, namespace):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    sa_client = service_account_client(kube_cluster, core_api, rbac_namespace)
    api = client.CoreV1Api(sa_client)
    core_api.create_namespaced_secret(namespace, {"metadata": {"name": "other"}, "stringData": {"k": "v"}})
    refused = [
        lambda: api.read_namespaced_secret("other", namespace),          # another namespace
        lambda: api.list_namespaced_secret(namespace),
        lambda: api.create_namespaced_secret(namespace, {"metadata": {"name": "x"}}),
        lambda: api.list_secret_for_all_namespaces(),                     # cluster-wide
        lambda: api.list_namespaced_config_map(rbac_namespace),           # another kind, own namespace
        lambda: api.create_namespaced_config_map(rbac_namespace, {"metadata": {"name": "x"}}),
        lambda: api.list_namespaced_pod(rbac_namespace),
        lambda: api.delete_collection_namespaced_secret(rbac_namespace),  # not a verb the app uses
    ]
    for attempt in refused:
        with pytest.raises(ApiException) as error:
            attempt()
        assert error.value.status == 403


def _review(kube_cluster, core_api, namespace: str, verb: str, resource: str, group: str = "",
            user: str | None = None, client_=None) -> bool:
    from kubernetes import client

    attributes = {"namespace": namespace, "verb": verb, "resource": resource, "group": group}
    if user is None:
        review = client.AuthorizationV1Api(client_).create_self_subject_access_review(
            {"spec": {"resourceAttributes": attributes}})
    else:
        review = client.AuthorizationV1Api(core_api.api_client).create_subject_access_review(
            {"spec": {"user": user, "resourceAttributes": attributes}})
    return review.status.allowed


def test_kaito_workspaces_are_allowed_without_the_crd(kube_cluster, core_api, rbac_namespace):
    sa_client = service_account_client(kube_cluster, core_api, rbac_namespace)
    for verb in ("get", "list", "create", "update", "patch", "delete"):
        assert _review(kube_cluster, core_api, rbac_namespace, verb, "workspaces", "kaito.sh", client_=sa_client)
    assert not _review(kube_cluster, core_api, rbac_namespace, "watch", "workspaces", "kaito.sh", client_=sa_client)
    assert not _review(kube_cluster, core_api, rbac_namespace, "watch", "secrets", client_=sa_client)


def test_the_entra_binding_grants_the_identitys_object_id(kube_cluster, core_api, namespace):
    """As an operator applies it: the placeholder replaced by the managed identity's object id, the
    User name AKS presents for it. The apiserver's authorizer then allows that user the Role."""
    object_id = str(uuid.uuid4())
    target = f"entra-{uuid.uuid4().hex[:10]}"
    manifest = manifests_for(target, ("namespace.yaml", "role.yaml", "rolebinding-entra.yaml"), object_id=object_id)
    assert ENTRA_PLACEHOLDER not in manifest
    kubectl(kube_cluster, "apply", "-f", "-", stdin=manifest)
    try:
        assert _review(kube_cluster, core_api, target, "create", "secrets", user=object_id)
        assert _review(kube_cluster, core_api, target, "list", "secrets", user=object_id)
        assert _review(kube_cluster, core_api, target, "delete", "workspaces", "kaito.sh", user=object_id)
        assert not _review(kube_cluster, core_api, namespace, "get", "secrets", user=object_id)
        assert not _review(kube_cluster, core_api, target, "list", "configmaps", user=object_id)
        assert not _review(kube_cluster, core_api, target, "get", "secrets", user=str(uuid.uuid4()))
        assert _review(kube_cluster, core_api, f"{target}-keys", "create", "secrets", user=object_id)
        assert not _review(kube_cluster, core_api, f"{target}-keys", "list", "secrets", user=object_id)
    finally:
        for name in (target, f"{target}-keys"):
            kubectl(kube_cluster, "delete", "namespace", name, "--wait=false", check=False)


def test_the_entra_placeholder_is_documented():
    readme = (INFRA / "README.md").read_text()
    assert ENTRA_PLACEHOLDER in readme and "managed_identity_principal_id" in readme
