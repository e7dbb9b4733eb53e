"""`spotpool demo` end to end, as `make demo` runs it: its own control plane (or an existing cluster),
the simulator and the operator as processes, a pool converging, two instances reclaimed, healing,
and nothing left running afterwards."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from spotpool.devcluster.controlplane import ensure_binaries
from tests.conftest import CRD_NAME, Cluster
from tests.support.kube import unique_name

pytestmark = pytest.mark.cluster

FULL_SIX = r"expected 6  current 6  running 6  pending 0  cost [0-9.]+ USD/h  \|  Ready True"


def run_demo(*args: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "spotpool", "demo", "--exit-when-healed", "--timeout", "180",
         "--run-dir", str(run_dir), *args],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"spotpool demo exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def started_processes(output: str) -> dict[int, str]:
    line = next(line for line in output.splitlines() if line.strip().startswith("processes"))
    return {int(pid): name for name, pid in re.findall(r"([\w-]+) pid (\d+)", line)}


def still_running(pid: int, name: str) -> bool:
    """True when `pid` is alive and still the process the demo started (not a reused pid)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    ours = name in cmdline or "spotpool" in cmdline
    return state != "Z" and ours


def check_story(output: str) -> None:
    converging, _, after_reclaim = output.partition("== healing")
    # converged: Ready with 6 of 6 running, and the table of pools printed
    assert re.search(FULL_SIX, converging), converging
    assert re.search(r"^Ready: 6 of 6 running, [0-9.]+ s after the pool was applied$", converging, re.M)
    assert re.search(r"ZONE +TYPE +RUNNING +PENDING +PRICE USD/h", converging)

    # two instances reclaimed through the simulator's control API ...
    reclaim = re.search(r'POST http://127\.0\.0\.1:\d+/_sim/reclaim \{"instanceIds": \["(ins-\w+)", "(ins-\w+)"\]\}',
                        after_reclaim)
    assert reclaim, after_reclaim
    reclaimed = set(reclaim.groups())
    # ... reported lost by the operator, as Kubernetes events
    lost_events = re.findall(r"event .*Warning +InstanceLost +(.*)", after_reclaim)
    lost = {i for message in lost_events for i in re.findall(r"\bins-\w{8}\b", message)}
    assert lost == reclaimed, after_reclaim
    # ... and replaced: Ready with 6 running again
    healed, _, summary = after_reclaim.partition("healed:")
    assert summary, after_reclaim
    assert re.search(FULL_SIX, healed), healed
    assert re.search(r"Ready again with 6 running, [0-9.]+ s after the reclaim", summary)

    # the summary, then the cleanup: the pool deleted with its instances released, processes stopped
    assert re.search(r"time to Ready +[0-9.]+ s", summary) and re.search(r"time to heal +[0-9.]+ s", summary)
    assert re.search(r"metrics +curl -s http://127\.0\.0\.1:\d+/metrics", summary)
    assert "instances still alive in the simulator: 0" in summary
    assert "nothing the demo started is left running" in summary


def test_demo_brings_up_a_cluster_converges_heals_and_leaves_nothing_running(tmp_path: Path) -> None:
    ensure_binaries()
    proc = run_demo(run_dir=tmp_path / "run")
    check_story(proc.stdout)

    started = started_processes(proc.stdout)
    assert set(started.values()) == {"etcd", "kube-apiserver", "kube-controller-manager", "simulator", "operator"}
    assert not [f"{name} {pid}" for pid, name in started.items() if still_running(pid, name)]

    run_dir = tmp_path / "run"
    assert "Launched" in (run_dir / "operator.log").read_text()
    assert (run_dir / "simulator.log").stat().st_size > 0
    assert (run_dir / "control-plane" / "kube-apiserver.log").exists()
    assert f"export KUBECONFIG={run_dir / 'kubeconfig'}" in proc.stdout


def test_demo_on_an_existing_cluster_leaves_the_crd_and_removes_its_namespace(
    cluster: Cluster, crd: str, tmp_path: Path
) -> None:
    """The --use-current-context / --kubeconfig path (kind on a laptop), here against the session's cluster."""
    namespace = unique_name("demo")
    proc = run_demo("--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace, run_dir=tmp_path / "run")
    check_story(proc.stdout)
    assert f"{CRD_NAME} is installed already; left as it is" in proc.stdout

    started = started_processes(proc.stdout)
    assert set(started.values()) == {"simulator", "operator"}
    assert not [f"{name} {pid}" for pid, name in started.items() if still_running(pid, name)]

    assert cluster.kubectl.get("crd", CRD_NAME) is not None
    left = cluster.kubectl.get("namespace", namespace)
    assert left is None or left["status"]["phase"] == "Terminating"
