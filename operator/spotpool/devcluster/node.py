"""A real Kubernetes node beside the local control plane: containerd (CRI) with Debian's runc, a
kubelet, kube-proxy and CoreDNS, all run as processes on this machine.

The control plane alone never runs a pod, so a chart that renders and is accepted by the apiserver
could still fail the moment a kubelet starts it: its image, its probes, its read-only root, its
projected service-account token, its Service. This node runs pods for real, the way kind's node
container would, without a Docker engine:

- containerd and its runc shim are built from the Go module proxy (tools/containerd), the kubelet
  and kube-proxy from the control plane's own Kubernetes pins (tools/kube), CoreDNS with only its
  kubernetes plugin (tools/coredns); runc and the CNI plugins are Debian's.
- The pod sandbox image is built here from tools/pause (no registry is reachable), and images are
  imported into containerd from archives, as `kind load image-archive` does.
- Pods sit on a Linux bridge (CNI `bridge` + `host-local`) whose gateway is this machine; the
  apiserver advertises that gateway, kube-proxy (iptables mode) routes the `kubernetes` Service and
  every other ClusterIP to it, and CoreDNS answers `<svc>.<ns>.svc.cluster.local` on it.
- Pod traffic may only reach this machine: a FORWARD rule rejects anything a pod sends to any
  interface other than the bridge, so nothing a pod does leaves the host.

It needs root (network, mounts, cgroups); `Node.start` says exactly what is missing otherwise.
The cgroup hierarchy may be v1: the kubelet is told not to refuse it (`failCgroupV1: false`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from spotpool.devcluster import pki as pki_mod
from spotpool.devcluster.controlplane import ControlPlane, ControlPlaneError, free_port
from spotpool.devcluster.processes import Child, spawn

log = logging.getLogger(__name__)

RUNC = Path("/usr/sbin/runc")
CNI_BIN = Path("/usr/lib/cni")
PAUSE_IMAGE = "localhost/spotpool-pause:1.0"
# The control plane's --service-cluster-ip-range; the `kubernetes` Service is its first address.
SERVICE_CIDR = "10.0.0.0/24"
LOCK = Path("/run/lock/spotpool-node.lock")
LOCK_TIMEOUT = 900.0


class NodeError(ControlPlaneError):
    pass


@dataclass(frozen=True)
class NodeNetwork:
    """The pod network: a bridge on this machine, its gateway the node's (and apiserver's) address."""

    bridge: str = "spotpool0"
    gateway: str = "10.213.0.1"
    prefix: int = 24

    @property
    def pod_cidr(self) -> str:
        network = self.gateway.rsplit(".", 1)[0] + ".0"
        return f"{network}/{self.prefix}"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class Node:
    """One node named `name`, registered with `plane` (which must advertise `network.gateway`)."""

    plane: ControlPlane
    binaries: Path
    workdir: Path
    name: str = "spotpool-node"
    network: NodeNetwork = field(default_factory=NodeNetwork)
    # The sandbox image archive tools/build-pause-image.sh writes; default: beside the binaries.
    pause_archive: Path | None = None
    startup_timeout: float = 180.0
    procs: list[Child] = field(default_factory=list)
    _host_setup: list[list[str]] = field(default_factory=list)  # commands that undo what start did
    _lock_file: IO[str] | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        return "/spotpool-node"

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        self._check_prerequisites()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock_host()
        try:
            # Pods of a run that was killed before it could stop its node would hold on to the
            # pod addresses and the cgroup root; with the lock held, nothing else owns them.
            self._kill_pod_processes()
            self._host_network()
            self._start_containerd()
            self._start_kubelet()
            self._start_kube_proxy()
            self._start_coredns()
        except BaseException:
            self.stop()
            raise

    def _lock_host(self) -> None:
        """Wait for any other node on this machine to stop: the bridge, its addresses, the cgroup root
        and the iptables rules are the host's, so two test runs at once would tear down each other's."""
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(LOCK, "w")
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeError(f"another test node on this machine held {LOCK} for {LOCK_TIMEOUT:.0f} s") from None
                time.sleep(1)

    def _check_prerequisites(self) -> None:
        problems = []
        if os.geteuid() != 0:
            problems.append("must run as root (bridge, iptables, mounts, cgroups)")
        for tool in ("containerd", "containerd-shim-runc-v2", "ctr", "kubelet", "kube-proxy", "coredns"):
            if not (self.binaries / tool).is_file():
                problems.append(f"{self.binaries / tool} is missing (tools/build-binaries.sh builds it)")
        for path in (RUNC, CNI_BIN / "bridge", CNI_BIN / "host-local", CNI_BIN / "loopback"):
            if not path.exists():
                problems.append(f"{path} is missing (tools/install-system-deps.sh installs it)")
        for tool in ("iptables", "conntrack", "ip"):
            if shutil.which(tool) is None:
                problems.append(f"{tool} is not on PATH (tools/install-system-deps.sh installs it)")
        if self.plane.advertise_address != self.network.gateway:
            problems.append(f"the control plane must advertise {self.network.gateway} "
                            f"(ControlPlane(advertise_address=...)), not {self.plane.advertise_address}")
        if problems:
            raise NodeError("cannot start a node here:\n- " + "\n- ".join(problems))

    def _host_network(self) -> None:
        net = self.network
        _run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        # kube-proxy's DNAT must see traffic between pods on the same bridge.
        _run("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")
        if _run("ip", "link", "show", net.bridge, check=False).returncode != 0:
            _run("ip", "link", "add", net.bridge, "type", "bridge")
            self._host_setup.append(["ip", "link", "del", net.bridge])
        _run("ip", "addr", "replace", f"{net.gateway}/{net.prefix}", "dev", net.bridge)
        _run("ip", "link", "set", net.bridge, "up")
        # ClusterIPs route to the bridge, so an address kube-proxy has not (yet) rewritten goes
        # nowhere instead of out of the machine's default route.
        _run("ip", "route", "replace", SERVICE_CIDR, "dev", net.bridge)
        self._host_setup.append(["ip", "route", "del", SERVICE_CIDR, "dev", net.bridge])
        # Pods talk to this machine only: whatever they send elsewhere is rejected here.
        rule = ["FORWARD", "-s", net.pod_cidr, "!", "-o", net.bridge, "-j", "REJECT"]
        if _run("iptables", "-C", *rule, check=False).returncode != 0:
            _run("iptables", "-I", *rule)
            self._host_setup.append(["iptables", "-D", *rule])
        cni = self.workdir / "cni" / "net.d"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-spotpool.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": "spotpool",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": net.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": net.pod_cidr, "gateway": net.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=2))
        # The kubelet's pod cgroups live under a root of their own, so stop() finds every pod process.
        for controller in Path("/sys/fs/cgroup").iterdir():
            if controller.is_dir() and not controller.is_symlink() and (controller / "cgroup.procs").exists():
                (controller / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)

    def _spawn(self, name: str, args: list[str]) -> Child:
        child = spawn(name, [str(self.binaries / name), *args], self.workdir / f"{name}.log",
                      env={"PATH": f"{self.binaries}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"},
                      death_signal=signal.SIGTERM)
        self.procs.append(child)
        log.info("started %s (pid %d), log %s", name, child.pid, child.log)
        return child

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.running:
                    raise NodeError(f"{proc.name} exited with {proc.popen.returncode} while waiting for "
                                    f"{what}; last log lines:\n{proc.tail()}")
            if ready():
                return
            time.sleep(0.3)
        tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.procs)
        raise NodeError(f"timed out after {self.startup_timeout:.0f} s waiting for {what}\n{tails}")

    def _start_containerd(self) -> None:
        root = self.workdir / "containerd"
        config = root / "config.toml"
        root.mkdir(parents=True, exist_ok=True)
        cri_images = "plugins.'io.containerd.cri.v1.images'"
        cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
        config.write_text(f"""version = 3
