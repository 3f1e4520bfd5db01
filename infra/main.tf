# The function app on a Flex Consumption plan, its identity, storage and monitoring.
#
# One user-assigned managed identity does everything: the Functions host reaches its storage with it,
# App Service resolves Key Vault references with it, and the app calls APIM, ACS and the AKS API
# server with it (AZURE_CLIENT_ID). No key, password or connection string of an Azure resource is
# stored anywhere: the storage account does not even accept its keys.

resource "azurerm_resource_group" "app" {
  name     = var.resource_group_name
  location = var.location
  tags     = var.tags
}

resource "azurerm_user_assigned_identity" "app" {
  name                = "id-${var.function_app_name}"
  resource_group_name = azurerm_resource_group.app.name
  location            = azurerm_resource_group.app.location
  tags                = var.tags
}

# --- Monitoring -----------------------------------------------------------------------------------

resource "azurerm_log_analytics_workspace" "app" {
  name                = "log-${var.function_app_name}"
  resource_group_name = azurerm_resource_group.app.name
  location            = azurerm_resource_group.app.location
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = var.tags
}

resource "azurerm_application_insights" "app" {
  name                = "appi-${var.function_app_name}"
  resource_group_name = azurerm_resource_group.app.name
  location            = azurerm_resource_group.app.location
  workspace_id        = azurerm_log_analytics_workspace.app.id
  application_type    = "web"
  # Telemetry is accepted only with an Entra ID token (the identity has Monitoring Metrics Publisher;
  # APPLICATIONINSIGHTS_AUTHENTICATION_STRING tells the host to use it), so the instrumentation key
  # in the connection string is not a credential.
  local_authentication_disabled = true
  tags                          = var.tags
}

# --- Storage: AzureWebJobsStorage and the deployment package, identity only -----------------------

resource "azurerm_storage_account" "functions" {
  #checkov:skip=CKV_AZURE_59:The Flex Consumption app reaches its storage over the public endpoint (no VNet integration in this deployment); shared keys are disabled, so only Entra ID principals with a data role get in.
  #checkov:skip=CKV_AZURE_33:Queue service logging is a classic, key-based diagnostic; the account's activity is visible in Azure Monitor metrics, and it holds only host state and the package.
  #checkov:skip=CKV2_AZURE_1:Customer-managed keys add a Key Vault key lifecycle for data that is only Functions host state (timer leases) and the deployed package; Microsoft-managed encryption is used.
  #checkov:skip=CKV2_AZURE_33:No private endpoint: the Flex Consumption app is not VNet-integrated in this deployment (see CKV_AZURE_59).
  #checkov:skip=CKV_AZURE_206:Replication is the storage_replication_type variable (ZRS by default); the account holds no business data, the request store is Kubernetes.
  name                            = var.storage_account_name
  resource_group_name             = azurerm_resource_group.app.name
  location                        = azurerm_resource_group.app.location
  account_kind                    = "StorageV2"
  account_tier                    = "Standard"
  account_replication_type        = var.storage_replication_type
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  shared_access_key_enabled       = false # no account keys: AzureWebJobsStorage uses the managed identity
  default_to_oauth_authentication = true
  allow_nested_items_to_be_public = false
  local_user_enabled              = false
  public_network_access_enabled   = true

  sas_policy {
    expiration_period = "00.01:00:00"
    expiration_action = "Log"
  }

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  tags = var.tags
}

resource "azurerm_storage_container" "deployment" {
  #checkov:skip=CKV2_AZURE_21:Blob read logging would need classic, key-based storage analytics; deployments are recorded in the function app's activity log.
  name                  = var.deployment_container_name
  storage_account_id    = azurerm_storage_account.functions.id
  container_access_type = "private"
}

# --- The function app --------------------------------------------------------------------------------

