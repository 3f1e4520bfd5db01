"""The functions as the Functions host indexes them: names, routes, methods, auth levels, and
what importing function_app costs a cold start."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

EXPECTED_HTTP = {
    "health": ("health", ["GET"], "ANONYMOUS"),
    "list_models": ("api/models", ["GET"], "ANONYMOUS"),
    "list_featured_models": ("api/featured-models", ["GET"], "ANONYMOUS"),
    "request_key": ("api/request-key", ["POST"], "ANONYMOUS"),
    "request_status": ("api/requests/{request_id}", ["GET"], "ANONYMOUS"),
    "openapi": ("api/openapi.json", ["GET"], "ANONYMOUS"),
}


def test_each_endpoint_is_its_own_http_function(functions):
    for name, (route, methods, auth) in EXPECTED_HTTP.items():
        trigger = functions[name].trigger
        assert trigger["type"] == "httpTrigger", name
        assert (trigger["route"], trigger["methods"], trigger["authLevel"]) == (route, methods, auth), name


def test_timers_each_with_its_schedule_and_the_local_host_runs_them_all(function_app_module, functions):
    from local_host import TimerScheduler

    timers = {name: entry.trigger["schedule"] for name, entry in functions.items()
              if entry.trigger_type == "timerTrigger"}
    assert timers == {"approval_timer": "%APPROVAL_SCHEDULE%", "team_timer": "%TEAM_SCHEDULE%",
                      "retention_timer": "0 30 3 * * *"}
    # The sample (what scripts/run starts with) sets both settings, to the documented default.
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    assert {sample[schedule.strip("%")] for schedule in timers.values() if "%" in schedule} == {"*/30 * * * * *"}
    scheduler = TimerScheduler(function_app_module.app, environ=sample)
    assert sorted(timer.entry.name for timer in scheduler.timers) == ["approval_timer", "retention_timer",
                                                                       "team_timer"]


def test_host_json_serves_routes_without_a_prefix():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""


def test_cold_start_imports_no_azure_management_sdks():
    code = ("import sys, function_app; print(sorted(m for m in sys.modules if m.startswith("
            "('azure.mgmt', 'azure.communication', 'azure.identity', 'kubernetes'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_http_function_is_in_the_openapi_document(functions):
    from shared.http.openapi import document

    paths = document()["paths"]
    for name, entry in functions.items():
        if entry.trigger_type != "httpTrigger":
            continue
        path = "/" + entry.trigger["route"]
        assert path in paths, f"{name}: {path} is not documented"
        for method in entry.trigger["methods"]:
            assert method.lower() in paths[path], f"{name}: {method} {path} is not documented"


def test_every_function_is_a_route_a_timer_or_an_mcp_tool(functions):
    # The OpenAPI check above covers the routes; MCP tools are no routes (the host's MCP endpoint
    # lists them, see tests/test_mcp.py), and nothing else may slip past both.
    kinds = {entry.trigger_type for entry in functions.values()}
    assert kinds == {"httpTrigger", "timerTrigger", "mcpToolTrigger"}
    tools = [entry for entry in functions.values() if entry.trigger_type == "mcpToolTrigger"]
    assert all(entry.name == f"mcp_{entry.trigger['toolName']}" for entry in tools)
