"""A real, local Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager as processes.

There is no Docker engine on the machines this project is built on, so kind cannot run; the same
binaries kind would run are built from the Go module proxy (tools/build-binaries.sh) and started here
with envtest-style flags. The controller manager is included because without it namespaces never
finish deleting and owner references are never garbage-collected, and tests would pass while testing
nothing of that.

Every child runs in its own process group with a parent-death signal, so an interrupted or killed test
run leaves no stray processes behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spotpool.devcluster import pki as pki_mod
from spotpool.devcluster.processes import Child, spawn

log = logging.getLogger(__name__)

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")

# Controllers that make the API behave like a real cluster for an operator's purposes; scheduling,
# workloads and nodes stay off because nothing here runs pods.
KCM_CONTROLLERS = (
    "namespace-controller",
    "garbage-collector-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "clusterrole-aggregation-controller",
    "root-ca-certificate-publisher-controller",
)
# With a node: Deployments become ReplicaSets become Pods, Services get endpoints, and pods of a
# deleted node or a finished test are collected, as in any cluster.
KCM_WORKLOAD_CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "pod-garbage-collector-controller",
    "disruption-controller",
    # A kubelet registers its node tainted not-ready; this controller lifts the taint once Ready.
    "node-lifecycle-controller",
)


class ControlPlaneError(RuntimeError):
    pass


def repo_root(start: Path | None = None) -> Path | None:
    """The source checkout this runs from, found by its tools/build-binaries.sh; None when installed."""
    here = (start or Path(__file__)).resolve()
    for parent in [here, *here.parents]:
        if (parent / "tools" / "build-binaries.sh").is_file():
            return parent
    return None


def bin_dir() -> Path:
    """Where the Go-built binaries live: $SPOTPOOL_BIN_DIR, else the checkout's .cache/bin."""
    if env := os.environ.get("SPOTPOOL_BIN_DIR"):
        return Path(env)
    root = repo_root() or repo_root(Path.cwd())
    if root is None:
        raise ControlPlaneError(
            "cannot find the control-plane binaries: set SPOTPOOL_BIN_DIR, or run from a spotpool "
            "checkout (its tools/build-binaries.sh builds them)"
        )
    return root / ".cache" / "bin"