resource "azurerm_service_plan" "app" {
  #checkov:skip=CKV_AZURE_212:Flex Consumption has no fixed worker count to raise: instances are added per demand (maximum_instance_count), so a failed instance is replaced by the platform.
  #checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption is regional and not offered by every region; the app keeps no state of its own (requests live in Kubernetes, every timer step is idempotent), so a zone outage delays work, never loses it.
  name                = "asp-${var.function_app_name}"
  resource_group_name = azurerm_resource_group.app.name
  location            = azurerm_resource_group.app.location
  os_type             = "Linux"
  sku_name            = "FC1" # Flex Consumption
  tags                = var.tags
}

resource "azurerm_function_app_flex_consumption" "app" {
  name                = var.function_app_name
  resource_group_name = azurerm_resource_group.app.name
  location            = azurerm_resource_group.app.location
  service_plan_id     = azurerm_service_plan.app.id

  runtime_name           = "python"
  runtime_version        = "3.11"
  maximum_instance_count = var.maximum_instance_count
  instance_memory_in_mb  = var.instance_memory_in_mb

  # The deployment package lives in a blob container, read with the user-assigned identity.
  storage_container_type            = "blobContainer"
  storage_container_endpoint        = "${azurerm_storage_account.functions.primary_blob_endpoint}${azurerm_storage_container.deployment.name}"
  storage_authentication_type       = "UserAssignedIdentity"
  storage_user_assigned_identity_id = azurerm_user_assigned_identity.app.id

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.app.id]
  }
  # @Microsoft.KeyVault(...) app settings are resolved with this identity (Key Vault Secrets User).
  key_vault_reference_identity_id = azurerm_user_assigned_identity.app.id

  https_only                    = true
  public_network_access_enabled = true # the requester frontend and the admin panel call it from browsers
  # No publishing with user names and passwords: deploy with Entra ID (az CLI, Core Tools, CI with OIDC).
  webdeploy_publish_basic_authentication_enabled = false

  app_settings = local.app_settings

  site_config {
    minimum_tls_version                    = "1.2"
    scm_minimum_tls_version                = "1.2"
    http2_enabled                          = true
    remote_debugging_enabled               = false
    application_insights_connection_string = azurerm_application_insights.app.connection_string

    cors {
      allowed_origins     = var.cors_allowed_origins
      support_credentials = false
    }
  }

  # App Service authentication: only for admins signing in with Entra ID. Anonymous requests pass
  # through (the requester API is public, and the app authorizes the admin routes itself); the
  # platform then sets X-MS-CLIENT-PRINCIPAL and strips forged ones, which is why
  # ADMIN_TRUST_APP_SERVICE_AUTH follows var.app_service_auth.enabled.
  dynamic "auth_settings_v2" {
    for_each = var.app_service_auth.enabled ? [var.app_service_auth] : []
    content {
      auth_enabled           = true
      require_authentication = false
      unauthenticated_action = "AllowAnonymous"
      default_provider       = "azureactivedirectory"

      active_directory_v2 {
        client_id            = auth_settings_v2.value.client_id
        tenant_auth_endpoint = "https://login.microsoftonline.com/${auth_settings_v2.value.tenant_id}/v2.0/"
        allowed_audiences    = auth_settings_v2.value.allowed_audiences
      }

      login {
        token_store_enabled = false
      }
    }
  }

  tags = var.tags

  # The host needs its storage roles, and Key Vault references their role, before it starts.
  depends_on = [
    azurerm_role_assignment.storage_blob_data_owner,
    azurerm_role_assignment.storage_queue_data_contributor,
    azurerm_role_assignment.storage_table_data_contributor,
    azurerm_role_assignment.key_vault_secrets_user,
    azurerm_role_assignment.monitoring_metrics_publisher,
  ]
}

# FTP(S): Flex Consumption has no FTP endpoint (the platform rejects an ftpsState in its site config),
# and the FTP basic-auth publishing policy is switched off as well, so no FTP credential exists even
# if the platform ever offers one. azurerm has no argument for it on Flex Consumption: azapi sets it.
resource "azapi_update_resource" "ftp_basic_auth_disabled" {
  type      = "Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01"
  name      = "ftp"
  parent_id = azurerm_function_app_flex_consumption.app.id
  body = {
    properties = {
      allow = false
    }
  }
}
