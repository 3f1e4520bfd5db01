"""Crash safety of an active key's life against the real kube-apiserver: a reminder, the expiry, a
renewal and a LiteLLM rotation (with its grace), SIGKILLed at every step boundary, then finished
by a fresh runner.

"Crash safety for every new step: extend the SIGKILL-at-every-step-boundary test to expiry,
reminder, renewal and rotation (exactly one live key after the grace, zero after expiry, no
orphan, no lost email except the documented SMTP window)."

Each case gets an active key the ordinary way (submitted, then issued and emailed by the app's
own processor in this process), then runs the processor in a process of its own
(`tests/crash_runner.py`: `context.processor()` built from env settings), SIGKILLed at one
boundary; checks the Secret, LiteLLM and the mailbox are exactly at that boundary; and runs a
fresh process, its clock past the dead holder's lease, until nothing is due. The runs are forked
by `python -m tests.crash_runner --fork-server`, which imported the app once: every run is still a
process of its own, killed by its pid, without ~1 s of imports each.

Time is never waited out. Every runner's clock starts `--clock-ahead` seconds ahead (17 days for
the 14-day reminder, 30 days for the expiry, 25 hours for the end of the grace), and the LiteLLM
stand-in's clock (which counts a key's `duration`) is moved to the same offset before each run,
so both sides agree on every expiry.

Kill points, none of them on log text:
- "the step's outcome IS recorded": `--kill-after-write WHAT` dies after the write (COMPLETED at
  the apiserver) that took the lease, gained the step WHAT in `steps`, moved or settled the state,
  cleared `renew_requested_at` / `rotate_requested_at`, or dropped `litellm-prepared` (revoked);
- "the step ran, its outcome is NOT recorded", inside a backend call, from the stand-in side:
  the LiteLLM stand-in of this module SIGKILLs the runner when /key/generate of the next key,
  /key/update or /key/delete of the request's key arrives (not applied: "received") or once it
  is applied ("applied"), and the SMTP server when the flow's message arrives (not stored:
  "received") or once it is stored ("accepted"); the runner never gets the answer.
Steps that do no I/O (decide-renewal, prepare-rotation, expire, finish-rotation) have no window
of their own between "ran" and "recorded": the Secret is exactly as after the previous write.

`test_every_write_and_backend_call_of_a_flow_is_a_listed_kill_point` checks the list against a
clean run of each flow, so a step added later is not silently left out. The last test adds a third
moment inside a call: LiteLLM got the rotation's /key/generate, its caller died, and LiteLLM applied
it a moment later (after the fresh runner's first call on that key), with the key taken back
(expired, revoked) in between.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import signal
import threading
import time
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

import pytest
import yaml

from shared import context
from shared.domain.request import KeyRequest, State, utcnow
from shared.services import lifecycle
from tests.clock import Clock
from tests.conftest import ROOT, Mailbox, free_port, request_secret
from tests.crash_runner import describe_write, install_clock, recorded_point
from tests.fork_server import Child, ForkServer, Run
from tests.standins import Call, Reply
from tests.standins.litellm_server import LiteLLMStandin

DAY = 86400.0
LEASE_SECONDS = 1
GRACE = timedelta(hours=24)
CONFIG = {
    "models": [
        {"id": "auto-model", "title": "Auto", "auto_approve": True,
         "provisioning": {"backends": ["litellm"], "litellm": {"models": ["gpt-4o-mini"], "duration": "30d"}}},
    ],
    "notifications": {"product_name": "Key Desk", "expiry_reminders_days": [14, 3]},
    "provisioning": {"rotation_grace": "24h"},
}
LIFETIME = timedelta(days=30)
# How each email is told apart (the default subjects, shared/services/messages.py).
SUBJECTS = {"approved": "is ready", "reminder": "expires in", "expired": "has expired",
            "renewed": "has been renewed", "rotated": "your new key"}
KEY = re.compile(r"sk-[A-Za-z0-9_-]{20,}")
PREPARED, ROTATED, NOTIFIED, RETIRED = ("litellm-rotation-prepared", "litellm-rotated", "notified-rotated",
                                        "litellm-retired")


# --- killing the runner from the servers it talks to ---------------------------------------------


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (FileNotFoundError, ProcessLookupError):
            return  # already reaped
        time.sleep(0.005)
    raise AssertionError(f"runner {pid} survived SIGKILL")


class Target:
    """The runner to kill, once its pid is known, when a server reaches the armed moment: before
    it applied the call (`applied=False`) or after (`applied=True`)."""

    def __init__(self, applied: bool) -> None:
        self.applied = applied
        self.pid: int | None = None
        self._started = threading.Event()
        self.fired = threading.Event()

    def started(self, pid: int) -> None:
        self.pid = pid
        self._started.set()

    def kill(self) -> None:
        assert self._started.wait(10), "the runner was never started"
        os.kill(self.pid, signal.SIGKILL)
        self.fired.set()
        wait_dead(self.pid)  # the runner runs no more code: the server's answer is lost


class CallTarget(Target):
    """A LiteLLM call: `path` (POST /key/generate, /key/update, /key/delete) whose body `matches`."""

    def __init__(self, applied: bool, path: str, matches) -> None:
        super().__init__(applied)
        self.path, self.matches = path, matches


class MailTarget(Target):
    """A message to `address` whose subject contains `subject`."""

    def __init__(self, applied: bool, address: str, subject: str) -> None:
        super().__init__(applied)
        self.address, self.subject = address, subject


class LateTarget(CallTarget):
    """A LiteLLM call that arrives, loses its caller (SIGKILL), and is applied LATER, as a LiteLLM
    still working on a call whose caller died does: once a later call that `release_when` matches
    arrives (applied just before it is served, `before=True`, or just after)."""

    def __init__(self, path: str, matches, release_when, before: bool) -> None:
        super().__init__(False, path, matches)
        self.release_when, self.before = release_when, before
        self.held: Call | None = None
        self.released = threading.Event()


class KillingLiteLLM(LiteLLMStandin):
    """The LiteLLM stand-in, plus one armed hook (a CallTarget): SIGKILL the runner when the call
    arrives, or once it was applied (2xx; a call that was not applied leaves the hook armed), so
    the answer never reaches it. Its clock (`clock.offset`) is the runners'."""

    kill_target: CallTarget | None = None
    late: LateTarget | None = None  # a call held since its caller died, applied later

    def serve(self, call: Call) -> Reply:
        late = self.late
        if late is not None and late.held is not None and late.release_when(call):
            self.late = None
            if late.before:
                self._apply_late(late)
                return self._serve(call)
            reply = self._serve(call)
            self._apply_late(late)
            return reply
        return self._serve(call)

    def _apply_late(self, late: LateTarget) -> None:
        with self._lock:
            reply = {"/key/generate": self._generate}[late.path](late.held)
        assert reply.status == 200, reply
        late.released.set()

    def _serve(self, call: Call) -> Reply:
        target = self.kill_target
        if (target is None or (call.method, call.path) != ("POST", target.path)
                or not isinstance(call.body, dict) or not target.matches(call.body)):
            return super().serve(call)
        if not target.applied:
            self.kill_target = None
            if isinstance(target, LateTarget):
                target.held = call
                self.late = target
            target.kill()
            return Reply(503, {"error": "the caller is gone"})
        reply = super().serve(call)
        if reply.status < 300:
            self.kill_target = None
            target.kill()
        return reply

    def rows_of(self, request: KeyRequest) -> list[dict]:
        """Every key that belongs to the request by its alias (any generation) or its metadata."""
        prefix = f"llm-key-request-{request.id}"
        with self._lock:
            return [dict(row) for row in self.keys.values()
                    if str(row.get("key_alias") or "").startswith(prefix)
                    or (row.get("metadata") or {}).get("request_id") == request.id]

    def count_calls(self, path: str, matches) -> int:
        return sum(1 for c in self.calls_to("POST", path) if isinstance(c.body, dict) and matches(c.body))


