"""The simulator and the operator as real processes, as users run them (`spotpool simulator`,
`spotpool operator`), so end-to-end tests exercise the shipped entry points, can SIGKILL the
operator at any moment, and can read what it logged."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from spotpool.devcluster.controlplane import free_port
from spotpool.simulator import SimulatorConfig
from tests.support import specs
from tests.support.kube import wait_for

SPOTPOOL = [sys.executable, "-m", "spotpool"]
DEMO_SECRET_ID = "AKIDSPOTPOOLDEMO00000000000000000000"
DEMO_SECRET_KEY = "spotpoolDemoSecretKey0000000000000"


def _spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def simulator_config(**lifecycle: Any) -> SimulatorConfig:
    """The default market with a quick lifecycle (tests wait on conditions, so faster is cheaper)."""
    return specs.simulator_config(lifecycle={"boot_delay_seconds": 0.5, "terminate_delay_seconds": 0.5, **lifecycle})


@dataclass
class SimulatorProcess:
    """`spotpool simulator` on a free loopback port, driven through its `/_sim/` control API."""

    workdir: Path
    config: SimulatorConfig = field(default_factory=simulator_config)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"  # pods on the test node reach it at the node network's gateway

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "simulator.log"

    def start(self) -> SimulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "market.yaml"
        config_path.write_text(yaml.safe_dump(self.config.model_dump(mode="json")))
        self.port = free_port()
        self.proc = _spawn([*SPOTPOOL, "simulator", "--host", self.host, "--port", str(self.port),
                            "--config", str(config_path)],
                           self.log)
        wait_for(self._healthy, timeout=30, what="the simulator to answer /_sim/health")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"simulator exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/_sim/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, f"{self.url}/_sim/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def instances(self, **filters: str) -> list[dict[str, Any]]:
        return self.control("GET", "instances?" + "&".join(f"{k}={v}" for k, v in filters.items()))["instances"]

    def alive(self, owner_uid: str) -> list[dict[str, Any]]:
        return [i for i in self.instances()
                if i["state"] in ("PENDING", "RUNNING") and i["tags"].get("spotpool.io/environment-uid") == owner_uid]

    def calls(self, action: str | None = None) -> list[dict[str, Any]]:
        return self.control("GET", "calls" + (f"?action={action}" if action else ""))["calls"]

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


SERVING_FLAGS = ("--metrics-port=", "--metrics-host=", "--health-port=", "--health-host=")


@dataclass
class OperatorProcess:
    """`spotpool operator` watching one namespace, with its own kubeconfig and a log file.

    With our own flags, /metrics is plain HTTP (`--no-metrics-secure`), as on a development machine:
    the tests read it without a token. With `args` (a Deployment's command line), it is what those
    say (the chart's: HTTPS behind a token; `metrics(token=...)`). Either way both ports are on
    free loopback ports, and readiness is read from the health port."""

    workdir: Path
    kubeconfig: Path
    namespace: str = ""
    cluster_id: str = ""
    extra_args: tuple[str, ...] = ()
    observe_interval: float = 2.0
    progress_interval: float = 0.5
    metrics_port: int = 0
    health_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] | None = None  # exact operator flags (e.g. a Deployment's), instead of ours
    launcher: tuple[str, ...] = tuple(SPOTPOOL)  # what runs `spotpool` (a profiler may wrap it)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.workdir / "operator.log"

    @property
    def metrics_secure(self) -> bool:
        """Whether /metrics is HTTPS behind a token: the operator's default, unless turned off."""
        return self.args is not None and "--no-metrics-secure" not in self.args

    @property
    def metrics_url(self) -> str:
        return f"{'https' if self.metrics_secure else 'http'}://127.0.0.1:{self.metrics_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def leader_gauge(self) -> float | None:
        """`spotpool_leader` from the process's own /metrics; None when it cannot answer (dead,
        paused)."""
        if not self.running:
            return None
        try:
            text = self.metrics(timeout=0.5)
        except httpx.HTTPError:
            return None
        found = re.search(r"^spotpool_leader (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else None

    def start(self) -> OperatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port, self.health_port = free_port(), free_port()
        self.starts += 1
        with open(self.log, "a") as out:
            out.write(f"\n===== start #{self.starts} =====\n")
        if self.args is None:
            flags = [f"--namespace={self.namespace}", f"--observe-interval={self.observe_interval}",
                     f"--progress-interval={self.progress_interval}", f"--cluster-id={self.cluster_id}",
                     "--log-level=debug", "--no-metrics-secure", *self.extra_args]
        else:  # the given command line, but on free loopback ports
            flags = [a for a in self.args if not a.startswith(SERVING_FLAGS)]
        if "--allow-loopback-endpoints" not in flags:  # the simulator listens on 127.0.0.1 over http
            flags.append("--allow-loopback-endpoints")
        self.proc = _spawn([*self.launcher, "operator", *flags, "--metrics-host=127.0.0.1",
                            f"--metrics-port={self.metrics_port}", "--health-host=127.0.0.1",
                            f"--health-port={self.health_port}"],
                           self.log, env={"KUBECONFIG": str(self.kubeconfig), **self.env})
        wait_for(self._ready, timeout=60, what="the operator to report /readyz")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
        try:
            return httpx.get(f"{self.health_url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, as a node failure or an OOM kill would do it."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def scrape(self, token: str | None = None, timeout: float = 5) -> httpx.Response:
        """GET /metrics, with `token` as the bearer token when given (the certificate is the
        operator's self-signed one: not verified)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.metrics_url}/metrics", headers=headers, timeout=timeout, verify=False)

    def metrics(self, token: str | None = None, timeout: float = 5) -> str:
        response = self.scrape(token, timeout)
        response.raise_for_status()
        return response.text

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
