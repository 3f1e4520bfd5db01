# Inputs. terraform.tfvars.example shows a filled-in set; README.md (top level) explains every app
# setting these end up in.

# --- Where ----------------------------------------------------------------------------------------

variable "subscription_id" {
  description = "Subscription that holds the function app and its resource group."
  type        = string
}

variable "location" {
  description = "Azure region for the new resources; it must offer Flex Consumption (az functionapp list-flexconsumption-locations)."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group to create for the function app, its storage, identity and monitoring."
  type        = string
}

variable "tags" {
  description = "Tags for every resource created here."
  type        = map(string)
  default     = {}
}

# --- The function app -------------------------------------------------------------------------------

variable "function_app_name" {
  description = "Function app name: https://<name>.azurewebsites.net. At most 32 characters (longer names can collide in host ids)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$", var.function_app_name))
    error_message = "function_app_name: 2-32 lower-case letters, digits and hyphens, not starting or ending with a hyphen."
  }
}

variable "storage_account_name" {
  description = "Storage account for the Functions host (AzureWebJobsStorage) and the deployment package; globally unique."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name: 3-24 lower-case letters and digits."
  }
}

variable "storage_replication_type" {
  description = "Replication of the host's storage account (LRS, ZRS, GRS, GZRS, ...). It holds only host state and the package."
  type        = string
  default     = "ZRS"
}

variable "deployment_container_name" {
  description = "Blob container that holds the deployed package (Flex Consumption deployment storage)."
  type        = string
  default     = "app-package"
}

variable "maximum_instance_count" {
  description = "Most instances Flex Consumption scales out to (40-1000)."
  type        = number
  default     = 40
}

variable "instance_memory_in_mb" {
  description = "Instance memory: 2048 or 4096."
  type        = number
  default     = 2048

  validation {
    condition     = contains([2048, 4096], var.instance_memory_in_mb)
    error_message = "instance_memory_in_mb: 2048 or 4096."
  }
}

variable "log_retention_days" {
  description = "Log Analytics retention for the app's logs and telemetry."
  type        = number
  default     = 30
}

variable "cors_allowed_origins" {
  description = "Origins of the requester frontend and the admin panel, e.g. https://keys.example.com. No wildcard."
  type        = list(string)

  validation {
    condition = alltrue([
      for origin in var.cors_allowed_origins :
      can(regex("^https://[^/*]+$", origin)) || can(regex("^http://(localhost|127\\.0\\.0\\.1)(:[0-9]+)?$", origin))
    ])
    error_message = "cors_allowed_origins: https origins without a path or wildcard (http only for localhost)."
  }
}

variable "app_service_auth" {
  description = <<-EOT
    App Service authentication (Entra ID) in front of the app, for admins who sign in with Entra ID and
    carry the ADMIN_ROLE app role. Anonymous requests still pass (the requester API is public; the app
    checks the admin routes itself). Only when enabled does the app trust X-MS-CLIENT-PRINCIPAL
    (ADMIN_TRUST_APP_SERVICE_AUTH), because only then does the platform set it and strip forged ones.
  EOT
  type = object({
    enabled           = bool
    client_id         = optional(string)
    tenant_id         = optional(string)
    allowed_audiences = optional(list(string), [])
  })
  default = { enabled = false }
}

# --- Existing Azure API Management (optional) --------------------------------------------------------

variable "apim_name" {
  description = "Existing API Management instance the app creates subscriptions and team products in; null: no APIM backend."
  type        = string
  default     = null
}

variable "apim_resource_group_name" {
  description = "Resource group of the API Management instance."
  type        = string
  default     = null
}

variable "apim_subscription_id" {
  description = "Subscription of the API Management instance; null: subscription_id."
  type        = string
  default     = null
}

variable "apim_gateway_url" {
  description = "Gateway URL shown to users in approval emails; null: https://<apim_name>.azure-api.net."
  type        = string
  default     = null
}

variable "apim_team_api_ids" {
  description = "APIM API ids every team product is linked to (APIM_TEAM_API_IDS), e.g. [\"azure-openai\"]."
  type        = list(string)
  default     = []
}

variable "arm_endpoint" {
  description = "Azure Resource Manager endpoint (sovereign clouds differ)."
  type        = string
  default     = "https://management.azure.com"
}

