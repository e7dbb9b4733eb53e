"""What the demo starts and talks to: child processes, the cluster, kubectl and the simulator.

Every child runs in its own process group (so a Ctrl-C in the terminal reaches only the demo, which
then stops them in order) with a parent-death signal (so a demo that is SIGKILLed takes them along).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

from spotpool.api.names import GROUP, PLURAL, VERSION
from spotpool.devcluster.controlplane import BINARIES, ControlPlane, bin_dir, ensure_binaries, repo_root
from spotpool.devcluster.processes import Child, spawn

SPOTPOOL = [sys.executable, "-m", "spotpool"]


class DemoError(RuntimeError):
    """Something the demo cannot get past; the message says what and where to look."""


def checkout() -> Path:
    root = repo_root() or repo_root(Path.cwd())
    if root is None:
        raise DemoError("spotpool demo runs from a spotpool checkout (it needs crds/ and deploy/examples/)")
    return root


def binaries() -> Path:
    """The Go-built binaries, built first when any is missing (`make demo` has built them already)."""
    directory = bin_dir()
    if all((directory / name).is_file() for name in BINARIES):
        return directory
    return ensure_binaries()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# -- the run directory -----------------------------------------------------------------------------------

class RunDir:
    """`run/demo/` (git-ignored): logs and the kubeconfig, locked so two demos never share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: Any = None

    def acquire(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise DemoError(f"another spotpool demo (pid {holder}) is using {shown(self.path)}; "
                            "stop it, or pass --run-dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock
        for stale in ("operator.log", "simulator.log", "kubeconfig"):
            (self.path / stale).unlink(missing_ok=True)
        shutil.rmtree(self.path / "control-plane", ignore_errors=True)
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


# -- child processes -------------------------------------------------------------------------------------

def check(child: Child) -> None:
    """Fail with the child's last log lines when it has exited."""
    if not child.running:
        raise DemoError(f"the {child.name} exited with code {child.popen.returncode}; "
                        f"last lines of {shown(child.log)}:\n{child.tail()}")


def wait_until(ready: Callable[[], bool], *, child: Child | None, timeout: float, what: str) -> None:
    """Poll `ready` (every 0.1 s) until true; fail early when `child` dies."""
    deadline = time.monotonic() + timeout
    while not ready():
        if child is not None:
            check(child)
        if time.monotonic() > deadline:
            log = f"; last lines of {shown(child.log)}:\n{child.tail()}" if child else ""
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}{log}")
        time.sleep(0.1)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Simulator:
    child: Child
    url: str

    @classmethod
    def spawn(cls, run_dir: Path, port: int) -> Simulator:
        child = spawn("simulator", [*SPOTPOOL, "simulator", "--host", "127.0.0.1", "--port", str(port)],
                      run_dir / "simulator.log")
        return cls(child, f"http://127.0.0.1:{port}")

    def wait_ready(self, timeout: float) -> None:
        wait_until(lambda: http_ok(f"{self.url}/_sim/health"), child=self.child, timeout=timeout,
                   what="the simulator to answer /_sim/health")

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.url}/_sim/{path}", json=body, timeout=10)
        if response.status_code >= 400:
            raise DemoError(f"simulator {method} /_sim/{path}: {response.status_code} {response.text}")
        return response.json()

    def owned(self, uid: str, *states: str) -> list[dict[str, Any]]:
        instances = self.control("GET", f"instances?tag=spotpool.io/environment-uid={uid}")["instances"]
        return [i for i in instances if not states or i["state"] in states]


