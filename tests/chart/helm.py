"""The real helm binary, isolated from the user's helm configuration, and helpers to read what it
renders."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO
from tests.support.kube import unique_name

CHART = REPO / "charts" / "spotpool"


@dataclass
class Helm:
    binary: Path
    home: Path  # helm's config, cache and data directories live here, never in the user's $HOME
    kubeconfig: Path | None = None

    def run(self, *args: str | Path, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        kube = [f"--kubeconfig={self.kubeconfig}"] if self.kubeconfig else []
        proc = subprocess.run([str(self.binary), *map(str, args), *kube], capture_output=True, text=True,
                              timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def template(self, *args: str | Path, chart: Path = CHART, release: str = "spotpool",
                 namespace: str = "spotpool-system") -> list[dict[str, Any]]:
        """The chart rendered with `args` (e.g. `--set`), as a list of objects."""
        out = self.run("template", release, chart, f"--namespace={namespace}", *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


class Releases:
    """Installs releases under unique names and uninstalls whatever a test leaves behind."""

    def __init__(self, helm: Helm) -> None:
        self.helm = helm
        self.installed: list[tuple[str, str]] = []

    def install(self, namespace: str, *args: str | Path, chart: Path = CHART) -> tuple[str, str]:
        """Installs `chart` into `namespace`; returns the release name and helm's output (NOTES)."""
        name = unique_name("sp")
        self.installed.append((name, namespace))
        proc = self.helm.run("install", name, chart, f"--namespace={namespace}", *args)
        return name, proc.stdout

    def uninstall_all(self) -> None:
        for name, namespace in self.installed:
            self.helm.run("uninstall", name, f"--namespace={namespace}", "--ignore-not-found", check=False)
