"""Benchmark: POST /api/request-key through the local host against a real kube-apiserver.

16 concurrent clients send 500 new requests, first with no request Secrets stored, then with
--stored (default 50,000, mixed states, seeded 32 at a time; the unfinished ones in the request
namespace, the finished ones in its archive, where the app keeps them). Prints
requests/s, p50, p99 for each and their ratio: the HTTP path reads by name only, so the two
figures should match (the earlier service listed every request per call and fell from 14 req/s
to 0.9 req/s).

In the same run, on the same cluster and namespace, it also measures the floor: plain Secret
creates per second through the app's own write path (SecretsGateway.create on the
shared/store/kube.py client, its pooled connections reused) at --clients threads, each body the
size of a request Secret (codec.to_secret of a KeyRequest), before and after the intake run
(their mean is the floor), and prints intake / floor. Goal: intake >= 0.6 x floor, p99 <= 50 ms,
within 20 % from 0 to 50,000 stored. For both it prints the CPU time the apiserver, etcd, the
host and this process (the clients) spent per call: on 2 shared cores, whose work bounds it.

A closed loop of 16 clients cannot answer faster than 16 / throughput on average (Little's law),
so its p99 says how saturated the machine is; the paced run (--rate, req/s offered whatever the
answers take) gives the latency a caller sees below saturation.

    .venv/bin/python bench/intake.py [--clients 16] [--requests 500] [--stored 50000] [--rate 100]
        [--floor-creates 1000] [--seed-threads 32] [--compare-with TREE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MIXED, CpuMeter, core_api, free_port, load_local_cluster, seed_requests  # noqa: E402


def floor(api, namespace: str, threads: int, total: int, tag: str) -> tuple[float, list[float]]:
    """Plain Secret creates, `threads` at a time, through the app's own write path (SecretsGateway
    on the app's client, its pooled connections reused): one apiserver write each, a body of a
    request Secret's size (codec.to_secret of a new KeyRequest, renamed)."""
    from shared.domain.request import KeyRequest
    from shared.store import codec
    from shared.store.secrets import SecretsGateway

    gateway = SecretsGateway(api.api_client, namespace)

    template = codec.to_secret(KeyRequest.new(f"{tag}@example.com", "gpt-4o-mini"))
    bodies = []
    for i in range(total):
        body = json.loads(json.dumps(template))
        body["metadata"]["name"] = f"bench-floor-{tag}-{i:06d}"
        # the same labels, the component renamed (same length): not a request, never swept or counted
        body["metadata"]["labels"][codec.COMPONENT_LABEL] = "bench-floor-sec"
        bodies.append(body)
    latencies: list[float] = []
    lock = threading.Lock()

    def create(body: dict) -> None:
        started = time.perf_counter()
        gateway.create(body)
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, bodies))
    return time.perf_counter() - started, latencies


def unlimited_config(directory: Path) -> Path:
    """The shipped config.yaml without the intake limits: the benchmark measures the store, and its
    500 addresses of one domain within a minute are what requests.limits exists to refuse."""
    import yaml

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.setdefault("requests", {})["limits"] = {"open_per_address": None, "per_address_per_day": None,
                                                   "per_domain_per_hour": None, "per_instance_per_minute": None}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CEILING_APP = ROOT / "bench" / "ceiling_app"


