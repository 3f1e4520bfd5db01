"""A thin local stand-in for the Azure Functions host (dev only, never deployed).

Azure Functions Core Tools (`func start`) cannot be installed on these machines: its installer
downloads the host from a CDN. This package does the part of its job that development and tests
need, with the real `azure-functions` types: it reads `local.settings.json` and `host.json`,
indexes a v2 `function_app.py`, serves its HTTP functions (routes, CORS) with werkzeug on
loopback, and fires its timer functions on their NCRONTAB schedules.

Run it with `python -m local_host --app-dir .`; use `serve()` from tests and benchmarks.
"""

from .cors import CorsPolicy
from .functions import FunctionEntry, index_functions, invoke, load_function_app
from .ncrontab import Ncrontab
from .server import LocalHost, serve
from .settings import LocalSettings, load_local_settings, read_route_prefix
from .timers import TimerScheduler
from .wsgi import build_wsgi_app

__all__ = [
    "CorsPolicy",
    "FunctionEntry",
    "LocalHost",
    "LocalSettings",
    "Ncrontab",
    "TimerScheduler",
    "build_wsgi_app",
    "index_functions",
    "invoke",
    "load_function_app",
    "load_local_settings",
    "read_route_prefix",
    "serve",
]
