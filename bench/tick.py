"""Benchmark (issue #3): one approval-timer tick over 1,000 due requests, against real servers.

1,000 requests are due (state pending, for an auto-approved model), so each goes pending ->
approved -> litellm prepared -> issued -> emailed -> active within the tick. Around the
processor everything is real or speaks the real protocol:

* a real kube-apiserver + etcd (scripts/local_cluster.py), the requests seeded as Secrets with
  `codec.to_secret(KeyRequest.new(...))`, 16 at a time, in a fresh namespace per run;
* the LiteLLM key API stand-in (tests/standins/litellm_server.py), answering /key/generate
  50 ms late, every time;
* a real SMTP server (aiosmtpd Controller, plain, on 127.0.0.1).

The tick itself runs in a subprocess built exactly as the timer builds it (`context.processor()`
from env settings, INFO logs to a file as a host would collect them), so the peak RSS printed
(its VmHWM) is the processor's own, not the stand-ins' or the SMTP server's. Runs: the default
concurrency (PROCESSOR_CONCURRENCY, 8) and 16, then concurrency 1 as the baseline. Goal: all
1,000 within one 30 s tick (and no slower than 16.0-16.7 s at concurrency 8, the figure before
issue 17), the processor's peak RSS <= 150 MB with 50,000 finished requests stored
(`--stored 50000`: denied/revoked/failed/expired requests, settled as the processor leaves them,
seeded 32 at a time beside the due ones in each run's namespace). Each run also prints where a request's
time goes (every apiserver verb, LiteLLM and SMTP call timed in the subprocess) and the CPU used
by the processor, apiserver, etcd and the stand-ins: on a small machine they share the CPUs.

    .venv/bin/python bench/tick.py [--requests 1000] [--concurrency 8 16] [--repeat 1] [--baseline-requests 1000]
        [--stored 0]

`--baseline-requests N` (< --requests) runs the concurrency-1 baseline over N requests only and
extrapolates its time linearly (said so in the output); `--repeat N` runs each concurrency N
times and judges the goal on the slowest. `--profile` instead runs cProfile inside the
subprocess over a 200-request tick (every worker thread profiled, wall and CPU clocks):

    .venv/bin/python bench/tick.py --profile [--requests 200] [--concurrency 8]

`--compare-with TREE` runs another checkout's tick (its own bench/tick.py child, its own code)
and this one's alternately on the same cluster and stand-ins, and prints the ratio:

    git worktree add /tmp/before <commit> && .venv/bin/python bench/tick.py --compare-with /tmp/before --repeat 3

`--idle` instead measures a tick with nothing due over 0, 10,000 and 50,000 stored finished
requests, and the diagnostic lists with and without resourceVersion="0" (bench/idle.py):

    .venv/bin/python bench/tick.py --idle [--levels 0,10000,50000] [--ticks 5] [--diagnostic-out FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import re
import resource
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

from bench.common import core_api, free_port, load_local_cluster  # noqa: E402

MODEL = "bench-auto"
GOAL_SECONDS = 30.0  # one tick of the default APPROVAL_SCHEDULE
GOAL_RSS_MB = 150.0  # with 50,000 finished requests stored (--stored 50000)
CONFIG = {
    "models": [{"id": MODEL, "title": "Bench auto-approved", "auto_approve": True,
                "provisioning": {"backends": ["litellm"],
                                 "litellm": {"models": ["gpt-4o-mini"], "duration": "30d", "max_budget": 10,
                                             "budget_duration": "30d", "tpm_limit": 1000, "rpm_limit": 10}}}],
    "approval": {"default": "approve", "rules": []},
    "notifications": {"product_name": "Key Desk", "reviewers": [], "admins": []},
}
# Settings that would route the processor elsewhere (ACS instead of SMTP, APIM) if set outside.
UNSET = ("ACS_CONNECTION_STRING", "ACS_ENDPOINT", "ACS_SENDER_ADDRESS", "APIM_SUBSCRIPTION_ID",
         "APIM_RESOURCE_GROUP", "APIM_SERVICE_NAME", "APIM_GATEWAY_URL", "LITELLM_GATEWAY_URL", "CA_BUNDLE",
         "SMTP_USER", "SMTP_PASSWORD")


# --- the subprocess: one tick, as the timer runs it ---------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from
    the parent across fork+exec, so a subprocess of this (litellm-importing) parent would report
    the parent's ~230 MB before doing anything."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def instrument(processor) -> dict[str, list]:
    """Wall time of every call out of the processor (each apiserver verb, LiteLLM, SMTP), summed over
    threads: a breakdown of where a request's time goes that costs ~1 us a call, unlike cProfile."""
    timings: dict[str, list] = {}
    lock = threading.Lock()

    def add(name: str, seconds: float) -> None:
        with lock:
            entry = timings.setdefault(name, [0, 0.0])
            entry[0] += 1
            entry[1] += seconds

    def timed(name: str, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                add(name, time.perf_counter() - started)
        return wrapper

    # Every apiserver call of the process goes through the kubernetes client's REST layer, whatever
    # store code sits above it: each is timed there, by verb, its body read inside the timing.
    from urllib.parse import parse_qs, urlsplit

    from kubernetes.client import rest

    from bench.common import _verb

    send = rest.RESTClientObject.request

    def request(client, method, url, *args, **kwargs):
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        started = time.perf_counter()
        try:
            response = send(client, method, url, *args, **kwargs)
            response.read()
            return response
        finally:
            add(f"kube {_verb(method, url, query)}", time.perf_counter() - started)

    rest.RESTClientObject.request = request
    for backend, provisioner in processor.provisioners.items():
        provisioner.issue = timed(f"{backend} issue", provisioner.issue)
    processor.notifier.send = timed("email send", processor.notifier.send)
    return timings


def child(profile_out: str | None, log_file: str) -> None:
    import logging

    logging.basicConfig(filename=log_file, level=logging.INFO,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    from shared import context

    started = time.perf_counter()
    context.load()
    processor = context.processor()
    setup_seconds = time.perf_counter() - started
    rss_setup = peak_rss_mb()

    timings = instrument(processor)
    profiles: list[cProfile.Profile] = []
    if profile_out:
        timer = time.thread_time if profile_out.endswith(".cpu") else time.perf_counter
        local = threading.local()
        lock = threading.Lock()
        process = processor.engine.advance  # what each worker thread runs per request

        def profiled(request):  # cProfile sees one thread only: one profiler per worker thread
            prof = getattr(local, "prof", None)
            if prof is None:
                prof = local.prof = cProfile.Profile(timer)
                with lock:
                    profiles.append(prof)
            prof.enable()
            try:
                return process(request)
            finally:
                prof.disable()

        processor.engine.advance = profiled
        main = cProfile.Profile(timer)  # the sweep (due()) runs on the calling thread
        profiles.append(main)
        main.enable()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    report = processor.run_tick()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    if profile_out:
        main.disable()
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            stats.add(prof)
        stats.dump_stats(profile_out)
    print(json.dumps({
        "seconds": elapsed, "cpu_seconds": cpu, "setup_seconds": setup_seconds,
        "rss_setup_mb": rss_setup, "rss_peak_mb": peak_rss_mb(),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "due": report.due, "processed": report.processed, "skipped": report.skipped,
        "left_for_next_tick": report.left_for_next_tick, "outcomes": report.outcomes,
        "threads": len(profiles) - 1 if profile_out else None, "timings": timings,
    }), flush=True)


# --- the parent: servers, seeding, checks -------------------------------------------------------------------

class Mailbox:
    """aiosmtpd handler: keeps each message's recipients and raw bytes (parsed after the run)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 OK"

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()


def slow_litellm(delay: float):
    from tests.standins.litellm_server import LiteLLMStandin

    class SlowLiteLLM(LiteLLMStandin):
        """The stand-in, with every /key/generate answered `delay` seconds late (a permanent
        latency, where faults.plan would have to queue one fault per call)."""

        def serve(self, call):
            if (call.method, call.path) == ("POST", "/key/generate"):
                time.sleep(delay)  # outside the stand-in's lock, so concurrent calls overlap
            return super().serve(call)

    return SlowLiteLLM()


def seed(api, namespace: str, count: int, tag: str) -> float:
    from shared.domain.request import KeyRequest
    from shared.store import codec

    def create(i: int) -> None:
        request = KeyRequest.new(f"{tag}-{i}@example.com", MODEL)
        api.create_namespaced_secret(namespace, codec.to_secret(request), _preload_content=False).read()

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(count)))
    return time.perf_counter() - started


def stored_requests(api, namespace: str) -> list[dict]:
    from shared.store import codec

    items, token = [], None
    while True:
        kwargs = {"label_selector": codec.request_selector(), "limit": 500, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        body = json.loads(api.list_namespaced_secret(namespace, **kwargs).data)
        items += body["items"]
        token = body["metadata"].get("continue")
        if not token:
            return items


def check(api, namespace: str, mailbox: Mailbox, litellm) -> dict:
    """What the tick left behind: states, keys at LiteLLM, emails and whether each carries its key."""
    from email import policy
    from email.parser import BytesParser

    from shared.store import codec

    states: dict[str, int] = {}
    for secret in stored_requests(api, namespace):
        state = secret["metadata"]["labels"].get(codec.STATE_LABEL)
        states[state] = states.get(state, 0) + 1
    # The Secret keeps no key once its email is sent (older trees did): an email carries its
    # recipient's own key when LiteLLM holds that key (by its token id) for that recipient.
    owners = {token: row.get("user_id") for token, row in litellm.keys.items()}
    with mailbox._lock:
        messages = list(mailbox.messages)
    with_key = 0
    recipients = set()
    for rcpts, raw in messages:
        recipients.update(rcpts)
        text = BytesParser(policy=policy.default).parsebytes(raw).get_body(("plain",)).get_content()
        found = re.search(r"sk-[A-Za-z0-9_-]{20,}", text)
        token = hashlib.sha256(found.group(0).encode()).hexdigest() if found else None
        if len(rcpts) == 1 and token is not None and owners.get(token) == rcpts[0]:
            with_key += 1
    return {"states": states, "active": states.get("active", 0), "emails": len(messages),
            "recipients": len(recipients), "emails_with_own_key": with_key,
            "litellm_keys": len(litellm.keys), "generate_calls": len(litellm.calls_to("POST", "/key/generate"))}


def log_problems(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if " WARNING " in line or " ERROR " in line)


def cpu_seconds(pid: int) -> float:
    """utime + stime of another process (the apiserver, etcd), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


def run(api, env: dict, work: Path, mailbox: Mailbox, litellm, concurrency: int, count: int,
        cluster, profile_out: str | None = None, tree: Path = ROOT, stored: int = 0) -> dict:
    """One tick in a subprocess of the app in `tree` (this checkout, or another one to compare with),
    with `stored` finished requests (settled, as the processor leaves them) beside the due ones."""
    from bench.common import seed_requests

    run_id = uuid.uuid4().hex[:6]
    namespace = f"bench-tick-c{concurrency}-{run_id}"
    api.create_namespace({"metadata": {"name": namespace}})
    # The finished ones where the app keeps them: its archive namespace (a tree without the archive
    # never reads it, so for such a tree they are stored beside the due ones, where it kept them).
    archived = (tree / "shared" / "store" / "request_ids.py").is_file()
    if archived:
        api.create_namespace({"metadata": {"name": f"{namespace}-archive"}})
    stored_seconds = seed_requests(api, namespace, stored, f"done-{run_id}", model=MODEL,
                                   archive=f"{namespace}-archive" if archived else None) if stored else 0.0
    seeded = seed(api, namespace, count, f"c{concurrency}-{run_id}")
    litellm.reset()
    mailbox.clear()
    log_file = work / f"tick-{namespace}.log"
    child_env = {**env, "KUBERNETES_NAMESPACE": namespace, "PROCESSOR_CONCURRENCY": str(concurrency)}
    command = [sys.executable, str(tree / "bench" / "tick.py"), "--child", "--log-file", str(log_file)]
    if profile_out:
        command += ["--profile-out", profile_out]
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    others = {name: cpu_seconds(pid) for name, pid in (("apiserver", cluster.apiserver_pid),
                                                       ("etcd", cluster.etcd_pid))}
    machine = machine_cpu()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=child_env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    machine_busy = machine_cpu()[0] - machine[0]
    after, kids_after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = {"processor": kids_after.ru_utime + kids_after.ru_stime - kids.ru_utime - kids.ru_stime}
    busy |= {name: cpu_seconds(pid) - others[name] for name, pid in (("apiserver", cluster.apiserver_pid),
                                                                    ("etcd", cluster.etcd_pid))}
    busy["stand-ins+SMTP"] = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"the tick subprocess failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(check(api, namespace, mailbox, litellm), seeded_seconds=seeded, requests=count, busy=busy,
                  stored=stored, stored_seconds=stored_seconds,
                  machine_busy=machine_busy, load_average=os.getloadavg()[0], subprocess_seconds=wall,
                  concurrency=concurrency, log_problems=log_problems(log_file), log_file=str(log_file))
    return result


def show(result: dict, extrapolated_to: int | None = None) -> None:
    n, seconds = result["requests"], result["seconds"]
    line = (f"concurrency {result['concurrency']:>2}: {n} requests in {seconds:6.2f} s = {n / seconds:6.1f} req/s"
            f"  (CPU {result['cpu_seconds']:5.1f} s)   peak RSS {result['rss_peak_mb']:5.1f} MB"
            f" (after imports/setup {result['rss_setup_mb']:5.1f} MB; ru_maxrss {result['ru_maxrss_mb']:.0f} MB, "
            f"inherited from the parent)")
    print(line)
    print(f"    ended active {result['active']}/{n}  states {result['states']}  emails received "
          f"{result['emails']} ({result['recipients']} recipients, {result['emails_with_own_key']} carry the "
          f"recipient's own key)  LiteLLM keys {result['litellm_keys']} from {result['generate_calls']} "
          f"/key/generate calls  tick report: processed {result['processed']} skipped {result['skipped']} "
          f"left {result['left_for_next_tick']}  warnings/errors logged {result['log_problems']}")
    busy, wall = result["busy"], result["subprocess_seconds"]
    ours, capacity = sum(busy.values()), (os.cpu_count() or 1) * wall
    strangers = max(0.0, result["machine_busy"] - ours)
    print(f"    CPU used during the subprocess's {wall:.1f} s (start-up included): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in busy.items())
          + f" = {ours:.1f} of {capacity:.1f} CPU-s the machine has ({ours / capacity:.0%}); processes not"
          f" ours used {strangers:.1f} ({strangers / capacity:.0%}; load average {result['load_average']:.1f})")
    n_workers = min(result["concurrency"], n)
    worker_ms = result["seconds"] * n_workers / n * 1000
    parts = []
    accounted = 0.0
    for name, (calls, spent) in sorted(result["timings"].items(), key=lambda item: -item[1][1]):
        accounted += spent
        parts.append(f"{name} {calls / n:.3g} x {spent / calls * 1000:.1f} ms")
    print(f"    per request, {worker_ms:.0f} ms of a worker's time: " + ", ".join(parts)
          + f", everything else {worker_ms - accounted / n * 1000:.1f} ms")
    if extrapolated_to:
        print(f"    EXTRAPOLATED (baseline capped at {n}): {extrapolated_to} requests would take "
              f"{seconds * extrapolated_to / n:6.1f} s at this rate")
    stored = (f"; {result['stored']} finished requests stored beside them, seeded in "
              f"{result['stored_seconds']:.1f} s") if result.get("stored") else ""
    print(f"    (seeding {n} Secrets took {result['seeded_seconds']:.1f} s{stored}; tick log {result['log_file']})",
          flush=True)


def verdict(result: dict) -> str:
    n = result["requests"]
    in_time = result["seconds"] <= GOAL_SECONDS and result["active"] == n
    small = result["rss_peak_mb"] < GOAL_RSS_MB
    return (f"goal: all {n} active within one {GOAL_SECONDS:.0f} s tick -> {'MET' if in_time else 'MISSED'} "
            f"({result['active']} active in {result['seconds']:.1f} s); memory under {GOAL_RSS_MB:.0f} MB -> "
            f"{'MET' if small else 'MISSED'} ({result['rss_peak_mb']:.0f} MB)")


def print_profile(path: str, requests: int, clock: str) -> None:
    stats = pstats.Stats(path)
    print(f"\n--- cProfile ({clock} clock), all threads summed, {requests} requests; "
          f"per request = cumulative / {requests} ---")
    print("(cProfile inflates pure-Python code several-fold, the CPU clock most: read the ranking, and the "
          "per-request wall times above for absolute figures)")
    interesting = [
        ("processor.py", "process"), ("processor.py", "due"), ("requests.py", "update"), ("requests.py", "_read"),
        ("requests.py", "list"), ("secrets.py", "_call"), ("codec.py", "to_secret"), ("codec.py", "from_secret"),
        ("litellm.py", "issue"), ("email_smtp.py", "send"), ("email_smtp.py", "build_message"),
        ("processor.py", "_approved_email"), ("messages.py", "_render"), ("rules.py", "decide"),
        ("api_client.py", "call_api"), ("api_client.py", "sanitize_for_serialization"),
        ("rest.py", "request"), ("_client.py", "request"), ("smtplib.py", "__init__"),
        ("smtplib.py", "send_message"), ("smtplib.py", "quit"), ("ssl.py", "read"), ("ssl.py", "write"),
        ("__init__.py", "loads"), ("__init__.py", "dumps"), ("__init__.py", "info"), ("__init__.py", "_log"),
        ("api_client.py", "param_serialize"), ("kube_config.py", "_set_config"),
        ("request.py", "getproxies_environment"), ("_validate_call.py", "wrapper_function"),
        ("{method 'acquire' of '_thread.lock' objects}", ""),
    ]
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        for want_file, want_name in interesting:
            if (want_name and file.endswith(want_file) and name == want_name) or (not want_name and name == want_file):
                rows.append((ct, nc, tt, f"{Path(file).name}:{line} {name}"))
    print(f"{'cumulative s':>12} {'per req ms':>10} {'own s':>7} {'calls':>8}  function")
    for ct, nc, tt, label in sorted(rows, reverse=True):
        print(f"{ct:12.2f} {ct / requests * 1000:10.2f} {tt:7.2f} {nc:8d}  {label}")
    out = io.StringIO()
    pstats.Stats(path, stream=out).sort_stats("tottime").print_stats(25)
    print(f"\ntop 25 by own time ({clock}):")
    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


def compare(api, env: dict, work: Path, mailbox: Mailbox, litellm, concurrency: int, count: int, cluster,
            other: Path, repeat: int, stored: int = 0) -> None:
    """This checkout's tick against another's, alternately, `repeat` times each; the ratio of the medians."""
    times: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(repeat):
        for name, tree in (("other", other), ("this", ROOT)):
            result = run(api, env, work, mailbox, litellm, concurrency, count, cluster, tree=tree,
                         stored=stored)
            print(f"[{name}: {tree}]")
            show(result)
            if result["active"] != count:
                raise SystemExit(f"{name}: only {result['active']} of {count} requests ended active")
            times[name].append(result["seconds"])
    mine, theirs = statistics.median(times["this"]), statistics.median(times["other"])
    print(f"\nconcurrency {concurrency}, {count} requests, median of {repeat}: this tree {mine:.2f} s "
          f"({sorted(times['this'])}), {other} {theirs:.2f} s ({sorted(times['other'])}); "
          f"ratio this/other = {mine / theirs:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None, help="due requests per run (1000; 200 with --profile)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16],
                        help="PROCESSOR_CONCURRENCY values to run (the first is reported against the goal)")
    parser.add_argument("--baseline-requests", type=int, default=None,
                        help="requests for the concurrency-1 baseline (default: --requests); fewer: extrapolated")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per concurrency (the tick's time varies ~10%% run to run on a 2-CPU machine)")
    parser.add_argument("--generate-latency", type=float, default=0.05, help="seconds LiteLLM takes per /key/generate")
    parser.add_argument("--stored", type=int, default=0,
                        help="finished requests (denied/revoked/failed/expired, settled) stored beside the due ones "
                             "in each run's namespace (the memory goal is judged at 50000)")
    parser.add_argument("--profile", action="store_true", help="cProfile one tick in the subprocess instead")
    parser.add_argument("--compare-with", type=Path, metavar="TREE",
                        help="another checkout of the app (e.g. `git worktree add /tmp/old <commit>`): its tick and "
                             "this one's run alternately on the same cluster, and the ratio is printed")
    parser.add_argument("--idle", action="store_true",
                        help="the idle tick instead: nothing due, finished requests stored (bench/idle.py)")
    parser.add_argument("--levels", default="0,10000,50000",
                        help="--idle: finished requests stored, comma-separated (default 0,10000,50000)")
    parser.add_argument("--ticks", type=int, default=5, help="--idle: ticks per level (the median is printed)")
    parser.add_argument("--diagnostic-repeat", type=int, default=5,
                        help="--idle: repetitions of the direct lists with and without resourceVersion=0")
    parser.add_argument("--diagnostic-out", help="--idle: also write the figures to this file")
    parser.add_argument("--finished-in", choices=("archive", "requests"), default="archive",
                        help="--idle: where the finished requests are stored: the archive namespace, where the app "
                             "moves them (default), or the request namespace, as before the archive existed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log-file", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.profile_out, args.log_file)
        return
    if args.idle:
        from bench import idle

        idle.main(args)
        return
    count = args.requests or (200 if args.profile else 1000)
    baseline_count = min(args.baseline_requests or count, count)

    from aiosmtpd.controller import Controller

    local_cluster = load_local_cluster()
    with tempfile.TemporaryDirectory(prefix="bench17-tick-") as tmp:
        work = Path(tmp)
        config_file = work / "config.yaml"
        config_file.write_text(json.dumps(CONFIG))  # JSON is YAML
        litellm = slow_litellm(args.generate_latency).start()
        mailbox = Mailbox()
        smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
        smtp.start()
        cluster = local_cluster.start(work / "cluster")
        try:
            api = core_api(cluster.kubeconfig)  # the app's client settings: a pool of 32 for seeding
            env = {k: v for k, v in os.environ.items() if k not in UNSET}
            env.update({
                "KUBECONFIG": str(cluster.kubeconfig), "CONFIG_FILE": str(config_file),
                "LITELLM_BASE_URL": litellm.url, "LITELLM_API_KEY": litellm.master_key,
                "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "SMTP_USE_TLS": "none",
                "PROCESSOR_TIME_BUDGET_SECONDS": "150", "LOG_LEVEL": "INFO",
            })
            print(f"$ .venv/bin/python bench/tick.py {shlex.join(sys.argv[1:])}", flush=True)
            stored_note = f", {args.stored} finished requests stored beside them" if args.stored else ""
            print(f"{count} due requests per run (pending, auto-approved model {MODEL}){stored_note}; "
                  f"LiteLLM /key/generate answers in {args.generate_latency * 1000:.0f} ms; real kube-apiserver, "
                  f"real SMTP server; "
                  f"{os.cpu_count()} CPUs shared by everything", flush=True)
            if args.profile:
                concurrency = args.concurrency[0]
                for clock in ("wall", "cpu"):
                    out = str(work / f"tick.{clock}")
                    result = run(api, env, work, mailbox, litellm, concurrency, count, cluster, profile_out=out,
                                 stored=args.stored)
                    show(result)
                    print_profile(out, count, clock)
                return

            if args.compare_with:
                compare(api, env, work, mailbox, litellm, args.concurrency[0], count, cluster,
                        args.compare_with.resolve(), args.repeat, stored=args.stored)
                return
            runs: dict[int, list[dict]] = {}
            for _ in range(args.repeat):
                for concurrency in args.concurrency:
                    result = run(api, env, work, mailbox, litellm, concurrency, count, cluster, stored=args.stored)
                    show(result)
                    runs.setdefault(concurrency, []).append(result)
            baseline = run(api, env, work, mailbox, litellm, 1, baseline_count, cluster, stored=args.stored)
            show(baseline, extrapolated_to=count if baseline_count < count else None)
            baseline_seconds = baseline["seconds"] * count / baseline_count
            note = f" (baseline extrapolated from {baseline_count} requests)" if baseline_count < count else ""
            print()
            for concurrency, results in runs.items():
                times = sorted(r["seconds"] for r in results)
                median = statistics.median(times)
                spread = f" (median of {len(times)}: {times[0]:.1f}-{times[-1]:.1f} s)" if len(times) > 1 else ""
                print(f"concurrency {concurrency:>2}: {median:5.1f} s{spread}, {count / median:5.1f} req/s, "
                      f"{baseline_seconds / median:.2f}x the concurrency-1 baseline's {baseline_seconds:.1f} s{note}")
            for concurrency, results in runs.items():
                slowest = max(results, key=lambda r: (r["seconds"], r["rss_peak_mb"]))
                worst = f" (slowest of {len(results)} runs)" if len(results) > 1 else ""
                print(verdict(slowest) + f"  [PROCESSOR_CONCURRENCY={concurrency}{worst}]")
        finally:
            cluster.stop()
            smtp.stop()
            litellm.stop()


if __name__ == "__main__":
    main()
