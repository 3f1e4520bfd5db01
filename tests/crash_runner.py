"""Test-only: one processing run in a process of its own, optionally SIGKILLed at a step boundary.

    python -m tests.crash_runner [--kill-after POINT | --kill-after-write WHAT] [--clock-ahead SECONDS]
                                 [--trace-writes] [--until-settled SECONDS] [--wait-for-go]
    python -m tests.crash_runner --fork-server   (runs of the above, forked; see serve_forks)

Settings come from the environment, exactly as the app reads them (`context.processor()`):
KUBECONFIG, KUBERNETES_NAMESPACE, CONFIG_FILE, LITELLM_*, SMTP_*, PROCESSOR_*.

Without --kill-after it runs one tick (or, with --until-settled, ticks until nothing is due) and
prints a JSON line per tick on stdout. With --kill-after the process SIGKILLs itself, from inside
the processing thread, at the first moment that matches POINT; nothing after that moment runs
(no `finally`, no lease release, no flush), as when a host dies.

The processor only logs (production code is not changed for this). Two kinds of trigger:

* a log record of `shared.services.processor`. Every such line is emitted inside a step, AFTER
  its I/O and BEFORE `_run` records the step's outcome on the Secret, so killing there means
  "the step ran, its outcome is NOT recorded";
* a store write that completed (the processor's store wrapped here, test-only), for "the step's
  outcome IS recorded, the next step has not started": the processor logs nothing between a
  record and the next step's I/O, so no log line marks those boundaries.

`--kill-after-write WHAT` (RECORDED_POINTS) is the same "outcome IS recorded" boundary, named by
what the write recorded rather than by a fixed state: the stored request just before the write is
compared with the one the write stored (`steps` gained a step, the state or `settled` changed, a
field or reference was cleared, the lease was taken). It depends on no log line, so every step of
an active key's life (reminder, expiry, renewal, rotation) has one without a list of its own here.
`--clock-ahead SECONDS` runs the processor's clock (and the LiteLLM provisioner's, which counts a
rotated key's remaining lifetime) that far ahead from the start: a reminder or expiry 17 or 30
days away, or a rotation's grace, is reached without waiting.

Kill points that land inside a backend call (LiteLLM created the key but the answer never came
back; the SMTP server accepted the message but its 250 never came back) are made by the test
process, in the stand-in servers, which SIGKILL this process's pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from shared.domain.request import KeyRequest, State

PROCESSOR_LOGGER = "shared.services.processor"


def _message(record: logging.LogRecord, fmt: str, *expected: object) -> bool:
    """`record` is the processor's line `fmt`, with `expected` args at positions 1.. (0 is the id)."""
    if record.msg != fmt:
        return False
    args = record.args if isinstance(record.args, tuple) else ()
    return all(len(args) > i + 1 and str(args[i + 1]) == str(value) for i, value in enumerate(expected))


# point -> predicate on a log record of the processor (the line PRECEDES the step's record).
LOG_POINTS: dict[str, Callable[[logging.LogRecord], bool]] = {
    # `_decide` logs the decision before `_run` records it: the lease is recorded (the first
    # store write), the decision is made but NOT recorded. This is the "after the lease" boundary.
    "approve-decided-unrecorded": lambda r: _message(r, "request %s: %s by %s (%s)", State.APPROVED),
    # `_prepare` logs the chosen key's references before they are recorded; prepare does no I/O,
    # so on the Secret this is "decision recorded, nothing prepared" with a key lost in memory.
    "prepare-unrecorded": lambda r: _message(r, "request %s: %s prepared %s", "litellm"),
    # `_issue` logs after LiteLLM answered 200 and before "litellm-issued" is recorded: the key
    # is live at LiteLLM, the Secret still says prepared-not-issued.
    "issue-unrecorded": lambda r: _message(r, "request %s: %s issued %s", "litellm"),
    # the notify step logs after the SMTP server's 250, before "notified-approved"/active is
    # recorded: the requester has the key, the Secret does not know it was sent.
    "approved-email-unrecorded": lambda r: _message(r, "request %s: %s email sent to %d recipient(s)", "approved"),
    # the same two boundaries on the deny path
    "deny-decided-unrecorded": lambda r: _message(r, "request %s: %s by %s (%s)", State.DENIED),
    "denied-email-unrecorded": lambda r: _message(r, "request %s: %s email sent to %d recipient(s)", "denied"),
}

