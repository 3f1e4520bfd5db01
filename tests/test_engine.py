"""The step engine on its own: leases, retries and their planned delays, failure paths, caps.

A tiny flow over in-memory records (the engine's port, not a stand-in for any of our modules)
with an injected clock and random source: every delay asserted here is the one planned.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from shared.services.engine import Engine, EngineOptions, Step, retry_delay
from shared.services.ports import Conflict, PermanentError, TransientError

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    todo: tuple[str, ...] = ()
    done: tuple[str, ...] = ()
    failed_at: str | None = None
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    lease_holder: str | None = None
    lease_until: datetime | None = None
    version: int = 0

    def with_changes(self, now: datetime, **changes: object) -> Item:
        return dataclasses.replace(self, **changes)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Flow:
    kind = "item"

    def __init__(self, clock: Clock, behaviour: dict[str, Callable[[Item], Item]] | None = None) -> None:
        self.clock = clock
        self.items: dict[str, Item] = {}
        self.writes: list[Item] = []
        self.behaviour = behaviour or {}

    def ident(self, item: Item) -> str:
        return item.name

    def due(self):
        return list(self.items.values())

    def update(self, item: Item) -> Item:
        stored = self.items.get(item.name)
        if stored is not None and stored.version != item.version:
            raise Conflict("stale")
        written = dataclasses.replace(item, version=item.version + 1)
        self.items[item.name] = written
        self.writes.append(written)
        return written

    def on_lease(self, item: Item, now: datetime) -> Item:
        return item

    def next_step(self, item: Item, now: datetime):
        if item.failed_at is not None:
            return None
        for name in item.todo:
            if name not in item.done:
                run = self.behaviour.get(name, lambda i, n=name: dataclasses.replace(i, done=i.done + (n,)))
                return Step(name, run)
        return None

    def fail(self, item: Item, step: str, reason: str, now: datetime) -> Item:
        return item.with_changes(now, failed_at=step, last_error=reason)

    def finish(self, item: Item) -> str:
        return "failed" if item.failed_at else "done"


def engine(flow: Flow, clock: Clock, **options) -> Engine:
    defaults = dict(lease_seconds=60, max_attempts=3, backoff_base_seconds=10, backoff_max_seconds=100,
                    holder="me", max_steps=12)
    return Engine(flow, EngineOptions(**{**defaults, **options}), clock, random.Random(7))


def add(flow: Flow, **fields) -> Item:
    return flow.update(Item(**fields))


def test_retry_delay_is_exponential_capped_jittered_and_honours_retry_after():
    top = lambda low, high: high  # noqa: E731 - the top of the jitter range
    bottom = lambda low, high: low  # noqa: E731
    assert [retry_delay(n, 10, 100, None, top) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 80, 100]
    assert retry_delay(2, 10, 100, None, bottom) == 10
    assert retry_delay(1, 10, 100, 45, top) == 45, "never sooner than Retry-After"
    assert retry_delay(3, 10, 100, 5, top) == 40


def test_each_recorded_step_renews_the_lease_and_the_last_releases_it():
    clock, flow = Clock(), Flow(Clock())
    item = add(flow, name="a", todo=("one", "two", "three"))

    def slow(i: Item, n: str) -> Item:
        clock.now += timedelta(seconds=5)
        return dataclasses.replace(i, done=i.done + (n,))

    flow.behaviour = {n: (lambda i, n=n: slow(i, n)) for n in ("one", "two", "three")}
    flow.writes.clear()
    assert engine(flow, clock).advance(item) == "done"
    leases = [(w.lease_holder, w.lease_until) for w in flow.writes]
    assert leases == [("me", T0 + timedelta(seconds=60)), ("me", T0 + timedelta(seconds=65)),
                      ("me", T0 + timedelta(seconds=70)), (None, None)]
    assert flow.items["a"].done == ("one", "two", "three")


def test_a_transient_error_is_an_attempt_with_a_planned_delay_and_releases_the_lease():
    clock, flow = Clock(), Flow(Clock())

    def throttled(i: Item) -> Item:
        raise TransientError("429 from the backend", retry_after=30)

    flow.behaviour = {"call": throttled}
    item = add(flow, name="a", todo=("call",))
    assert engine(flow, clock).advance(item) == "done"
    stored = flow.items["a"]
    assert stored.attempts == 1 and stored.last_error == "429 from the backend"
    assert stored.next_attempt_at == T0 + timedelta(seconds=30), "Retry-After beats the 5-10 s backoff"
    assert stored.lease_holder is None


def test_after_max_attempts_the_flow_gives_up_on_that_step():
    clock, flow = Clock(), Flow(Clock())
    flow.behaviour = {"call": lambda i: (_ for _ in ()).throw(TransientError("503"))}
    item = add(flow, name="a", todo=("call", "after"))
    eng = engine(flow, clock)
    delays = []
    for _ in range(3):
        eng.advance(flow.items["a"])
        stored = flow.items["a"]
        if stored.next_attempt_at:
            delays.append((stored.next_attempt_at - clock.now).total_seconds())
            clock.now = stored.next_attempt_at
    stored = flow.items["a"]
    assert stored.failed_at == "call" and stored.last_error == "gave up after 3 attempts: 503"
    rng = random.Random(7)
    planned = [retry_delay(n, 10, 100, None, rng.uniform) for n in (1, 2)]
    assert delays == pytest.approx(planned, abs=1e-5)  # timedelta keeps microseconds
    assert item.name == "a"


def test_a_permanent_error_takes_the_failure_path_at_once():
    clock, flow = Clock(), Flow(Clock())
    flow.behaviour = {"call": lambda i: (_ for _ in ()).throw(PermanentError("401 master key refused"))}
    item = add(flow, name="a", todo=("call", "after"))
    assert engine(flow, clock).advance(item) == "failed"
    stored = flow.items["a"]
    assert (stored.failed_at, stored.attempts, stored.lease_holder) == ("call", 0, None)


def test_an_unexpected_exception_is_an_attempt_logged_with_the_id_and_a_traceback(caplog):
    clock, flow = Clock(), Flow(Clock())
    flow.behaviour = {"call": lambda i: {}["missing"]}
    item = add(flow, name="poison", todo=("call",))
    eng = engine(flow, clock, max_attempts=2)
    with caplog.at_level(logging.ERROR, logger="shared.services.engine"):
        eng.advance(item)
    stored = flow.items["poison"]
    assert stored.attempts == 1 and stored.lease_holder is None and stored.next_attempt_at > T0
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert "poison" in record.getMessage() and record.exc_info is not None
    clock.now = stored.next_attempt_at
    eng.advance(stored)
    assert flow.items["poison"].failed_at == "call", "a poison record ends on its failure path"


def test_steps_per_record_and_tick_are_capped():
    clock, flow = Clock(), Flow(Clock())
    item = add(flow, name="a", todo=tuple(f"s{n}" for n in range(10)))
    engine(flow, clock, max_steps=4).advance(item)
    assert flow.items["a"].done == ("s0", "s1", "s2", "s3")
    assert flow.items["a"].lease_holder is None


def test_a_record_leased_by_another_holder_is_skipped_until_its_lease_runs_out():
    clock, flow = Clock(), Flow(Clock())
    item = add(flow, name="a", todo=("one",), lease_holder="other", lease_until=T0 + timedelta(seconds=5))
    eng = engine(flow, clock)
    assert eng.advance(item) is None and flow.items["a"].done == ()
    clock.now += timedelta(seconds=6)
    assert eng.advance(flow.items["a"]) == "done"


def test_a_failure_path_that_leads_back_to_the_failed_step_stops_the_run():
    clock, flow = Clock(), Flow(Clock())
    flow.behaviour = {"call": lambda i: (_ for _ in ()).throw(PermanentError("no"))}
    flow.fail = lambda item, step, reason, now: item.with_changes(now, last_error=reason)  # type: ignore[method-assign]
    calls = []
    original = flow.behaviour["call"]
    flow.behaviour["call"] = lambda i: (calls.append(1), original(i))[1]
    item = add(flow, name="a", todo=("call",))
    engine(flow, clock).advance(item)
    assert len(calls) == 1, "the same hopeless step is not tried twice in one run"


def test_a_conflict_while_recording_leaves_the_record_to_the_next_tick():
    clock, flow = Clock(), Flow(Clock())
    item = add(flow, name="a", todo=("one",))

    def someone_else_writes(i: Item) -> Item:
        flow.items["a"] = dataclasses.replace(flow.items["a"], version=99)
        return dataclasses.replace(i, done=("one",))

    flow.behaviour = {"one": someone_else_writes}
    assert engine(flow, clock).advance(item) is None


@pytest.mark.parametrize("due_in, expected", [(-1, 1), (5, 0)])
def test_a_tick_takes_only_due_records(due_in, expected):
    clock, flow = Clock(), Flow(Clock())
    add(flow, name="a", todo=("one",), next_attempt_at=T0 + timedelta(seconds=due_in))
    report = engine(flow, clock).run_tick()
    assert report.due == expected
