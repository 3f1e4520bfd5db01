#!/usr/bin/env python3
"""Run a real, single-node kube-apiserver + etcd on loopback for local development and tests.

Why this exists: the requestor talks to Kubernetes (Secrets, custom resources such as kaito.sh
Workspaces), and a fake API server would only check our own assumptions. No registry reachable
from our machines ships a kube-apiserver binary, but Debian's `kubernetes` *source* package is the
full upstream tree with vendor/, which builds offline with Debian's Go. So this script

* `build`  - builds kube-apiserver once from that source package (about 4 min on 2 cores, with a
             fix to its vendored reflect2 without which it crashes) and caches the binary;
* `up`     - starts etcd and kube-apiserver on free loopback ports, detached (they outlive `up`),
             and writes a kubeconfig (token auth, group system:masters) into the given directory;
* `down`   - stops a cluster started by `up`;
* `status` - tells whether it is running and ready.

Tests use `start()` directly; it returns a `Cluster` whose `stop()` ends both processes. By
default they also end when the process that called `start()` dies, even by SIGKILL (Linux
PR_SET_PDEATHSIG), so a killed test run leaves no etcd or kube-apiserver behind.
Standard library only, so it runs on a clean clone before any dependency is installed.
"""

import argparse
import base64
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

APT_PACKAGES = {  # binary we need -> Debian package that provides it
    "go": "golang-go",
    "etcd": "etcd-server",
    "rsync": "rsync",
    "dpkg-source": "dpkg-dev",
    "openssl": "openssl",
}
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEBIAN_SUITE = "bookworm"
BINARY_NAME = "kube-apiserver"
READY_TIMEOUT_S = 60.0
ETCD_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# --- The reflect2 fix --------------------------------------------------------------------------
# The tree vendors github.com/modern-go/reflect2 v1.0.1, written for Go < 1.18. Built with Go 1.19
# the apiserver segfaults in reflect.mapiterinit the first time it JSON-encodes certain maps (e.g.
# when a custom resource is created). This is the upstream v1.0.2 fix: since Go 1.18 the caller
# allocates the iterator, so reflect2's copy of the runtime's private `hiter` must be full size.
REFLECT2_DIR = "vendor/github.com/modern-go/reflect2"

OLD_MAPITERINIT = "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter"
NEW_MAPITERINIT = "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)"

# Field name -> kind, in order, as the Go 1.19 runtime lays out `hiter` (runtime/map.go).
# "ptr" is any pointer-shaped field; the runtime stores pointers into those, so the GC must see them.
HITER_LAYOUT = [
    ("key", "ptr"), ("elem", "ptr"), ("t", "ptr"), ("h", "ptr"), ("buckets", "ptr"),
    ("bptr", "ptr"), ("overflow", "ptr"), ("oldoverflow", "ptr"), ("startBucket", "uintptr"),
    ("offset", "uint8"), ("wrapped", "bool"), ("B", "uint8"), ("i", "uint8"),
    ("bucket", "uintptr"), ("checkBucket", "uintptr"),
]
# reflect2 calls the second field `value`; names don't matter to the runtime, only the layout.
NEW_HITER = """type hiter struct {
	key         unsafe.Pointer // Must be in first position.
	value       unsafe.Pointer // Must be in second position.
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    unsafe.Pointer
	oldoverflow unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}"""

OLD_UNSAFE_ITERATE = """func (type2 *UnsafeMapType) UnsafeIterate(obj unsafe.Pointer) MapIterator {
	return &UnsafeMapIterator{
		hiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),"""
NEW_UNSAFE_ITERATE = """func (type2 *UnsafeMapType) UnsafeIterate(obj unsafe.Pointer) MapIterator {
	it := new(hiter)
	mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), it)
	return &UnsafeMapIterator{
		hiter:      it,"""

# Part of the cache key: a binary built with a different patch is a different binary.
PATCH_HASH = hashlib.sha256(
    "\0".join([NEW_MAPITERINIT, NEW_HITER, NEW_UNSAFE_ITERATE]).encode()
).hexdigest()[:12]


