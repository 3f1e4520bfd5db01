"""Timer triggers: resolve each schedule, then fire the function on it in a thread of its own.

As on Azure, `%SETTING%` in a schedule is read from the app settings (here the environment) and
an unset one stops the host at start-up. Each timer runs one invocation at a time: the real host
holds a singleton lock per timer, so an occurrence that falls due while the previous run is
still going is skipped, not queued. Times are UTC, the Functions default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from azure.functions.decorators.function_app import FunctionRegister
from azure.functions.timer import TimerRequest  # func.TimerRequest is the abstract type

from .functions import FunctionEntry, index_functions, invoke
from .ncrontab import Ncrontab

log = logging.getLogger("local_host")

_SETTING = re.compile(r"%([^%]+)%")
PAST_DUE_AFTER = timedelta(seconds=1)  # fired this late, the TimerRequest says past_due


def resolve_schedule(schedule: str, environ: Mapping[str, str], function_name: str = "?") -> str:
    def setting(m: re.Match) -> str:
        if m.group(1) not in environ:
            raise ValueError(f"timer {function_name}: schedule {schedule!r} needs app setting "
                             f"{m.group(1)}, which is not set (local.settings.json Values or the environment)")
        return environ[m.group(1)]

    return _SETTING.sub(setting, schedule)


Clock = Callable[[], datetime]
# Waits up to the seconds given for `stopping`; True once it is set. Injected in tests.
Wait = Callable[[threading.Event, float], bool]


def _wait(stopping: threading.Event, seconds: float) -> bool:
    return stopping.wait(seconds)


class _Timer:
    def __init__(self, entry: FunctionEntry, environ: Mapping[str, str], clock: Clock | None = None,
                 wait: Wait = _wait) -> None:
        self.entry = entry
        self.now = clock or _now
        self.wait = wait
        self.schedule = resolve_schedule(str(entry.trigger.get("schedule", "")), environ, entry.name)
        try:
            self.cron = Ncrontab(self.schedule)
            self.cron.next_after(self.now())  # a schedule that never fires fails here, not in the thread
        except ValueError as e:
            raise ValueError(f"timer {entry.name}: {e}") from None
        self.run_on_startup = bool(entry.trigger.get("runOnStartup"))
        self.last: datetime | None = None

    def run(self, stopping: threading.Event) -> None:
        try:
            self._loop(stopping)
        except Exception:  # a bug here must not end the timer silently
            log.exception("Timer %s stopped", self.entry.name)

    def _loop(self, stopping: threading.Event) -> None:
        if self.run_on_startup and not stopping.is_set():
            self._fire(self.now(), self.now())
        due = self.cron.next_after(self.now())
        while not self.wait(stopping, max(0.0, (due - self.now()).total_seconds())):
            now = self.now()
            if now < due:  # woke a little early
                continue
            self._fire(due, now)
            # The run may have overrun later occurrences: skip them, as the singleton lock does.
            following, now = self.cron.next_after(due), self.now()
            due = self.cron.next_after(now)
            if following < now:
                log.warning("Timer %s: the previous run overran; skipping occurrences from %s "
                            "to %s", self.entry.name, following.isoformat(), now.isoformat())

    def _fire(self, scheduled: datetime, now: datetime) -> None:
        following = self.cron.next_after(now)
        request = TimerRequest(
            past_due=now - scheduled > PAST_DUE_AFTER,
            schedule_status={"Last": (self.last or scheduled).isoformat(), "Next": following.isoformat(),
                             "LastUpdated": now.isoformat()},
            schedule={"AdjustForDST": True},
        )
        self.last = scheduled
        with contextlib.suppress(Exception):  # logged by invoke(); the timer keeps its schedule
            invoke(self.entry, request, reason=f"Timer fired at {now.isoformat()}")


class TimerScheduler:
    """Fires `app`'s timer functions in background threads between `start()` and `stop()`.

    Schedules are resolved and parsed in the constructor, so a bad one fails start-up.
    """

    def __init__(self, app: FunctionRegister, environ: Mapping[str, str] | None = None,
                 clock: Clock | None = None, wait: Wait = _wait) -> None:
        environ = os.environ if environ is None else environ
        self.timers = [_Timer(e, environ, clock, wait) for e in index_functions(app)
                       if e.trigger_type == "timerTrigger"]
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stopping = threading.Event()
        for timer in self.timers:
            log.info("Timer %s: schedule '%s', next at %s", timer.entry.name, timer.schedule,
                     timer.cron.next_after(timer.now()).isoformat())
            thread = threading.Thread(target=timer.run, args=(self._stopping,),
                                      name=f"timer-{timer.entry.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop firing; wait up to `timeout` seconds for runs in progress to finish."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()


def _now() -> datetime:
    return datetime.now(UTC)