# point -> predicate on the request as the store wrote it (the write has COMPLETED at the
# apiserver); the first write that matches kills. One request per killed run, so "first" is exact.
STORE_POINTS: dict[str, Callable[[KeyRequest], bool]] = {
    # the lease write (the first write of `process`), before the rules run
    "lease": lambda r: r.state == State.PENDING and r.lease_holder is not None,
    # the decision is recorded (state approved / denied), nothing done for it yet
    "approve-decided": lambda r: r.state == State.APPROVED,
    "deny-decided": lambda r: r.state == State.DENIED,
    # the key and alias are recorded, LiteLLM has not been called
    "prepared": lambda r: r.references.get("litellm-prepared") == "true" and not r.done("litellm-issued"),
    # "litellm-issued" is recorded, the approval email not sent yet
    "issued": lambda r: r.done("litellm-issued"),
    # "notified-approved" and the state active are recorded (one write), the lease not released
    "active": lambda r: r.state == State.ACTIVE,
}

POINTS = sorted({*LOG_POINTS, *STORE_POINTS})

# `--kill-after-write WHAT`: a predicate on (the stored request just before a write, the request the
# write stored), for this runner's `holder`. WHAT is `kind` or `kind:value`.
RECORDED_POINTS: dict[str, str] = {
    "lease": "the write that took the lease (the first write of a run)",
    "step:NAME": "the write whose `steps` gained NAME (e.g. step:reminded-14d, step:litellm-rotated)",
    "state:STATE": "the write that moved the request to STATE (e.g. state:expired)",
    "settled:STATE": "the write that settled the request in STATE",
    "cleared:FIELD": "the write that cleared FIELD (e.g. cleared:renew_requested_at)",
    "unref:NAME": "the write that dropped the reference NAME (e.g. unref:litellm-prepared: revoked)",
}
Recorded = Callable[[KeyRequest, KeyRequest], bool]


def recorded_point(what: str, holder: str) -> Recorded:
    """The predicate for `--kill-after-write WHAT` (ValueError for an unknown WHAT)."""
    kind, _, value = what.partition(":")
    if kind == "lease" and not value:
        return lambda before, written: before.lease_holder != holder and written.lease_holder == holder
    if kind == "step" and value:
        return lambda before, written: value in written.steps and value not in before.steps
    if kind in ("state", "settled") and value:
        state = State(value)
        return lambda before, written: getattr(written, kind) == state and getattr(before, kind) != state
    if kind == "cleared" and value in {f.name for f in dataclasses.fields(KeyRequest)}:
        return lambda before, written: (getattr(before, value) not in (None, {})
                                        and getattr(written, value) in (None, {}))
    if kind == "unref" and value:
        return lambda before, written: value in before.references and value not in written.references
    raise ValueError(f"unknown --kill-after-write {what!r}; one of {', '.join(RECORDED_POINTS)}")


def describe_write(before: KeyRequest, written: KeyRequest) -> str:
    """One line on what a write recorded (stderr, with --trace-writes): never a secret's value."""
    gained = sorted(set(written.steps) - set(before.steps))
    lost = sorted(set(before.steps) - set(written.steps))
    refs = sorted(set(written.references) ^ set(before.references))
    return (f"crash_runner: wrote request {written.id}: state {before.state.value}->{written.state.value}, "
            f"settled {written.settled and written.settled.value}, steps +{gained} -{lost}, "
            f"references changed {refs}, secrets {sorted(written.secrets)}, "
            f"lease {'held' if written.lease_holder else 'released'}")


def kill_after_recorded(store: object, matches: Recorded | None, trace: bool) -> None:
    """Wrap the store's update (this instance's, as kill_after_store_write does): after a write
    COMPLETED, compare it with the stored request read just before it; die if `matches`."""
    update, get = store.update, store.get  # bound methods of this store instance

    def update_then_maybe_die(request: KeyRequest) -> KeyRequest:
        before = get(request.id) or request
        written = update(request)
        if trace:
            sys.stderr.write(describe_write(before, written) + "\n")
            sys.stderr.flush()
        if matches is not None and matches(before, written):
            die()
        return written

    store.update = update_then_maybe_die  # type: ignore[attr-defined]


def install_clock(processor: object, seconds: float) -> None:
    """The processor's clock (and its engine's, and the LiteLLM provisioner's: it counts what a
    rotated key has left of its lifetime) `seconds` ahead of real time."""
    from tests.clock import Clock

    clock = Clock()
    clock.advance(seconds)
    clock.install(processor)
    for provisioner in getattr(processor, "provisioners", {}).values():
        if hasattr(provisioner, "_clock"):
            provisioner._clock = clock


