"""The approval timer: every APPROVAL_SCHEDULE (default every 30 s), one processor tick, then
one team reconcile tick (shared/services/teams.py).

`use_monitor=True` lets the host catch up a schedule missed while the app was down; the host's
singleton lock keeps two ticks of one app from overlapping, and the processor's leases keep
two apps (or a manual run) from working on the same request.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared import context

log = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.function_name("approval_timer")
@bp.timer_trigger(arg_name="timer", schedule="%APPROVAL_SCHEDULE%", use_monitor=True, run_on_startup=False)
def approval_timer(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("approval timer is running late")
    try:
        context.processor().run_tick()
    finally:  # teams are a use case of their own: a failed request tick does not hold them up
        context.team_reconciler().run_tick()