class KillingMailbox(Mailbox):
    """conftest's Mailbox (a real aiosmtpd server behind it), plus one armed hook (a MailTarget) on
    that message's DATA: SIGKILL the runner before the message is stored (not delivered) or after
    (delivered), so the server's reply never reaches it."""

    kill_target: MailTarget | None = None

    async def handle_DATA(self, server, session, envelope):
        target = self.kill_target
        if target is None or target.address not in envelope.rcpt_tos:
            return await super().handle_DATA(server, session, envelope)
        headers = BytesHeaderParser(policy=default_policy).parsebytes(envelope.original_content or envelope.content)
        if target.subject.lower() not in str(headers["Subject"]).lower():
            return await super().handle_DATA(server, session, envelope)
        self.kill_target = None
        if not target.applied:
            target.kill()
            return "451 the caller is gone"
        answer = await super().handle_DATA(server, session, envelope)
        target.kill()
        return answer


@pytest.fixture(scope="module")
def crash_litellm():
    standin = KillingLiteLLM().start()
    standin.clock = Clock()  # LiteLLM counts durations on the runners' clock (offset set per run)
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def crash_smtp():
    import logging

    from aiosmtpd.controller import Controller

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    mailbox = KillingMailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    controller.mailbox = mailbox
    yield controller
    controller.stop()


