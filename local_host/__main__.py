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

from .server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_host", description=__doc__.splitlines()[0])
    parser.add_argument("--app-dir", default=".", help="directory holding function_app.py (default: cwd)")
    parser.add_argument("--port", type=int, default=None,
                        help="default: Host.LocalHttpPort from the settings, else 7071")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--settings", default=None,
                        help="settings file (default: <app-dir>/local.settings.json, may be absent)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", stream=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    # The worker runs in the app's root (func start: the project folder; Azure: wwwroot), so
    # relative paths in settings (CONFIG_FILE=config.yaml) resolve against it.
    settings = os.path.abspath(args.settings) if args.settings else None  # relative to the caller's cwd
    try:
        os.chdir(args.app_dir)
        host = serve(".", args.port, args.host, settings)
    except (OSError, ValueError) as e:
        logging.getLogger("local_host").error("Cannot start: %s", e)
        return 1
    logging.getLogger("local_host").info("Host started on %s; Ctrl+C to stop.", host.url)
    while not stop.wait(1):  # a timed wait lets the signal handler run promptly
        pass
    logging.getLogger("local_host").info("Stopping.")
    host.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
