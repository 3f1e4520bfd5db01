"""The timer functions, one use case each, so each has its own invocation, its own time budget
and its own functionTimeout (host.json):

- `approval_timer`, every APPROVAL_SCHEDULE (default every 30 s): one processor tick over the
  requests (PROCESSOR_TIME_BUDGET_SECONDS);
- `team_timer`, every TEAM_SCHEDULE (default every 30 s): one team reconcile tick
  (shared/services/teams.py, TEAM_TIME_BUDGET_SECONDS);
- `retention_timer`, daily at 03:30 UTC: deletes finished requests `requests.retention_days`
  after their last change, and stale intake counters (shared/services/retention.py).

A budget only stops a tick taking new work; the step already running finishes. The app refuses
to start when budget + the longest step does not fit in functionTimeout (shared/startup_checks.py).
`use_monitor=True` lets the host catch up a schedule missed while the app was down; the host's
singleton lock keeps two ticks of one timer from overlapping, and the leases keep two apps (or a
manual run) from working on the same request or team.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared import context, telemetry

log = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("approval_timer")
@bp.timer_trigger(arg_name="timer", schedule="%APPROVAL_SCHEDULE%", use_monitor=True, run_on_startup=False)
def approval_timer(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("approval timer is running late")
    telemetry.configure()
    with telemetry.span("approval_timer tick", {"faas.trigger": "timer", "llmkr.tick.kind": "request"}):
        context.processor().run_tick()


@bp.function_name("team_timer")
@bp.timer_trigger(arg_name="timer", schedule="%TEAM_SCHEDULE%", use_monitor=True, run_on_startup=False)
def team_timer(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("team timer is running late")
    telemetry.configure()
    with telemetry.span("team_timer tick", {"faas.trigger": "timer", "llmkr.tick.kind": "team"}):
        context.team_reconciler().run_tick()


# Daily, at a fixed quiet hour: what it deletes is at least days old, so the hour matters little.
RETENTION_SCHEDULE = "0 30 3 * * *"
RETENTION_BUDGET_SECONDS = 240.0  # inside host.json functionTimeout (5 min); the next day goes on


@bp.function_name("retention_timer")
@bp.timer_trigger(arg_name="timer", schedule=RETENTION_SCHEDULE, use_monitor=True, run_on_startup=False)
def retention_timer(timer: func.TimerRequest) -> None:
    from shared.services import retention

    telemetry.configure()
    with telemetry.span("retention_timer sweep", {"faas.trigger": "timer", "llmkr.tick.kind": "retention"}):
        retention.sweep(context.request_store(), context.config().requests.retention_days,
                        budget_seconds=RETENTION_BUDGET_SECONDS)