# --- runs, forked ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    server = ForkServer("tests.crash_runner", tmp_path_factory.mktemp("lifecycle-runs"), Run)
    yield server
    server.close()


# --- the flows and their boundaries ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Flow:
    name: str
    ahead: float  # seconds the killed runner's clock (and LiteLLM's) is ahead of real time
    email: str  # the kind of email the flow sends (SUBJECTS)
    ask: str | None = None  # asked (lifecycle.ask) before the run, at the runner's time
    rotated: bool = False  # the rotation up to its email done before the run: the grace's end is due


FLOWS = {
    # 17 days on: 13 days before the expiry, the 14-day reminder is due (the 3-day one is not).
    "reminder": Flow("reminder", 17 * DAY, "reminder"),
    # A minute past the expiry (30 days).
    "expiry": Flow("expiry", 30 * DAY + 60, "expired"),
    # 5 days on (no reminder due yet): the rules decide again, /key/update, the renewed email.
    "renewal": Flow("renewal", 5 * DAY, "renewed", ask="renew"),
    # Now: prepare the next key, /key/generate it under the -g2 alias, email it.
    "rotation": Flow("rotation", 0.0, "rotated", ask="rotate"),
    # 25 hours after the rotated email: the grace is over, /key/delete the previous key, finish.
    "grace": Flow("grace", 25 * 3600.0, "rotated", ask="rotate", rotated=True),
}


@dataclasses.dataclass(frozen=True)
class At:
    """Where the dead runner left things: the Secret, LiteLLM and the mailbox."""

    state: State = State.ACTIVE
    steps: frozenset[str] = frozenset()  # exactly the steps recorded in the current state
    live: int = 1  # live LiteLLM keys of the request
    emails: int = 0  # emails of the flow's kind delivered
    lease: bool = True  # the dead holder's lease is on the Secret (the last step's write releases it)
    next_key: bool = False  # the rotation's next key is in the Secret's data
    extended: bool = False  # LiteLLM's expiry of the key moved (renewal)


@dataclasses.dataclass(frozen=True)
class Case:
    flow: str
    point: str  # by "write": the runner's --kill-after-write WHAT; else the server's moment
    at: At
    by: str = "write"  # "write", "litellm" or "smtp"
    call: str = ""  # by litellm: "/key/generate" (the next key), "/key/update", "/key/delete"
    applied: bool = False
    emails: tuple[int, int] = (1, 1)  # (at least, at most) of the flow's kind after recovery

    @property
    def id(self) -> str:
        return f"{self.flow}-{self.point}"


def steps(*names: str) -> frozenset[str]:
    return frozenset(names)