# --- Existing Azure Communication Services (optional; else SMTP) ------------------------------------

variable "acs_id" {
  description = "Resource id of the Communication Service that sends email; null: no ACS (SMTP or nothing)."
  type        = string
  default     = null
}

variable "acs_endpoint" {
  description = "Endpoint of that Communication Service, https://<name>.<geo>.communication.azure.com."
  type        = string
  default     = ""
}

variable "acs_sender_address" {
  description = "Verified sender address of the Email Communication Service domain, e.g. DoNotReply@<domain>."
  type        = string
  default     = ""
}

# --- SMTP (used when ACS is not configured) ----------------------------------------------------------

variable "smtp_host" {
  description = "SMTP relay; empty: no SMTP."
  type        = string
  default     = ""
}

variable "smtp_port" {
  description = "SMTP port."
  type        = number
  default     = 587
}

variable "smtp_user" {
  description = "SMTP login; its password is the Key Vault secret key_vault_secret_names.smtp_password."
  type        = string
  default     = ""
}

variable "smtp_from" {
  description = "Sender address for SMTP (and for ACS when acs_sender_address is empty)."
  type        = string
  default     = "noreply@example.com"
}

variable "smtp_use_tls" {
  description = "starttls, tls (implicit, port 465) or none."
  type        = string
  default     = "starttls"

  validation {
    condition     = contains(["starttls", "tls", "none"], var.smtp_use_tls)
    error_message = "smtp_use_tls: starttls, tls or none."
  }
}

variable "smtp_verify_tls" {
  description = "Verify the relay's certificate."
  type        = bool
  default     = true
}

variable "smtp_timeout_seconds" {
  description = "Timeout of each SMTP exchange."
  type        = number
  default     = 15
}

variable "email_outbox_dir" {
  description = "Where emails are written as .eml when neither ACS nor SMTP is configured (/tmp is the writable place on Flex Consumption)."
  type        = string
  default     = "/tmp/llm-key-requestor/outbox"
}

# --- Existing AKS cluster (the request store) ---------------------------------------------------------

variable "aks_cluster_id" {
  description = "Resource id of the AKS cluster (Entra ID integration enabled) whose namespace holds the request Secrets."
  type        = string
}

variable "aks_api_server_url" {
  description = "The cluster's API server URL, https://<fqdn>:443 (az aks show --query fqdn / privateFqdn)."
  type        = string

  validation {
    condition     = can(regex("^https://", var.aks_api_server_url))
    error_message = "aks_api_server_url: an https URL."
  }
}

variable "aks_ca_certificate" {
  description = "The cluster's CA certificate, base64 PEM: certificate-authority-data of its kubeconfig. Not a secret."
  type        = string
}

variable "aks_grant_cluster_user_role" {
  description = <<-EOT
    Also grant "Azure Kubernetes Service Cluster User Role" on the cluster. The app does not need it:
    that role only allows downloading a kubeconfig (listClusterUserCredential), and the app gets the
    server URL and CA from its settings and its token straight from Entra ID. Turn it on only if
    you want to run `az aks get-credentials` as this identity.
  EOT
  type        = bool
  default     = false
}

variable "kubernetes_namespace" {
  description = "Namespace of the request Secrets (infra/kubernetes/namespace.yaml)."
  type        = string
  default     = "llm-key-requestor"
}

variable "team_keys_namespace" {
  description = "Namespace of the teams' {team}-api-key Secrets, apart from the request Secrets (infra/kubernetes/namespace.yaml; teams get read access there, docs/teams.md)."
  type        = string
  default     = "developer-requests"
}

variable "kubernetes_timeout_seconds" {
  description = "Timeout of each Kubernetes API call."
  type        = number
  default     = 10
}

# --- Existing Key Vault (RBAC mode) and the secrets the app reads from it --------------------------------

variable "key_vault_id" {
  description = "Resource id of an existing Key Vault that uses the Azure RBAC permission model."
  type        = string
}

