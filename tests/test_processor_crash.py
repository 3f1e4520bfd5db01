"""Crash safety of the approval processor against the real kube-apiserver (issue #3).

"A crash between any two steps (kill the processing process with SIGKILL at each step boundary,
then run a new one): every request ends in one consistent state with exactly one live key, no
orphaned key or subscription, and no lost notification."

Each case runs the processor in a subprocess (`tests/crash_runner.py`, the app's own
`context.processor()` built from env settings) that is SIGKILLed at one step boundary, checks
the Secret / LiteLLM / mailbox are exactly at that boundary, moves a fresh runner's clock past the dead holder's lease,
and runs a fresh subprocess until nothing is due. The real pieces: kube-apiserver + etcd, an
aiosmtpd server, and the LiteLLM key API stand-in (LiteLLM's own request models).

Kill points are made in the runner (see crash_runner.py for the trigger of each) and, inside a
backend call, by the servers of this module, which SIGKILL the runner's pid mid-call:
- "litellm-received" / "litellm-generated": LiteLLM got /key/generate and had not / had created
  the key; the runner never gets the answer;
- "smtp-received" / "smtp-accepted": the SMTP server got the message's DATA and had not / had
  stored (delivered) it; the runner never gets the reply.

The second test starts two runners on the same 20 requests at once (no crash).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
import yaml

from shared import context
from shared.domain.request import KeyRequest, State
from shared.store.codec import request_name
from tests.conftest import ROOT, Mailbox, free_port
from tests.fork_server import Run
from tests.standins import Call, Reply
from tests.standins.faults import latency
from tests.standins.litellm_server import LiteLLMStandin

SECRET_KEY = "litellm-api-key"

CONFIG = {
    "models": [
        {"id": "auto-model", "title": "Auto", "auto_approve": True,
         "provisioning": {"backends": ["litellm"],
                          "litellm": {"models": ["gpt-4o-mini"], "duration": "30d", "max_budget": 10,
                                      "budget_duration": "30d", "tpm_limit": 1000, "rpm_limit": 10}}},
        {"id": "ruled-model", "title": "Ruled",
         "provisioning": {"backends": ["litellm"], "litellm": {"models": ["gpt-4o-mini"]}}},
    ],
    "approval": {"default": "approve", "rules": [
        {"kind": "match", "decision": "deny", "domains": ["blocked.example"],
         "reason": "contractors use the shared pool"},
    ]},
    "notifications": {"product_name": "Key Desk"},
}
DENY_REASON = "contractors use the shared pool"


# --- killing the runner from the servers it talks to ---------------------------------------------


class Target:
    """The runner to kill, once its pid is known, when a server reaches the armed moment."""

    def __init__(self, applied: bool, alias: str = "", address: str = "") -> None:
        self.applied, self.alias, self.address = applied, alias, address
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


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (FileNotFoundError, ProcessLookupError):
            return  # already reaped by Popen
        time.sleep(0.005)
    raise AssertionError(f"runner {pid} survived SIGKILL")


class KillingLiteLLM(LiteLLMStandin):
    """The LiteLLM stand-in, plus one hook on /key/generate for the armed alias: SIGKILL the
    runner when the call arrives (`applied=False`: no key is created) or after the key was
    created (`applied=True`), so the answer never reaches it."""

    kill_target: Target | None = None

    def serve(self, call: Call) -> Reply:
        target = self.kill_target
        if (target is None or (call.method, call.path) != ("POST", "/key/generate")
                or not isinstance(call.body, dict) or call.body.get("key_alias") != target.alias):
            return super().serve(call)
        self.kill_target = None
        if not target.applied:
            target.kill()
            return Reply(503, {"error": "the caller is gone"})
        reply = super().serve(call)
        assert reply.status == 200, reply
        target.kill()
        return reply

    def rows(self, alias: str | None = None, request_id: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(row) for row in self.keys.values()
                    if (alias is None or row["key_alias"] == alias)
                    and (request_id is None or (row.get("metadata") or {}).get("request_id") == request_id)]

    def generate_calls(self, alias: str) -> int:
        return sum(1 for c in self.calls_to("POST", "/key/generate")
                   if isinstance(c.body, dict) and c.body.get("key_alias") == alias)


class KillingMailbox(Mailbox):
    """conftest's Mailbox, plus one hook on the armed address's message (its DATA): SIGKILL the
    runner before the message is stored (`applied=False`: not delivered) or after (`applied=True`:
    delivered), so the server's reply never reaches it."""

    kill_target: Target | None = None

    async def handle_DATA(self, server, session, envelope):
        target = self.kill_target
        if target is None or target.address not in envelope.rcpt_tos:
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
    yield standin
    standin.stop()