def log(message: str) -> None:
    print(f"[local_cluster] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a build step; its output goes to stderr, since stdout carries the CLI's result."""
    log("$ " + " ".join(cmd))
    kwargs.setdefault("stdout", 2)  # fd 2, which also works when sys.stderr is swapped out
    return subprocess.run(cmd, check=True, **kwargs)


# --- Building and caching the binary -----------------------------------------------------------

def cache_root() -> Path:
    override = os.environ.get("LLM_KEY_REQUESTOR_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "llm-key-requestor"


def cached_binary() -> Path | None:
    """Newest cached kube-apiserver built with the current patch, whatever the source version.

    Looking this up needs no apt and no network, so tests on a warm machine start at once.
    """
    found = sorted(
        cache_root().glob(f"{BINARY_NAME}-*-{PATCH_HASH}/{BINARY_NAME}"),
        key=lambda p: p.stat().st_mtime,
    )
    return found[-1] if found else None


def ensure_binary() -> Path:
    """Return the path of a cached kube-apiserver, building it first if there is none."""
    binary = cached_binary()
    if binary:
        return binary
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a concurrent caller is building right now; use its result
            log(f"another build holds {lock.name}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        binary = cached_binary()
        if binary:
            return binary
        return _build(root)


def ensure_apt_packages() -> None:
    missing = [pkg for exe, pkg in APT_PACKAGES.items() if not shutil.which(exe)]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env)
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


def _deb_src_line() -> str:
    """A deb-src line for the main `bookworm` suite, from the system's own deb822 sources."""
    for stanza in re.split(r"\n\s*\n", DEBIAN_SOURCES.read_text()):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
        if DEBIAN_SUITE in fields.get("Suites", "").split():
            signed_by = f"[signed-by={fields['Signed-By']}] " if "Signed-By" in fields else ""
            uri = fields["URIs"].split()[0]
            return f"deb-src {signed_by}{uri} {DEBIAN_SUITE} main\n"
    raise RuntimeError(f"no stanza with Suites: {DEBIAN_SUITE} in {DEBIAN_SOURCES}")


def _download_source(workdir: Path) -> Path:
    """Fetch the kubernetes source package with a private apt config; return its .dsc."""
    apt_dir = workdir / "apt"
    (apt_dir / "lists" / "partial").mkdir(parents=True)
    (apt_dir / "cache" / "archives" / "partial").mkdir(parents=True)
    source_list = apt_dir / "sources.list"
    source_list.write_text(_deb_src_line())
    # Private lists and cache: the system's apt state is left exactly as it was.
    apt = [
        "apt-get",
        "-o", f"Dir::Etc::SourceList={source_list}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", "APT::Sandbox::User=root",
    ]
    download_dir = workdir / "download"
    download_dir.mkdir()
    run([*apt, "update"])
    run([*apt, "source", "--download-only", "kubernetes"], cwd=download_dir)
    (dsc,) = download_dir.glob("kubernetes_*.dsc")
    return dsc


def _dsc_version(dsc: Path) -> str:
    match = re.search(r"^Version:\s*(\S+)", dsc.read_text(errors="replace"), re.MULTILINE)
    if not match:
        raise RuntimeError(f"no Version: field in {dsc}")
    return match.group(1)


def _go_hiter_layout(map_go: Path) -> list[tuple[str, str]]:
    """The field names and kinds of `type hiter struct` in the Go runtime's map.go."""
    match = re.search(r"^type hiter struct \{\n(.*?)^\}", map_go.read_text(), re.M | re.S)
    if not match:
        raise RuntimeError(f"no `type hiter struct` in {map_go}")
    layout = []
    for line in match.group(1).splitlines():
        line = line.split("//", 1)[0].strip()
        if not line:
            continue
        name, go_type = line.split(None, 1)
        kind = "ptr" if go_type == "unsafe.Pointer" or go_type.startswith("*") else go_type
        layout.append((name, kind))
    return layout


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"expected exactly one occurrence to patch in {path}:\n{old}")
    path.write_text(text.replace(old, new))


def _patch_reflect2(tree: Path) -> None:
    goroot = subprocess.run(
        ["go", "env", "GOROOT"], check=True, capture_output=True, text=True
    ).stdout.strip()
    map_go = Path(goroot) / "src" / "runtime" / "map.go"
    runtime_layout = _go_hiter_layout(map_go)
    if runtime_layout != HITER_LAYOUT:
        raise RuntimeError(
            f"The Go runtime's hiter layout in {map_go} is not the one this patch was written for;"
            f" a build would crash at run time. Update HITER_LAYOUT and NEW_HITER in {__file__}.\n"
            f"  runtime:  {runtime_layout}\n  expected: {HITER_LAYOUT}"
        )
    reflect2 = tree / REFLECT2_DIR
    link_go = reflect2 / "unsafe_link.go"
    _replace_once(link_go, OLD_MAPITERINIT, NEW_MAPITERINIT)
    old_hiter = re.search(r"^type hiter struct \{\n.*?^\}", link_go.read_text(), re.M | re.S)
    if not old_hiter:
        raise RuntimeError(f"no `type hiter struct` in {link_go}")
    _replace_once(link_go, old_hiter.group(0), NEW_HITER)
    _replace_once(reflect2 / "unsafe_map.go", OLD_UNSAFE_ITERATE, NEW_UNSAFE_ITERATE)
    log(f"patched {reflect2} for Go >= 1.18 (hiter layout checked against {map_go})")


def _kube_version_env(source_version: str) -> dict[str, str]:
    """Version stamps for the binary; the source tree has no git history to derive them from.

    Debian's version is e.g. 1.20.5+really1.20.2-1.1+deb12u1, and the code inside is 1.20.2.
    """
    upstream = source_version.split(":")[-1].split("really")[-1]
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", upstream)
    if not match:
        return {}
    major, minor, patch = match.groups()
    return {
        "KUBE_GIT_VERSION": f"v{major}.{minor}.{patch}",
        "KUBE_GIT_MAJOR": major,
        "KUBE_GIT_MINOR": minor,
        "KUBE_GIT_TREE_STATE": "clean",
    }


def _build(root: Path) -> Path:
    """Build kube-apiserver into the cache. The caller holds the build lock."""
    started = time.monotonic()
    for stale in root.glob("build-*"):  # left by a build that was killed; nobody else builds now
        log(f"removing stale build tree {stale}")
        shutil.rmtree(stale, ignore_errors=True)
    ensure_apt_packages()
    # Build next to the cache (same filesystem) and remove the ~1.9 GB tree whatever happens.
    build_dir = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        dsc = _download_source(build_dir)
        source_version = _dsc_version(dsc)
        tree = build_dir / "src"
        run(["dpkg-source", "-x", str(dsc), str(tree)], cwd=dsc.parent, stdout=subprocess.DEVNULL)
        _patch_reflect2(tree)
        env = dict(
            os.environ, GOPROXY="off", CGO_ENABLED="0", GOFLAGS="",
            # The tree is not a git checkout; keep hack/lib/version.sh from asking an enclosing
            # repository (the cache may live inside one) for a commit.
            GIT_DIR=str(build_dir / "no-git"),
            **_kube_version_env(source_version),
        )
        log(f"building {BINARY_NAME} {source_version} (about 4 min on 2 cores)")
        run(["make", f"WHAT=cmd/{BINARY_NAME}"], cwd=tree, env=env)
        target_dir = root / f"{BINARY_NAME}-{source_version}-{PATCH_HASH}"
        target_dir.mkdir(exist_ok=True)
        partial = target_dir / f"{BINARY_NAME}.partial"
        shutil.copy2(tree / "_output" / "bin" / BINARY_NAME, partial)
        binary = target_dir / BINARY_NAME
        os.replace(partial, binary)  # atomic: a cached binary is always a complete one
    finally:
        log(f"removing build tree {build_dir}")
        shutil.rmtree(build_dir, ignore_errors=True)
    log(f"built {binary} in {time.monotonic() - started:.0f} s")
    return binary


# --- Running a cluster -------------------------------------------------------------------------

@dataclasses.dataclass
class Cluster:
    kubeconfig: Path
    server: str
    token: str
    ca_file: Path
    workdir: Path
    apiserver_pid: int
    etcd_pid: int
    # Popen handles exist only in the process that started the cluster; they let stop() reap.
    _procs: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _stopped: bool = dataclasses.field(default=False, repr=False, compare=False)

    @property
    def apiserver_log(self) -> Path:
        return self.workdir / "apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self.workdir / "etcd.log"

    def stop(self) -> None:
        """Stop the apiserver, then etcd (it must outlive its client). Safe to call twice."""
        if self._stopped:
            return
        for name, pid in (("kube-apiserver", self.apiserver_pid), ("etcd", self.etcd_pid)):
            _terminate(pid, self._procs.get(name), self.workdir)
        self._stopped = True

    def is_running(self) -> bool:
        return all(_is_ours(pid, self.workdir) for pid in (self.apiserver_pid, self.etcd_pid))

    def is_ready(self) -> bool:
        return _readyz(self.server, self.token, self.ca_file)

    def save(self) -> None:
        state = {
            "kubeconfig": str(self.kubeconfig), "server": self.server, "token": self.token,
            "ca_file": str(self.ca_file), "workdir": str(self.workdir),
            "apiserver_pid": self.apiserver_pid, "etcd_pid": self.etcd_pid,
        }
        path = self.workdir / "cluster.json"
        path.write_text(json.dumps(state, indent=2) + "\n")
        path.chmod(0o600)  # it holds the admin token

    @classmethod
    def load(cls, workdir: Path) -> "Cluster":
        state = json.loads((workdir / "cluster.json").read_text())
        return cls(
            kubeconfig=Path(state["kubeconfig"]), server=state["server"], token=state["token"],
            ca_file=Path(state["ca_file"]), workdir=Path(state["workdir"]),
            apiserver_pid=state["apiserver_pid"], etcd_pid=state["etcd_pid"],
        )


def _is_ours(pid: int, workdir: Path) -> bool:
    """True if pid is alive and is one of this workdir's processes (guards against pid reuse)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and f"{workdir}/".encode() in raw


def _terminate(pid: int, proc: subprocess.Popen | None, workdir: Path) -> None:
    if not _is_ours(pid, workdir):
        if proc:
            proc.poll()  # reap an already-dead child
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)  # each process leads its own group
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc:
                proc.poll()
            if not _is_ours(pid, workdir):
                return
            time.sleep(0.05)
        log(f"pid {pid} did not stop on {sig.name}")


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open at once, so they cannot repeat)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent():
    """A preexec_fn after which the child gets SIGKILL when this process dies, however it dies.

    The kernel sends the signal when the *thread* that forked the child exits, so `start()` only
    uses it from the main thread, whose end is the process's end. Resolved before the fork, so the
    child only calls into libc between fork and exec.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _spawn(cmd: list[str], log_path: Path, die_with_parent: bool) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        # Own session and process group: a Ctrl-C or hang-up of the caller does not reach it,
        # `up` can exit and leave it running, and stop() can signal the whole group.
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent() if die_with_parent else None,
        )


