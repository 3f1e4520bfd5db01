"""Test-only: one processing run in a process of its own, optionally SIGKILLed at a step boundary.

    python -m tests.crash_runner [--kill-after POINT] [--until-settled SECONDS] [--wait-for-go]

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

Kill points that land inside a backend call (LiteLLM created the key but the answer never came
back; the SMTP server accepted the message but its 250 never came back) are made by the test
process, in the stand-in servers, which SIGKILL this process's pid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Callable

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
    parser.add_argument("--kill-after", choices=POINTS)
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


if __name__ == "__main__":
    sys.exit(main())
