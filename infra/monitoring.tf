# Watching the app: an Azure Monitor workbook over Application Insights (the OpenTelemetry the app
# exports, shared/telemetry.py: customMetrics, traces with customDimensions.request_id,
# dependencies) and four log alert rules. README "Telemetry" lists the metrics.
#
# The rules run KQL over the Application Insights resource every 5 minutes; with
# var.alert_action_group_id they notify that action group, without it they only show as fired
# alerts in the Portal. skip_query_validation: the custom metrics exist only once the app has
# reported them, so a first apply must not fail on a table that is still empty.

locals {
  alert_action_groups = var.alert_action_group_id == null ? [] : [var.alert_action_group_id]
  alerts = {
    backlog-growing = {
      display_name = "LLM key requestor: due backlog growing"
      description  = "More records are due at the start of a tick than 15 minutes earlier, and at least alert_backlog_threshold: ticks do not keep up (backend down, budget too small)."
      severity     = 2
      window       = "PT30M"
      query        = <<-KQL
        customMetrics
        | where name == "llmkr.request.due"
        | summarize earlier = avgif(value, timestamp < ago(15m)), recent = avgif(value, timestamp >= ago(15m))
        | where recent > earlier and recent >= ${var.alert_backlog_threshold}
      KQL
    }
    requests-failed = {
      display_name = "LLM key requestor: requests failed"
      description  = "A key request ended failed (a step gave up or was refused for good); traces with customDimensions.request_id tell its story."
      severity     = 2
      window       = "PT15M"
      query        = <<-KQL
        traces
        | where severityLevel >= 3 and message startswith "request " and message has " failed at step "
        | project timestamp, message, request_id = tostring(customDimensions.request_id)
      KQL
    }
    tick-over-budget = {
      display_name = "LLM key requestor: ticks over their time budget"
      description  = "A timer tick used more than its time budget (PROCESSOR_TIME_BUDGET_SECONDS / TEAM_TIME_BUDGET_SECONDS): work is left for later ticks."
      severity     = 3
      window       = "PT15M"
      query        = <<-KQL
        customMetrics
        | where name == "llmkr.tick.budget.utilization" and value > 1
        | project timestamp, value, kind = tostring(customDimensions["llmkr.tick.kind"])
      KQL
    }
    store-unavailable = {
      display_name = "LLM key requestor: request store unavailable"
      description  = "The Kubernetes API (the request store) did not answer: health 503, intake 503, or a tick that could not record progress."
      severity     = 1
      window       = "PT15M"
      query        = <<-KQL
        traces
        | where message has "store unavailable" or message has "request store is unavailable" or message has "could not record progress"
        | project timestamp, message
      KQL
    }
  }
}

resource "azurerm_application_insights_workbook" "operations" {
  # A workbook's name is a GUID; derived from the app's name so it stays the same across applies.
  name                = uuidv5("url", "https://llm-key-requestor/${var.function_app_name}/workbook/operations")
  resource_group_name = azurerm_resource_group.app.name
  location            = azurerm_resource_group.app.location
  display_name        = "LLM key requestor (${var.function_app_name})"
  source_id           = lower(azurerm_application_insights.app.id)
  category            = "workbook"
  data_json           = file("${path.module}/workbook.json")
  tags                = var.tags
}

resource "azurerm_monitor_scheduled_query_rules_alert_v2" "app" {
  for_each = local.alerts

  name                    = "alert-${var.function_app_name}-${each.key}"
  resource_group_name     = azurerm_resource_group.app.name
  location                = azurerm_resource_group.app.location
  display_name            = each.value.display_name
  description             = each.value.description
  severity                = each.value.severity
  scopes                  = [azurerm_application_insights.app.id]
  evaluation_frequency    = "PT5M"
  window_duration         = each.value.window
  enabled                 = true
  auto_mitigation_enabled = true
  skip_query_validation   = true
  tags                    = var.tags

  criteria {
    query                   = each.value.query
    time_aggregation_method = "Count"
    operator                = "GreaterThan"
    threshold               = 0

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  dynamic "action" {
    for_each = length(local.alert_action_groups) > 0 ? [1] : []
    content {
      action_groups = local.alert_action_groups
    }
  }
}