def die() -> None:
    sys.stderr.write("crash_runner: SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillOnLog(logging.Handler):
    def __init__(self, matches: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__(logging.DEBUG)
        self.matches = matches

    def emit(self, record: logging.LogRecord) -> None:
        if self.matches(record):
            die()


def kill_after_store_write(store: object, matches: Callable[[KeyRequest], bool]) -> None:
    update = store.update  # bound method of this store instance

    def update_then_maybe_die(request: KeyRequest) -> KeyRequest:
        written = update(request)
        if matches(written):
            die()
        return written

    store.update = update_then_maybe_die  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_runner")
    kill = parser.add_mutually_exclusive_group()
    kill.add_argument("--kill-after", choices=POINTS)
    kill.add_argument("--kill-after-write", metavar="WHAT",
                      help="after the write that recorded WHAT: " + "; ".join(
                          f"{name}: {meaning}" for name, meaning in RECORDED_POINTS.items()))
    parser.add_argument("--trace-writes", action="store_true", help="one stderr line per completed write")
    parser.add_argument("--clock-ahead", type=float, default=0.0, metavar="SECONDS",
                        help="the processor's clock runs SECONDS ahead from the start")
    parser.add_argument("--until-settled", type=float, default=0.0, metavar="SECONDS",
                        help="tick until a tick finds nothing due, for at most SECONDS")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between ticks")
    parser.add_argument("--wait-for-go", action="store_true",
                        help='print "ready" once built, then start on a line from stdin (to start runs together)')
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(relativeCreated)6.0f %(threadName)s %(name)s %(message)s")
    from shared import context, startup_checks

    # The crash cases hold leases of a second or so on purpose (to see one run out), far shorter
    # than the longest step the start-up check wants a lease to outlast: skip that check only.
    startup_checks.check_timing = lambda *args, **kwargs: None
    context.load()
    logging.getLogger("shared").setLevel(logging.INFO)  # the kill points need the INFO lines
    processor = context.processor()
    if args.kill_after in LOG_POINTS:
        logging.getLogger(PROCESSOR_LOGGER).addHandler(KillOnLog(LOG_POINTS[args.kill_after]))
    elif args.kill_after in STORE_POINTS:
        kill_after_store_write(processor.store, STORE_POINTS[args.kill_after])
    if args.kill_after_write or args.trace_writes:
        try:
            matches = recorded_point(args.kill_after_write, processor.options.holder) if args.kill_after_write else None
        except ValueError as exc:
            parser.error(str(exc))
        kill_after_recorded(processor.store, matches, args.trace_writes)
    if args.clock_ahead:
        install_clock(processor, args.clock_ahead)

    if args.wait_for_go:
        print("ready", flush=True)
        # "go [SECONDS]": the processor's clock runs SECONDS ahead (past a dead holder's lease,
        # without waiting it out).
        words = sys.stdin.readline().split()
        if len(words) > 1 and float(words[1]):
            from tests.clock import Clock

            clock = Clock()
            clock.advance(float(words[1]))
            clock.install(processor)
    deadline = time.monotonic() + args.until_settled
    while True:
        report = processor.run_tick()
        print(json.dumps({"holder": processor.options.holder, "due": report.due, "processed": report.processed,
                          "skipped": report.skipped, "outcomes": report.outcomes}), flush=True)
        if report.due == 0 or time.monotonic() >= deadline:
            break
        time.sleep(args.pause)
    return 0


# --- a fork server: many runs, without paying the imports each time -----------------------------------

# What every run imports (the kubernetes client alone costs ~1 s of CPU per process, far more on a
# loaded machine). Best effort: a module that moved is simply imported by the run.
PRELOAD = ("kubernetes.client", "kubernetes.config", "urllib3", "httpx", "jinja2", "smtplib", "email.message",
           "email.utils", "pydantic", "yaml", "shared.context", "shared.settings", "shared.config",
           "shared.startup_checks", "shared.store.requests", "shared.store.kube", "shared.store.codec",
           "shared.adapters.litellm", "shared.adapters.email_factory", "shared.adapters.email_smtp",
           "shared.adapters.webhook", "shared.services.processor", "shared.services.key_life",
           "shared.services.messages", "shared.services.links", "tests.clock")


def serve_forks() -> int:
    """`--fork-server`: forks each run of `main` from a process that imported PRELOAD once
    (tests/fork_server.py)."""
    from tests import fork_server

    # the client's classes load on first attribute access: touch them here, once
    lazy = [("kubernetes.client", name) for name in
            ("CoreV1Api", "ApiClient", "Configuration", "V1Secret")]
    return fork_server.serve(main, PRELOAD, lazy)


if __name__ == "__main__":
    sys.exit(serve_forks() if sys.argv[1:] == ["--fork-server"] else main())