@pytest.fixture(scope="module")
def crash_smtp():
    from aiosmtpd.controller import Controller

    mailbox = KillingMailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    controller.mailbox = mailbox
    yield controller
    controller.stop()


# --- the harness -------------------------------------------------------------------------------------


class Crashing:
    def __init__(self, namespace: str, env: dict[str, str], litellm: KillingLiteLLM, smtp) -> None:
        self.namespace, self.env, self.litellm, self.smtp = namespace, env, litellm, smtp
        self.processes: list[subprocess.Popen] = []

    @property
    def store(self):
        return context.request_store()

    def submit(self, email: str, model: str) -> KeyRequest:
        return self.store.submit(KeyRequest.new(email, model))[0]

    def get(self, request: KeyRequest) -> KeyRequest:
        return self.store.get(request.id)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "tests.crash_runner", *args], cwd=ROOT,
                                   env={**self.env, **(env or {})}, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def start_waiting(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A runner that builds its processor, says "ready", and waits for `go` to tick (its
        start-up overlaps whatever the test does meanwhile)."""
        return self.start("--wait-for-go", *args, env=env)

    def go(self, *processes: subprocess.Popen, clock_ahead: float = 0.0) -> None:
        """Once all are ready, let them tick (together), their clocks `clock_ahead` seconds ahead."""
        for process in processes:
            assert process.stdout.readline().strip() == "ready", self.finish(process)
        for process in processes:
            process.stdin.write(f"go {clock_ahead}\n")
            process.stdin.flush()

    def stop_all(self) -> None:
        """Teardown: end any runner of this test still alive (only after a failed assertion)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()

    @staticmethod
    def finish(process: subprocess.Popen, timeout: float = 30) -> Run:
        stdout, stderr = process.communicate(timeout=timeout)
        return Run(process.returncode, stdout, stderr)

    def run(self, *args: str, target: Target | None = None) -> Run:
        process = self.start(*args)
        if target is not None:
            target.started(process.pid)
        return self.finish(process)

    def past_the_lease(self, request: KeyRequest) -> float:
        """Seconds a fresh runner's clock must be ahead for the dead holder's lease to have run out."""
        lease_until = self.get(request).lease_until
        if lease_until is None:
            return 0.0
        return max(0.0, (lease_until - datetime.now(UTC)).total_seconds()) + 0.05


@pytest.fixture
def crashing(app_env, tmp_path, monkeypatch, kube_cluster, crash_litellm, crash_smtp):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    monkeypatch.setenv("CONFIG_FILE", str(config_file))
    context.reset()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ACS_", "APIM_", "SMTP_", "LITELLM_", "PROCESSOR_", "PYTEST_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "KUBECONFIG": str(kube_cluster.kubeconfig),
        "KUBERNETES_NAMESPACE": app_env,
        "CONFIG_FILE": str(config_file),
        "LITELLM_BASE_URL": crash_litellm.url,
        "LITELLM_API_KEY": crash_litellm.master_key,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(crash_smtp.port),
        "SMTP_USE_TLS": "none",
        "PROCESSOR_LEASE_SECONDS": "1",
        "PROCESSOR_BACKOFF_SECONDS": "0.05",
        "PROCESSOR_MAX_ATTEMPTS": "3",
    })
    crash_litellm.kill_target = None
    crash_smtp.mailbox.kill_target = None
    harness = Crashing(app_env, env, crash_litellm, crash_smtp)
    yield harness
    harness.stop_all()
    crash_litellm.faults.clear()
    crash_litellm.kill_target = None
    crash_smtp.mailbox.kill_target = None


# --- the kill points -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class At:
    """Where the dead runner left things: the Secret, LiteLLM and the mailbox."""

    state: State
    decided: bool = True
    prepared: bool = False
    issued: bool = False
    settled: bool = False
    live_keys: int = 0
    emails: int = 0


@dataclasses.dataclass(frozen=True)
class Case:
    point: str
    # "runner": crash_runner's own trigger named `point`; "litellm"/"smtp": that server kills the
    # runner inside the call, before (`applied=False`) or after (`applied=True`) applying it.
    by: str
    at: At
    applied: bool = False
    deny: bool = False
    generate_calls: int = 1  # /key/generate calls for the alias, the dead run's and the new one's
    emails: tuple[int, int] = (1, 1)  # (at least, at most) after recovery