@dataclass
class Operator:
    child: Child
    metrics_url: str
    health_url: str

    # The operator's defaults observe a settled pool every 15 s and reuse a market read for 30 s; the
    # demo looks every 3 s so that a reclaim, a sell-out or a restock is noticed within a few seconds
    # of it happening.
    OBSERVE_INTERVAL = 3.0
    PROGRESS_INTERVAL = 1.0
    MARKET_MAX_AGE = 3.0

    @classmethod
    def spawn(cls, run_dir: Path, namespace: str, kubeconfig: Path | None, metrics_port: int,
              health_port: int) -> Operator:
        env = {"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}
        child = spawn("operator", [
            *SPOTPOOL, "operator", f"--namespace={namespace}",
            # Development only: /metrics over plain HTTP without a token, so that the summary's
            # `curl` works as printed; on loopback, where nobody else reaches it. (The operator's
            # default, and the chart's, is HTTPS for a token allowed to get /metrics.)
            "--no-metrics-secure", "--metrics-host=127.0.0.1", f"--metrics-port={metrics_port}",
            "--health-host=127.0.0.1", f"--health-port={health_port}", f"--observe-interval={cls.OBSERVE_INTERVAL}",
            f"--progress-interval={cls.PROGRESS_INTERVAL}", f"--market-max-age={cls.MARKET_MAX_AGE}",
            "--log-level=info",
            # The demo's simulator listens on 127.0.0.1 over http: a development-only endpoint.
            "--allow-loopback-endpoints",
        ], run_dir / "operator.log", env=env)
        return cls(child, f"http://127.0.0.1:{metrics_port}", f"http://127.0.0.1:{health_port}")

    def wait_ready(self, timeout: float) -> None:
        wait_until(lambda: http_ok(f"{self.health_url}/readyz"), child=self.child, timeout=timeout,
                   what="the operator to report /readyz")


# -- the cluster -----------------------------------------------------------------------------------------

@dataclass
class Cluster:
    """The local control plane (started and stopped here) or an existing cluster (kind)."""

    kubectl_path: Path
    kubeconfig: Path | None  # None: kubectl's default ($KUBECONFIG or ~/.kube/config)
    plane: ControlPlane | None = None
    _api: Any = field(default=None, repr=False)

    @classmethod
    def local(cls, bins: Path, run_dir: Path, timeout: float) -> Cluster:
        # etcd's data stays in memory-backed /dev/shm when there is one; logs are copied to the run
        # directory when the demo stops.
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        workdir = Path(tempfile.mkdtemp(prefix="spotpool-demo-", dir=base))
        plane = ControlPlane(workdir=workdir, binaries=bins, startup_timeout=timeout)
        try:
            plane.start()  # stops what it started when it fails
        except BaseException as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            if isinstance(exc, Exception):
                raise DemoError(f"the local control plane did not start: {exc}") from exc
            raise
        kubeconfig = run_dir / "kubeconfig"
        shutil.copyfile(plane.kubeconfig, kubeconfig)
        kubeconfig.chmod(0o600)
        return cls(bins / "kubectl", kubeconfig, plane)

    @classmethod
    def existing(cls, bins: Path, kubeconfig: Path | None) -> Cluster:
        cluster = cls(bins / "kubectl", kubeconfig)
        probe = cluster.kubectl("get", "--raw=/readyz", check=False, timeout=20)
        if probe.returncode != 0:
            where = f"the kubeconfig {kubeconfig}" if kubeconfig else "the current kube context"
            raise DemoError(f"cannot reach the cluster of {where}: {probe.stderr.strip()}")
        return cluster

    def stop(self, run_dir: Path) -> None:
        if self.plane is None:
            return
        workdir = self.plane.workdir
        self.plane.stop()
        if workdir is not None:
            logs = run_dir / "control-plane"
            logs.mkdir(exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copyfile(log, logs / log.name)
            shutil.rmtree(workdir, ignore_errors=True)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        config = [f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []
        proc = subprocess.run([str(self.kubectl_path), *config, *args], input=input, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def apply(self, manifest: str, *args: str) -> None:
        self.kubectl("apply", "--server-side", "--field-manager=spotpool-demo", "-f", "-", *args, input=manifest)

    def exists(self, *what: str) -> bool:
        proc = self.kubectl("get", *what, "-o", "name", check=False)
        if proc.returncode == 0:
            return True
        if "NotFound" in proc.stderr:
            return False
        raise DemoError(f"kubectl get {' '.join(what)}: {proc.stderr.strip()}")

    # Reads every second go through the Python client: cheaper than a kubectl process per read.
    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig) if self.kubeconfig else None)
        return self._api

    def get_environment(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client import ApiException, CustomObjectsApi

        try:
            found = CustomObjectsApi(self.api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return cast(dict[str, Any], found)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def events_of(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        from kubernetes.client import CoreV1Api

        response = CoreV1Api(self.api).list_namespaced_event(
            obj["metadata"]["namespace"], field_selector=f"involvedObject.uid={obj['metadata']['uid']}",
            _preload_content=False, _request_timeout=10)
        items: list[dict[str, Any]] = json.loads(response.data)["items"]  # type: ignore[attr-defined]
        return items
