"""An active key's life: reminders, expiry, renewal and rotation, as pure functions of (request, now).

Once a key is active, the timer has work for it only at known moments: a reminder before its
expiry (`reminder_days`), the expiry itself, a renewal or rotation someone asked for, and the end
of a rotation's grace period. `next_step` names the work due now; `due_at` says when the next
work falls due, which the store turns into the label the timer's sweep asks for (so it never
reads every active request) and the engine into `next_attempt_at` (so nothing is written before).

Renewal: the rules decide again (approved -> the same key's expiry moves, per backend; review ->
an admin decides as for a new request; denied -> it is taken back). Rotation: per backend a next
key is chosen and recorded, made live beside the current one, emailed; after the grace the
previous one is retired. At every moment at least one delivered key works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from shared.domain.request import KeyRequest, State

# The named steps of an active key (the processor maps each to its function).
EXPIRE = "expire"
REMIND = "remind"
DECIDE_RENEWAL = "decide-renewal"
EXTEND = "extend"
NOTIFY_RENEWED = "notify-renewed"
PREPARE_ROTATION = "prepare-rotation"
ROTATE = "rotate"
NOTIFY_ROTATED = "notify-rotated"
RETIRE = "retire"
FINISH_ROTATION = "finish-rotation"
NOTIFY_EXPIRED = "notify-expired"

STEP_NAMES = (EXPIRE, REMIND, DECIDE_RENEWAL, EXTEND, NOTIFY_RENEWED, PREPARE_ROTATION, ROTATE,
              NOTIFY_ROTATED, RETIRE, FINISH_ROTATION, NOTIFY_EXPIRED)

# Steps of the current state (`KeyRequest.steps`) that belong to one renewal or one rotation.
RENEWAL_DECIDED = "renewal-decided"
ROTATION_NOTIFIED = "notified-rotated"


@dataclasses.dataclass(frozen=True)
class Life:
    """What config.yaml says about every key's life."""

    reminder_days: tuple[int, ...] = (14, 3)  # `notifications.expiry_reminders_days`, largest first
    rotation_grace: timedelta = timedelta(hours=24)  # `provisioning.rotation_grace`


DEFAULT_LIFE = Life()


@dataclasses.dataclass(frozen=True)
class Due:
    """A step due now, by name, with the backend it is for (or "") and, for reminders, the days."""

    step: str
    backend: str = ""
    days: int = 0

    @property
    def name(self) -> str:
        return f"{self.step}:{self.backend}" if self.backend else self.step


def extended_step(backend: str) -> str:
    return f"{backend}-extended"


def rotation_prepared_step(backend: str) -> str:
    return f"{backend}-rotation-prepared"


def rotated_step(backend: str) -> str:
    return f"{backend}-rotated"


def retired_step(backend: str) -> str:
    return f"{backend}-retired"


def reminded_step(days: int) -> str:
    return f"reminded-{days}d"


def due_day(moment: datetime) -> str:
    """The day (UTC) a moment falls on, as the label the timer's sweep asks for: a label selector
    cannot compare times, but it can ask for a set of days."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def grace_until(request: KeyRequest, life: Life) -> datetime | None:
    """When the previous key of a rotation stops working: the grace after the new key was emailed."""
    emailed = request.steps.get(ROTATION_NOTIFIED)
    return emailed + life.rotation_grace if emailed else None


def reminder_due(request: KeyRequest, now: datetime, life: Life) -> int | None:
    """The reminder to send now (its days before expiry), if any: only the most urgent of those
    whose moment has passed (a key issued 2 days before its expiry gets one reminder, not two)."""
    if request.expires_at is None or now >= request.expires_at:
        return None
    passed = [d for d in life.reminder_days if now >= request.expires_at - timedelta(days=d)]
    if not passed:
        return None
    urgent = min(passed)
    return None if request.done(reminded_step(urgent)) else urgent


def next_step(request: KeyRequest, backends: tuple[str, ...], now: datetime, life: Life) -> Due | None:
    """The step due now for an active key, or None (see `due_at` for when the next one is)."""
    if request.expires_at is not None and now >= request.expires_at:
        return Due(EXPIRE)
    if request.rotate_requested_at is not None:
        rotation = _rotation(request, backends, now, life)
        if rotation is not None:
            return rotation
    if request.renew_requested_at is not None:
        return renewal(request, backends)
    days = reminder_due(request, now, life)
    return Due(REMIND, days=days) if days is not None else None


def renewal(request: KeyRequest, backends: tuple[str, ...]) -> Due:
    """A renewal's steps, in `active` (rules first) or `approved` (an admin approved it)."""
    if request.state == State.ACTIVE and not request.done(RENEWAL_DECIDED):
        return Due(DECIDE_RENEWAL)
    for backend in backends:
        if not request.done(extended_step(backend)):
            return Due(EXTEND, backend)
    return Due(NOTIFY_RENEWED)


def _rotation(request: KeyRequest, backends: tuple[str, ...], now: datetime, life: Life) -> Due | None:
    for backend in backends:
        if not request.done(rotation_prepared_step(backend)):
            return Due(PREPARE_ROTATION, backend)
        if not request.done(rotated_step(backend)):
            return Due(ROTATE, backend)
    if not request.done(ROTATION_NOTIFIED):
        return Due(NOTIFY_ROTATED)
    until = grace_until(request, life)
    if until is not None and now < until:
        return None  # the previous key works until the grace ends
    for backend in backends:
        if not request.done(retired_step(backend)):
            return Due(RETIRE, backend)
    return Due(FINISH_ROTATION)


def due_at(request: KeyRequest, backends: tuple[str, ...], now: datetime, life: Life) -> datetime | None:
    """When the timer next has work for this active key (now, if it has work now); None: never."""
    if next_step(request, backends, now, life) is not None:
        return now
    moments = []
    if request.rotate_requested_at is not None:
        until = grace_until(request, life)
        if until is not None:
            moments.append(until)
    if request.expires_at is not None:
        moments.append(request.expires_at)
        moments.extend(request.expires_at - timedelta(days=d) for d in life.reminder_days
                       if request.expires_at - timedelta(days=d) > now and not request.done(reminded_step(d)))
    return min(moments) if moments else None


def expiry(references: Mapping[str, str]) -> datetime | None:
    """The earliest expiry any backend reported (references `<backend>-...-expires`), if any."""
    found = []
    for name, value in references.items():
        if name.endswith("-expires") and "-next-" not in name and value:
            try:
                found.append(datetime.fromisoformat(value))
            except ValueError:
                continue
    return min(found) if found else None