# The SMTP window: the server accepted (stored) the message but the runner died before its 250, so
# nothing recorded says it was sent and the fresh runner sends it again. Only there may an email go
# out twice (same Message-ID, so a receiver can drop the copy): at least one, at most two. Every
# other boundary is either before the send (the fresh runner sends it, once) or after it was
# recorded (never sent again): exactly one.
TWICE = (1, 2)
CASES = [
    # --- a reminder: one step (send, then record reminded-14d with the next due moment) ---
    Case("reminder", "lease", At()),
    Case("reminder", "smtp-received", At(), by="smtp"),
    Case("reminder", "smtp-accepted", At(emails=1), by="smtp", applied=True, emails=TWICE),
    # recorded in the write that also releases the lease (nothing else is due before the 3-day one)
    Case("reminder", "step:reminded-14d", At(steps=steps("reminded-14d"), emails=1, lease=False)),
    # --- the expiry: expire (no I/O), revoke (/key/delete), the expired email (settles) ---
    Case("expiry", "lease", At()),
    Case("expiry", "state:expired", At(State.EXPIRED)),
    Case("expiry", "delete-received", At(State.EXPIRED), by="litellm", call="/key/delete"),
    Case("expiry", "delete-applied", At(State.EXPIRED, live=0), by="litellm", call="/key/delete", applied=True),
    Case("expiry", "unref:litellm-prepared", At(State.EXPIRED, live=0)),
    Case("expiry", "smtp-received", At(State.EXPIRED, live=0), by="smtp"),
    Case("expiry", "smtp-accepted", At(State.EXPIRED, live=0, emails=1), by="smtp", applied=True, emails=TWICE),
    Case("expiry", "settled:expired", At(State.EXPIRED, steps("notified-expired"), live=0, emails=1, lease=False)),
    # --- a renewal: decide (rules, no I/O), extend (/key/update), the renewed email ---
    Case("renewal", "lease", At()),
    Case("renewal", "step:renewal-decided", At(steps=steps("renewal-decided"))),
    Case("renewal", "update-received", At(steps=steps("renewal-decided")), by="litellm", call="/key/update"),
    Case("renewal", "update-applied", At(steps=steps("renewal-decided"), extended=True), by="litellm",
         call="/key/update", applied=True),
    Case("renewal", "step:litellm-extended", At(steps=steps("renewal-decided", "litellm-extended"), extended=True)),
    Case("renewal", "smtp-received", At(steps=steps("renewal-decided", "litellm-extended"), extended=True),
         by="smtp"),
    Case("renewal", "smtp-accepted", At(steps=steps("renewal-decided", "litellm-extended"), extended=True, emails=1),
         by="smtp", applied=True, emails=TWICE),
    # the last write: renew_requested_at cleared, the renewal's steps dropped, the lease released
    Case("renewal", "cleared:renew_requested_at", At(extended=True, emails=1, lease=False)),
    # --- a rotation up to its email: prepare (no I/O), /key/generate -g2, the rotated email ---
    Case("rotation", "lease", At()),
    Case("rotation", f"step:{PREPARED}", At(steps=steps(PREPARED), next_key=True)),
    Case("rotation", "generate-received", At(steps=steps(PREPARED), next_key=True), by="litellm",
         call="/key/generate"),
    Case("rotation", "generate-applied", At(steps=steps(PREPARED), live=2, next_key=True), by="litellm",
         call="/key/generate", applied=True),
    Case("rotation", f"step:{ROTATED}", At(steps=steps(PREPARED, ROTATED), live=2, next_key=True)),
    Case("rotation", "smtp-received", At(steps=steps(PREPARED, ROTATED), live=2, next_key=True), by="smtp"),
    Case("rotation", "smtp-accepted", At(steps=steps(PREPARED, ROTATED), live=2, next_key=True, emails=1),
         by="smtp", applied=True, emails=TWICE),
    # the email recorded and the next key erased in one write, which releases the lease (the grace)
    Case("rotation", f"step:{NOTIFIED}", At(steps=steps(PREPARED, ROTATED, NOTIFIED), live=2, emails=1,
                                            lease=False)),
    # --- the grace's end: retire (/key/delete of the previous key), finish (no I/O) ---
    Case("grace", "lease", At(steps=steps(PREPARED, ROTATED, NOTIFIED), live=2, emails=1)),
    Case("grace", "delete-received", At(steps=steps(PREPARED, ROTATED, NOTIFIED), live=2, emails=1), by="litellm",
         call="/key/delete"),
    Case("grace", "delete-applied", At(steps=steps(PREPARED, ROTATED, NOTIFIED), live=1, emails=1), by="litellm",
         call="/key/delete", applied=True),
    Case("grace", f"step:{RETIRED}", At(steps=steps(PREPARED, ROTATED, NOTIFIED, RETIRED), live=1, emails=1)),
    Case("grace", "cleared:rotate_requested_at", At(live=1, emails=1, lease=False)),
]


# --- one case: a namespace, an active key, the runners -------------------------------------------------


