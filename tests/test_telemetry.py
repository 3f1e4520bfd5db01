"""OpenTelemetry with the SDK's in-memory exporters: the spans, metrics and log records of an intake
and a full tick (real kube-apiserver, LiteLLM key API stand-in, real SMTP server), and nothing
secret in any of them: no key, master key, link token, password or email body.

The providers are the SDK's (what azure-monitor-opentelemetry installs, with Azure's exporters);
urllib3 (the Kubernetes client) and httpx (LiteLLM) are instrumented with the same instrumentors
the distro enables.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest

from shared import telemetry
from tests.conftest import ROOT
from tests.test_processor_loops import loops  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def otel():
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
    logging.getLogger("shared").addHandler(handler)  # what configure_azure_monitor(logger_name="shared") does
    HTTPXClientInstrumentor().instrument()
    URLLib3Instrumentor().instrument()
    telemetry.enable()
    yield {"spans": spans, "reader": reader, "logs": logs}
    telemetry.disable()
    HTTPXClientInstrumentor().uninstrument()
    URLLib3Instrumentor().uninstrument()
    logging.getLogger("shared").removeHandler(handler)


def points(reader) -> dict[str, list]:
    """Metric name -> [(attributes, value)] of what the reader has collected."""
    found: dict[str, list] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # a histogram: how many were recorded
                    found.setdefault(metric.name, []).append((dict(point.attributes), value, metric.unit))
    return found


def everything_exported(spans, metric_points, logs) -> str:
    """Every name, attribute, event and body the exporters got, as one text to scan."""
    parts = []
    for span in spans:
        parts += [span.name, json.dumps(dict(span.attributes or {}), default=str)]
        parts += [json.dumps({"event": e.name, **dict(e.attributes or {})}, default=str) for e in span.events]
        parts.append(str(span.status.description or ""))
    for name, values in metric_points.items():
        parts += [name, json.dumps([attributes for attributes, _, _ in values], default=str)]
    for data in logs:
        record = data.log_record
        parts += [str(record.body), json.dumps(dict(record.attributes or {}), default=str)]
    return "\n".join(parts)


def test_an_intake_and_a_full_tick_are_traced_and_measured_with_nothing_secret(
        otel, loops, http, litellm_standin, smtp_server):  # noqa: F811
    otel["spans"].clear()
    otel["logs"].clear()
    refused = http.post("/api/request-key", json={"llm": "auto-model", "email": "not-an-address"})
    assert refused.status_code == 422
    created = http.post("/api/request-key", json={"llm": "auto-model", "email": "traced@example.com"})
    assert created.status_code == 201
    request_id = created.get_json()["request_id"]
    with telemetry.span("approval_timer tick"):  # as shared/timer.py runs it
        loops.processor.run_tick()
    assert loops.store.get(request_id).state.value == "active"

    spans = otel["spans"].get_finished_spans()
    names = [s.name for s in spans]
    intake = next(s for s in spans if s.name == "POST request_key" and s.attributes.get("request_id"))
    assert intake.attributes["request_id"] == request_id and intake.attributes["http.response.status_code"] == 201
    process = next(s for s in spans if s.name == "request process")
    assert process.attributes["request_id"] == request_id
    tick = next(s for s in spans if s.name == "approval_timer tick")
    assert process.parent is not None and process.parent.span_id == tick.context.span_id, \
        "each record's span is a child of the tick's, across the tick's worker threads"
    # Outbound calls are CLIENT spans (dependencies): Kubernetes (urllib3), LiteLLM (httpx), SMTP.
    from opentelemetry.trace import SpanKind

    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    litellm = [s for s in clients if "/key/generate" in str(s.attributes.get("url.full", s.attributes.get("http.url")))]
    assert litellm and all(s.attributes.get("http.response.status_code", s.attributes.get("http.status_code")) == 200
                           for s in litellm), names
    assert any(s.parent is not None and s.parent.span_id == process.context.span_id for s in litellm), \
        "the LiteLLM call is a dependency of the request's processing"
    assert any("127.0.0.1" in str(s.attributes) and s in clients and s not in litellm for s in clients), \
        "Kubernetes API calls are dependencies too"
    email = next(s for s in clients if s.name == "email send smtp")
    assert email.attributes["llmkr.backend"] == "smtp"

    metric_points = points(otel["reader"])
    for name in ("llmkr.request.count", "llmkr.request.due", "llmkr.tick.duration", "llmkr.tick.budget.utilization",
                 "llmkr.request.activation.duration", "llmkr.provisioning.results", "llmkr.email.results",
                 "llmkr.intake.rejections"):
        assert name in metric_points, (name, sorted(metric_points))
    units = {name: values[0][2] for name, values in metric_points.items()}
    assert units["llmkr.tick.duration"] == "s" and units["llmkr.request.activation.duration"] == "s"
    assert units["llmkr.tick.budget.utilization"] == "1" and units["llmkr.request.count"] == "{request}"
    assert ({"llmkr.step": "issue", "llmkr.backend": "litellm", "llmkr.outcome": "done"}
            in [a for a, _, _ in metric_points["llmkr.provisioning.results"]])
    assert ({"llmkr.backend": "smtp", "llmkr.outcome": "sent"}
            in [a for a, _, _ in metric_points["llmkr.email.results"]])
    assert ({"error.type": "invalid_email"} in [a for a, _, _ in metric_points["llmkr.intake.rejections"]])
    assert any(a.get("llmkr.request.state") == "pending" for a, _, _ in metric_points["llmkr.request.count"])

    # Log records carry the request id as an attribute (a customDimension in Application Insights).
    logs = otel["logs"].get_finished_logs()
    about = [d.log_record for d in logs if request_id in str(d.log_record.body)]
    assert about and all(r.attributes.get("request_id") == request_id for r in about)

    # Nothing secret anywhere: the key (from the email), the master key, link tokens, the body.
    delivered = [m for _, m in smtp_server.mailbox.messages]
    assert delivered
    text = "\n".join(m.get_body(("plain",)).get_content() for m in delivered)
    secrets = set(re.findall(r"sk-[A-Za-z0-9_-]{20,}", text)) | {litellm_standin.master_key}
    secrets |= set(re.findall(r"/api/links/([A-Za-z0-9_-]{40,})", text))
    assert len(secrets) >= 2
    exported = everything_exported(spans, metric_points, logs)
    for secret in secrets:
        assert secret not in exported, "a secret reached telemetry"
    body_lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 30]
    assert not any(line in exported for line in body_lines), "an email body reached telemetry"
    assert "traced@example.com" not in exported, "no email address in telemetry"


def test_an_unhandled_error_is_recorded_on_the_invocation_span(otel):
    import azure.functions as func
    from opentelemetry.trace import StatusCode

    from shared.http.responses import handles_errors

    @handles_errors
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("a bug")

    otel["spans"].clear()
    answer = boom(func.HttpRequest("GET", "http://127.0.0.1/api/boom", body=b"", route_params={}))
    assert answer.status_code == 500
    span = next(s for s in otel["spans"].get_finished_spans() if s.name == "GET boom")
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["http.response.status_code"] == 500
    assert any(e.name == "exception" and e.attributes["exception.type"] == "RuntimeError" for e in span.events)


def test_importing_the_app_loads_no_opentelemetry_and_without_a_connection_string_configures_none():
    code = ("import sys, function_app; from shared import telemetry; "
            "assert not any(m.startswith(('opentelemetry', 'azure.monitor')) for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('opentelemetry'))[:5]; "
            "assert telemetry.configure() is False; "
            "assert not any(m.startswith('azure.monitor') for m in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "CONFIG_FILE": str(ROOT / "config.yaml"),
           "LITELLM_API_KEY": "sk-test-placeholder-master-key"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


LOCAL_EXPORT = """
import sys, time
from shared import telemetry
assert telemetry.configure() is True
with telemetry.span("request process", {"request_id": "r-local"}):
    telemetry.record_tick("request", 3, 0.5, 180)
from opentelemetry import metrics, trace
trace.get_tracer_provider().force_flush()
metrics.get_meter_provider().force_flush()
print("DESTINATION:", telemetry.destination())
"""


def _run_local(env_extra: dict) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-c", LOCAL_EXPORT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_locally_telemetry_goes_to_the_console_when_asked():
    result = _run_local({"OTEL_TRACES_EXPORTER": "console"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"name": "request process"' in result.stdout and "r-local" in result.stdout
    assert "llmkr.tick.duration" in result.stdout
    assert "DESTINATION: the console" in result.stdout


def test_locally_telemetry_goes_to_an_otlp_endpoint_when_set():
    import http.server
    import threading

    received: list[str] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        result = _run_local({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "/v1/traces" in received and "/v1/metrics" in received, received
    assert f"DESTINATION: the OTLP endpoint {endpoint}" in result.stdout


def test_where_telemetry_goes_is_said_in_words():
    assert telemetry.destination({}).startswith("none")
    assert telemetry.destination({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}).startswith(
        "Application Insights")
