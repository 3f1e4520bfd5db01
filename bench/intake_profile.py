"""Where POST /api/request-key spends its time: the app's WSGI app in this process, against a real
kube-apiserver (scripts/local_cluster.py), 300 sequential new requests after 50 to warm up.

Prints the wall and CPU time per request, the apiserver calls per request by verb (with their
time), and the functions with the most CPU (cProfile on process time).

    .venv/bin/python bench/intake_profile.py [--requests 300] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import ApiCalls, core_api, load_local_cluster, summarize  # noqa: E402
from bench.intake import unlimited_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--sort", default="tottime", choices=("tottime", "cumulative"),
                        help="by CPU of their own, or with what they call")
    args = parser.parse_args()
    print(f"$ .venv/bin/python bench/intake_profile.py --requests {args.requests} --top {args.top}")
    work = Path(tempfile.mkdtemp(prefix="bench-intake-profile-"))
    cluster = load_local_cluster().start(work / "cluster")
    try:
        api = core_api(cluster.kubeconfig)
        namespace = f"bench-profile-{uuid.uuid4().hex[:6]}"
        for name in (namespace, f"{namespace}-archive"):
            api.create_namespace({"metadata": {"name": name}})
        os.environ.update({"KUBECONFIG": str(cluster.kubeconfig), "KUBERNETES_NAMESPACE": namespace,
                           "CONFIG_FILE": str(unlimited_config(work)),
                           "LITELLM_API_KEY": "sk-bench-unused-placeholder"})
        from werkzeug.test import Client

        import function_app
        from local_host.wsgi import build_wsgi_app

        client = Client(build_wsgi_app(function_app.app, route_prefix="", cors_origins=[]))

        def post(i: int) -> None:
            answer = client.post("/api/request-key", json={"llm": "gpt-4o-mini", "email": f"p{i}@example.com"})
            assert answer.status_code == 201, answer.get_data(as_text=True)

        for i in range(50):
            post(i)
        n = args.requests
        with ApiCalls() as calls:
            calls.reset()
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(50, 50 + n):
                post(i)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            verbs = summarize(calls.reset())
        print(f"{n} sequential new requests: wall {wall / n * 1000:.2f} ms, CPU of this process "
              f"{cpu / n * 1000:.2f} ms per request")
        print("apiserver calls per request: " + ", ".join(
            f"{verb} {count / n:g} ({seconds / n * 1000:.2f} ms)" for verb, (count, seconds) in verbs.items()))
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        for i in range(50 + n, 50 + 2 * n):
            post(i)
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
