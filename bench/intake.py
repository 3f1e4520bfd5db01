"""Benchmark: POST /api/request-key through the local host against a real kube-apiserver.

16 concurrent clients send 500 new requests, first with no request Secrets stored, then with
5,000 stored in the same namespace. Prints requests/s, p50, p99 for each and their ratio: the
HTTP path reads by name only, so the two figures should match (the earlier service listed
every request per call and fell from 14 req/s to 0.9 req/s).

    .venv/bin/python bench/intake.py [--clients 16] [--requests 500] [--stored 5000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
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

from bench.common import free_port, load_local_cluster  # noqa: E402


def seed(api, namespace: str, count: int) -> None:
    """Stored requests as the app writes them (labels and annotations), created 16 at a time."""
    from shared.domain.request import KeyRequest
    from shared.store import codec

    def create(i: int) -> None:
        request = KeyRequest.new(f"seed{i}@example.com", "gpt-4o")
        api.create_namespaced_secret(namespace, codec.to_secret(request), _preload_content=False)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(count)))


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


def start_host(port: int, kubeconfig: Path, namespace: str, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBERNETES_NAMESPACE": namespace,
           "CONFIG_FILE": str(unlimited_config(log_path.parent)), "APPROVAL_SCHEDULE": "0 0 0 1 1 *",
           "TEAM_SCHEDULE": "0 0 0 1 1 *", "LITELLM_API_KEY": "sk-bench-unused-placeholder"}
    proc = subprocess.Popen([sys.executable, "-m", "local_host", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)
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
            conn.request("POST", "/api/request-key", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 201:
                raise RuntimeError(f"unexpected {response.status}")
            with lock:
                latencies.append(elapsed)
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--stored", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="offered load of the paced run, req/s (0: skip it)")
    args = parser.parse_args()

    from kubernetes import client, config

    local_cluster = load_local_cluster()
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        work = Path(tmp)
        cluster = local_cluster.start(work / "cluster")
        try:
            api = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
            results = {}
            for stored in (0, args.stored):
                namespace = f"bench-{stored}-{uuid.uuid4().hex[:6]}"
                api.create_namespace({"metadata": {"name": namespace}})
                if stored:
                    t0 = time.perf_counter()
                    seed(api, namespace, stored)
                    print(f"seeded {stored} request Secrets in {time.perf_counter() - t0:.1f} s", flush=True)
                port = free_port()
                host = start_host(port, cluster.kubeconfig, namespace, work / f"host-{stored}.log")
                try:
                    load(port, args.clients, 50, f"warm{stored}")  # connections, imports, caches
                    wall, latencies = load(port, args.clients, args.requests, f"run{stored}")
                    paced = load(port, args.clients, args.requests, f"paced{stored}", args.rate)[1] \
                        if args.rate else None
                finally:
                    host.terminate()
                    host.wait(10)
                rate = len(latencies) / wall
                results[stored] = (rate, p(latencies, 50), p(latencies, 99))
                print(f"stored={stored:>5}  clients={args.clients}  requests={len(latencies)}  "
                      f"{rate:7.1f} req/s  p50 {results[stored][1]:6.1f} ms  p99 {results[stored][2]:6.1f} ms",
                      flush=True)
                if paced:
                    print(f"stored={stored:>5}  paced at {args.rate:.0f} req/s               "
                          f"p50 {p(paced, 50):6.1f} ms  p99 {p(paced, 99):6.1f} ms", flush=True)
            empty, full = results[0], results[args.stored]
            print(f"ratio stored={args.stored} / stored=0:  throughput {full[0] / empty[0]:.2f}  "
                  f"p99 {full[2] / empty[2]:.2f}  (goal: p99 <= 50 ms, within 20 %)")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
