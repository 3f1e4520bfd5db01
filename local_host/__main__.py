"""`python -m local_host`: run the function app locally, in place of `func start`.

Runs until SIGINT (Ctrl+C) or SIGTERM, then stops the timers and the server cleanly so a test
runner or a process manager can stop it like any other service.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from .litellm_local import RunningLiteLLM, local_target, start_if_needed
from .server import serve
from .settings import load_local_settings


class FieldsFormatter(logging.Formatter):
    """Shows a line's structured fields (shared/logfields.py: request_id, team), the
    customDimensions Application Insights gets, unless the message names them already."""

    FIELDS = ("request_id", "team")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        shown = [f"{name}={getattr(record, name)}" for name in self.FIELDS
                 if getattr(record, name, None) and str(getattr(record, name)) not in record.getMessage()]
        return f"{line} [{' '.join(shown)}]" if shown else line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_host", description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", default=".", help="directory holding function_app.py (default: cwd)")
    parser.add_argument("--port", type=int, default=None,
                        help="default: Host.LocalHttpPort from the settings, else 7071")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--settings", default=None,
                        help="settings file (default: <app-dir>/local.settings.json, may be absent)")
    parser.add_argument("--local-litellm", action="store_true",
                        help="serve a local LiteLLM-compatible key endpoint at LITELLM_BASE_URL when "
                             "that is a loopback address where nothing listens (scripts/run does)")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter("[%(asctime)s] %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    # The worker runs in the app's root (func start: the project folder; Azure: wwwroot), so
    # relative paths in settings (CONFIG_FILE=config.yaml) resolve against it.
    settings = os.path.abspath(args.settings) if args.settings else None  # relative to the caller's cwd
    try:
        os.chdir(args.app_dir)
        litellm = _local_litellm(settings) if args.local_litellm else None
        host = serve(".", args.port, args.host, settings)
    except (OSError, ValueError) as e:
        logging.getLogger("local_host").error("Cannot start: %s", e)
        return 1
    logging.getLogger("local_host").info("Host started on %s; Ctrl+C to stop.", host.url)
    try:  # this app's telemetry (shared/telemetry.py), configured on its first invocation
        from shared import telemetry
    except ImportError:
        pass
    else:
        logging.getLogger("local_host").info("Telemetry: %s", telemetry.destination())
    while not stop.wait(1):  # a timed wait lets the signal handler run promptly
        pass
    logging.getLogger("local_host").info("Stopping.")
    host.shutdown()
    if litellm is not None:
        litellm.shutdown()
    return 0


def _local_litellm(settings_path: str | None) -> RunningLiteLLM | None:
    """Start the local key endpoint (local_host/litellm_local.py) when LITELLM_BASE_URL is a free
    loopback port; the settings file is read first, as serve() reads it (the environment wins)."""
    load_local_settings(settings_path or "local.settings.json", required=settings_path is not None)
    base_url = os.environ.get("LITELLM_BASE_URL") or "http://localhost:4000"
    running = start_if_needed(base_url, os.environ.get("LITELLM_API_KEY"))
    log = logging.getLogger("local_host")
    if running is not None:
        log.info("LITELLM_BASE_URL %s: no LiteLLM answers there, so a local LiteLLM-compatible key "
                 "endpoint serves it (in memory; its keys call no model). Set LITELLM_BASE_URL to a "
                 "real LiteLLM to use one.", base_url)
    elif local_target(base_url) is None:
        log.info("LITELLM_BASE_URL %s: using the LiteLLM there.", base_url)
    return running


if __name__ == "__main__":
    sys.exit(main())