class Lives:
    def __init__(self, namespace: str, env: dict[str, str], litellm: KillingLiteLLM, smtp, forks: ForkServer,
                 core_api) -> None:
        self.namespace, self.env, self.litellm, self.smtp, self.forks = namespace, env, litellm, smtp, forks
        self.core_api = core_api
        self.children: list[Child] = []
        # The app's processor in this process (same settings): to issue the key a case starts from.
        self.processor = context.processor()

    @property
    def store(self):
        return context.request_store()

    def get(self, request: KeyRequest) -> KeyRequest:
        return self.store.get(request.id)

    def mails(self, address: str, kind: str) -> list:
        return [m for m in self.smtp.mailbox.to(address) if SUBJECTS[kind] in str(m["Subject"]).lower()]

    def live(self, request: KeyRequest) -> set[str]:
        return {row["token"] for row in self.litellm.rows_of(request)}

    def secret_data(self, request: KeyRequest) -> dict:
        return request_secret(self.core_api, self.namespace, request.id).data or {}

    def in_process_tick(self) -> None:
        self.litellm.clock.offset = timedelta()
        self.processor.run_tick()

    def spawn(self, ahead: float, *argv: str, target: Target | None = None, env: dict[str, str] | None = None) -> Child:
        """A run with its clock, and LiteLLM's, `ahead` seconds ahead of real time."""
        self.litellm.clock.offset = timedelta(seconds=ahead)
        child = self.forks.spawn([*argv, "--clock-ahead", repr(ahead), "--trace-writes"], {**self.env, **(env or {})})
        self.children.append(child)
        if target is not None:
            target.started(child.pid)
        return child

    def recover(self, ahead: float, env: dict[str, str] | None = None) -> Run:
        run = self.spawn(ahead, "--until-settled", "20", "--pause", "0.1", env=env).finish()
        assert run.returncode == 0, run
        assert run.ticks and run.ticks[-1]["due"] == 0, run
        assert "Traceback" not in run.stderr, run
        return run

    def past_the_lease(self, request: KeyRequest, ahead: float) -> float:
        """The clock offset a fresh runner needs for the dead holder's lease to have run out (at
        least `ahead`, the moment the case is about)."""
        lease_until = self.get(request).lease_until
        if lease_until is None:
            return ahead
        return max(ahead, (lease_until - utcnow()).total_seconds() + 0.05)

    def stop_all(self) -> None:
        for child in self.children:
            child.kill()


@pytest.fixture
def lives(app_env, tmp_path, monkeypatch, kube_cluster, core_api, crash_litellm, crash_smtp, forks):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    settings = {
        "KUBECONFIG": str(kube_cluster.kubeconfig),
        "KUBERNETES_NAMESPACE": app_env,
        "CONFIG_FILE": str(config_file),
        "LITELLM_BASE_URL": crash_litellm.url,
        "LITELLM_API_KEY": crash_litellm.master_key,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(crash_smtp.port),
        "SMTP_USE_TLS": "none",
        "PROCESSOR_LEASE_SECONDS": str(LEASE_SECONDS),
        "PROCESSOR_BACKOFF_SECONDS": "0.05",
        "PROCESSOR_MAX_ATTEMPTS": "3",
    }
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ACS_", "APIM_", "SMTP_", "LITELLM_", "PROCESSOR_", "PYTEST_"))}
    env.update(settings, PYTHONPATH=str(ROOT))
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    context.reset()
    crash_litellm.kill_target = crash_litellm.late = None
    crash_litellm.clock.offset = timedelta()
    crash_smtp.mailbox.kill_target = None
    harness = Lives(app_env, env, crash_litellm, crash_smtp, forks, core_api)
    yield harness
    harness.stop_all()
    crash_litellm.kill_target = crash_litellm.late = None
    crash_litellm.clock.offset = timedelta()
    crash_smtp.mailbox.kill_target = None


def body(message) -> str:
    return message.get_body(("plain",)).get_content()


def key_in(message) -> str:
    found = KEY.search(body(message))
    assert found, "the email carries the key"
    return found.group(0)


def token_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclasses.dataclass
class Start:
    """The active key a case starts from."""

    request: KeyRequest  # as stored just before the killed run
    issued: KeyRequest  # as stored once issued (its first expiry)
    key: str  # the key the approval email delivered
    asked_at: datetime | None = None
    next_key: str | None = None  # the grace: the key the rotated email delivered


def start(lives: Lives, flow: Flow, address: str) -> Start:
    request = lives.store.submit(KeyRequest.new(address, "auto-model"))[0]
    lives.in_process_tick()
    issued = lives.get(request)
    assert issued.state == State.ACTIVE and issued.secrets == {} and issued.expires_at is not None
    (approved,) = lives.mails(address, "approved")
    key = key_in(approved)
    assert lives.live(issued) == {token_of(key)}
    asked_at = None
    if flow.ask:
        asked_at = utcnow() + timedelta(seconds=0 if flow.rotated else flow.ahead)
        lifecycle.ask(lives.store, issued.id, flow.ask, "link:requester", asked_at)
    next_key = None
    if flow.rotated:
        lives.in_process_tick()  # up to the rotated email; the grace has begun
        rotating = lives.get(issued)
        assert rotating.done(NOTIFIED) and rotating.secrets == {}, rotating
        (mail,) = lives.mails(address, "rotated")
        next_key = key_in(mail)
        assert lives.live(issued) == {token_of(key), token_of(next_key)}
    return Start(lives.get(issued), issued, key, asked_at, next_key)


