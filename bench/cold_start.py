"""Benchmark: what a cold start pays to import function_app, in fresh interpreters.

Prints the median wall time and peak RSS of `import function_app` over several runs, and the
heavy SDK modules it loaded (goal: <= 0.5 s, and none of APIM, ACS, azure-identity).

    .venv/bin/python bench/cold_start.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        # The shipped config.yaml issues LiteLLM keys, so the app refuses to start without a master key.
        env = {"LITELLM_API_KEY": "sk-cold-start-unused", **os.environ}
        out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    seconds = statistics.median(r["seconds"] for r in runs)
    rss = statistics.median(r["rss_mb"] for r in runs)
    print(f"import function_app: median {seconds * 1000:.0f} ms over {args.runs} runs "
          f"(min {min(r['seconds'] for r in runs) * 1000:.0f}, max {max(r['seconds'] for r in runs) * 1000:.0f}); "
          f"peak RSS {rss:.0f} MB; {runs[0]['functions']} functions")
    print(f"heavy SDK modules loaded: {', '.join(runs[0]['heavy']) or 'none'}  (goal: <= 500 ms, none)")


if __name__ == "__main__":
    main()