APPROVED = State.APPROVED
PREPARED = dict(prepared=True)
ISSUED = dict(prepared=True, issued=True, live_keys=1)
CASES = [
    # The lease write completed, nothing else (a store-write trigger: no log line follows the lease).
    Case("lease", "runner", At(State.PENDING, decided=False)),
    # The rules ran and logged the decision, which is not recorded (the line precedes the record).
    Case("approve-decided-unrecorded", "runner", At(State.PENDING, decided=False)),
    # The decision "approved" is recorded; nothing prepared.
    Case("approve-decided", "runner", At(APPROVED)),
    # prepare chose a key (in memory only, lost with the process); the Secret: decided, not prepared.
    Case("prepare-unrecorded", "runner", At(APPROVED)),
    # The key and alias are recorded, LiteLLM not called yet.
    Case("prepared", "runner", At(APPROVED, **PREPARED)),
    # DURING the backend call, before LiteLLM applied it: no key exists yet.
    Case("litellm-received", "litellm", At(APPROVED, **PREPARED), generate_calls=2),
    # DURING the backend call, after LiteLLM created the key: the runner died before the answer.
    # The new run calls /key/generate again with the recorded key, meets "alias already exists",
    # and finds its own key by /key/info: still exactly one key.
    Case("litellm-generated", "litellm", At(APPROVED, **PREPARED, live_keys=1), applied=True, generate_calls=2),
    # The answer came back (logged), "issued" is not recorded: as above, seen from the runner.
    Case("issue-unrecorded", "runner", At(APPROVED, **PREPARED, live_keys=1), generate_calls=2),
    # "issued" is recorded, the email not sent.
    Case("issued", "runner", At(APPROVED, **ISSUED)),
    # DURING email delivery, before the SMTP server took the message: nothing delivered.
    Case("smtp-received", "smtp", At(APPROVED, **ISSUED)),
    # DURING email delivery, after the SMTP server accepted (delivered) the message: the runner
    # died before its 250. Nothing recorded says it was sent, so the new run sends it again. This
    # and the next are the only windows where a notification legitimately goes out twice (same
    # key, same Message-ID, so a receiver can drop the copy): at least one, at most two.
    Case("smtp-accepted", "smtp", At(APPROVED, **ISSUED, emails=1), applied=True, emails=(1, 2)),
    # The 250 came back (logged), "notified"/active not recorded: the same window, from the runner.
    Case("approved-email-unrecorded", "runner", At(APPROVED, **ISSUED, emails=1), emails=(1, 2)),
    # "notified" and active are recorded in one write; the lease is never released.
    Case("active", "runner", At(State.ACTIVE, **ISSUED, settled=True, emails=1)),
    # The deny path: before the decision is recorded, after it, and in the email's window.
    Case("deny-decided-unrecorded", "runner", At(State.PENDING, decided=False), deny=True, generate_calls=0),
    Case("deny-decided", "runner", At(State.DENIED), deny=True, generate_calls=0),
    Case("denied-email-unrecorded", "runner", At(State.DENIED, emails=1), deny=True, generate_calls=0,
         emails=(1, 2)),
]


def mails_to(crashing: Crashing, address: str) -> list:
    return crashing.smtp.mailbox.to(address)


def body(message) -> str:
    return message.get_body(("plain",)).get_content()