def _wait_until(check, proc: subprocess.Popen, what: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with code {proc.returncode}; last lines of {log_path}:\n"
                + _tail(log_path)
            )
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{what} not ready after {timeout:.0f} s; last lines of {log_path}:\n" + _tail(log_path)
    )


def _get(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None):
    # No proxies: an http(s)_proxy in a developer's environment must not catch loopback calls.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    return opener.open(urllib.request.Request(url, headers=headers or {}), timeout=2)


def _etcd_healthy(url: str) -> bool:
    try:
        with _get(f"{url}/health") as response:
            return json.load(response).get("health") == "true"
    except (OSError, ValueError):
        return False


def _readyz(server: str, token: str, ca_file: Path) -> bool:
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
        with _get(f"{server}/readyz", {"Authorization": f"Bearer {token}"}, context) as response:
            return response.status == 200
    except (OSError, ssl.SSLError):  # HTTPError and URLError are OSErrors too
        return False


def _make_certs(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # Self-signed serving certificate: it is also the CA clients trust.
    subprocess.run([
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        "-subj", "/CN=kube-apiserver",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.crt"),
    ], check=True, **quiet)
    # Service-account token signing pair.
    subprocess.run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"], check=True, **quiet)
    subprocess.run(
        ["openssl", "rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")],
        check=True, **quiet,
    )