def start_host(port: int, kubeconfig: Path, namespace: str, log_path: Path,
               extra_env: dict[str, str] | None = None, root: Path = ROOT,
               app_dir: Path | None = None) -> subprocess.Popen:
    """`python -m local_host` of the tree `root` (serving its function_app.py, or the one in
    `app_dir`) on `port`, its timers parked (1 January only), once /health answers 200."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBERNETES_NAMESPACE": namespace,
           "CONFIG_FILE": str(unlimited_config(log_path.parent)), "APPROVAL_SCHEDULE": "0 0 0 1 1 *",
           "TEAM_SCHEDULE": "0 0 0 1 1 *", "LITELLM_API_KEY": "sk-bench-unused-placeholder",
           "PYTHONPATH": str(root), **(extra_env or {})}
    argv = [sys.executable, "-m", "local_host", "--port", str(port)] + (["--app-dir", str(app_dir)] if app_dir else [])
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"local host did not start; see {log_path}")


def load(port: int, clients: int, total: int, tag: str, rate: float | None = None) -> tuple[float, list[float]]:
    """Closed loop (each client sends as soon as its last answer came), or paced at `rate` req/s
    overall, latency counted from the planned send time so a stall cannot hide."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))
    origin = time.perf_counter()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in counter:
            planned = origin + i / rate if rate else time.perf_counter()
            if rate and planned > time.perf_counter():
                time.sleep(planned - time.perf_counter())
            body = json.dumps({"llm": "gpt-4o-mini", "email": f"{tag}-{i}@example.com"})
            started = planned
            try:
                conn.request("POST", "/api/request-key", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:  # a timeout: this client stops
                failures.append(f"failed after {time.perf_counter() - started:.1f} s: {type(exc).__name__}")
                return
            elapsed = time.perf_counter() - started
            if response.status != 201:
                failures.append(f"answered {response.status} after {elapsed:.1f} s")
                return
            with lock:
                latencies.append(elapsed)
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:  # a client that failed stopped: the figures would describe fewer clients than asked
        raise SystemExit(f"{tag}: {len(failures)} of {clients} clients stopped: POST /api/request-key "
                         f"{failures[0]} (after {len(latencies)} answers)")
    return time.perf_counter() - started, latencies


def host_run(cluster, namespace: str, work: Path, clients: int, total: int, tag: str, *, root: Path = ROOT,
             app_dir: Path | None = None) -> tuple[tuple[float, list[float]], CpuMeter]:
    """One closed-loop run against a local host of its own (another checkout's app, or the one in
    `app_dir`), after a warm-up: (wall seconds, latencies) and the CPU each process spent."""
    port = free_port()
    host = start_host(port, cluster.kubeconfig, namespace, work / f"host-{tag}.log", root=root, app_dir=app_dir)
    try:
        load(port, clients, 50, f"warm{tag}")
        pids = {"apiserver": cluster.apiserver_pid, "etcd": cluster.etcd_pid, "host": host.pid, "clients": os.getpid()}
        with CpuMeter(pids) as cpu:
            result = load(port, clients, total, tag)
        return result, cpu
    finally:
        host.terminate()
        host.wait(10)


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def body_size() -> int:
    from shared.domain.request import KeyRequest
    from shared.store import codec

    return len(json.dumps(codec.to_secret(KeyRequest.new("someone@example.com", "gpt-4o-mini"))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--stored", type=int, default=50000)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="offered load of the paced run, req/s (0: skip it)")
    parser.add_argument("--floor-creates", type=int, default=1000,
                        help="plain Secret creates per floor measurement (two per stored level)")
    parser.add_argument("--seed-threads", type=int, default=32, help="threads that seed the stored requests")
    parser.add_argument("--compare-with", type=Path, metavar="TREE",
                        help="also load the app of another checkout (git worktree add /tmp/before <commit>) "
                             "on the same cluster and namespaces, and print this / that")
    args = parser.parse_args()

    local_cluster = load_local_cluster()
    print(f"$ .venv/bin/python bench/intake.py {shlex.join(sys.argv[1:])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench17-intake-") as tmp:
        work = Path(tmp)
        cluster = local_cluster.start(work / "cluster")
        try:
            api = core_api(cluster.kubeconfig)  # the app's client settings (pool, retries)
            print(f"{os.cpu_count()} CPUs shared by the apiserver, etcd, the host and the clients; a request "
                  f"Secret's body is {body_size()} bytes", flush=True)
            results = {}
            for stored in (0, args.stored):
                namespace = f"bench-{stored}-{uuid.uuid4().hex[:6]}"
                archive = namespace + "-archive"  # as deployed (infra/kubernetes/namespace.yaml)
                for name in (namespace, archive):
                    api.create_namespace({"metadata": {"name": name}})
                if stored:
                    seconds = seed_requests(api, namespace, stored, f"seed{stored}", states=MIXED,
                                            threads=args.seed_threads, archive=archive)
                    print(f"seeded {stored} request Secrets (states {', '.join(MIXED)} in turn, the finished ones "
                          f"in the archive) in {seconds:.1f} s ({stored / seconds:.0f}/s, {args.seed_threads} "
                          "threads)", flush=True)
                port = free_port()
                host = start_host(port, cluster.kubeconfig, namespace, work / f"host-{stored}.log")
                try:
                    load(port, args.clients, 50, f"warm{stored}")  # connections, imports, caches
                    floor(api, namespace, args.clients, 100, f"warm{stored}")
                    pids = {"apiserver": cluster.apiserver_pid, "etcd": cluster.etcd_pid, "host": host.pid,
                            "clients": os.getpid()}
                    with CpuMeter(pids) as floor_cpu:
                        floor_before = floor(api, namespace, args.clients, args.floor_creates, f"a{stored}")
                    with CpuMeter(pids) as intake_cpu:
                        wall, latencies = load(port, args.clients, args.requests, f"run{stored}")
                    floor_after = floor(api, namespace, args.clients, args.floor_creates, f"b{stored}")
                    paced = load(port, args.clients, args.requests, f"paced{stored}", args.rate)[1] \
                        if args.rate else None
                finally:
                    host.terminate()
                    host.wait(10)
                ceiling, ceiling_cpu = host_run(cluster, namespace, work, args.clients, args.requests,
                                                f"ceil{stored}", app_dir=CEILING_APP)
                rate = len(latencies) / wall
                floors = [len(lat) / seconds for seconds, lat in (floor_before, floor_after)]
                floor_rate = statistics.mean(floors)
                floor_latencies = floor_before[1] + floor_after[1]
                results[stored] = (rate, p(latencies, 50), p(latencies, 99), floor_rate)
                print(f"stored={stored:>5}  clients={args.clients}  requests={len(latencies)}  "
                      f"{rate:7.1f} req/s  p50 {results[stored][1]:6.1f} ms  p99 {results[stored][2]:6.1f} ms",
                      flush=True)
                print(f"stored={stored:>5}  floor: plain Secret creates, {args.clients} threads, "
                      f"{args.floor_creates} before + {args.floor_creates} after: {floor_rate:7.1f} creates/s "
                      f"({floors[0]:.1f} / {floors[1]:.1f})  p50 {p(floor_latencies, 50):6.1f} ms  "
                      f"p99 {p(floor_latencies, 99):6.1f} ms", flush=True)
                ceiling_rate = len(ceiling[1]) / ceiling[0]
                print(f"stored={stored:>5}  ceiling: the same host, one plain create per POST (bench/ceiling_app): "
                      f"{ceiling_rate:7.1f} req/s  p50 {p(ceiling[1], 50):6.1f} ms  p99 {p(ceiling[1], 99):6.1f} ms",
                      flush=True)
                print(f"stored={stored:>5}  intake / floor = {rate / floor_rate:.2f}  (goal: >= 0.6)   "
                      f"ceiling / floor = {ceiling_rate / floor_rate:.2f}   "
                      f"intake / ceiling = {rate / ceiling_rate:.2f}",
                      flush=True)
                print(f"stored={stored:>5}  CPU per plain create: {floor_cpu.per_op(args.floor_creates)}", flush=True)
                print(f"stored={stored:>5}  CPU per ceiling POST: {ceiling_cpu.per_op(len(ceiling[1]))}", flush=True)
                print(f"stored={stored:>5}  CPU per new request:  {intake_cpu.per_op(len(latencies))}", flush=True)
                if paced:
                    print(f"stored={stored:>5}  paced at {args.rate:.0f} req/s               "
                          f"p50 {p(paced, 50):6.1f} ms  p99 {p(paced, 99):6.1f} ms", flush=True)
                if args.compare_with:
                    (other_wall, other), _ = host_run(cluster, namespace, work, args.clients, args.requests,
                                                      f"other{stored}", root=args.compare_with.resolve())
                    other_rate = len(other) / other_wall
                    print(f"stored={stored:>5}  [{args.compare_with}] {other_rate:7.1f} req/s  "
                          f"p50 {p(other, 50):6.1f} ms  p99 {p(other, 99):6.1f} ms; this / that = "
                          f"{rate / other_rate:.2f}", flush=True)
            empty, full = results[0], results[args.stored]
            print(f"ratio stored={args.stored} / stored=0:  throughput {full[0] / empty[0]:.2f}  "
                  f"p99 {full[2] / empty[2]:.2f}  floor {full[3] / empty[3]:.2f}  "
                  f"intake/floor {full[0] / full[3]:.2f} vs {empty[0] / empty[3]:.2f}  "
                  f"(goal: p99 <= 50 ms, throughput within 20 %)")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
