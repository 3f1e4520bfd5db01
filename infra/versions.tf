# Provider versions and configuration.
#
# azurerm 4.x manages everything it has a resource for; azapi fills the gaps where azurerm has none
# (the FTP basic-auth policy of the site, and Key Vault secret metadata without reading the value).
terraform {
  required_version = ">= 1.6.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.30+: azurerm_function_app_flex_consumption with https_only and
      # webdeploy_publish_basic_authentication_enabled.
      version = "~> 4.30"
    }
    azapi = {
      source  = "Azure/azapi"
      version = "~> 2.4"
    }
  }
}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
  # The storage account has shared keys disabled: the provider must use Entra ID for data-plane calls.
  storage_use_azuread = true
}

provider "azapi" {
  subscription_id = var.subscription_id
}
