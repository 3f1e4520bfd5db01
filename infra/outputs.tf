# What README.md and infra/README.md need after `terraform apply`.

output "function_app_name" {
  description = "Name of the function app (func azure functionapp publish <name>)."
  value       = azurerm_function_app_flex_consumption.app.name
}

output "function_app_default_hostname" {
  description = "Its host name: VITE_API_URL and VITE_ADMIN_API_URL are https://<this>."
  value       = azurerm_function_app_flex_consumption.app.default_hostname
}

output "function_app_url" {
  description = "Base URL of the app, for the frontend and the admin panel."
  value       = "https://${azurerm_function_app_flex_consumption.app.default_hostname}"
}

output "resource_group_name" {
  description = "Resource group of the app."
  value       = azurerm_resource_group.app.name
}

output "managed_identity_client_id" {
  description = "Client id of the app's user-assigned identity (AZURE_CLIENT_ID)."
  value       = azurerm_user_assigned_identity.app.client_id
}

output "managed_identity_principal_id" {
  description = "Object (principal) id of the identity: the User name in infra/kubernetes/rolebinding-entra.yaml."
  value       = azurerm_user_assigned_identity.app.principal_id
}

output "application_insights_name" {
  description = "Application Insights resource to watch the app in the Portal."
  value       = azurerm_application_insights.app.name
}

output "storage_account_name" {
  description = "The host's storage account (identity access only)."
  value       = azurerm_storage_account.functions.name
}
