"""The real helm binary, isolated from the user's helm configuration, and helpers to read what it
renders."""

from __future__ import annotations

import os
import subprocess
import uuid
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


def operator_args(objects: list[dict[str, Any]]) -> list[str]:
    """The rendered Deployment's operator command line."""
    args: list[str] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def operator_lease(args: list[str]) -> tuple[str, str]:
    """(namespace, name) of the Lease that an operator started with `args` campaigns for, computed by
    the operator's own code (its CLI, the runtime's tag sanitizing, `leadership.from_config`). Without
    a configured cluster id the runtime would read the kube-system UID; a made-up one stands in (the
    default id does not enter the name)."""
    from spotpool.controller.cli import parse
    from spotpool.controller.leadership import KubeLeaseStore, LeaderElector, from_config
    from spotpool.controller.runtime import _TAG_VALUE

    config = parse(args)
    cluster_id = _TAG_VALUE.sub("-", config.cluster_id)[:63] if config.cluster_id else str(uuid.uuid4())
    elector = from_config(config, cluster_id, api_client=object())
    assert isinstance(elector, LeaderElector) and isinstance(elector.store, KubeLeaseStore), args
    return elector.store.namespace, elector.name


def lease_rules(role: dict[str, Any]) -> dict[str, list[str] | None]:
    """A leader-election Role's rules as {verb: resourceNames (None: any name)}; fails on anything but
    coordination.k8s.io leases or on a verb granted twice."""
    granted: dict[str, list[str] | None] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"], rule
        for verb in rule["verbs"]:
            assert verb not in granted, role["rules"]
            granted[verb] = rule.get("resourceNames")
    return granted


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
