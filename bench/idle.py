"""The idle tick (`bench/tick.py --idle`): one approval-timer tick with nothing due, over a namespace
holding 0, 10,000 and 50,000 finished requests (denied, revoked, failed, expired, each settled as
the processor leaves it), against the real kube-apiserver of scripts/local_cluster.py.

Per level: the tick's list calls (how many, and their wall time, i.e. the apiserver's work plus a
loopback transfer: every HTTP call of the kubernetes client is timed in this process) and the
tick's whole wall time, the median of --ticks ticks after one warm-up tick. Then the ratio of the
largest level to the smallest (goal: <= 1.5).

Diagnostic: the very list calls the tick made (its label selectors, recorded from the tick,
paged by 500 as the tick pages) issued directly, without resourceVersion (a quorum read from
etcd: the apiserver walks every Secret of the namespace and filters) and with resourceVersion="0"
(served from the apiserver's watch cache, which ignores `limit`), median of --diagnostic-repeat;
and the same lists in an empty namespace of the same cluster (what keeping finished requests in
another namespace than the swept one would cost).

    .venv/bin/python bench/tick.py --idle [--levels 0,10000,50000] [--ticks 5] [--diagnostic-out FILE]
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import ApiCalls, core_api, list_all, load_local_cluster, seed_requests, summarize

ROOT = Path(__file__).resolve().parent.parent


def tick_env(kubeconfig: Path, namespace: str, work: Path) -> dict[str, str]:
    return {"KUBECONFIG": str(kubeconfig), "KUBERNETES_NAMESPACE": namespace,
            "CONFIG_FILE": str(ROOT / "config.yaml"), "LITELLM_API_KEY": "sk-bench-unused-placeholder",
            "LITELLM_BASE_URL": "http://127.0.0.1:9", "EMAIL_OUTBOX_DIR": str(work / "outbox"),
            "LOG_LEVEL": "WARNING"}


def one_level(processor, calls: ApiCalls, ticks: int) -> dict:
    processor.run_tick()  # warm-up: connections, caches
    calls.reset()
    walls, list_seconds, list_counts, other = [], [], [], []
    selectors: list[str] = []
    for _ in range(ticks):
        started = time.perf_counter()
        report = processor.run_tick()
        walls.append(time.perf_counter() - started)
        made = calls.reset()
        lists = [c for c in made if c[0] == "list"]
        list_seconds.append(sum(c[1] for c in lists))
        list_counts.append(len(lists))
        other.append(summarize([c for c in made if c[0] != "list"]))
        selectors = [c[2] for c in lists]
    return {"wall": statistics.median(walls), "walls": walls, "list_seconds": statistics.median(list_seconds),
            "list_calls": statistics.median(list_counts), "selectors": selectors, "other": other[-1],
            "report": getattr(report, "summary", lambda: str(report))()}


def diagnostic(api, namespace: str, selectors: list[str], repeat: int) -> dict[str, tuple[float, int, int]]:
    """Per mode: (median seconds of issuing all `selectors` once, items, calls)."""
    out = {}
    for mode, rv in (("no resourceVersion (etcd)", None), ('resourceVersion="0" (watch cache)', "0")):
        times, items, count = [], 0, 0
        for _ in range(repeat):
            items = count = 0
            started = time.perf_counter()
            for selector in dict.fromkeys(selectors):  # each distinct selector once, as one sweep
                got, n = list_all(api, namespace, selector, resource_version=rv)
                items += got
                count += n
            times.append(time.perf_counter() - started)
        out[mode] = (statistics.median(times), items, count)
    return out


def table(say, figures: dict[int, dict], levels: list[int], label: str) -> None:
    """One row per level (each mode's time, calls and items), then each mode's ratio high / low."""
    for level in levels:
        row = "  ".join(f"{mode}: {t * 1000:8.1f} ms ({n} calls, {items} items)"
                        for mode, (t, items, n) in figures[level].items())
        say(f"  stored={level:>6}  {row}")
    low, high = levels[0], levels[-1]
    if high != low:
        for mode in figures[low]:
            ratio = figures[high][mode][0] / max(figures[low][mode][0], 1e-9)
            say(f"  ratio stored={high} / stored={low}, {label}{mode}: {ratio:.2f}")


def main(args) -> None:
    levels = sorted({int(x) for x in args.levels.split(",")})
    command = "bench/tick.py " + shlex.join(sys.argv[1:])
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    local_cluster = load_local_cluster()
    work = Path(tempfile.mkdtemp(prefix="bench17-idle-"))
    cluster = local_cluster.start(work / "cluster")
    try:
        api = core_api(cluster.kubeconfig)
        namespace = f"bench-idle-{uuid.uuid4().hex[:6]}"
        api.create_namespace({"metadata": {"name": namespace}})
        # Where the app keeps finished requests (shared/store/requests.py): its archive namespace.
        api.create_namespace({"metadata": {"name": f"{namespace}-archive"}})
        finished_in = f"{namespace}-archive" if args.finished_in == "archive" else namespace
        os.environ.update(tick_env(cluster.kubeconfig, namespace, work))
        from shared import context

        context.load()
        processor = context.processor()
        say(f"$ .venv/bin/python {command}")
        where = "archive" if args.finished_in == "archive" else "request"
        say(f"idle tick: nothing due; finished requests (denied/revoked/failed/expired, settled) stored in the "
            f"{where} namespace; kube-apiserver (local_cluster, etcd beside it) on {os.cpu_count()} CPUs shared with "
            f"everything else; median of {args.ticks} ticks after a warm-up")
        results: dict[int, dict] = {}
        diags: dict[int, dict] = {}
        beside: dict[int, dict] = {}  # the same lists in a namespace holding nothing, beside the full one
        empty = f"{namespace}-empty"
        api.create_namespace({"metadata": {"name": empty}})
        stored = 0
        with ApiCalls() as calls:
            for level in levels:
                if level > stored:
                    seconds = seed_requests(api, finished_in, level - stored, "idle", start=stored)
                    say(f"  (seeded {level - stored} finished requests in {seconds:.1f} s, "
                        f"{(level - stored) / seconds:.0f}/s; {level} stored)")
                    stored = level
                calls.reset()
                result = results[level] = one_level(processor, calls, args.ticks)
                others = ", ".join(f"{verb} {n} ({t * 1000:.1f} ms)" for verb, (n, t) in result["other"].items())
                say(f"stored={level:>6}  tick wall {result['wall'] * 1000:8.1f} ms  "
                    f"(ticks {', '.join(f'{w * 1000:.0f}' for w in result['walls'])} ms)  "
                    f"list calls {result['list_calls']:g}  list wall {result['list_seconds'] * 1000:8.1f} ms"
                    + (f"  other calls: {others}" if others else "") + f"  [{result['report']}]")
                calls.reset()
                diags[level] = diagnostic(api, namespace, result["selectors"], args.diagnostic_repeat)
                beside[level] = diagnostic(api, empty, result["selectors"], args.diagnostic_repeat)
                calls.reset()
        low, high = levels[0], levels[-1]
        if high != low:
            a, b = results[low], results[high]
            say(f"ratio stored={high} / stored={low}:  list wall {b['list_seconds'] / max(a['list_seconds'], 1e-9):.2f}"
                f"  tick wall {b['wall'] / a['wall']:.2f}   (goal: <= 1.5)")
        say()
        say("diagnostic: the tick's own list calls issued directly (paged by 500, each distinct selector once), "
            f"median of {args.diagnostic_repeat}")
        selectors = list(dict.fromkeys(results[high]["selectors"]))
        say(f"  selectors ({len(selectors)} distinct, {results[high]['list_calls']:g} list calls a tick):")
        for selector in selectors:
            say(f"    {selector if len(selector) < 200 else selector[:160] + f' ... ({len(selector)} chars)'}")
        table(say, diags, levels, "")
        say("  the same lists in an empty namespace of the same cluster (the finished requests stored in the other):")
        table(say, beside, levels, "empty namespace, ")
        if args.diagnostic_out:
            Path(args.diagnostic_out).write_text("\n".join(lines) + "\n")
            print(f"(written to {args.diagnostic_out})")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
