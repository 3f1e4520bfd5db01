# What the app's managed identity may do, each role on the narrowest scope that works.
#
# Kubernetes is deliberately absent here: the identity gets no Azure role on the AKS cluster (no
# "Azure Kubernetes Service RBAC Writer"/"Cluster Admin"). It authenticates to the API server with
# an Entra ID token, and what it may do there is Kubernetes RBAC: infra/kubernetes/role.yaml bound
# to its object id (principal_id) by infra/kubernetes/rolebinding-entra.yaml.

locals {
  principal_id = azurerm_user_assigned_identity.app.principal_id
}

# --- The Functions host's storage (AzureWebJobsStorage with the identity) ---------------------------
# What the host needs for identity-based AzureWebJobsStorage: blobs (timer schedule monitor and
# singleton leases, keys, the deployment package), queues and tables (host internals). Scoped to
# this one account, which holds nothing else.

resource "azurerm_role_assignment" "storage_blob_data_owner" {
  scope                = azurerm_storage_account.functions.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "storage_queue_data_contributor" {
  scope                = azurerm_storage_account.functions.id
  role_definition_name = "Storage Queue Data Contributor"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "storage_table_data_contributor" {
  scope                = azurerm_storage_account.functions.id
  role_definition_name = "Storage Table Data Contributor"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}

# --- Application Insights: send telemetry with Entra ID (local authentication is disabled) -------------

resource "azurerm_role_assignment" "monitoring_metrics_publisher" {
  scope                = azurerm_application_insights.app.id
  role_definition_name = "Monitoring Metrics Publisher"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}

# --- Key Vault: read secret values for the Key Vault references (vault in RBAC mode) ----------------

resource "azurerm_role_assignment" "key_vault_secrets_user" {
  scope                = var.key_vault_id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}

# --- API Management: subscriptions per request, products and policies per team ----------------------
# "API Management Service Contributor" on the one instance: the app writes subscriptions, products,
# product policies and product-API links. The narrower built-in APIM roles are read-only
# ("Reader") or cannot manage subscriptions and products ("Operator" manages the service, not its
# entities), so this is the least that works.

resource "azurerm_role_assignment" "apim_service_contributor" {
  count                = local.apim_enabled ? 1 : 0
  scope                = local.apim_id
  role_definition_name = "API Management Service Contributor"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}

# --- Communication Services: send email with Entra ID -------------------------------------------------
# There is no built-in "email sender" role. The narrowest built-in role that lets an Entra ID
# identity send is "Communication and Email Service Owner" (reported in Microsoft Q&A; custom roles
# are reported not to be honoured by the Communication Services data plane). It is still narrower
# than "Contributor": limited to Microsoft.Communication actions, and scoped to the one
# Communication Service, not its resource group or subscription. Revisit if Azure adds a sender role.

resource "azurerm_role_assignment" "acs_email_sender" {
  count                = local.acs_enabled ? 1 : 0
  scope                = var.acs_id
  role_definition_name = "Communication and Email Service Owner"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}

# --- AKS: no Azure role needed --------------------------------------------------------------------------
# The app asks Entra ID for a token for the AKS server application (6dae42f8-...) and the API
# server validates it; Kubernetes RBAC then decides. "Azure Kubernetes Service Cluster User Role"
# only allows listClusterUserCredential (downloading a kubeconfig), which the app never does: the
# API server URL and CA come from app settings. Off unless aks_grant_cluster_user_role is set.

resource "azurerm_role_assignment" "aks_cluster_user" {
  count                = var.aks_grant_cluster_user_role ? 1 : 0
  scope                = var.aks_cluster_id
  role_definition_name = "Azure Kubernetes Service Cluster User Role"
  principal_id         = local.principal_id
  principal_type       = "ServicePrincipal"
}
