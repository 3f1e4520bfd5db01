"""Test-only: one team reconcile run in a process of its own, optionally SIGKILLed at a step boundary.

    python -m tests.teams_crash_runner [--kill-after-step NAME [--occurrence N] | --kill-after-settled
                                        | --kill-after-call keys-written|keys-deleted|workspace-applied|...]
                                       [--until-settled SECONDS] [--pause SECONDS] [--wait-for-go]
    python -m tests.teams_crash_runner --fork-server   (runs of the above, forked; see serve_forks)

Settings come from the environment, exactly as the app reads them (`context.team_reconciler()`):
KUBECONFIG, KUBERNETES_NAMESPACE, CONFIG_FILE, APIM_*, ARM_ENDPOINT, CA_BUNDLE, SMTP_*, PROCESSOR_*.
The one test-only setting is TEAMS_CRASH_ARM_TOKEN, the bearer token the ARM stand-in accepts
(it replaces DefaultAzureCredential, as tests/test_teams_http.py does in-process).

The kill triggers depend only on the team store's port and on what the store writes, never on
the reconciler's internals or log lines (those are being rewritten):

* "the step's outcome IS recorded": `KubernetesTeamStore.update` is wrapped (at class level, so
  any store instance the reconciler builds is covered); after a write has COMPLETED at the
  apiserver, the steps it recorded are those in the written record's `steps`
  (annotation `llm-key-requestor/steps`) that the stored record did not have just before. The
  process dies after the N-th write that gained the step named NAME (`--kill-after-step`), or
  after the write that first made the record settled (`--kill-after-settled`);
* "the step ran, its outcome is NOT recorded": after one of CALLS returned (`--kill-after-call`:
  the keys Secret written / deleted, a KAITO Workspace applied / deleted; nothing recorded yet).
  The ARM side of this (the stand-in applied a PUT/DELETE, the answer never comes back) is done
  by the test process, which SIGKILLs this process's pid from inside the stand-in.

Every completed record write is printed on stdout as a JSON line `{"write": ...}` (team, steps
gained, phase, settled), every tick as `{"tick": ...}`; nothing after the kill runs (no
`finally`, no lease release, no flush), as when a host dies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Write = dict[str, Any]  # {"team", "gained", "steps", "rotation_steps", "phase", "settled", "became_settled"}


class StaticToken:
    """A TokenCredential with the token the ARM stand-in accepts (as tests/teams_fixtures.py's)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: object) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


# Calls whose effect the step records only in its write that follows: name -> (module, class,
# method). The ports' own methods (TeamStore, Workspaces), not the reconciler's internals.
CALLS: dict[str, tuple[str, str, str]] = {
    "keys-written": ("shared.store.teams", "KubernetesTeamStore", "write_keys"),
    "keys-deleted": ("shared.store.teams", "KubernetesTeamStore", "delete_keys"),
    "workspace-applied": ("shared.adapters.kaito", "KaitoWorkspaces", "apply"),
    "workspace-deleted": ("shared.adapters.kaito", "KaitoWorkspaces", "delete"),
}


def call_owner(name: str) -> tuple[type, str]:
    import importlib

    module, cls, method = CALLS[name]
    return getattr(importlib.import_module(module), cls), method


def die() -> None:
    sys.stderr.write("teams_crash_runner: SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def describe_write(before: Any, written: Any) -> Write:
    """What one completed write recorded: the steps it added (compared with the stored record
    just before it; a key rotation's steps, annotation `llm-key-requestor/rotation-steps`, count
    too), and whether it settled the record."""
    gained: list[str] = []
    recorded: dict[str, list[str]] = {}
    for field in ("steps", "rotation_steps"):
        before_steps = set(getattr(before, field, None) or {})
        after_steps = dict(getattr(written, field, None) or {})
        gained += sorted((name for name in after_steps if name not in before_steps),
                         key=lambda name: (after_steps[name], name))
        recorded[field] = sorted(after_steps)
    was_settled = bool(getattr(before, "settled", False))
    return {"team": written.name, "gained": gained, "steps": recorded["steps"],
            "rotation_steps": recorded["rotation_steps"], "phase": written.phase,
            "settled": bool(written.settled), "became_settled": bool(written.settled) and not was_settled}


def traced_update(original: Callable[[Any, Any], Any], on_write: Callable[[Write], None]) -> Callable[[Any, Any], Any]:
    """`KubernetesTeamStore.update`, calling `on_write` after each write completed."""
    lock = threading.Lock()

    def update(store: Any, record: Any) -> Any:
        before = store.get(record.name)  # the stored record just before this write
        written = original(store, record)
        with lock:
            on_write(describe_write(before, written))
        return written

    return update


def after(original: Callable[..., Any], then: Callable[[], None]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        then()
        return result

    return wrapped


def emit(kind: str, value: Any) -> None:
    print(json.dumps({kind: value}, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.teams_crash_runner")
    kill = parser.add_mutually_exclusive_group()
    kill.add_argument("--kill-after-step", metavar="NAME", help="after the write that recorded step NAME")
    kill.add_argument("--kill-after-settled", action="store_true", help="after the write that settled the record")
    kill.add_argument("--kill-after-call", choices=sorted(CALLS), help="after that call returned (see CALLS)")
    parser.add_argument("--occurrence", type=int, default=1, help="with --kill-after-step: the N-th such write")
    parser.add_argument("--until-settled", type=float, default=0.0, metavar="SECONDS",
                        help="tick until a tick finds nothing due, for at most SECONDS")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between ticks")
    parser.add_argument("--clock-ahead", type=float, default=0.0, metavar="SECONDS",
                        help="the reconciler's clock runs this far ahead (past a dead holder's lease)")
    parser.add_argument("--wait-for-go", action="store_true",
                        help='print "ready" once built, then start on a line from stdin')
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(relativeCreated)6.0f %(threadName)s %(name)s %(message)s")
    from shared import context
    from shared.adapters import apim, azure_clients
    from shared.store.teams import KubernetesTeamStore

    token = os.environ["TEAMS_CRASH_ARM_TOKEN"]
    for module in (apim, azure_clients):  # the ARM stand-in's token instead of DefaultAzureCredential
        module.default_credential = lambda client_id=None: StaticToken(token)  # type: ignore[assignment]

    seen: dict[str, int] = {}

    def on_write(write: Write) -> None:
        emit("write", write)
        for name in write["gained"]:
            seen[name] = seen.get(name, 0) + 1
        if args.kill_after_step and args.kill_after_step in write["gained"] \
                and seen[args.kill_after_step] == args.occurrence:
            die()
        if args.kill_after_settled and write["became_settled"]:
            die()

    KubernetesTeamStore.update = traced_update(KubernetesTeamStore.update, on_write)  # type: ignore[method-assign]
    if args.kill_after_call:
        owner, method = call_owner(args.kill_after_call)
        setattr(owner, method, after(getattr(owner, method), die))

    try:  # the crash cases hold leases of ~2 s on purpose (to wait one out), far shorter than the
        # longest step the start-up check wants a lease to outlast: skip that check only
        from shared import startup_checks
    except ImportError:
        pass
    else:
        startup_checks.check_timing = lambda *args, **kwargs: None  # type: ignore[assignment]
    context.load()
    logging.getLogger("shared").setLevel(logging.INFO)
    reconciler = context.team_reconciler()
    if args.clock_ahead:
        from tests.clock import Clock

        clock = Clock()
        clock.advance(args.clock_ahead)
        clock.install(reconciler)

    if args.wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    deadline = time.monotonic() + args.until_settled
    while True:
        report = reconciler.run_tick()
        emit("tick", {"due": report.due, "processed": report.processed, "skipped": report.skipped,
                      "outcomes": report.outcomes})
        if report.due == 0 or time.monotonic() >= deadline:
            break
        time.sleep(args.pause)
    return 0


# --- a fork server: many runs, without paying the imports each time -----------------------------------

# What every run imports (the pydantic-based kubernetes client alone costs ~1 s of CPU per process,
# far more on a loaded machine). Best effort: a module that moved is simply imported by the run.
PRELOAD = ("kubernetes.client", "kubernetes.config", "urllib3", "azure.core", "azure.mgmt.apimanagement",
           "azure.mgmt.apimanagement.models", "jinja2", "smtplib", "email.message", "shared.context",
           "shared.settings", "shared.config", "shared.store.teams", "shared.store.kube", "shared.adapters.apim",
           "shared.adapters.apim_products", "shared.adapters.azure_clients", "shared.adapters.kaito",
           "shared.adapters.email_factory", "shared.services.messages", "shared.services.teams",
           "shared.services.team_reconciler", "shared.startup_checks")


def serve_forks() -> int:
    """`--fork-server`: forks each run of `main` from a process that imported PRELOAD once
    (tests/fork_server.py)."""
    from tests import fork_server

    # the client's classes load on first attribute access: touch them here, once
    lazy = [("kubernetes.client", name) for name in
            ("CoreV1Api", "CustomObjectsApi", "ApiClient", "Configuration")]
    return fork_server.serve(main, PRELOAD, lazy)


if __name__ == "__main__":
    sys.exit(serve_forks() if sys.argv[1:] == ["--fork-server"] else main())
