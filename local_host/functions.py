"""Load a v2 `function_app`, index its functions and invoke them as the Python worker does.

The worker imports `function_app`, calls `get_functions()` once, and calls each user function
with its trigger bound to the parameter of the trigger's name (plus `context` if declared).
Sync functions run on the caller's thread; `async def` functions all run on one event loop, as in
the worker, so clients an app caches across invocations stay on the loop that made them.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister

log = logging.getLogger("local_host")

HTTP_REASON = "This function was programmatically called via the host APIs."
SUPPORTED_BINDINGS = {"httpTrigger", "http", "timerTrigger", "mcpToolTrigger"}


def load_function_app(source: Any) -> FunctionRegister:
    """The FunctionApp from `source`: an app, a module, a `function_app.py` path or its directory.

    A path is imported afresh as module `function_app` (replacing any earlier one in
    `sys.modules`), with its directory on `sys.path` so the app's own packages import.
    """
    if isinstance(source, FunctionRegister):
        return source
    module = source if isinstance(source, types.ModuleType) else _import_fresh(Path(source))
    app = getattr(module, "app", None)
    if isinstance(app, FunctionRegister):
        return app
    found = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    if len(found) != 1:
        raise ValueError(f"{module.__name__} must define exactly one FunctionApp (found {len(found)})")
    return found[0]


def _import_fresh(path: Path) -> types.ModuleType:
    file = path / "function_app.py" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no function_app.py at {path}")
    app_dir = str(file.parent.resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    importlib.invalidate_caches()  # files written just now (tests) must be importable
    sys.modules.pop("function_app", None)
    spec = importlib.util.spec_from_file_location("function_app", file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("function_app", None)
        raise
    return module


@dataclass(frozen=True)
class FunctionEntry:
    """One indexed function: its name, trigger binding (function.json form) and callable."""

    name: str
    user_function: Callable[..., Any]
    trigger: dict
    bindings: tuple[dict, ...] = field(default=())

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]

    @property
    def auth_level(self) -> str:
        return str(self.trigger.get("authLevel", "")).lower()


_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INDEX_LOCK = threading.Lock()


def index_functions(app: FunctionRegister) -> list[FunctionEntry]:
    """The app's functions, indexed once per app instance."""
    with _INDEX_LOCK:
        if app not in _INDEX:
            # azure-functions 1.26 remembers the names it has seen in `functions_bindings`, so a
            # second get_functions() (ours, or a test's before or after) raises "does not have a
            # unique function name". Forget them on both sides: duplicates within one call are
            # still caught.
            _forget_names(app)
            try:
                _INDEX[app] = [_entry(fn) for fn in app.get_functions()]
            finally:
                _forget_names(app)
        return _INDEX[app]


def _forget_names(app: FunctionRegister) -> None:
    if hasattr(app, "functions_bindings"):
        app.functions_bindings = None


def _entry(fn: func.Function) -> FunctionEntry:
    name = fn.get_function_name()
    if name is None:  # the SDK falls back to the Python function's name, so only a bad function_name() gets here
        raise ValueError(f"function {fn.get_user_function().__name__} has no name")
    bindings = tuple(json.loads(fn.get_function_json())["bindings"])
    triggers = [b for b in bindings if b["type"].endswith("Trigger")]
    if len(triggers) != 1:
        raise ValueError(f"function {name} must have exactly one trigger")
    unsupported = sorted({b["type"] for b in bindings} - SUPPORTED_BINDINGS)
    if unsupported:
        log.warning("Function %s uses bindings the local host does not provide: %s",
                    name, ", ".join(unsupported))
    return FunctionEntry(name, fn.get_user_function(), triggers[0], bindings)


def invoke(entry: FunctionEntry, trigger_value: Any, reason: str = HTTP_REASON, quiet: bool = False) -> Any:
    """Call the function with its trigger value, logging as the host does; re-raise failures.
    `quiet`: the Executing/Executed lines of a success at DEBUG (an HTTP call gets one line of
    its own from the WSGI app); a failure is logged at ERROR either way."""
    invocation_id = str(uuid.uuid4())
    level = logging.DEBUG if quiet else logging.INFO
    log.log(level, "Executing 'Functions.%s' (Reason='%s', Id=%s)", entry.name, reason, invocation_id)
    kwargs = {entry.trigger["name"]: trigger_value}
    # As in the worker, `context` is the invocation context unless a binding has that name (an MCP
    # tool trigger's is usually called `context`).
    if "context" in inspect.signature(entry.user_function).parameters and "context" not in kwargs:
        kwargs["context"] = InvocationContext(invocation_id, entry)
    started = time.perf_counter()
    try:
        result = entry.user_function(**kwargs)
        if inspect.isawaitable(result):
            result = _run_on_shared_loop(result)
    except Exception:
        log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", entry.name,
                  invocation_id, _ms_since(started), exc_info=True)
        raise
    log.log(level, "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", entry.name,
            invocation_id, _ms_since(started))
    return result


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)


class InvocationContext(func.Context):
    """The `context` argument the worker passes to functions that declare one."""

    def __init__(self, invocation_id: str, entry: FunctionEntry) -> None:
        self._invocation_id = invocation_id
        self._function_name = entry.name
        self._function = inspect.unwrap(entry.user_function)
        self._tls = threading.local()

    invocation_id = property(lambda self: self._invocation_id)
    function_name = property(lambda self: self._function_name)
    function_directory = property(lambda self: str(Path(inspect.getfile(self._function)).parent))
    thread_local_storage = property(lambda self: self._tls)
    trace_context = property(lambda self: None)
    retry_context = property(lambda self: None)


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _run_on_shared_loop(awaitable: Any) -> Any:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="local_host-async", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), _loop).result()


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
