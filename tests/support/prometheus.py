"""A real Prometheus (Debian's `prometheus` package, installed by tools/install-system-deps.sh) as a
process: scrapes the given targets every `scrape_interval`, answers PromQL on a free loopback port,
keeps its TSDB in the test's temporary directory, and is stopped (process group and all) at the end.

`promtool` comes with the same package; `check_metrics` runs `promtool check metrics` on an
exposition text.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from spotpool.devcluster.controlplane import free_port
from tests.support.kube import wait_for
from tests.support.processes import _spawn, _stop

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")


def binary(path: Path) -> Path:
    """`path`, or the same name on $PATH; skips the test when neither exists (run
    `tools/install-system-deps.sh`, which `make test` does)."""
    if path.is_file():
        return path
    found = shutil.which(path.name)
    if found is None:
        pytest.skip(f"{path.name} is not installed: run tools/install-system-deps.sh (as root)")
    return Path(found)


def check_metrics(exposition: str) -> list[str]:
    """The problems `promtool check metrics` reports for `exposition` (empty: none)."""
    proc = subprocess.run([str(binary(PROMTOOL)), "check", "metrics"], input=exposition, capture_output=True,
                          text=True, timeout=60)
    # promtool prints the problems (one per line) and exits 3 when there are lint problems, 1 when
    # the text does not parse at all.
    if proc.returncode not in (0, 3):
        raise AssertionError(f"promtool check metrics failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    """Whether an instant-vector result holds at least one sample that is a number (not NaN or ±Inf,
    which Grafana draws as nothing)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


@dataclass
class PrometheusProcess:
    """`prometheus` scraping `targets` (host:port strings, path /metrics) as job `job`."""

    workdir: Path
    targets: list[str]
    scrape_interval: str = "1s"
    job: str = "spotpool"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    # Replaces the static `targets` job, e.g. with http_sd_configs (tests/node).
    scrape_configs: list[dict[str, Any]] | None = None
    _client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self) -> PrometheusProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval,
                       "scrape_timeout": self.scrape_interval},
            "scrape_configs": self.scrape_configs or [{"job_name": self.job, "metrics_path": "/metrics",
                                                     "static_configs": [{"targets": self.targets}]}],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc = _spawn([
            str(binary(PROMETHEUS)), f"--config.file={config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ], self.log)
        wait_for(self._ready, timeout=60, what="Prometheus to report /-/ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
        try:
            return self._client.get(f"{self.url}/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def _api(self, path: str, **params: str) -> Any:
        response = self._client.get(f"{self.url}/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus /api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def active_targets(self) -> list[dict[str, Any]]:
        return self._api("targets", state="active")["activeTargets"]

    def wait_targets_up(self, timeout: float = 30) -> None:
        def up() -> bool:
            targets = self.active_targets()
            return len(targets) == len(self.targets) and all(t["health"] == "up" for t in targets)

        try:
            wait_for(up, timeout=timeout, interval=0.5, what=f"every target of {self.targets} to be up")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ntargets: {self.active_targets()}") from None

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time; the result as the API returns it (a vector here)."""
        data = self._api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        self._client.close()
        if self.proc is not None:
            _stop(self.proc)