def _write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, namespace: str = "default") -> None:
    ca_data = base64.b64encode(ca_file.read_bytes()).decode()
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority-data: {ca_data}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: local
  context:
    cluster: local
    user: admin
    namespace: {namespace}
current-context: local
""")
    path.chmod(0o600)


def start(workdir: Path, port: int | None = None, die_with_parent: bool = True,
          namespace: str = "default") -> Cluster:
    """Start etcd and kube-apiserver for `workdir` and wait until the apiserver is ready.

    Every start is a fresh, empty cluster. Ports are picked free at start time, so several
    clusters (a developer's and the test suite's) can run side by side.

    With `die_with_parent` (the default; Linux only) both processes are killed when the calling
    process dies, also by SIGKILL, so call it from the main thread (see `_die_with_parent`).
    Without it they run until `stop()` or `down`, as `up` needs.

    `namespace` is the kubeconfig context's namespace, so plain `kubectl get secrets` looks where
    the app keeps its requests (`up --namespace`, which scripts/run sets to KUBERNETES_NAMESPACE).
    """
    if die_with_parent:
        if not sys.platform.startswith("linux"):
            raise RuntimeError("die_with_parent needs Linux (PR_SET_PDEATHSIG); pass die_with_parent=False")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("start(die_with_parent=True) must run on the main thread: the kernel "
                               "kills the cluster when the thread that started it ends")
    binary = ensure_binary()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "cluster.json").exists() and Cluster.load(workdir).is_running():
        raise RuntimeError(f"a cluster is already running in {workdir}; stop it first")

    etcd_client, etcd_peer, free_port = _free_ports(3)
    port = port or free_port
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    server = f"https://127.0.0.1:{port}"
    pki = workdir / "pki"
    ca_file = pki / "apiserver.crt"
    token = secrets.token_urlsafe(32)

    etcd_data = workdir / "etcd-data"
    shutil.rmtree(etcd_data, ignore_errors=True)  # its member record names the old peer port
    for name in ("etcd.log", "apiserver.log"):
        (workdir / name).unlink(missing_ok=True)
    _make_certs(pki)
    token_file = pki / "tokens.csv"
    token_file.write_text(f'{token},admin,admin-uid,"system:masters"\n')
    token_file.chmod(0o600)

    started = time.monotonic()
    procs: dict[str, subprocess.Popen] = {}
    try:
        # Peer URLs on 127.0.0.1 too, or etcd listens on localhost:2380 and clusters collide.
        procs["etcd"] = _spawn([
            "etcd", "--name", "local", "--data-dir", str(etcd_data),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"local={peer_url}",
        ], workdir / "etcd.log", die_with_parent)
        _wait_until(lambda: _etcd_healthy(etcd_url), procs["etcd"], "etcd",
                    workdir / "etcd.log", ETCD_TIMEOUT_S)

        procs["kube-apiserver"] = _spawn([
            str(binary),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--token-auth-file={token_file}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--enable-priority-and-fairness=false",
            # No controller-manager here to create the default ServiceAccount it would wait for.
            "--disable-admission-plugins=ServiceAccount",
            f"--cert-dir={pki / 'generated'}",
            "--profiling=false",
        ], workdir / "apiserver.log", die_with_parent)
        _wait_until(lambda: _readyz(server, token, ca_file), procs["kube-apiserver"],
                    "kube-apiserver", workdir / "apiserver.log", READY_TIMEOUT_S)
    except BaseException:
        for name in ("kube-apiserver", "etcd"):
            if name in procs:
                _terminate(procs[name].pid, procs[name], workdir)
        raise
    log(f"cluster ready at {server} in {time.monotonic() - started:.1f} s")

    kubeconfig = workdir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, ca_file, token, namespace)
    cluster = Cluster(
        kubeconfig=kubeconfig, server=server, token=token, ca_file=ca_file, workdir=workdir,
        apiserver_pid=procs["kube-apiserver"].pid, etcd_pid=procs["etcd"].pid, _procs=procs,
    )
    cluster.save()
    return cluster


# --- Command line ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build and cache kube-apiserver (no-op when cached)")
    up = commands.add_parser("up", help="start a cluster, print its kubeconfig path")
    up.add_argument("--dir", type=Path, required=True, help="state, logs and kubeconfig go here")
    up.add_argument("--port", type=int, help="apiserver port (default: a free one)")
    up.add_argument("--namespace", default="default",
                    help="the kubeconfig context's namespace (scripts/run: KUBERNETES_NAMESPACE)")
    for name, text in (("down", "stop the cluster started in DIR"),
                       ("status", "show whether the cluster in DIR runs and is ready")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "build":
        print(ensure_binary())
        return 0
    if args.command == "up":
        try:
            # Detached: the cluster outlives this command until `down` (scripts/run calls it on exit).
            cluster = start(args.dir, args.port, die_with_parent=False, namespace=args.namespace)
        except RuntimeError as error:  # a known failure: the message says all, skip the traceback
            print(f"local_cluster up: {error}", file=sys.stderr)
            return 1
        print(cluster.kubeconfig)
        return 0

    workdir = args.dir.resolve()
    if not (workdir / "cluster.json").exists():
        print(f"no cluster.json in {workdir}", file=sys.stderr)
        return 1
    cluster = Cluster.load(workdir)
    if args.command == "down":
        cluster.stop()
        log(f"stopped the cluster in {workdir}")
        return 0
    running, ready = cluster.is_running(), cluster.is_ready()
    print(json.dumps({
        "running": running, "ready": ready, "server": cluster.server,
        "kubeconfig": str(cluster.kubeconfig),
        "apiserver_pid": cluster.apiserver_pid, "etcd_pid": cluster.etcd_pid,
    }, indent=2))
    return 0 if running and ready else 1


if __name__ == "__main__":
    sys.exit(main())