def arm(lives: Lives, case: Case, flow: Flow, begun: Start, address: str) -> Target | None:
    """The server-side kill target of the case, armed (None: the runner kills itself)."""
    if case.by == "smtp":
        target = MailTarget(case.applied, address, SUBJECTS[flow.email])
        lives.smtp.mailbox.kill_target = target
        return target
    if case.by == "litellm":
        lives.litellm.kill_target = CallTarget(case.applied, case.call, call_matches(case, begun))
        return lives.litellm.kill_target
    return None


def call_matches(case: Case, begun: Start):
    """Which LiteLLM call of the case is the armed one (by the body LiteLLM receives)."""
    current = token_of(begun.key)  # the approval email's key: expired, renewed, or retired
    if case.call == "/key/generate":
        return lambda body: body.get("key_alias") == f"llm-key-request-{begun.request.id}-g2"
    if case.call == "/key/update":
        return lambda body: body.get("key") == current
    return lambda body: current in (body.get("keys") or [])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_crash_at_each_lifecycle_step_boundary_resumes_to_one_consistent_state(lives, case: Case):
    flow = FLOWS[case.flow]
    address = f"life-{case.id.replace(':', '-').replace('_', '-')}@example.com".lower()
    begun = start(lives, flow, address)
    request = begun.request

    # 1. A runner, its clock at the flow's moment, SIGKILLed at the boundary.
    target = arm(lives, case, flow, begun, address)
    argv = ["--kill-after-write", case.point] if case.by == "write" else []
    killed = lives.spawn(flow.ahead, *argv, target=target).finish()
    assert killed.returncode == -signal.SIGKILL, killed
    if target is not None:
        assert target.fired.wait(5), killed
    else:
        assert "crash_runner: SIGKILL" in killed.stderr, killed

    # 2. The kill landed exactly at the boundary.
    dead = lives.get(request)
    at = case.at
    assert dead.state == at.state, killed
    assert set(dead.steps) == at.steps, (sorted(dead.steps), killed)
    assert (dead.lease_holder is not None) == at.lease, killed
    assert ("litellm-next-api-key" in dead.secrets) == at.next_key, killed
    assert bool(lives.secret_data(request)) == at.next_key, "a plain key is kept only until its email is recorded"
    assert len(lives.live(request)) == at.live, killed
    assert len(lives.mails(address, flow.email)) == at.emails, killed
    if flow.name == "renewal":
        row = lives.litellm.keys.get(token_of(begun.key)) or {}
        assert (datetime.fromisoformat(row["expires"]) != begun.issued.expires_at) == at.extended, killed

    # 3. A fresh runner, once the dead one's lease ran out, ticks until nothing is due.
    ahead = lives.past_the_lease(request, flow.ahead)
    recovered = lives.recover(ahead)
    runs = [killed, recovered]
    if flow.name == "rotation":
        # Both keys work during the grace; the new one was emailed and left the Secret.
        rotating = lives.get(request)
        assert rotating.done(NOTIFIED) and rotating.secrets == {}, recovered
        (mail, *_) = lives.mails(address, "rotated")
        assert lives.live(request) == {token_of(begun.key), token_of(key_in(mail))}, recovered
        # ... and after the grace (counted from the rotated email), a fresh runner retires the old one.
        grace_end = rotating.steps[NOTIFIED] + GRACE
        runs.append(lives.recover(max(ahead, (grace_end - utcnow()).total_seconds() + 60)))

    # 4. One consistent state, no orphan, no plain key kept, no lost email.
    done = lives.get(request)
    assert done.attempts == 0 and done.last_error is None, runs
    assert done.lease_holder is None, runs
    assert not lives.secret_data(request), "no plain key is kept after delivery"
    assert len(lives.mails(address, "approved")) == 1
    mail = lives.mails(address, flow.email)
    low, high = case.emails
    assert low <= len(mail) <= high, (len(mail), runs)
    assert len({m["Message-ID"] for m in mail}) == 1, "a re-sent email keeps its Message-ID"
    check = {"reminder": reminded, "expiry": expired, "renewal": renewed, "rotation": rotated, "grace": rotated}
    check[flow.name](lives, case, begun, done, mail, runs)


def reminded(lives: Lives, case: Case, begun: Start, done: KeyRequest, mail: list, runs: list) -> None:
    assert done.state == State.ACTIVE and done.settled == State.ACTIVE, runs
    assert set(done.steps) == {"reminded-14d"}, runs
    assert done.due_at == done.expires_at - timedelta(days=3), "next: the 3-day reminder"
    assert lives.live(done) == {token_of(begun.key)}, "the delivered key is the one live key"
    assert done.expires_at == begun.issued.expires_at


