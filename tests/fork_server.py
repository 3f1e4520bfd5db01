"""Test-only: run many crash-runner processes cheaply. A fork server imports what a run needs once
(the kubernetes client alone is ~1 s of CPU) and forks every run from that clean state: still one
fresh process per run, with its own pid to SIGKILL, and nothing of an earlier run carried over.

`serve(main, preload)` is the server's side (a runner's `--fork-server`); `ForkServer` the tests'.
Protocol, one JSON line each way: {"argv", "env", "out", "err"} in; {"pid"} out when forked, and
{"exited": pid, "returncode"} (-9 for SIGKILL) when a child ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Run:
    """What one crash-runner process did: its exit status (-9 when SIGKILLed) and output, one JSON
    line per tick report on stdout."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ticks(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def __str__(self) -> str:
        return f"runner exited {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def serve(main: Callable[[list[str]], int], preload: Iterable[str],
          lazy: Iterable[tuple[str, str]] = ()) -> int:
    """Import `preload` (and touch the `lazy` (module, attribute) pairs, whose classes load on first
    access), then fork a child per request line that runs `main(argv)` with exactly `env`, stdin
    /dev/null and stdout/stderr in the files `out`/`err`. Single-threaded, so fork is safe."""
    for name in preload:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for name, attribute in lazy:
        with contextlib.suppress(ImportError):
            getattr(importlib.import_module(name), attribute, None)

    def answer(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    children: set[int] = set()
    stdin_open = True
    pending = b""  # what was read from stdin past the last whole line (os.read: no hidden buffer)
    while stdin_open or children or b"\n" in pending:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            answer({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})
        if b"\n" not in pending:
            if not stdin_open:
                time.sleep(0.02)
                continue
            ready, _, _ = select.select([0], [], [], 0.02)
            if not ready:
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                stdin_open = False
            pending += chunk
            continue
        line, pending = pending.split(b"\n", 1)
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: a run of its own
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                for fd, path in ((1, request["out"]), (2, request["err"])):
                    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    os.dup2(target, fd)
                    os.close(target)
                os.environ.clear()
                os.environ.update(request["env"])
                code = main(request["argv"])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - report it like an interpreter would
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.add(pid)
        answer({"pid": pid})
    return 0



class Child:
    """One run, forked by the fork server: a process of its own (its own pid, SIGKILLable)."""

    def __init__(self, server: ForkServer, pid: int, out: Path, err: Path) -> None:
        self.server, self.pid, self.out, self.err = server, pid, out, err
        self.exited = threading.Event()
        self.returncode: int | None = None

    def finish(self, timeout: float = 40) -> Any:
        if not self.exited.wait(timeout):
            self.kill()
            raise AssertionError(f"runner {self.pid} did not end in {timeout} s\n{self.output()}")
        return self.output()

    def output(self) -> Any:
        return self.server.run(self.returncode if self.returncode is not None else -1,
                   self.out.read_text() if self.out.exists() else "", self.err.read_text() if self.err.exists() else "")

    def kill(self) -> None:
        if not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.exited.wait(5)


class ForkServer:
    """`python -m <module> --fork-server` (a runner that calls `serve`): a process that has
    imported what a run needs and forks each run from that clean state, so a run costs no
    start-up; each is still a fresh process, killed by its own pid. `run(returncode, stdout,
    stderr)` makes what `Child.finish` returns."""

    def __init__(self, module: str, folder: Path, run: Callable[[int, str, str], Any]) -> None:
        self.folder = folder
        self.run = run
        self.process = subprocess.Popen([sys.executable, "-m", module, "--fork-server"], cwd=ROOT,
                                        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self._children: dict[int, Child] = {}
        self._spawned: queue.Queue[int] = queue.Queue()
        self._lock = threading.Lock()
        self._count = 0
        self._reader = threading.Thread(target=self._read, name="fork-server", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            if "pid" in message:
                self._spawned.put(message["pid"])
            elif "exited" in message:
                with self._lock:
                    child = self._children.get(message["exited"])
                if child is not None:
                    child.returncode = message["returncode"]
                    child.exited.set()

    def spawn(self, argv: list[str], env: dict[str, str]) -> Child:
        with self._lock:
            self._count += 1
            out, err = self.folder / f"run-{self._count}.out", self.folder / f"run-{self._count}.err"
            self.process.stdin.write(json.dumps({"argv": argv, "env": env, "out": str(out), "err": str(err)}) + "\n")
            self.process.stdin.flush()
            try:
                pid = self._spawned.get(timeout=60)  # the first waits for the imports
            except queue.Empty:
                raise AssertionError(f"the fork server did not answer (exit code {self.process.poll()})") from None
            child = self._children[pid] = Child(self, pid, out, err)
        return child

    def close(self) -> None:
        with self._lock:
            children = list(self._children.values())
        for child in children:
            child.kill()
        self.process.stdin.close()
        self.process.wait(10)