def ensure_binaries() -> Path:
    """Build the binaries when missing or stale (a no-op taking about a second when up to date)."""
    root = repo_root() or repo_root(Path.cwd())
    directory = bin_dir()
    if root is not None:
        subprocess.run(
            [str(root / "tools" / "build-binaries.sh")],
            check=True,
            env={**os.environ, "SPOTPOOL_BIN_DIR": str(directory)},
        )
    missing = [b for b in BINARIES if not (directory / b).is_file()]
    if missing:
        raise ControlPlaneError(f"missing binaries in {directory}: {', '.join(missing)}")
    return directory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback, with an admin kubeconfig.

    Use as a context manager; `stop()` is idempotent and safe to call from signal handlers.
    """

    workdir: Path | None = None
    binaries: Path | None = None
    with_controller_manager: bool = True
    startup_timeout: float = 180.0
    api_port: int = 0
    # Where pods reach the apiserver (the `kubernetes` Service's endpoint): None keeps it on loopback
    # with no endpoint at all, as when nothing runs pods. Set, it also runs the scheduler and the
    # controllers that turn Deployments into Pods and Services into endpoints (see devcluster.node).
    advertise_address: str | None = None
    pki: pki_mod.Pki | None = None
    procs: list[Child] = field(default_factory=list)
    _owns_workdir: bool = False
    _commands: dict[str, list[str]] = field(default_factory=dict)  # each child's flags, for restarts

    @property
    def kubeconfig(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_cert(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki" / "ca.crt"

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.binaries is None:
            self.binaries = bin_dir()
        if self.workdir is None:
            # /dev/shm keeps etcd's fsyncs off the disk; fall back to the temp dir.
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self.workdir = Path(tempfile.mkdtemp(prefix="spotpool-cp-", dir=base))
            self._owns_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        assert self.workdir is not None and self.binaries is not None
        workloads = self.advertise_address is not None
        extra_ips: tuple[str, ...] = (self.advertise_address,) if self.advertise_address is not None else ()
        keys = pki_mod.generate(self.workdir / "pki", extra_ips)
        self.pki = keys
        etcd_port, peer_port = free_port(), free_port()
        self.api_port = self.api_port or free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            "--name=spotpool-dev",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=spotpool-dev={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])
        self._wait(lambda: self._http_ok(f"{etcd_url}/health"), "etcd to report healthy")

        node_flags = [
            # Pods reach the apiserver at the node network's gateway; the admin stays on loopback.
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.advertise_address}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={keys.admin_cert}",
            f"--kubelet-client-key={keys.admin_key}",
            "--kubelet-preferred-address-types=InternalIP",
        ] if workloads else [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",
        ]
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            *node_flags,
            f"--secure-port={self.api_port}",
            f"--tls-cert-file={keys.serving_cert}",
            f"--tls-private-key-file={keys.serving_key}",
            f"--client-ca-file={keys.ca_cert}",
            f"--service-account-issuer=https://127.0.0.1:{self.api_port}",
            f"--service-account-key-file={keys.sa_pub}",
            f"--service-account-signing-key-file={keys.sa_key}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            *([] if self.with_controller_manager else ["--disable-admission-plugins=ServiceAccount"]),
        ])
        self._write_kubeconfig(keys)
        ctx = self._admin_ssl_context(keys)
        self._wait(lambda: self._http_ok(f"{self.server}/readyz", ctx), "kube-apiserver /readyz")

        if self.with_controller_manager:
            self._spawn("kube-controller-manager", [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--root-ca-file={keys.ca_cert}",
                f"--service-account-private-key-file={keys.sa_key}",
                f"--controllers={','.join(KCM_CONTROLLERS + (KCM_WORKLOAD_CONTROLLERS if workloads else ()))}",
            ])
            self._wait(
                lambda: self._http_ok(
                    f"{self.server}/api/v1/namespaces/default/serviceaccounts/default", ctx
                ),
                "kube-controller-manager to create the default ServiceAccount",
            )
        if workloads:
            self._spawn("kube-scheduler", [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ])

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self.workdir is not None and self.binaries is not None
        # SIGKILL on parent death: an apiserver whose etcd dies at the same moment would hang in
        # its graceful shutdown, and the data is throw-away.
        child = spawn(name, [str(self.binaries / name), *args], self.workdir / f"{name}.log",
                      death_signal=signal.SIGKILL)
        self.procs.append(child)
        self._commands[name] = args
        log.info("started %s (pid %d), log %s", name, child.pid, child.log)

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver alone and start it again with the same flags: same port, certificates,
        etcd (so every object and resourceVersion survives), as a control-plane upgrade or a crashed
        apiserver's restart does it. etcd and the other children keep running; clients see their
        connections and watches cut and the API refusing connections until it is back.

        The stop is SIGTERM (the apiserver's graceful shutdown), SIGKILL after 10 s. Returns once the
        new apiserver answers /readyz, with the seconds the API was away (stop sent to ready).
        For tests of clients' behaviour across the outage (leader election, watch resumption).
        """
        assert self.pki is not None, "the control plane is not running"
        index = next((i for i, p in enumerate(self.procs) if p.name == "kube-apiserver"), None)
        if index is None:
            raise ControlPlaneError("no kube-apiserver to restart")
        started = time.monotonic()
        self.procs[index].stop(timeout=10)
        assert self.workdir is not None and self.binaries is not None
        child = spawn("kube-apiserver", [str(self.binaries / "kube-apiserver"), *self._commands["kube-apiserver"]],
                      self.workdir / "kube-apiserver.log", death_signal=signal.SIGKILL)
        self.procs[index] = child  # the same place in the stop order
        log.info("restarted kube-apiserver (pid %d)", child.pid)
        ctx = self._admin_ssl_context(self.pki)
        self._wait(lambda: self._http_ok(f"{self.server}/readyz", ctx), "kube-apiserver /readyz after a restart")
        return time.monotonic() - started

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.running:
                    raise ControlPlaneError(
                        f"{proc.name} exited with {proc.popen.returncode} while waiting for "
                        f"{what}; last log lines:\n{proc.tail()}"
                    )
            if ready():
                return
            time.sleep(0.2)
        tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)
        raise ControlPlaneError(f"timed out after {self.startup_timeout:.0f} s waiting for {what}\n{tails}")

    @staticmethod
    def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _admin_ssl_context(self, keys: pki_mod.Pki) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(keys.ca_cert))
        ctx.load_cert_chain(str(keys.admin_cert), str(keys.admin_key))
        return ctx

    def _write_kubeconfig(self, keys: pki_mod.Pki) -> None:
        import base64

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "spotpool-dev", "cluster": {
                "server": self.server, "certificate-authority-data": b64(keys.ca_cert)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(keys.admin_cert),
                "client-key-data": b64(keys.admin_key)}}],
            "contexts": [{"name": "spotpool-dev", "context": {
                "cluster": "spotpool-dev", "user": "admin", "namespace": "default"}}],
            "current-context": "spotpool-dev",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def stop(self) -> None:
        """Stop in reverse start order, each given time to exit before SIGKILL.

        Order matters: an apiserver whose etcd is already gone waits out its storage timeouts
        instead of exiting.
        """
        for proc in reversed(self.procs):
            proc.stop(timeout=10)
        self.procs.clear()
        if self._owns_workdir and self.workdir is not None and not os.environ.get("SPOTPOOL_KEEP_CLUSTER"):
            shutil.rmtree(self.workdir, ignore_errors=True)
