"""Benchmark: what a cold start pays, in fresh processes.

1. `import function_app` in a fresh interpreter: the median wall time and peak RSS over --runs,
   and the heavy SDK modules it loaded (goal: <= 300 ms, and none of APIM, ACS, azure-identity).
2. A fresh worker: `python -m local_host` on a free port, pointed at a real kube-apiserver
   (scripts/local_cluster.py, started once), its timers parked; the time from spawning the process
   to its first 200 answer to `GET /api/models` (polled every 2 ms on a new connection), and to
   its port first accepting, median over --runs (goal: <= 1 s).

    .venv/bin/python bench/cold_start.py [--runs 7] [--skip-worker]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, load_local_cluster  # noqa: E402

WORKER_GOAL_SECONDS = 1.0
PROBE = """
import json, resource, sys, time
started = time.perf_counter()
import function_app
elapsed = time.perf_counter() - started
heavy = sorted({".".join(m.split(".")[:2]) for m in sys.modules
                if m.startswith(("azure.mgmt", "azure.communication", "azure.identity", "azure.monitor",
                                   "opentelemetry", "kubernetes", "litellm"))})
print(json.dumps({"seconds": elapsed, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "heavy": heavy, "functions": len(function_app.app.get_functions())}))
"""


def first_models(kubeconfig: Path, namespace: str, log_path: Path, timeout: float = 30.0) -> tuple[float, float]:
    """Spawn a worker; (seconds to its port accepting, seconds to the first 200 of GET /api/models)."""
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBERNETES_NAMESPACE": namespace,
           "LITELLM_API_KEY": "sk-cold-start-unused", "APPROVAL_SCHEDULE": "0 0 0 1 1 *",
           "TEAM_SCHEDULE": "0 0 0 1 1 *"}
    with log_path.open("w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "local_host", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            accepting = None
            deadline = started + timeout
            while time.perf_counter() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited ({proc.returncode}); see {log_path}")
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                    conn.connect()
                except OSError:
                    time.sleep(0.002)
                    continue
                accepting = accepting or time.perf_counter() - started
                try:
                    conn.request("GET", "/api/models")
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    time.sleep(0.002)
                    continue
                finally:
                    conn.close()
                if response.status == 200:
                    return accepting, time.perf_counter() - started
                time.sleep(0.002)
            raise RuntimeError(f"no 200 from /api/models within {timeout:.0f} s; see {log_path}")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def worker_runs(runs: int) -> None:
    local_cluster = load_local_cluster()
    work = Path(tempfile.mkdtemp(prefix="bench17-cold-"))
    cluster = local_cluster.start(work / "cluster")
    try:
        namespace = f"bench-cold-{uuid.uuid4().hex[:6]}"
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
        api.create_namespace({"metadata": {"name": namespace}})
        first_models(cluster.kubeconfig, namespace, work / "warm.log")  # page cache, .pyc files
        results = [first_models(cluster.kubeconfig, namespace, work / f"worker-{i}.log") for i in range(runs)]
    finally:
        cluster.stop()
    shutil.rmtree(work, ignore_errors=True)
    answer = [r[1] for r in results]
    accept = [r[0] for r in results]
    median = statistics.median(answer)
    print(f"fresh worker (python -m local_host, real kube-apiserver): spawn -> first 200 of GET /api/models: "
          f"median {median * 1000:.0f} ms over {runs} runs (min {min(answer) * 1000:.0f}, "
          f"max {max(answer) * 1000:.0f}); spawn -> port accepting: median {statistics.median(accept) * 1000:.0f} ms  "
          f"(goal: <= {WORKER_GOAL_SECONDS * 1000:.0f} ms: {'MET' if median <= WORKER_GOAL_SECONDS else 'MISSED'})")


def import_runs(tree: Path) -> dict:
    """One fresh interpreter importing `tree`'s function_app: its seconds, peak RSS, heavy modules."""
    # The shipped config.yaml issues LiteLLM keys, so the app refuses to start without a master key.
    env = {"LITELLM_API_KEY": "sk-cold-start-unused", **os.environ}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(name: str, runs: list[dict]) -> float:
    seconds = statistics.median(r["seconds"] for r in runs)
    rss = statistics.median(r["rss_mb"] for r in runs)
    print(f"{name}import function_app: median {seconds * 1000:.0f} ms over {len(runs)} runs "
          f"(min {min(r['seconds'] for r in runs) * 1000:.0f}, max {max(r['seconds'] for r in runs) * 1000:.0f}); "
          f"peak RSS {rss:.0f} MB; {runs[0]['functions']} functions")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--skip-worker", action="store_true", help="only the import timing (no cluster)")
    parser.add_argument("--compare-with", type=Path, metavar="TREE",
                        help="another checkout (git worktree add): the imports of both alternate, and the ratio")
    args = parser.parse_args()
    print(f"$ .venv/bin/python bench/cold_start.py {shlex.join(sys.argv[1:])}", flush=True)
    trees = [ROOT] + ([args.compare_with.resolve()] if args.compare_with else [])
    runs: dict[Path, list[dict]] = {tree: [] for tree in trees}
    for _ in range(args.runs):
        for tree in trees:  # alternating, so both see the same machine
            runs[tree].append(import_runs(tree))
    seconds = report("[this] " if args.compare_with else "", runs[ROOT])
    print(f"heavy SDK modules loaded: {', '.join(runs[ROOT][0]['heavy']) or 'none'}  (goal: <= 300 ms: "
          f"{'MET' if seconds <= 0.3 else 'MISSED'}; none)", flush=True)
    if args.compare_with:
        other = report(f"[{args.compare_with}] ", runs[trees[1]])
        print(f"ratio this/other = {seconds / other:.3f}", flush=True)
    if not args.skip_worker:
        worker_runs(args.runs)

if __name__ == "__main__":
    main()