def expired(lives: Lives, case: Case, begun: Start, done: KeyRequest, mail: list, runs: list) -> None:
    assert done.state == State.EXPIRED and done.settled == State.EXPIRED, runs
    assert lives.live(done) == set(), "zero live keys after expiry"
    assert not any(name.startswith("litellm-") for name in done.references), "nothing left of the key"
    assert done.secrets == {} and done.due_at is None


def renewed(lives: Lives, case: Case, begun: Start, done: KeyRequest, mail: list, runs: list) -> None:
    assert done.state == State.ACTIVE and done.settled == State.ACTIVE, runs
    assert done.renew_requested_at is None and not done.steps, runs
    token = token_of(begun.key)
    assert lives.live(done) == {token}, "the same key, no new one"
    assert done.expires_at == datetime.fromisoformat(lives.litellm.keys[token]["expires"]), \
        "the recorded expiry is LiteLLM's"
    # 30 days from the renewal (LiteLLM counts a retried /key/update from the retry: seconds more)
    assert abs(done.expires_at - (begun.asked_at + LIFETIME)) < timedelta(minutes=2), (done.expires_at, runs)
    assert done.due_at == done.expires_at - timedelta(days=14), "the reminders are armed for the new expiry"
    updates = lives.litellm.count_calls("/key/update", lambda body: body.get("key") == token)
    assert updates == (2 if case.by == "litellm" else 1), runs


def rotated(lives: Lives, case: Case, begun: Start, done: KeyRequest, mail: list, runs: list) -> None:
    assert done.state == State.ACTIVE and done.settled == State.ACTIVE, runs
    assert done.rotate_requested_at is None and not done.steps, runs
    new_key = key_in(mail[0])
    assert all(key_in(m) == new_key for m in mail), "every rotated email carries the one next key"
    if begun.next_key is not None:
        assert new_key == begun.next_key
    new = token_of(new_key)
    assert new != token_of(begun.key)
    assert lives.live(done) == {new}, "after the grace exactly one key: the emailed one"
    assert done.references["litellm-key-token"] == new
    alias = f"llm-key-request-{done.id}-g2"
    assert done.references["litellm-key-alias"] == alias and lives.litellm.keys[new]["key_alias"] == alias
    assert done.secrets == {}
    # A rotation does not extend the key's life (renewal does): the next key ends when the first did.
    assert abs(done.expires_at - begun.issued.expires_at) <= timedelta(seconds=5), (done.expires_at, runs)
    generated = lives.litellm.count_calls("/key/generate", lambda body: body.get("key_alias") == alias)
    assert generated == (2 if case.call == "/key/generate" else 1), runs


@pytest.mark.parametrize("name", list(FLOWS))
def test_every_write_and_backend_call_of_a_flow_is_a_listed_kill_point(lives, name: str):
    """The boundaries above are not taken on trust: a clean run of the flow (in this process, the
    same clock moves) records its writes and backend calls. Every write is one a listed
    `--kill-after-write` point stops at, every listed point stops at one of them, and every
    LiteLLM call and email of the flow has its "received" and "applied" cases. A step added to
    the lifecycle fails here until its boundaries are listed."""
    flow = FLOWS[name]
    address = f"clean-{name}@example.com"
    begun = start(lives, flow, address)
    store = lives.processor.store
    update, writes = store.update, []

    def traced(request: KeyRequest) -> KeyRequest:
        before = store.get(request.id)
        written = update(request)
        writes.append((before, written))
        return written

    store.update = traced
    install_clock(lives.processor, flow.ahead)
    lives.litellm.clock.offset = timedelta(seconds=flow.ahead)
    first_call, mails_before = len(lives.litellm.calls), len(lives.mails(address, flow.email))
    lives.processor.run_tick()
    assert writes and all(w.id == begun.request.id for _, w in writes)

    holder = lives.processor.options.holder
    listed = [case for case in CASES if case.flow == name]
    points = [recorded_point(case.point, holder) for case in listed if case.by == "write"]
    for before, written in writes:
        assert any(point(before, written) for point in points), f"no kill point for: {describe_write(before, written)}"
    for case in (case for case in listed if case.by == "write"):
        assert any(recorded_point(case.point, holder)(b, w) for b, w in writes), f"{case.id}: no such write"
    with lives.litellm._lock:
        paths = {call.path for call in lives.litellm.calls[first_call:] if call.method == "POST"}
    assert {(case.call, case.applied) for case in listed if case.by == "litellm"} == \
        {(path, applied) for path in paths for applied in (False, True)}
    sent = len(lives.mails(address, flow.email)) > mails_before
    assert {case.applied for case in listed if case.by == "smtp"} == ({False, True} if sent else set())