@pytest.mark.parametrize("case", CASES, ids=[c.point for c in CASES])
def test_a_crash_at_each_step_boundary_resumes_to_one_consistent_state(crashing, core_api, case: Case):
    address = f"crash-{case.point}@{'blocked.example' if case.deny else 'example.com'}"
    request = crashing.submit(address, "ruled-model" if case.deny else "auto-model")
    alias = f"llm-key-request-{request.id}"
    # The new runner starts now and waits for `go` (its start-up overlaps the dead one's run).
    fresh = crashing.start_waiting("--until-settled", "15", "--pause", "0.1")

    # 1. A runner SIGKILLed at the boundary.
    target = None
    if case.by == "runner":
        killed = crashing.run("--kill-after", case.point)
    else:
        target = Target(case.applied, alias=alias, address=address)
        server = crashing.litellm if case.by == "litellm" else crashing.smtp.mailbox
        server.kill_target = target
        killed = crashing.run(target=target)
    assert killed.returncode == -signal.SIGKILL, killed
    if target is not None:
        assert target.fired.wait(5), killed
    else:
        assert "crash_runner: SIGKILL" in killed.stderr, killed

    # 2. The kill landed exactly at the boundary.
    dead = crashing.get(request)
    at = case.at
    assert dead.state == at.state, killed
    assert (dead.decided_at is not None) == at.decided, killed
    assert (dead.references.get("litellm-prepared") == "true") == at.prepared, killed
    # the chosen key is recorded from prepare until its email is: then it leaves the Secret
    assert (SECRET_KEY in dead.secrets) == (at.prepared and at.state != State.ACTIVE), killed
    assert (dead.settled is not None) == at.settled, killed
    if at.state == APPROVED:
        assert dead.done("litellm-issued") == at.issued, killed
    if dead.settled is None:  # the write that settles a request also releases its lease
        assert dead.lease_holder is not None, "a SIGKILLed holder never releases its lease"
    assert len(crashing.litellm.rows(alias=alias)) == at.live_keys, killed
    assert len(mails_to(crashing, address)) == at.emails, killed

    # 3. The new runner, once the dead one's lease ran out, ticks until nothing is due (so at
    #    least one more tick after the request's work is done, which must find nothing to do).
    crashing.go(fresh, clock_ahead=crashing.past_the_lease(request))
    recovered = crashing.finish(fresh)
    assert recovered.returncode == 0, recovered
    assert recovered.ticks and recovered.ticks[-1]["due"] == 0, recovered
    assert "Traceback" not in recovered.stderr, recovered

    # 4. One consistent state, exactly one live key (none when denied), no lost notification.
    done = crashing.get(request)
    assert done.attempts == 0 and done.last_error is None, recovered
    mail = mails_to(crashing, address)
    low, high = case.emails
    assert low <= len(mail) <= high, (len(mail), recovered)
    assert len({m["Message-ID"] for m in mail}) == 1, "a re-sent notification keeps its Message-ID"
    assert crashing.litellm.generate_calls(alias) == case.generate_calls, recovered

    if case.deny:
        assert done.state == State.DENIED and done.settled == State.DENIED, recovered
        assert done.reason == DENY_REASON and done.secrets == {} and done.references == {}
        assert crashing.litellm.rows(alias=alias) == [] and crashing.litellm.rows(request_id=request.id) == []
        assert all(DENY_REASON in body(m) for m in mail)
        return

    assert done.state == State.ACTIVE and done.settled == State.ACTIVE, recovered
    key = delivered_key(mail[0])
    live = crashing.litellm.rows(alias=alias)
    assert len(live) == 1, live
    assert live[0]["token"] == hashlib.sha256(key.encode()).hexdigest(), "the emailed key is the live one"
    assert len(crashing.litellm.rows(request_id=request.id)) == 1, "no orphaned key under another alias"
    assert all(key in body(m) for m in mail), "every notification carries the one live key"
    if SECRET_KEY in dead.secrets:
        assert key == dead.secrets[SECRET_KEY], "the recorded key is reused, never replaced"
    assert not core_api.read_namespaced_secret(request_name(request.id), crashing.namespace).data, \
        "no key is kept after delivery"


def delivered_key(message) -> str:
    found = re.search(r"sk-[A-Za-z0-9_-]{20,}", body(message))
    assert found, "the approval email carries the key"
    return found.group(0)


def test_two_runners_at_once_provision_each_request_exactly_once(crashing):
    requests = [crashing.submit(f"pair{i}@example.com", "auto-model") for i in range(20)]
    # A slow LiteLLM keeps requests in flight while the other runner's next tick reads them, so
    # the lease (not only the resourceVersion of a stale list) is what keeps it off them.
    crashing.litellm.faults.plan("POST /key/generate", *[latency(0.3)] * 20)
    # No crash here, so the lease must outlast a request's steps (the processor's assumption:
    # "longer than the slowest step"); with 1 s a slow step could lose its lease mid-way.
    runners = [crashing.start_waiting("--until-settled", "20", "--pause", "0.05",
                                      env={"PROCESSOR_LEASE_SECONDS": "30"}) for _ in range(2)]
    crashing.go(*runners)  # both start their first tick together
    runs = [crashing.finish(runner) for runner in runners]
    for run in runs:
        assert run.returncode == 0, run
        assert "Traceback" not in run.stderr, run

    for request in requests:
        done = crashing.get(request)
        alias = f"llm-key-request-{request.id}"
        assert done.state == State.ACTIVE, (alias, runs)
        assert crashing.litellm.generate_calls(alias) == 1, alias
        live = crashing.litellm.rows(alias=alias)
        mail = mails_to(crashing, request.email)
        assert len(mail) == 1, alias
        key = delivered_key(mail[0])
        assert len(live) == 1 and live[0]["token"] == hashlib.sha256(key.encode()).hexdigest()
        assert done.secrets == {}, "no key is kept after delivery"
    # Each request was carried through by exactly one of them.
    assert sum(tick["processed"] for run in runs for tick in run.ticks) == 20, runs
    print("two runners:", [run.ticks for run in runs])