root = "{root / 'root'}"
state = "{root / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[{cri_images}]
  snapshotter = "overlayfs"
  [{cri_images}.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
[{cri_runtime}]
  netns_mounts_under_state_dir = true
  # Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which the sandbox these tests run in
  # withholds even from root (runc: "failed to update /proc/self/oom_score_adj: Permission
  # denied" for the pause container's -998); clamp to containerd's own score instead, as rootless
  # nodes do.
  restrict_oom_score_adj = true
  [{cri_runtime}.containerd]
    default_runtime_name = "runc"
    [{cri_runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri_runtime}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [{cri_runtime}.cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{self.workdir / 'cni' / 'net.d'}"
""")
        self._spawn("containerd", ["--config", str(config), "--log-level", "warn"])
        self._wait(lambda: self._ctr("version", check=False).returncode == 0, "containerd to answer")

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(str(self.binaries / "ctr"), "--address", str(self.containerd_socket),
                    "--namespace", "k8s.io", *args, check=check)

    def load_image(self, archive: Path, *names: str) -> None:
        """Import an image archive (OCI or docker) into the node's runtime, as `kind load
        image-archive` does, and give it more `names` (e.g. the chart's default repository)."""
        proc = self._ctr("images", "import", "--no-unpack", str(archive), check=False)
        if proc.returncode != 0:
            raise NodeError(f"ctr images import {archive} failed: {proc.stderr}")
        source = self._image_in(archive)
        for name in names:
            if name != source:
                self._ctr("images", "tag", "--force", source, name)

    @staticmethod
    def _image_in(archive: Path) -> str:
        """The name an OCI archive carries in its index (podman writes the full reference)."""
        index = json.loads(_run("tar", "-xOf", str(archive), "index.json").stdout)
        return str(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])

    def _start_kubelet(self) -> None:
        plane = self.plane
        assert plane.pki is not None and plane.workdir is not None
        kdir = self.workdir / "kubelet"
        kdir.mkdir(parents=True, exist_ok=True)
        pause_archive = self.pause_archive or self.binaries.parent / "image" / "pause.oci.tar"
        if not pause_archive.is_file():
            raise NodeError(f"{pause_archive} is missing (tools/build-pause-image.sh builds it)")
        self.load_image(pause_archive)
        cert, key = kdir / "kubelet-client.crt", kdir / "kubelet-client.key"
        pki_mod.issue_client(plane.pki, f"system:node:{self.name}", ("system:nodes",), cert, key)
        kubeconfig = self._kubeconfig(kdir / "kubeconfig", cert, key)
        resolv = kdir / "resolv.conf"
        resolv.write_text(f"nameserver {self.network.gateway}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.network.gateway,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(plane.pki.ca_cert)}},
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "clusterDNS": [self.network.gateway],
            "clusterDomain": "cluster.local",
            "resolvConf": str(resolv),
            "failSwapOn": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "registerNode": True,
            "maxPods": 30,
            "syncFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
        }
        (kdir / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kubelet", [
            f"--config={kdir / 'config.yaml'}",
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.network.gateway}",
            f"--root-dir={kdir / 'root'}",
            f"--cert-dir={kdir / 'pki'}",
            "--v=1",
        ])
        self._wait(self._node_ready, f"node {self.name} to be Ready")

    def _kubeconfig(self, path: Path, cert: Path, key: Path) -> Path:
        plane = self.plane
        assert plane.pki is not None
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": plane.server,
                                                       "certificate-authority": str(plane.pki.ca_cert)}}],
            "users": [{"name": "user", "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user"}}],
            "current-context": "local",
        }))
        return path

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.plane.binaries is not None
        return _run(str(self.plane.binaries / "kubectl"), f"--kubeconfig={self.plane.kubeconfig}", *args,
                    check=check)

    def _node_ready(self) -> bool:
        proc = self.kubectl("get", "node", self.name, "-o",
                            "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "True"

    def _start_kube_proxy(self) -> None:
        plane = self.plane
        assert plane.pki is not None
        pdir = self.workdir / "kube-proxy"
        pdir.mkdir(parents=True, exist_ok=True)
        cert, key = pdir / "client.crt", pdir / "client.key"
        # system:kube-proxy is bound to system:node-proxier by the apiserver's default RBAC.
        pki_mod.issue_client(plane.pki, "system:kube-proxy", (), cert, key)
        healthz = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self._kubeconfig(pdir / "kubeconfig", cert, key))},
            "mode": "iptables",
            "clusterCIDR": self.network.pod_cidr,
            "hostnameOverride": self.name,
            "bindAddress": self.network.gateway,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the machine's conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }
        (pdir / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [f"--config={pdir / 'config.yaml'}", "--v=1"])
        self._wait(lambda: _run("iptables", "-t", "nat", "-C", "KUBE-SERVICES", "-d", "10.0.0.1/32", "-p",
                                "tcp", "-m", "comment", "--comment", "default/kubernetes:https cluster IP",
                                "-m", "tcp", "--dport", "443", "-j", "KUBE-SVC-NPX46M4PTMTKRN6Y",
                                check=False).returncode == 0,
                   "kube-proxy to route the kubernetes Service")

    def _start_coredns(self) -> None:
        ddir = self.workdir / "coredns"
        ddir.mkdir(parents=True, exist_ok=True)
        health, ready = free_port(), free_port()
        (ddir / "Corefile").write_text(f""".:53 {{
    bind {self.network.gateway}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.plane.kubeconfig} spotpool-dev
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")
        self._spawn("coredns", ["-conf", str(ddir / "Corefile")])

        def answers() -> bool:
            with contextlib.suppress(OSError):
                import urllib.request
                with urllib.request.urlopen(f"http://127.0.0.1:{ready}/ready", timeout=2) as resp:
                    return bool(resp.status == 200)
            return False

        self._wait(answers, "CoreDNS to be ready")

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop the node and undo what it did to the host: pods' processes, mounts, rules, bridge.

        containerd's shims and the containers outlive containerd on purpose (so a runtime restart
        keeps pods running); a throw-away node must end them itself.
        """
        by_name = {p.name: p for p in self.procs}
        for name in ("coredns", "kube-proxy", "kubelet"):
            if name in by_name:
                by_name[name].stop(timeout=10)
        self._kill_pod_processes()
        if "containerd" in by_name:
            by_name["containerd"].stop(timeout=10)
        self.procs.clear()
        self._unmount_under(self.workdir)
        if shutil.which("iptables"):
            # kube-proxy's chains, left behind when it is killed.
            for table in ("nat", "filter", "mangle"):
                rules = _run("iptables-save", "-t", table, check=False).stdout
                if "KUBE-" in rules:
                    kept = [line for line in rules.splitlines() if "KUBE-" not in line]
                    subprocess.run(["iptables-restore", "-T", table], input="\n".join(kept) + "\n",
                                   text=True, capture_output=True, check=False)
        for command in reversed(self._host_setup):
            _run(*command, check=False)
        self._host_setup.clear()
        cgroups = Path("/sys/fs/cgroup")
        if cgroups.is_dir():
            for controller in cgroups.iterdir():
                root = controller / self.cgroup_root.lstrip("/")
                if root.is_dir():
                    for directory in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                        if directory.is_dir():
                            with contextlib.suppress(OSError):
                                directory.rmdir()
                    with contextlib.suppress(OSError):
                        root.rmdir()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def _kill_pod_processes(self) -> None:
        """SIGKILL every process in the node's pod cgroups and every runc shim of this containerd."""
        shim = str(self.binaries / "containerd-shim-runc-v2")
        for _ in range(20):
            pids: set[int] = set()
            for procs in Path("/sys/fs/cgroup").glob(f"*{self.cgroup_root}/**/cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                        if cmdline and cmdline[0].decode(errors="replace") == shim and \
                                str(self.containerd_socket).encode() in b" ".join(cmdline):
                            pids.add(int(entry.name))
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    @staticmethod
    def _unmount_under(directory: Path) -> None:
        prefix = str(directory.resolve())
        points = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4]
                if point == prefix or point.startswith(prefix + "/"):
                    points.append(point)
        for point in sorted(points, key=len, reverse=True):
            _run("umount", "-l", point, check=False)
