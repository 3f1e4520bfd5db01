"""Benchmark: the admin list (`GET /api/admin/requests?limit=100`) with 50,000 stored requests.

The requests (mixed states: pending, in-review, approved, active, denied, revoked, failed,
expired in turn) are seeded as the app writes them (codec.to_secret), 32 at a time, into one
namespace of the real kube-apiserver of scripts/local_cluster.py; the local host serves the app
on a real loopback socket and is called with the ADMIN_API_KEY it was started with
(`x-functions-key`), one keep-alive connection, one call at a time. Prints p50/p99 (and max)
over --calls calls of:

* the first page;
* pages further in: the whole list is walked once following the continue token
  (`X-Continue-Token`; every page of that walk timed too), and the tokens of a few pages on
  the way (--depths) are then asked --calls times each;
* the first page with a state filter (`state=`), for each of --states: `in-review` is one in eight
  stored, `revoking` none at all (the apiserver then walks every request to fill the page).

A case stops early after --max-seconds (said so); answers other than 200 (a 503 when the
apiserver's list outlasts KUBERNETES_TIMEOUT_SECONDS) are counted and timed, not fatal.
Goal: p99 <= 100 ms for a page of 100.

    .venv/bin/python bench/admin_list.py [--stored 50000] [--calls 200] [--depths 2,50,250]
        [--states in-review,revoking] [--max-seconds 90]
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import MIXED, core_api, free_port, load_local_cluster, quantile_ms, seed_requests  # noqa: E402
from bench.intake import start_host  # noqa: E402

GOAL_MS = 100.0


class Admin:
    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.key = key
        self.errors: list[str] = []  # answers other than 200, taken by each case

    def page(self, limit: int, token: str | None = None, state: str | None = None) -> tuple[float, int, str | None]:
        """(seconds, items, next token) of one call."""
        import json
        from urllib.parse import urlencode

        query = {"limit": str(limit)}
        if token:
            query["continue"] = token
        if state:
            query["state"] = state
        started = time.perf_counter()
        self.conn.request("GET", f"/api/admin/requests?{urlencode(query)}", headers={"x-functions-key": self.key})
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            self.errors.append(f"{response.status} {body[:120].decode(errors='replace')}")
            return elapsed, 0, None
        return elapsed, len(json.loads(body)), response.getheader("X-Continue-Token") or None


def timed_calls(call, count: int, max_seconds: float) -> tuple[list[float], int]:
    times: list[float] = []
    items = 0
    deadline = time.perf_counter() + max_seconds
    for _ in range(count):
        seconds, items, _token = call()
        times.append(seconds)
        if time.perf_counter() > deadline:
            break
    return times, items


def line(label: str, times: list[float], items: int, wanted: int, errors: list[str] | None = None) -> str:
    cut = f" (stopped after {len(times)} of {wanted}: --max-seconds)" if len(times) < wanted else ""
    if errors:
        cut += f"; {len(errors)} answers not 200 (first: {errors[0]})"
        errors.clear()
    verdict = "MET" if quantile_ms(times, 99) <= GOAL_MS else "MISSED"
    return (f"{label:<44} {len(times):>4} calls  p50 {quantile_ms(times, 50):7.1f} ms  "
            f"p99 {quantile_ms(times, 99):7.1f} ms  max {max(times) * 1000:7.1f} ms  {items:>3} items/page  "
            f"p99 <= {GOAL_MS:.0f} ms: {verdict}{cut}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=50000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--depths", default="2,50,250", help="pages (1-based) of the walk asked again, comma-separated")
    parser.add_argument("--states", default="in-review,revoking", help="state filters, comma-separated ('' for none)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="per case")
    parser.add_argument("--seed-threads", type=int, default=32)
    args = parser.parse_args()
    depths = sorted({int(d) for d in args.depths.split(",") if d.strip()})
    states = [s.strip() for s in args.states.split(",") if s.strip()]

    print(f"$ .venv/bin/python bench/admin_list.py {shlex.join(sys.argv[1:])}", flush=True)
    local_cluster = load_local_cluster()
    work = Path(tempfile.mkdtemp(prefix="bench17-admin-"))
    cluster = local_cluster.start(work / "cluster")
    host = None
    try:
        api = core_api(cluster.kubeconfig)
        namespace = f"bench-admin-{uuid.uuid4().hex[:6]}"
        api.create_namespace({"metadata": {"name": namespace}})
        api.create_namespace({"metadata": {"name": f"{namespace}-archive"}})  # the finished ones, as the app keeps them
        seconds = seed_requests(api, namespace, args.stored, "admin", states=MIXED, threads=args.seed_threads,
                                archive=f"{namespace}-archive")
        print(f"seeded {args.stored} request Secrets (states {', '.join(MIXED)} in turn) in {seconds:.1f} s "
              f"({args.stored / seconds:.0f}/s); {os.cpu_count()} CPUs shared by the apiserver, etcd, the host "
              f"and this client", flush=True)
        key = secrets.token_urlsafe(24)
        port = free_port()
        host = start_host(port, cluster.kubeconfig, namespace, work / "host.log", {"ADMIN_API_KEY": key})
        admin = Admin(port, key)
        for _ in range(10):  # warm-up: imports, the client's connections
            admin.page(args.limit)

        first, items = timed_calls(lambda: admin.page(args.limit), args.calls, args.max_seconds)
        print(line(f"first page (limit={args.limit})", first, items, args.calls, admin.errors), flush=True)

        walk: list[float] = []
        tokens: dict[int, str] = {}
        token, page, seen = None, 1, 0
        while True:
            elapsed, count, token = admin.page(args.limit, token)
            walk.append(elapsed)
            seen += count
            if not token:
                break
            page += 1
            if page in depths:
                tokens[page] = token
        print(line(f"walk: every page once ({page} pages, {seen} items)", walk, args.limit, len(walk), admin.errors),
              flush=True)
        for depth in depths:
            if depth not in tokens:
                print(f"page {depth}: the list has only {page} pages")
                continue
            times, items = timed_calls(lambda t=tokens[depth]: admin.page(args.limit, t), args.calls, args.max_seconds)
            print(line(f"page {depth} (from item {(depth - 1) * args.limit})", times, items, args.calls, admin.errors),
                  flush=True)
        for state in states:
            times, items = timed_calls(lambda s=state: admin.page(args.limit, state=s), args.calls, args.max_seconds)
            print(line(f"first page, state={state}", times, items, args.calls, admin.errors), flush=True)
    finally:
        if host is not None:
            host.terminate()
            host.wait(10)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
