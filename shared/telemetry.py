"""OpenTelemetry, the way Azure Functions Python recommends it: `azure-monitor-opentelemetry`.

- Configured lazily, on the first invocation (`configure()`, called by the HTTP error boundary and
  the timers), and only when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set: importing
  `function_app` loads no OpenTelemetry (cold start, bench/cold_start.py). host.json's
  `telemetryMode: OpenTelemetry` makes the host emit OpenTelemetry too, and the app setting
  `PYTHON_ENABLE_OPENTELEMETRY=true` lets the worker hand each invocation's trace context to the
  code, so the spans below are children of the host's invocation span.
- The distro instruments urllib3 (the Kubernetes client), httpx (LiteLLM, the approval webhook)
  and the Azure SDKs (ARM for APIM, ACS): each call is a dependency with its status. An email send
  is a CLIENT span of its own (SMTP has no instrumentation), with its backend.
- Spans: `invocation` (an HTTP call or a tick), `request process` / `team process` (one record
  worked on by a tick), each with `request_id` / `team` as attributes (shared/logfields.py puts
  them on the current span too); exceptions are recorded on the span.
- Metrics (names and units after the OpenTelemetry semantic conventions; `llmkr.` namespace):
  `llmkr.request.count` {request} by `llmkr.request.state` (gauge, from the tick's sweep),
  `llmkr.request.due` {request} (the due backlog of a tick), `llmkr.tick.duration` s (histogram)
  and `llmkr.tick.budget.utilization` 1 (gauge) by `llmkr.tick.kind`,
  `llmkr.request.activation.duration` s (histogram, created -> active),
  `llmkr.provisioning.results` {step} by `llmkr.backend`, `llmkr.step`, `llmkr.outcome`,
  `llmkr.email.results` {email} by `llmkr.backend`, `llmkr.outcome`, and
  `llmkr.intake.rejections` {request} by `error.type`.
- Nothing secret in any attribute: ids, names, states, backends, outcomes and counts only; never
  a key, password, token, email address or body.

Tests (tests/test_telemetry.py) install the SDK with in-memory exporters and call `enable()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

SCOPE = "llm_key_requestor"
CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"

_lock = threading.Lock()
_state: dict[str, Any] = {"configured": False, "enabled": False, "instruments": None}


def configure() -> bool:
    """Set up the Azure Monitor distro once, if a connection string is set; True when telemetry
    is on. Cheap after the first call."""
    if _state["configured"]:
        return bool(_state["enabled"])
    with _lock:
        if _state["configured"]:
            return bool(_state["enabled"])
        _state["configured"] = True
        if not os.environ.get(CONNECTION_STRING, "").strip():
            return _configure_local()
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor

            options: dict[str, Any] = {}
            credential = _entra_credential(os.environ.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", ""))
            if credential is not None:  # local authentication off: ingestion with the managed identity
                options["credential"] = credential
            # logger_name: the app's own loggers, whose structured fields become customDimensions.
            configure_azure_monitor(logger_name="shared", instrumentation_options={
                "django": {"enabled": False}, "fastapi": {"enabled": False},
                "flask": {"enabled": False}, "psycopg2": {"enabled": False}}, **options)
        except Exception as exc:  # noqa: BLE001 - telemetry must never stop the app
            log.warning("telemetry: Azure Monitor could not be configured (%s); going on without it",
                        type(exc).__name__)
            return False
        _state["enabled"] = True
        log.info("telemetry: OpenTelemetry to Application Insights (azure-monitor-opentelemetry)")
        return True


def destination(environ: Mapping[str, str] | None = None) -> str:
    """Where telemetry goes with these settings, in words (the local host prints it at start)."""
    env = os.environ if environ is None else environ
    if env.get(CONNECTION_STRING, "").strip():
        return "Application Insights (APPLICATIONINSIGHTS_CONNECTION_STRING), configured on the first invocation"
    if env.get(OTLP_ENDPOINT, "").strip():
        return f"the OTLP endpoint {env[OTLP_ENDPOINT].strip()} (OTEL_EXPORTER_OTLP_ENDPOINT, OTLP/HTTP)"
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        return "the console (OTEL_TRACES_EXPORTER=console): spans and metrics printed to stdout"
    return ("none (set APPLICATIONINSIGHTS_CONNECTION_STRING, OTEL_EXPORTER_OTLP_ENDPOINT, "
            "or OTEL_TRACES_EXPORTER=console)")


OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


def _configure_local() -> bool:
    """Without Application Insights: an OTLP endpoint (local_host/requirements.txt has the
    exporter), the console, or nothing. Called with the lock held."""
    otlp = os.environ.get(OTLP_ENDPOINT, "").strip()
    console = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console"
    if not (otlp or console):
        log.info("telemetry: %s", destination())
        return False
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        spans: SpanExporter
        measures: MetricExporter
        if otlp:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            spans, measures = OTLPSpanExporter(), OTLPMetricExporter()
        else:
            from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            spans, measures = ConsoleSpanExporter(), ConsoleMetricExporter()
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "llm-key-requestor"})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[
            PeriodicExportingMetricReader(measures, export_interval_millis=30_000)]))
        _instrument_clients()
    except ImportError as exc:
        log.warning("telemetry: %s is set but %s is not installed; going on without telemetry",
                    OTLP_ENDPOINT if otlp else "OTEL_TRACES_EXPORTER", exc.name)
        return False
    _state["enabled"] = True
    log.info("telemetry: OpenTelemetry to %s", destination())
    return True


def _instrument_clients() -> None:
    """The outbound clients the distro instruments: urllib3 (Kubernetes) and httpx, if installed."""
    for module, name in (("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
                         ("opentelemetry.instrumentation.httpx", "HTTPXClientInstrumentor")):
        try:
            instrumentor = getattr(__import__(module, fromlist=[name]), name)
        except ImportError:
            continue
        instrumentor().instrument()


def _entra_credential(authentication: str) -> Any:
    """The managed identity credential APPLICATIONINSIGHTS_AUTHENTICATION_STRING asks for
    (`ClientId=<id>;Authorization=AAD`, as infra/ sets it), else None (the connection string's key)."""
    parts = dict(p.split("=", 1) for p in authentication.split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = parts.get("ClientId") or None
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def enable() -> None:
    """Record to whatever OpenTelemetry providers are installed (tests: the SDK's in-memory ones)."""
    with _lock:
        _state.update(configured=True, enabled=True, instruments=None)


def disable() -> None:
    with _lock:
        _state.update(configured=False, enabled=False, instruments=None)


def enabled() -> bool:
    return bool(_state["enabled"])


# --- spans ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, client: bool = False) -> Iterator[Any]:
    """A span (CLIENT kind for an outbound call: a dependency in Application Insights); records
    an exception that escapes it. A no-op while telemetry is off."""
    if not _state["enabled"]:
        yield None
        return
    from opentelemetry import trace

    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    with trace.get_tracer(SCOPE).start_as_current_span(name, kind=kind, attributes=_clean(attributes)) as current:
        yield current


def annotate(fields: Mapping[str, str]) -> None:
    """Put `fields` (request_id, team) on the current span, if any."""
    if not _state["enabled"] or not fields:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(_clean(fields))


def record_exception(exc: BaseException) -> None:
    """An exception the code handles (answered 500, or a step's bug retried) on the current span,
    which is marked failed; only its type and message, as the SDK records them."""
    if not _state["enabled"]:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.record_exception(exc)
        current.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if isinstance(v, (str, bool, int, float))}


# --- metrics -------------------------------------------------------------------------------------

def _instruments() -> dict[str, Any] | None:
    if not _state["enabled"]:
        return None
    instruments = _state["instruments"]
    if instruments is None:
        from opentelemetry import metrics

        meter = metrics.get_meter(SCOPE)
        instruments = {
            "states": meter.create_gauge("llmkr.request.count", unit="{request}",
                                         description="Requests per state, as the tick's sweep saw them"),
            "due": meter.create_gauge("llmkr.request.due", unit="{request}",
                                      description="Records due at the start of a tick (the backlog)"),
            "tick": meter.create_histogram("llmkr.tick.duration", unit="s", description="Duration of a tick"),
            "budget": meter.create_gauge("llmkr.tick.budget.utilization", unit="1",
                                         description="Share of the tick's time budget used (over 1: over budget)"),
            "activation": meter.create_histogram("llmkr.request.activation.duration", unit="s",
                                                 description="From a request's creation to its key delivered"),
            "provisioning": meter.create_counter("llmkr.provisioning.results", unit="{step}",
                                                 description="Provisioning steps by backend and outcome"),
            "email": meter.create_counter("llmkr.email.results", unit="{email}",
                                          description="Email sends by backend and outcome"),
            "rejections": meter.create_counter("llmkr.intake.rejections", unit="{request}",
                                               description="Key requests refused at intake, by reason"),
        }
        _state["instruments"] = instruments
    return instruments


def record_states(counts: Mapping[str, int]) -> None:
    if (instruments := _instruments()) is not None:
        for state, count in counts.items():
            instruments["states"].set(count, {"llmkr.request.state": state})


def record_tick(kind: str, due: int, seconds: float, budget_seconds: float) -> None:
    if (instruments := _instruments()) is not None:
        attributes = {"llmkr.tick.kind": kind}
        instruments["due"].set(due, attributes)
        instruments["tick"].record(seconds, attributes)
        instruments["budget"].set(seconds / budget_seconds if budget_seconds > 0 else 0.0, attributes)


def record_activation(seconds: float) -> None:
    if (instruments := _instruments()) is not None:
        instruments["activation"].record(max(0.0, seconds))


def record_step(step: str, outcome: str) -> None:
    """A step's outcome (done, retry, failed); only provisioning steps (`<step>:<backend>`) count."""
    name, _, backend = step.partition(":")
    if backend and (instruments := _instruments()) is not None:
        instruments["provisioning"].add(1, {"llmkr.step": name, "llmkr.backend": backend, "llmkr.outcome": outcome})


def record_email(backend: str, outcome: str) -> None:
    if (instruments := _instruments()) is not None:
        instruments["email"].add(1, {"llmkr.backend": backend, "llmkr.outcome": outcome})


def record_rejection(reason: str) -> None:
    if (instruments := _instruments()) is not None:
        instruments["rejections"].add(1, {"error.type": reason})


# --- the email backends --------------------------------------------------------------------------

def measured(notifier: Any) -> Any:
    """`notifier` with its sends as spans and counted (`llmkr.email.results`), named by backend."""
    names = {"AcsNotifier": "acs", "SmtpNotifier": "smtp", "OutboxNotifier": "outbox"}
    return MeasuredNotifier(notifier, names.get(type(notifier).__name__, type(notifier).__name__.lower()))


class MeasuredNotifier:
    """A Notifier (shared/services/ports.py) whose sends are CLIENT spans and counted by outcome."""

    def __init__(self, inner: Any, backend: str) -> None:
        self.inner = inner
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send(self, email: Any) -> None:
        from shared.services.ports import PermanentError, TransientError

        kind = str(getattr(email, "idempotency_key", "")).rsplit("-", 1)[-1]
        with span(f"email send {self.backend}", {"llmkr.backend": self.backend, "llmkr.email.kind": kind},
                  client=True):
            try:
                self.inner.send(email)
            except TransientError:
                record_email(self.backend, "retry")
                raise
            except PermanentError:
                record_email(self.backend, "failed")
                raise
        record_email(self.backend, "sent")
