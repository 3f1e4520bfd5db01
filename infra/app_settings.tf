# The app settings: every setting the app reads (shared/settings.py; README.md "Settings"), plus
# the Functions host's own. Secrets are Key Vault references, resolved by App Service with the
# user-assigned identity; nothing secret is in this file, in the plan or in the state.
#
# Not set on purpose: FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION and WEBSITE_RUN_FROM_PACKAGE
# (Flex Consumption takes the runtime from runtime_name/runtime_version and rejects them), and
# APPLICATIONINSIGHTS_CONNECTION_STRING (written by the provider from site_config).

locals {
  apim_enabled         = var.apim_name != null
  apim_subscription_id = coalesce(var.apim_subscription_id, var.subscription_id)
  apim_id = local.apim_enabled ? join("/", [
    "/subscriptions", local.apim_subscription_id,
    "resourceGroups", var.apim_resource_group_name,
    "providers/Microsoft.ApiManagement/service", var.apim_name,
  ]) : null
  acs_enabled = var.acs_id != null

  # App setting -> Key Vault secret name (null: the setting stays empty, i.e. unset).
  secret_names = {
    LITELLM_API_KEY         = var.key_vault_secret_names.litellm_api_key
    ADMIN_PASSWORD          = var.key_vault_secret_names.admin_password
    ADMIN_API_KEY           = var.key_vault_secret_names.admin_api_key
    SMTP_PASSWORD           = var.key_vault_secret_names.smtp_password
    APPROVAL_WEBHOOK_SECRET = var.key_vault_secret_names.approval_webhook_secret
    LINK_SIGNING_KEY        = var.key_vault_secret_names.link_signing_key
  }
  configured_secrets = { for setting, secret in local.secret_names : setting => secret if secret != null && secret != "" }

  # Versionless references: a new secret version is picked up without a deployment (within 24 h,
  # or at once on a restart).
  secret_references = {
    for setting, secret in local.configured_secrets :
    setting => "@Microsoft.KeyVault(SecretUri=${data.azapi_resource.key_vault_secret[setting].output.properties.secretUri}/)"
  }
  secret_app_settings = { for setting in keys(local.secret_names) : setting => lookup(local.secret_references, setting, "") }

  plain_app_settings = {
    # Functions host storage with the managed identity: no connection string, no account key.
    AzureWebJobsStorage__accountName = azurerm_storage_account.functions.name
    AzureWebJobsStorage__credential  = "managedidentity"
    AzureWebJobsStorage__clientId    = azurerm_user_assigned_identity.app.client_id
    # Application Insights ingestion with the managed identity (local authentication is off).
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING = "ClientId=${azurerm_user_assigned_identity.app.client_id};Authorization=AAD"
    # OpenTelemetry (host.json telemetryMode): the worker hands each invocation's trace context
    # to the app, whose azure-monitor-opentelemetry spans then nest in the host's (shared/telemetry.py).
    PYTHON_ENABLE_OPENTELEMETRY = "true"

    # The request store: AKS with Entra ID, token from the managed identity, nothing stored.
    KUBERNETES_AUTH            = "entra"
    KUBERNETES_SERVER          = var.aks_api_server_url
    KUBERNETES_CA_DATA         = var.aks_ca_certificate
    KUBERNETES_NAMESPACE       = var.kubernetes_namespace
    TEAM_KEYS_NAMESPACE        = var.team_keys_namespace
    KUBERNETES_TIMEOUT_SECONDS = var.kubernetes_timeout_seconds
    KUBECONFIG                 = "" # not used with KUBERNETES_AUTH=entra

    # Finished requests move here, out of what the timer's sweeps read (infra/kubernetes/namespace.yaml).
    KUBERNETES_ARCHIVE_NAMESPACE = "${var.kubernetes_namespace}-archive"

    # The two schedules are read by the Functions host (%APPROVAL_SCHEDULE%, %TEAM_SCHEDULE%).
    CONFIG_FILE       = var.config_file
    APPROVAL_SCHEDULE = var.approval_schedule
    TEAM_SCHEDULE     = var.team_schedule
    CA_BUNDLE         = var.ca_bundle
    LOG_LEVEL         = var.log_level

    PROCESSOR_CONCURRENCY         = var.processor.concurrency
    PROCESSOR_TIME_BUDGET_SECONDS = var.processor.time_budget_seconds
    PROCESSOR_MAX_ATTEMPTS        = var.processor.max_attempts
    PROCESSOR_LEASE_SECONDS       = var.processor.lease_seconds
    PROCESSOR_BACKOFF_SECONDS     = var.processor.backoff_seconds
    TEAM_TIME_BUDGET_SECONDS      = var.team_time_budget_seconds

    # The Function App's CORS list (main.tf) again, for the app: an admin change from another
    # Origin is refused (shared/http/writes.py).
    CORS_ALLOWED_ORIGINS = join(",", var.cors_allowed_origins)

    LITELLM_BASE_URL        = var.litellm_base_url
    LITELLM_GATEWAY_URL     = var.litellm_gateway_url
    LITELLM_TIMEOUT_SECONDS = var.litellm_timeout_seconds

    # The managed identity for APIM, ACS and the AKS token (DefaultAzureCredential).
    AZURE_CLIENT_ID      = azurerm_user_assigned_identity.app.client_id
    ARM_ENDPOINT         = var.arm_endpoint
    APIM_SUBSCRIPTION_ID = local.apim_enabled ? local.apim_subscription_id : ""
    APIM_RESOURCE_GROUP  = local.apim_enabled ? var.apim_resource_group_name : ""
    APIM_SERVICE_NAME    = local.apim_enabled ? var.apim_name : ""
    APIM_GATEWAY_URL     = local.apim_enabled ? coalesce(var.apim_gateway_url, "https://${var.apim_name}.azure-api.net") : ""
    APIM_TEAM_API_IDS    = join(",", var.apim_team_api_ids)

    # Email: ACS with the managed identity when configured, else SMTP, else the outbox folder.
    ACS_ENDPOINT          = local.acs_enabled ? var.acs_endpoint : ""
    ACS_SENDER_ADDRESS    = local.acs_enabled ? var.acs_sender_address : ""
    ACS_CONNECTION_STRING = "" # never: a connection string carries the access key; the endpoint + identity is used
    EMAIL_OUTBOX_DIR      = var.email_outbox_dir
    SMTP_HOST             = var.smtp_host
    SMTP_PORT             = var.smtp_port
    SMTP_USER             = var.smtp_user
    SMTP_FROM             = var.smtp_from
    SMTP_USE_TLS          = var.smtp_use_tls
    SMTP_VERIFY_TLS       = var.smtp_verify_tls
    SMTP_TIMEOUT_SECONDS  = var.smtp_timeout_seconds

    ADMIN_USERNAME                  = var.admin_username
    ADMIN_ROLE                      = var.admin_role
    ADMIN_LOGIN_ATTEMPTS_PER_MINUTE = var.admin_login_attempts_per_minute
    # Trust X-MS-CLIENT-PRINCIPAL only where App Service authentication sets it and strips forged ones.
    ADMIN_TRUST_APP_SERVICE_AUTH = var.app_service_auth.enabled ? "true" : "false"

    # Links in emails: signed with the LINK_SIGNING_KEY secret (required on Azure), pointing at
    # PUBLIC_BASE_URL (empty: https://<WEBSITE_HOSTNAME>, the default host name).
    PUBLIC_BASE_URL = var.public_base_url
    LINK_TTL_DAYS   = var.link_ttl_days
  }

  app_settings = merge(local.plain_app_settings, local.secret_app_settings)
}

# Metadata of each configured secret, through Resource Manager: it fails the plan when a secret is
# missing (an unresolved reference would otherwise become the setting's literal value) and gives
# the vault's own secret URI (right in every cloud). The secret's value is never read.
data "azapi_resource" "key_vault_secret" {
  for_each  = local.configured_secrets
  type      = "Microsoft.KeyVault/vaults/secrets@2023-07-01"
  parent_id = var.key_vault_id
  name      = each.value

  response_export_values = ["properties.secretUri"]
}
