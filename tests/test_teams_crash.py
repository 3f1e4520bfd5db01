"""Crash safety of the team reconciler against the real kube-apiserver and the ARM stand-in.

"SIGKILL at every team step boundary: in the end exactly one APIM product, product policy,
subscription and `{team}-api-key` Secret, no orphan, and the next (fresh) run finishes the work.
The same for a deletion: in the end nothing is left (no product, subscription, keys Secret, team
record)."

Each case runs the reconciler in a process of its own (`tests/teams_crash_runner.py`: the app's
own `context.team_reconciler()` built from env settings, the real azure-mgmt-apimanagement client
over HTTPS to the ARM stand-in, SMTP to a real aiosmtpd server, KAITO Workspaces on the
apiserver) that is SIGKILLed at one boundary. The test checks the record is exactly at that
boundary, waits out the dead holder's lease (`llm-key-requestor/lease-until` on the record;
PROCESSOR_LEASE_SECONDS=2), and runs one fresh process until nothing is due. One namespace and
one APIM service per case. The runs are forked by a fork server that imported the SDKs once
(`ForkServer`): still one fresh process per run, without ~1-3 s of imports each.

The reconciler's internals and log lines are being rewritten, so no trigger depends on them:

- "the step's outcome IS recorded": the runner wraps the team store's `update` and dies after
  the write whose `steps` (annotation `llm-key-requestor/steps`) gained the step named X, or
  after the write that settled the record;
- "the step ran, its outcome is NOT recorded": the ARM stand-in of this module SIGKILLs the
  runner right after it applied a PUT/DELETE (product, policy, an API link, subscription: the
  runner never gets the answer), and the runner dies right after a port call returned
  (teams_crash_runner.CALLS: the keys Secret written / deleted, a Workspace applied / deleted).

The step names are not taken on trust: a clean run (in-process, module fixture `discovered`)
records the sequence of writes and the steps each gained, and when each of those calls and ARM
calls happened. Each listed case looks its point up there (and is skipped, saying so, if the
reconciler no longer has it), checks the dead runner left the record exactly as the clean run had
it at that moment, and `test_*_steps_not_listed_here` run the same case for every discovered
step this module does not list, so a new step is covered without editing this file.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared import context
from shared.domain.team import parse
from shared.services import teams
from tests.conftest import ROOT, Mailbox, free_port
from tests.fork_server import Child, ForkServer
from tests.standins import Call, Reply
from tests.standins.arm_server import ApimService, ArmStandin
from tests.teams_crash_runner import CALLS, after, call_owner, traced_update
from tests.teams_fixtures import (
    API_IDS,
    AZURE_SUBSCRIPTION,
    RESOURCE_GROUP,
    StaticToken,
    per_model_file,
)
from tests.test_local_cluster import GROUP, PLURAL, VERSION

# The contract under test: the names a team's resources have (docs/teams.md, shared/store/teams.py).
TEAM = "beta"
SOURCE = "developer-requests/beta/access.yaml"
PRODUCT = f"product-{TEAM}"
SUBSCRIPTION = f"sub-{TEAM}"
KEYS_SECRET = f"{TEAM}-api-key"
RECORD_SECRET = f"llm-team-access-{TEAM}"
WORKSPACES = ["beta-phi-3-mini-4k-instruct"]  # per_model_file's one KAITO model
OWNER_TAG = "llm-key-requestor"  # the APIM tag that marks the product as the app's
ANNOTATION = "llm-key-requestor/"
LEASE_SECONDS = 2

LISTED_LIVE_STEPS = ("product", "policy", "apis", "subscription", "keys", "workspaces", "notified")
LISTED_DELETE_STEPS = ("delete-subscription", "delete-product", "delete-keys", "delete-workspaces",
                       "notified-removed")


# --- killing the runner from the ARM stand-in ---------------------------------------------------------


def wait_dead(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.005)
    raise AssertionError(f"runner {pid} survived SIGKILL")


class Target:
    """The runner to kill when the ARM stand-in has applied the armed call (`key` "PUT product"
    ..., on a path ending in `path_suffix`), or when the SMTP server got the message to `address`
    and had not (`delivered=False`) or had (`delivered=True`) stored it."""

    def __init__(self, key: str = "", path_suffix: str = "", address: str = "", delivered: bool = False) -> None:
        self.key, self.path_suffix = key, path_suffix
        self.address, self.delivered = address, delivered
        self.pid: int | None = None
        self._started = threading.Event()
        self.fired = threading.Event()

    def matches(self, call: Call, key: str) -> bool:
        return key == self.key and call.path.endswith(self.path_suffix)

    def started(self, pid: int) -> None:
        self.pid = pid
        self._started.set()

    def kill(self) -> None:
        assert self._started.wait(10), "the runner was never started"
        os.kill(self.pid, signal.SIGKILL)
        self.fired.set()
        wait_dead(self.pid)  # the runner runs no more code: the stand-in's answer is lost


class KillingArm(ArmStandin):
    """The ARM stand-in, plus one hook: once the armed call was applied (answered 2xx), SIGKILL
    the runner before the answer is sent."""

    kill_target: Target | None = None

    def serve(self, call: Call) -> Reply:
        target = self.kill_target
        if target is None or not target.matches(call, self.fault_key(call)):
            return super().serve(call)
        reply = super().serve(call)
        if reply.status >= 300:  # not applied: stay armed
            return reply
        self.kill_target = None
        target.kill()
        return reply


@pytest.fixture(scope="module")
def killing_arm():
    server = KillingArm().start()
    yield server
    server.close()


class KillingMailbox(Mailbox):
    """conftest's Mailbox (a real aiosmtpd server behind it), which notes when each message
    arrived, plus one hook on the armed address's message (its DATA): SIGKILL the runner before
    the message is stored (not delivered) or after (delivered), so the reply never reaches it."""

    kill_target: Target | None = None

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, list[str]]] = []  # (monotonic time, recipients)

    async def handle_DATA(self, server, session, envelope):
        self.arrivals.append((time.monotonic(), list(envelope.rcpt_tos)))
        target = self.kill_target
        if target is None or target.address not in envelope.rcpt_tos:
            return await super().handle_DATA(server, session, envelope)
        self.kill_target = None
        if not target.delivered:
            target.kill()
            return "451 the caller is gone"
        answer = await super().handle_DATA(server, session, envelope)
        target.kill()
        return answer


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


# --- one case: a namespace, an APIM service, an owner, and the runners -------------------------------


@dataclasses.dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def lines(self, kind: str) -> list[Any]:
        found = []
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if kind in entry:
                    found.append(entry[kind])
        return found

    @property
    def ticks(self) -> list[dict]:
        return self.lines("tick")

    def __str__(self) -> str:
        return f"runner exited {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    server = ForkServer("tests.teams_crash_runner", tmp_path_factory.mktemp("team-runs"), Run)
    yield server
    server.close()


_APP_PREFIXES = ("ACS_", "APIM_", "ARM_", "SMTP_", "LITELLM_", "PROCESSOR_", "PYTEST_", "KUBERNETES_", "EMAIL_",
                 "TEAMS_CRASH_")
_APP_NAMES = ("KUBECONFIG", "CONFIG_FILE", "CA_BUNDLE", "LOG_LEVEL", "AZURE_CLIENT_ID", "TEAM_KEYS_NAMESPACE")


class TeamCase:
    """One case: its own namespace, APIM service (on the shared stand-in) and team owner; the app
    settings for it (the runners' environment, and this process's for the in-process side)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, core_api: Any, kube_cluster: Any, arm: KillingArm,
                 smtp: Any, team_catalog: Any, forks: ForkServer, config_file: Path | None = None) -> None:
        from kubernetes import client

        self.monkeypatch, self.core, self.arm, self.smtp = monkeypatch, core_api, arm, smtp
        self.catalog = team_catalog
        self.objects = client.CustomObjectsApi(core_api.api_client)
        self.namespace = f"t-{uuid.uuid4().hex[:12]}"
        core_api.create_namespace({"metadata": {"name": self.namespace}})
        self.keys_namespace = f"{self.namespace}-keys"  # TEAM_KEYS_NAMESPACE: the keys apart from the records
        core_api.create_namespace({"metadata": {"name": self.keys_namespace}})
        self.service_name = f"apim-{uuid.uuid4().hex[:8]}"
        self.service: ApimService = arm.add_service(AZURE_SUBSCRIPTION, RESOURCE_GROUP, self.service_name)
        for api in API_IDS + ("other-api",):
            self.service.apis[api] = {"displayName": api, "path": api, "protocols": ["https"]}
        self.owner = f"owner-{uuid.uuid4().hex[:8]}@contoso.com"
        self.settings = {
            "KUBECONFIG": str(kube_cluster.kubeconfig),
            "KUBERNETES_NAMESPACE": self.namespace,
            "TEAM_KEYS_NAMESPACE": self.keys_namespace,
            "CONFIG_FILE": str(config_file or ROOT / "config.yaml"),
            "APIM_SUBSCRIPTION_ID": AZURE_SUBSCRIPTION,
            "APIM_RESOURCE_GROUP": RESOURCE_GROUP,
            "APIM_SERVICE_NAME": self.service_name,
            "APIM_TEAM_API_IDS": ",".join(API_IDS),
            "APIM_GATEWAY_URL": "https://gw.example",
            "ARM_ENDPOINT": arm.url,
            "CA_BUNDLE": str(arm.ca_pem_path),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_USE_TLS": "none",
            "PROCESSOR_LEASE_SECONDS": str(LEASE_SECONDS),
            "PROCESSOR_BACKOFF_SECONDS": "0.05",
            "PROCESSOR_MAX_ATTEMPTS": "4",
            "LOG_LEVEL": "INFO",
            # config.yaml's models need LiteLLM at start-up (context.load); teams never call it.
            "LITELLM_BASE_URL": "http://127.0.0.1:9",
            "LITELLM_API_KEY": "sk-not-used-by-teams",
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(_APP_PREFIXES) and k not in _APP_NAMES}
        self.env = {**env, **self.settings, "PYTHONPATH": str(ROOT), "TEAMS_CRASH_ARM_TOKEN": arm.token}
        self.forks = forks
        self.children: list[Child] = []
        # The test's own, in-process view of the app (same settings): to submit, to provision
        # before a deletion case, and for the clean run that discovers the steps.
        from shared.adapters import apim

        for name in [k for k in os.environ if (k.startswith(_APP_PREFIXES) or k in _APP_NAMES)
                     and not k.startswith("PYTEST_")]:
            monkeypatch.delenv(name)
        for name, value in self.settings.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(apim, "default_credential", lambda client_id=None: StaticToken(arm.token))
        context.reset()

    # --- the app, in-process ---------------------------------------------------------------------------

    @property
    def store(self):
        return context.team_store()

    def submit(self):
        spec = parse(per_model_file(TEAM, self.owner), SOURCE, self.catalog)
        record, outcome = teams.submit(self.store, spec, SOURCE, "basic:admin")
        assert outcome == "created", outcome
        return record

    def request_delete(self):
        return teams.request_delete(self.store, TEAM, "basic:admin")

    def reconcile_in_process(self, until: Callable[[], bool], ticks: int = 20, advance: float = 0.0) -> None:
        """Tick until `until()`; with `advance`, the reconciler's clock moves on that far after each
        tick (past a rotation's grace) instead of the test sleeping."""
        reconciler = context.team_reconciler()
        if advance:
            from tests.clock import Clock

            clock = Clock()
            clock.install(reconciler)
        for _ in range(ticks):
            reconciler.run_tick()
            if until():
                return
            if advance:
                clock.advance(advance)
            else:
                time.sleep(0.05)
        raise AssertionError(f"not settled in process: {self.store.get(TEAM)}")

    def ready(self) -> bool:
        record = self.store.get(TEAM)
        return record is not None and record.phase == "ready" and record.settled

    def gone(self) -> bool:
        return self.store.get(TEAM) is None

    def provision_in_process(self) -> None:
        self.submit()
        self.reconcile_in_process(self.ready)

    # --- what is there ------------------------------------------------------------------------------------

    def secret(self, name: str, namespace: str | None = None):
        from kubernetes.client.rest import ApiException

        try:
            return self.core.read_namespaced_secret(name, namespace or self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def secret_names(self, namespace: str | None = None) -> list[str]:
        return sorted(s.metadata.name for s in self.core.list_namespaced_secret(namespace or self.namespace).items
                      if s.type != "kubernetes.io/service-account-token")

    def recorded_steps(self) -> set[str]:
        secret = self.secret(RECORD_SECRET)
        assert secret is not None, "the team's record is gone"
        return set(json.loads((secret.metadata.annotations or {}).get(ANNOTATION + "steps") or "{}"))

    def keys(self) -> dict[str, str] | None:
        secret = self.secret(KEYS_SECRET, self.keys_namespace)
        return None if secret is None else {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def subscription_keys(self) -> dict[str, str]:
        properties = self.service.subscriptions[SUBSCRIPTION].properties
        return {"primary-key": properties["primaryKey"], "secondary-key": properties["secondaryKey"]}

    def workspaces(self) -> list[str]:
        body = self.objects.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return sorted(item["metadata"]["name"] for item in body["items"])

    def mails(self, event: str) -> list:
        return [m for m in self.smtp.mailbox.to(self.owner) if m["Subject"].rstrip().endswith(event)]

    def calls(self) -> list[Call]:
        return [c for c in self.arm.calls if f"/service/{self.service_name}" in c.path]

    # --- runners -------------------------------------------------------------------------------------------

    def start(self, *args: str) -> Child:
        child = self.forks.spawn(list(args), self.env)
        self.children.append(child)
        return child

    def run(self, *args: str, target: Target | None = None) -> Run:
        child = self.start(*args)
        if target is not None:
            target.started(child.pid)
        return child.finish()

    def past_the_lease(self) -> str:
        """Seconds a fresh runner's clock must be ahead for the dead holder's lease to have run out."""
        secret = self.secret(RECORD_SECRET)
        text = (secret.metadata.annotations or {}).get(ANNOTATION + "lease-until") if secret else None
        if not text:
            return "0"
        left = (datetime.fromisoformat(text) - datetime.now(UTC)).total_seconds()
        return f"{max(0.0, left) + 0.05:.3f}"

    def stop_all(self) -> None:
        self.arm.kill_target = self.smtp.mailbox.kill_target = None
        for child in self.children:
            child.kill()


@pytest.fixture
def new_case(monkeypatch, core_api, kube_cluster, workspace_crd, killing_arm, crash_smtp, catalog, forks):
    made: list[TeamCase] = []

    def make(config_file: Path | None = None) -> TeamCase:
        case = TeamCase(monkeypatch, core_api, kube_cluster, killing_arm, crash_smtp, catalog, forks, config_file)
        made.append(case)
        return case

    yield make
    for case in made:
        case.stop_all()
    context.reset()


# --- the clean run: which steps there are, and what was recorded when --------------------------------


@dataclasses.dataclass
class Timeline:
    """One clean run, as the store and the ARM stand-in saw it (monotonic times of this process)."""

    writes: list[tuple[float, dict]]  # (when, the runner's describe_write of it)
    marks: dict[str, list[float]]  # a name of teams_crash_runner.CALLS -> when each such call returned
    calls: list[tuple[Call, str]]  # ARM calls to the case's service, with the stand-in's key for each
    mails: list[float]  # when each message to the owner arrived at the SMTP server

    def steps(self) -> list[str]:
        return [name for _, write in self.writes for name in write["gained"]]

    def recorded_before(self, moment: float) -> set[str]:
        """The steps recorded by the last write that completed before `moment`."""
        steps: set[str] = set()
        for when, write in self.writes:
            if when < moment:
                steps = set(write["steps"])
        return steps

    def step_written(self, name: str) -> float | None:
        return next((when for when, write in self.writes if name in write["gained"]), None)

    def rotation_recorded_before(self, moment: float) -> set[str]:
        steps: set[str] = set()
        for when, write in self.writes:
            if when < moment:
                steps = set(write.get("rotation_steps") or ())
        return steps


@dataclasses.dataclass
class Discovered:
    live: Timeline
    deletion: Timeline


def clean_run(case: TeamCase, start: Callable[[], None], until: Callable[[], bool], advance: float = 0.0) -> Timeline:
    from shared.store.teams import KubernetesTeamStore

    writes: list[tuple[float, dict]] = []
    marks: dict[str, list[float]] = {name: [] for name in CALLS}
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as traced:
        traced.setattr(KubernetesTeamStore, "update",
                       traced_update(KubernetesTeamStore.update, lambda w: writes.append((time.monotonic(), w))))
        start()  # the HTTP side's write (submit / request_delete) is no step, but keep it on the timeline
        for name in CALLS:
            owner, method = call_owner(name)
            traced.setattr(owner, method,
                           after(getattr(owner, method), lambda n=name: marks[n].append(time.monotonic())))
        case.reconcile_in_process(until, advance=advance)
    return Timeline(writes, marks, [(c, case.arm.fault_key(c)) for c in case.calls() if c.at >= started],
                    [when for when, rcpts in case.smtp.mailbox.arrivals if when >= started and case.owner in rcpts])


@pytest.fixture(scope="module")
def discovered(core_api, kube_cluster, workspace_crd, killing_arm, crash_smtp, catalog, forks) -> Discovered:
    with pytest.MonkeyPatch.context() as mp:
        case = TeamCase(mp, core_api, kube_cluster, killing_arm, crash_smtp, catalog, forks)
        live = clean_run(case, case.submit, case.ready)
        deletion = clean_run(case, case.request_delete, case.gone)
        context.reset()
    found = Discovered(live, deletion)
    print("discovered live steps:", live.steps(), "deletion steps:", deletion.steps())
    assert live.steps() and deletion.steps(), "a clean run recorded no step at all"
    return found


# --- the kill points -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    # "step": the write that recorded step `name`; "settled": the write that settled the record;
    # "call": the call `name` of teams_crash_runner.CALLS returned; "arm": the stand-in applied `arm`;
    # "smtp": the SMTP server got the owner's message, and had (`delivered`) or had not stored it.
    by: str
    arm: tuple[str, str] | None = None  # (fault key, path suffix), e.g. ("PUT product", "/products/product-beta")
    applied: Callable[[TeamCase], bool] | None = None  # what the dead runner's last call left behind
    delivered: bool = False
    emails: tuple[int, int] = (1, 1)  # (at least, at most) of the owner's email of the case, in the end
    occurrence: int = 1  # "call" and "smtp": the N-th such call / message of the clean run
    after_grace: bool = False  # a rotation's point after its grace (the run before it is done in-process)

    def runner_args(self) -> list[str]:
        return {"step": ["--kill-after-step", self.name], "settled": ["--kill-after-settled"],
                "call": ["--kill-after-call", self.name], "arm": []}[self.by]

    def moment(self, timeline: Timeline) -> float | None:
        """When the clean run passed this point (None: it does not have it)."""
        if self.by == "step":
            return timeline.step_written(self.name)
        if self.by == "settled":
            return next((when for when, w in timeline.writes if w["became_settled"]), None)
        if self.by == "call":
            return next(iter(timeline.marks[self.name][self.occurrence - 1:]), None)
        if self.by == "smtp":
            return next(iter(timeline.mails[self.occurrence - 1:]), None)
        target = Target(*self.arm)
        return next((call.at for call, key in timeline.calls if target.matches(call, key)), None)

    def expected_steps(self, timeline: Timeline) -> set[str]:
        """The steps the dead runner's record holds: for a recorded point, those of the write that
        recorded it; for an unrecorded one, those recorded before the call was made."""
        moment = self.moment(timeline)
        if self.by in ("step", "settled"):
            return next(set(w["steps"]) for when, w in timeline.writes if when == moment)
        return timeline.recorded_before(moment)


def step(name: str) -> Point:
    return Point(name, "step")


def arm(key: str, suffix: str, applied: Callable[[TeamCase], bool]) -> Point:
    name = "arm-" + key.lower().replace(" ", "-").replace("/", "-") + "-applied"
    return Point(name, "arm", (key, suffix), applied)


LIVE_POINTS = [
    *(step(name) for name in LISTED_LIVE_STEPS),
    # The write that settles the record (phase ready, observed generation): every step recorded.
    Point("settled", "settled"),
    # The stand-in applied the call, the runner died before the answer: nothing of it is recorded.
    arm("PUT product", f"/products/{PRODUCT}", lambda c: PRODUCT in c.service.products),
    # Made but not yet tagged as the app's (apim_marks): the next run adopts it, by its description.
    arm("PUT tag", f"/tags/{OWNER_TAG}", lambda c: OWNER_TAG in c.service.tags),
    arm("PUT product/tag", f"/products/{PRODUCT}/tags/{OWNER_TAG}",
        lambda c: OWNER_TAG in c.service.product_tags.get(PRODUCT, set())),
    arm("PUT product/policy", f"/products/{PRODUCT}/policies/policy", lambda c: PRODUCT in c.service.policies),
    arm("PUT product/api", f"/products/{PRODUCT}/apis/{API_IDS[0]}",
        lambda c: API_IDS[0] in c.service.product_apis.get(PRODUCT, set())),
    arm("PUT subscription", f"/subscriptions/{SUBSCRIPTION}", lambda c: SUBSCRIPTION in c.service.subscriptions),
    # The keys Secret holds the subscription's keys / the Workspace exists; nothing recorded.
    Point("keys-written", "call", applied=lambda c: c.keys() == c.subscription_keys()),
    Point("workspace-applied", "call", applied=lambda c: c.workspaces() == WORKSPACES),
    # The "provisioned" email, DURING delivery: before the server stored it (nothing delivered),
    # and after (delivered; the runner died before the 250, nothing recorded: it is sent again).
    Point("smtp-received", "smtp", applied=lambda c: c.mails("provisioned") == []),
    Point("smtp-accepted", "smtp", applied=lambda c: len(c.mails("provisioned")) == 1, delivered=True,
          emails=(1, 2)),
]

DELETE_POINTS = [
    *(step(name) for name in LISTED_DELETE_STEPS),
    arm("DELETE subscription", f"/subscriptions/{SUBSCRIPTION}", lambda c: SUBSCRIPTION not in c.service.subscriptions),
    arm("DELETE product/api", f"/products/{PRODUCT}/apis/{API_IDS[0]}",
        lambda c: API_IDS[0] not in c.service.product_apis.get(PRODUCT, set())),
    arm("DELETE product/policy", f"/products/{PRODUCT}/policies/policy", lambda c: PRODUCT not in c.service.policies),
    arm("DELETE product", f"/products/{PRODUCT}", lambda c: PRODUCT not in c.service.products),
    Point("keys-deleted", "call", applied=lambda c: c.keys() is None),
    Point("workspace-deleted", "call", applied=lambda c: c.workspaces() == []),
    # The "removed" email, as above.
    Point("smtp-received", "smtp", applied=lambda c: c.mails("removed") == []),
    Point("smtp-accepted", "smtp", applied=lambda c: len(c.mails("removed")) == 1, delivered=True, emails=(1, 2)),
]


# --- a crash, then a fresh run -----------------------------------------------------------------------


def crash_and_recover(case: TeamCase, point: Point, timeline: Timeline) -> tuple[Run, Run]:
    if point.moment(timeline) is None:
        pytest.skip(f"the reconciler no longer has {point.by} {point.name!r} "
                    f"(a clean run recorded the steps {timeline.steps()})")
    expected = point.expected_steps(timeline)

    # 1. A runner SIGKILLed at the point.
    if point.by in ("arm", "smtp"):
        if point.by == "arm":
            target = case.arm.kill_target = Target(*point.arm)
        else:
            target = case.smtp.mailbox.kill_target = Target(address=case.owner, delivered=point.delivered)
        killed = case.run(target=target)
        case.arm.kill_target = case.smtp.mailbox.kill_target = None
        assert target.fired.is_set(), killed
    else:
        killed = case.run(*point.runner_args())
        assert "teams_crash_runner: SIGKILL" in killed.stderr, killed
    assert killed.returncode == -signal.SIGKILL, killed

    # 2. The kill landed exactly there: the record holds what the clean run had recorded at that
    #    moment, and the dead runner's last call took effect.
    assert case.recorded_steps() == expected, killed
    if point.applied is not None:
        assert point.applied(case), killed
    record = case.secret(RECORD_SECRET)
    assert ((record.metadata.labels or {}).get("team-settled") == "true") == (point.by == "settled"), killed

    # 3. With its clock past the dead holder's lease, a fresh runner ticks until nothing is due (so at
    #    least one tick after the work is done, which must find nothing to do).
    recovered = case.run("--until-settled", "20", "--pause", "0.1", "--clock-ahead", case.past_the_lease())
    assert recovered.returncode == 0, recovered
    assert recovered.ticks and recovered.ticks[-1]["due"] == 0, recovered
    assert "Traceback" not in recovered.stderr, recovered
    return killed, recovered


def assert_one_of_each(case: TeamCase, point: Point, timeline: Timeline, recovered: Run) -> None:
    service = case.service
    assert list(service.products) == [PRODUCT], (list(service.products), recovered)
    assert service.product_tags.get(PRODUCT) == {OWNER_TAG}, "the product is marked as the app's"
    product = service.products[PRODUCT].properties
    assert product["state"] == "published" and product["subscriptionsLimit"] == 1
    assert list(service.policies) == [PRODUCT], recovered
    assert service.policies[PRODUCT].properties["format"] == "rawxml"
    assert service.product_apis.get(PRODUCT) == set(API_IDS), recovered
    assert list(service.subscriptions) == [SUBSCRIPTION], (list(service.subscriptions), recovered)
    subscription = service.subscriptions[SUBSCRIPTION].properties
    assert subscription["scope"] == f"/products/{PRODUCT}" and subscription["state"] == "active"
    assert case.keys() == case.subscription_keys(), "the keys Secret holds the subscription's current keys"
    assert case.secret_names() == [RECORD_SECRET], "no orphaned Secret, no key beside the record"
    assert case.secret_names(case.keys_namespace) == [KEYS_SECRET], "no orphaned keys Secret"
    assert case.workspaces() == WORKSPACES

    done = case.store.get(TEAM)
    assert (done.phase, done.settled, done.observed_generation) == ("ready", True, done.generation), recovered
    assert done.attempts == 0 and done.last_error is None, recovered
    assert set(done.steps) == set(timeline.steps()), recovered

    # The owner was told, at least once. At-most-once cannot be promised at the SMTP boundary: a
    # runner killed after the server accepted the message (its 250 sent, "smtp-accepted") but
    # before the step was recorded has no record that it was sent, so the next run sends it again
    # (SMTP has no idempotent submit to ask "did you get this one?"). A re-send is the same
    # message (one idempotency key, so one Message-ID) a receiver can drop as a duplicate. Away
    # from that window exactly one is sent; one crash makes at most one re-send.
    provisioned = case.mails("provisioned")
    low, high = point.emails
    assert low <= len(provisioned) <= high, (len(provisioned), recovered)
    assert len({m["Message-ID"] for m in provisioned}) == 1, "a re-sent notification keeps its Message-ID"
    assert case.mails("updated") == [] and case.mails("removed") == [], "one provisioning, one kind of email"


def assert_nothing_left(case: TeamCase, point: Point, recovered: Run) -> None:
    service = case.service
    assert service.subscriptions == {} and service.products == {}, recovered
    assert service.policies == {} and not service.product_apis.get(PRODUCT), recovered
    assert case.keys() is None and case.secret(RECORD_SECRET) is None, recovered
    assert case.secret_names() == [] and case.secret_names(case.keys_namespace) == [], "no orphaned Secret"
    assert case.workspaces() == []
    assert case.store.get(TEAM) is None
    assert len(case.mails("provisioned")) == 1  # sent once, by the in-process provisioning before
    removed = case.mails("removed")  # at least once; twice only at the SMTP boundary, as above
    low, high = point.emails
    assert low <= len(removed) <= high, (len(removed), recovered)
    assert len({m["Message-ID"] for m in removed}) == 1, "a re-sent notification keeps its Message-ID"


def live_case(case: TeamCase, point: Point, discovered: Discovered) -> None:
    case.submit()
    _, recovered = crash_and_recover(case, point, discovered.live)
    assert_one_of_each(case, point, discovered.live, recovered)


def deletion_case(case: TeamCase, point: Point, discovered: Discovered) -> None:
    case.provision_in_process()
    case.request_delete()
    _, recovered = crash_and_recover(case, point, discovered.deletion)
    assert_nothing_left(case, point, recovered)


@pytest.mark.parametrize("point", LIVE_POINTS, ids=[p.name for p in LIVE_POINTS])
def test_a_crash_at_each_team_step_boundary_ends_with_one_of_each(new_case, discovered, point: Point):
    live_case(new_case(), point, discovered)


@pytest.mark.parametrize("point", DELETE_POINTS, ids=[p.name for p in DELETE_POINTS])
def test_a_crash_at_each_deletion_step_boundary_ends_with_nothing_left(new_case, discovered, point: Point):
    deletion_case(new_case(), point, discovered)


def test_live_steps_not_listed_here_are_crash_safe_too(new_case, discovered):
    unlisted = [name for name in discovered.live.steps() if name not in LISTED_LIVE_STEPS]
    if not unlisted:
        pytest.skip(f"every step of a clean run is listed: {discovered.live.steps()}")
    for name in unlisted:
        live_case(new_case(), step(name), discovered)


def test_deletion_steps_not_listed_here_are_crash_safe_too(new_case, discovered):
    unlisted = [name for name in discovered.deletion.steps() if name not in LISTED_DELETE_STEPS]
    if not unlisted:
        pytest.skip(f"every step of a clean deletion is listed: {discovered.deletion.steps()}")
    for name in unlisted:
        deletion_case(new_case(), step(name), discovered)


# --- a key rotation: SIGKILL at each of its step boundaries ------------------------------------------
#
# The team is provisioned in-process, the rotation asked for (POST .../rotate's use case), and a runner
# is killed at one point of the rotation; for a point after the grace, the rotation up to the wait is
# done in-process first and the killed runner's clock is past the grace. Fresh runners then finish it,
# each with its clock past the dead holder's lease and, once the rotation waits, past its grace (the
# grace is ROTATION_GRACE in this module's config file; no test sleeps through it). In the end: one
# subscription, the keys Secret holds its keys, both keys were regenerated, the rotation is over, and
# at no moment was the key the owner had been told to use regenerated: the new key never changes once
# the owner was emailed about it, and the old one is regenerated only after that email.

ROTATION_GRACE = 2.0
LISTED_ROTATION_STEPS = ("rotate-new-key", "rotate-keys-new", "notified-rotated", "rotate-old-key", "rotate-keys-old")
REGENERATE_SECONDARY = ("POST subscription/regenerateSecondaryKey",
                        f"/subscriptions/{SUBSCRIPTION}/regenerateSecondaryKey")
REGENERATE_PRIMARY = ("POST subscription/regeneratePrimaryKey", f"/subscriptions/{SUBSCRIPTION}/regeneratePrimaryKey")


def _changed(slot: str) -> Callable[[TeamCase], bool]:
    return lambda c: c.subscription_keys()[slot] != c.keys_before_rotation[slot]


ROTATION_POINTS = [
    *(Point(name, "step", after_grace=name in ("rotate-old-key", "rotate-keys-old"))
      for name in LISTED_ROTATION_STEPS),
    Point("settled", "settled", after_grace=True),  # the write that ends the rotation
    Point("arm-regenerate-secondary-applied", "arm", REGENERATE_SECONDARY, _changed("secondary-key")),
    Point("arm-regenerate-primary-applied", "arm", REGENERATE_PRIMARY, _changed("primary-key"), after_grace=True),
    Point("keys-written", "call", applied=lambda c: c.keys() == c.subscription_keys()),
    Point("keys-written", "call", applied=lambda c: c.keys() == c.subscription_keys(), occurrence=2,
          after_grace=True),
    # The "rotated" email during delivery, as for "provisioned" above.
    Point("smtp-received", "smtp", applied=lambda c: c.mails("rotated") == []),
    Point("smtp-accepted", "smtp", applied=lambda c: len(c.mails("rotated")) == 1, delivered=True, emails=(1, 2)),
]


@pytest.fixture(scope="module")
def rotation_config(tmp_path_factory) -> Path:
    import yaml

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.setdefault("provisioning", {})["rotation_grace"] = f"{ROTATION_GRACE:g}s"
    path = tmp_path_factory.mktemp("rotation-config") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rotation_case(make: Callable[..., TeamCase], config: Path) -> TeamCase:
    case = make(config_file=config)
    case.provision_in_process()
    case.keys_before_rotation = case.subscription_keys()
    return case


def rotating(case: TeamCase) -> bool:
    record = case.store.get(TEAM)
    return record is not None and record.rotating


def waiting_for_grace(case: TeamCase) -> bool:
    record = case.store.get(TEAM)
    return record is not None and record.rotated("notified-rotated") and record.next_attempt_at is not None


@pytest.fixture(scope="module")
def discovered_rotation(core_api, kube_cluster, workspace_crd, killing_arm, crash_smtp, catalog, forks,
                        rotation_config) -> Timeline:
    with pytest.MonkeyPatch.context() as mp:
        case = TeamCase(mp, core_api, kube_cluster, killing_arm, crash_smtp, catalog, forks, rotation_config)
        case.provision_in_process()
        timeline = clean_run(case, lambda: teams.request_rotation(case.store, TEAM, "basic:admin"),
                             lambda: not rotating(case), advance=ROTATION_GRACE + 1)
        context.reset()
    print("discovered rotation steps:", timeline.steps())
    assert set(LISTED_ROTATION_STEPS) <= set(timeline.steps()), timeline.steps()
    return timeline


def ahead_for(case: TeamCase) -> str:
    """A fresh runner's clock: past the dead holder's lease, and past the grace once it is fixed."""
    lease = float(case.past_the_lease())
    record = case.store.get(TEAM)
    grace = 0.0
    if record is not None and record.rotation_retire_at is not None:
        grace = (record.rotation_retire_at - datetime.now(UTC)).total_seconds() + 0.05
    return f"{max(lease, grace, 0.0):.3f}"


def rotation_crash_and_recover(case: TeamCase, point: Point, timeline: Timeline) -> list[Run]:
    if point.moment(timeline) is None:
        pytest.skip(f"the reconciler no longer has {point.by} {point.name!r} "
                    f"(a clean rotation recorded {timeline.steps()})")
    moment = point.moment(timeline)
    if point.by in ("step", "settled"):
        expected = next(set(w["rotation_steps"]) for when, w in timeline.writes if when == moment)
    else:
        expected = timeline.rotation_recorded_before(moment)

    teams.request_rotation(case.store, TEAM, "basic:admin")
    if point.after_grace:  # up to the wait, in-process (already crash-tested by the points before it)
        case.reconcile_in_process(lambda: waiting_for_grace(case))
    ahead = ["--clock-ahead", ahead_for(case)] if point.after_grace else []

    if point.by in ("arm", "smtp"):
        if point.by == "arm":
            target = case.arm.kill_target = Target(*point.arm)
        else:
            target = case.smtp.mailbox.kill_target = Target(address=case.owner, delivered=point.delivered)
        killed = case.run(*ahead, target=target)
        case.arm.kill_target = case.smtp.mailbox.kill_target = None
        assert target.fired.is_set(), killed
    else:
        killed = case.run(*point.runner_args(), *ahead)
        assert "teams_crash_runner: SIGKILL" in killed.stderr, killed
    assert killed.returncode == -signal.SIGKILL, killed

    record = case.store.get(TEAM)
    if point.by == "settled":
        assert not record.rotating and record.settled, killed
    else:
        assert set(record.rotation_steps) == expected, (sorted(record.rotation_steps), sorted(expected), killed)
    if point.applied is not None:
        assert point.applied(case), killed

    runs = []
    for _ in range(3):  # one run to the wait, one past it, at most
        recovered = case.run("--until-settled", "20", "--pause", "0.1", "--clock-ahead", ahead_for(case))
        assert recovered.returncode == 0 and "Traceback" not in recovered.stderr, recovered
        runs.append(recovered)
        if not rotating(case):
            break
    return runs


def assert_rotated(case: TeamCase, point: Point, runs: list[Run]) -> None:
    service = case.service
    assert list(service.subscriptions) == [SUBSCRIPTION], runs[-1]
    assert case.keys() == case.subscription_keys(), "the keys Secret holds the subscription's current keys"
    assert case.secret_names() == [RECORD_SECRET], "no orphaned Secret, no key beside the record"
    assert case.secret_names(case.keys_namespace) == [KEYS_SECRET], "no orphaned keys Secret"
    before, after = case.keys_before_rotation, case.subscription_keys()
    assert after["primary-key"] != before["primary-key"] and after["secondary-key"] != before["secondary-key"]

    done = case.store.get(TEAM)
    assert not done.rotating and done.rotation_steps == {} and done.rotation_retire_at is None, runs[-1]
    assert (done.phase, done.settled, done.applied.get("live-key")) == ("ready", True, "secondary"), runs[-1]
    assert done.attempts == 0 and done.last_error is None, runs[-1]
    assert set(done.steps) == set(LISTED_LIVE_STEPS), "the generation was not re-applied"

    rotated = case.mails("rotated")
    low, high = point.emails
    assert low <= len(rotated) <= high, (len(rotated), runs[-1])
    assert len({m["Message-ID"] for m in rotated}) == 1, "a re-sent notification keeps its Message-ID"
    assert "secondary-key" in rotated[0].get_body(("plain",)).get_content()
    # Every regeneration of the new key came before the owner's first "rotated" email (tried), and
    # every regeneration of the old one after the last: nobody was told a key that was replaced
    # later, and the key in use kept working until the owner had been told to switch.
    told = [when for when, rcpts in case.smtp.mailbox.arrivals if case.owner in rcpts
            and when >= case.rotation_started]
    regenerations = [(c.at, c.path.rsplit("/", 1)[-1]) for c in case.calls() if c.path.endswith("Key")
                     and c.at >= case.rotation_started]
    assert told and {name for _, name in regenerations} == {"regenerateSecondaryKey", "regeneratePrimaryKey"}
    assert all(at < min(told) for at, name in regenerations if name == "regenerateSecondaryKey"), regenerations
    assert all(at > max(told) for at, name in regenerations if name == "regeneratePrimaryKey"), regenerations


@pytest.mark.parametrize("point", ROTATION_POINTS,
                         ids=[f"{p.name}-{p.occurrence}" if p.by == "call" else p.name for p in ROTATION_POINTS])
def test_a_crash_at_each_rotation_step_boundary_ends_with_the_keys_rotated(new_case, discovered_rotation,
                                                                          rotation_config, point: Point):
    case = rotation_case(new_case, rotation_config)
    case.rotation_started = time.monotonic()
    runs = rotation_crash_and_recover(case, point, discovered_rotation)
    assert_rotated(case, point, runs)