variable "key_vault_secret_names" {
  description = <<-EOT
    Names of the Key Vault secrets behind the secret app settings. Null (the default for the optional
    ones) leaves the setting empty, i.e. unset. A named secret must exist before `terraform apply`
    (the plan reads its metadata, never its value), so an app setting never holds an unresolved
    reference in place of a secret.
  EOT
  type = object({
    litellm_api_key         = optional(string, "litellm-api-key")
    admin_password          = optional(string)
    admin_api_key           = optional(string)
    smtp_password           = optional(string)
    approval_webhook_secret = optional(string)
    link_signing_key        = optional(string, "link-signing-key")
  })
  default = {}
}

# --- LiteLLM --------------------------------------------------------------------------------------------

variable "litellm_base_url" {
  description = "LiteLLM proxy the app calls to create and revoke virtual keys (its master key is the litellm_api_key secret)."
  type        = string
}

variable "litellm_gateway_url" {
  description = "The URL users call, shown in approval emails; empty: litellm_base_url."
  type        = string
  default     = ""
}

variable "litellm_timeout_seconds" {
  description = "Timeout of each LiteLLM call."
  type        = number
  default     = 10
}

# --- Behaviour -----------------------------------------------------------------------------------------

variable "approval_schedule" {
  description = "NCRONTAB (seconds first) of the approval timer (approval_timer: the requests)."
  type        = string
  default     = "*/30 * * * * *"
}

variable "team_schedule" {
  description = "NCRONTAB (seconds first) of the team timer (team_timer: team access, docs/teams.md)."
  type        = string
  default     = "*/30 * * * * *"
}

variable "team_time_budget_seconds" {
  description = "TEAM_TIME_BUDGET_SECONDS: a team tick takes no new work after this; with the longest step it must fit in host.json functionTimeout (the app refuses to start otherwise)."
  type        = number
  default     = 60
}

variable "processor" {
  description = "The approval processor's bounds (PROCESSOR_* settings); time_budget_seconds plus the longest step must fit in host.json functionTimeout, and lease_seconds must outlast the longest step (the app refuses to start otherwise)."
  type = object({
    concurrency         = optional(number, 8)
    time_budget_seconds = optional(number, 180)
    max_attempts        = optional(number, 6)
    lease_seconds       = optional(number, 120)
    backoff_seconds     = optional(number, 10)
  })
  default = {}
}

variable "admin_username" {
  description = "Basic auth user name of the admin panel (its password is the admin_password secret; none: no Basic auth)."
  type        = string
  default     = "admin"
}

variable "admin_role" {
  description = "Entra ID app role that makes a signed-in user an admin (with app_service_auth)."
  type        = string
  default     = "KeyRequestor.Admin"
}

variable "admin_login_attempts_per_minute" {
  description = "Failed Basic logins allowed per client and minute."
  type        = number
  default     = 10
}

variable "public_base_url" {
  description = "The app's public URL in the links of emails (renew, rotate, revoke), e.g. a custom domain; empty: https://<default host name>."
  type        = string
  default     = ""

  validation {
    condition     = var.public_base_url == "" || can(regex("^https://[^/?#]+(/[^?#]*)?$", var.public_base_url))
    error_message = "public_base_url: empty, or an https:// URL without query or fragment."
  }
}

variable "link_ttl_days" {
  description = "How many days a link in an email works (1-365)."
  type        = number
  default     = 30

  validation {
    condition     = var.link_ttl_days >= 1 && var.link_ttl_days <= 365
    error_message = "link_ttl_days: 1 to 365."
  }
}

variable "config_file" {
  description = "config.yaml path; relative paths are taken from the deployed app's root."
  type        = string
  default     = "config.yaml"
}

variable "ca_bundle" {
  description = "PEM file (in the deployed package) of extra CAs for outbound calls; empty: none."
  type        = string
  default     = ""
}

variable "log_level" {
  description = "DEBUG, INFO, WARNING or ERROR."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level: DEBUG, INFO, WARNING or ERROR."
  }
}

variable "alert_action_group_id" {
  description = "Resource id of the Azure Monitor action group the alert rules notify (infra/monitoring.tf); null: the alerts only show in the Portal."
  type        = string
  default     = null
}

variable "alert_backlog_threshold" {
  description = "Due records at the start of a tick from which a growing backlog alerts."
  type        = number
  default     = 50

  validation {
    condition     = var.alert_backlog_threshold >= 1
    error_message = "alert_backlog_threshold: at least 1."
  }
}
