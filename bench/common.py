"""What the benchmarks share: the project's real local cluster, a free loopback port, the app's own
Kubernetes client, request Secrets written as the app writes them, and timing of apiserver calls."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
SEED_THREADS = 32  # the app's client pools 32 connections (shared/store/kube.py POOL_SIZE)


def load_local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "scripts" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_api_client(kubeconfig: Path):
    """A `kubernetes.client.ApiClient` with the settings the app uses (shared/store/kube.py)."""
    from shared.store.kube import api_client

    return api_client(str(kubeconfig))


def core_api(kubeconfig: Path):
    from kubernetes.client import CoreV1Api

    return CoreV1Api(app_api_client(kubeconfig))


def quantile_ms(values: list[float], q: int) -> float:
    """The q-th percentile of `values` (seconds), in ms."""
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


# --- stored requests, as the app writes them -----------------------------------------------------------

FINISHED = ("denied", "revoked", "failed", "expired")
MIXED = ("pending", "in-review", "approved", "active", "denied", "revoked", "failed", "expired")


def request_record(email: str, model: str, state: str):
    """A KeyRequest in `state` with what the processor leaves on it there; a finished one is settled
    (its work done, as the processor marks it), so the timer's sweeps have nothing to do for it."""
    from shared.domain.request import KeyRequest, State, utcnow

    now = utcnow()
    created = now - timedelta(days=40)
    request = KeyRequest.new(email, model, now=created)
    target = State(state)
    if target == State.PENDING:
        return request
    decided = {"decision": "approve", "decided_by": "rules", "decided_at": created, "reason": "auto-approved"}
    if target == State.IN_REVIEW:
        return request.enter(State.IN_REVIEW, created, steps={"notify-review": created})
    if target == State.DENIED:
        return request.enter(State.DENIED, created, decision="deny", decided_by="admin@example.com",
                             decided_at=created, reason="not for this project",
                             steps={"notify-denied": created}, settled=State.DENIED)
    if target == State.FAILED:
        return request.enter(State.FAILED, created, last_error="LiteLLM answered 500 six times",
                             attempts=0, steps={"notify-failed": created}, settled=State.FAILED, **decided)
    refs = {"litellm": f"llmkr-{request.id}"}
    if target == State.APPROVED:
        return request.enter(State.APPROVED, created, **decided)
    if target == State.ACTIVE:
        expires = now + timedelta(days=20)
        return request.enter(State.ACTIVE, created, references=refs, expires_at=expires,
                             due_at=expires - timedelta(days=7), steps={"notify-approved": created}, **decided)
    if target == State.REVOKED:
        return request.enter(State.REVOKED, now - timedelta(days=5), references=refs,
                             steps={"revoke": created, "notify-revoked": created}, settled=State.REVOKED,
                             **decided)
    if target == State.EXPIRED:
        return request.enter(State.EXPIRED, now - timedelta(days=10), references=refs,
                             expires_at=now - timedelta(days=10), steps={"notify-expired": created},
                             settled=State.EXPIRED, **decided)
    raise ValueError(state)


def seed_requests(api, namespace: str, count: int, tag: str, states: Iterable[str] = FINISHED,
                  model: str = "gpt-4o", threads: int = SEED_THREADS, start: int = 0,
                  archive: str | None = None) -> float:
    """`count` request Secrets (codec.to_secret), the states taken in turn, created `threads` at a
    time with `api` (a CoreV1Api); the seconds it took. With `archive`, the finished ones go there,
    as the app moves them (shared/store/requests.py)."""
    from shared.store import codec

    cycle = tuple(states)

    def create(i: int) -> None:
        record = request_record(f"{tag}-{i}@example.com", model, cycle[i % len(cycle)])
        finished = record.finished and record.settled == record.state
        # read to the end, so the connection goes back to the pool (else each create is a new TLS handshake)
        api.create_namespaced_secret(archive if archive and finished else namespace, codec.to_secret(record),
                                     _preload_content=False).read()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, range(start, start + count)))
    return time.perf_counter() - started


# --- CPU time of the processes a benchmark drives ------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process `pid` has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process spends between start() and stop(): on 2 shared cores this
    says whose work bounds a throughput (the apiserver's, etcd's, the app's, the clients')."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc) -> None:
        self.spent = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}

    def per_op(self, ops: int) -> str:
        """'apiserver 1.20 ms, etcd 0.40 ms, ... total 2.10 ms' per operation."""
        parts = [f"{name} {seconds / ops * 1000:.2f}" for name, seconds in self.spent.items()]
        return ", ".join(parts) + f"; total {sum(self.spent.values()) / ops * 1000:.2f} ms CPU per call"


# --- timing the apiserver calls a piece of code makes --------------------------------------------------

def _verb(method: str, url: str, query: dict) -> str:
    """list / watch / get / create / update / patch / delete, from the REST call."""
    if method == "GET":
        if str(query.get("watch", "")).lower() in ("true", "1"):
            return "watch"
        parts = [p for p in urlsplit(url).path.split("/") if p]
        # /api/v1/namespaces/NS/secrets[/NAME]  or  /apis/GROUP/VERSION/namespaces/NS/KIND[/NAME]
        rest = parts[2:] if parts and parts[0] == "api" else parts[3:]
        if len(rest) >= 2 and rest[0] == "namespaces":
            rest = rest[2:] if len(rest) > 2 else []
            return "list" if len(rest) == 1 else "get"
        return "list" if len(rest) == 1 else "get"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


class ApiCalls:
    """Every HTTP call of the kubernetes client in this process (RESTClientObject.request), counted
    and timed by verb, while installed. Wall time from the request sent to the answer read, as the
    caller waits for it: for a list, the apiserver's work plus the transfer (loopback)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, float, str]] = []  # (verb, seconds, label selector)
        self._original: Callable | None = None

    def __enter__(self) -> ApiCalls:
        from kubernetes.client import rest

        original = self._original = rest.RESTClientObject.request
        calls, lock = self.calls, self._lock

        def request(client, method, url, *args, **kwargs):
            query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
            started = time.perf_counter()
            response = original(client, method, url, *args, **kwargs)
            response.read()  # the body too (cached: the caller reads the same bytes), inside the timing
            with lock:
                calls.append((_verb(method, url, query), time.perf_counter() - started,
                              query.get("labelSelector", "")))
            return response

        rest.RESTClientObject.request = request
        return self

    def __exit__(self, *exc) -> None:
        from kubernetes.client import rest

        rest.RESTClientObject.request = self._original

    def reset(self) -> list[tuple[str, float, str]]:
        with self._lock:
            taken, self.calls[:] = list(self.calls), []
        return taken


def summarize(calls: list[tuple[str, float, str]]) -> dict[str, tuple[int, float]]:
    out: dict[str, list] = {}
    for verb, seconds, _ in calls:
        entry = out.setdefault(verb, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
    return {k: (v[0], v[1]) for k, v in out.items()}


def list_all(api, namespace: str, selector: str, resource_version: str | None = None,
             limit: int | None = 500) -> tuple[int, int]:
    """Every Secret matching `selector` (paged by `limit`, following continue); (items, calls)."""
    items = calls = 0
    token = None
    while True:
        kwargs = {"label_selector": selector, "_preload_content": False}
        if limit:
            kwargs["limit"] = limit
        if token:
            kwargs["_continue"] = token
        elif resource_version is not None:
            kwargs["resource_version"] = resource_version
        body = json.loads(api.list_namespaced_secret(namespace, **kwargs).data)
        calls += 1
        items += len(body.get("items") or [])
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return items, calls