# --- a rotation's create call still in flight when its caller died ------------------------------------

IN_FLIGHT_LEASE = 60  # seconds: the window in which a call whose caller died may still complete


@pytest.mark.parametrize("then", [
    # Control: the fresh runner resumes the rotation; the late create and the retried one are the
    # same key under the same alias, so still one next key.
    pytest.param("resumed", id="rotation-generate-applied-late"),
    # The key expires before the fresh runner comes (the rotation began 30 s before the expiry).
    pytest.param("expired", id="expiry-during-a-rotation-create-in-flight"),
    # The requester revokes it ("my key leaked") before the fresh runner comes.
    pytest.param("revoked", id="revoke-during-a-rotation-create-in-flight"),
])
def test_a_rotation_key_created_after_its_caller_died_is_never_left_behind(lives, then: str):
    """/key/generate of the next key reaches LiteLLM, the runner dies (SIGKILL) before the answer,
    and LiteLLM completes the call a moment later, inside the window the processor allows a call
    whose caller died (the lease: `lease_seconds` after the dead holder's lease ran out): after the
    fresh runner's first call on the next key. A revoke made inside that window must be made again
    once it is over (processor.py), so the late key is taken back too."""
    env = {"PROCESSOR_LEASE_SECONDS": str(IN_FLIGHT_LEASE)}
    address = f"late-{then}@example.com"
    flow = dataclasses.replace(FLOWS["rotation"], ahead=30 * DAY - 30 if then == "expired" else 0.0)
    begun = start(lives, flow, address)
    request = begun.request
    alias = f"llm-key-request-{request.id}-g2"
    next_token: list[str] = []

    def on_next_key(body: dict) -> bool:
        if then == "resumed":  # the fresh runner's own /key/generate of the next key
            return body.get("key_alias") == alias
        return bool(next_token) and next_token[0] in (body.get("keys") or [])  # its /key/delete of it

    path = "/key/generate" if then == "resumed" else "/key/delete"
    late = LateTarget("/key/generate", lambda body: body.get("key_alias") == alias,
                      lambda call: call.method == "POST" and call.path == path and isinstance(call.body, dict)
                      and on_next_key(call.body), before=then == "resumed")
    lives.litellm.kill_target = late
    killed = lives.spawn(flow.ahead, target=late, env=env).finish()
    assert killed.returncode == -signal.SIGKILL and late.fired.wait(5), killed

    dead = lives.get(request)
    assert set(dead.steps) == {PREPARED} and dead.lease_holder is not None, killed
    assert lives.live(request) == {token_of(begun.key)}, "LiteLLM has not applied it yet"
    next_token.append(dead.references["litellm-next-key-token"])
    if then == "revoked":
        lifecycle.ask(lives.store, request.id, "revoke", "link:requester", utcnow())

    # A fresh runner once the dead holder's lease ran out, and another once no call of the dead one
    # can still complete (`lease_seconds` later: a revoke the first deferred is made then).
    lease_end = (dead.lease_until - utcnow()).total_seconds()
    ahead = max(30 * DAY + 1 if then == "expired" else flow.ahead, lease_end + 0.05)
    runs = [killed, lives.recover(ahead, env=env)]
    assert late.released.is_set(), ("LiteLLM applied the held call", runs)
    runs.append(lives.recover(max(ahead, lease_end + IN_FLIGHT_LEASE + 1), env=env))

    done = lives.get(request)
    assert done.attempts == 0 and done.last_error is None, runs
    assert not lives.secret_data(request), "no plain key is kept"
    if then == "resumed":
        assert done.done(NOTIFIED), runs
        (mail,) = lives.mails(address, "rotated")
        assert lives.live(request) == {token_of(begun.key), token_of(key_in(mail))} == \
            {token_of(begun.key), next_token[0]}, "the late key is the emailed one: no second next key"
        return
    assert done.state == (State.EXPIRED if then == "expired" else State.REVOKED), runs
    assert lives.live(request) == set(), ("an orphan key is live after the key was taken back",
                                          lives.litellm.rows_of(request), runs)
