"""`spotpool demo` end to end, as `make demo` runs it: its own control plane (or an existing cluster),
the simulator and the operator as processes, a pool converging, two instances reclaimed, healing,
spot sold out and the pool falling back to on-demand after its wait, spot restocked and the pool
back on spot (replacements first), and nothing left running afterwards. The demo itself waits on the
pool's status and events; this test reads what it printed."""

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

FULL_SIX = (r"expected 6  current 6  running 6  pending 0  spot 6  on-demand base 0  fallback 0  "
            r"cost [0-9.]+ USD/h  \|  Ready True")
ON_DEMAND_MIX = (r"expected 6  current 6  running 6  pending 0  spot 3  on-demand base 0  fallback 3  "
                 r"cost [0-9.]+ USD/h  \|  Ready True")
FALLBACK_AFTER = 20  # spec.onDemand.fallback.after of deploy/examples/simulator-pool.yaml, in seconds
MAX_IN_FLIGHT = 2  # its returnToSpot.maxInFlight
SUMMARY_LINE = re.compile(r"^\[ *[0-9.]+s\] (?:deleting  )?expected \d+  current (\d+)  running (\d+)  pending (\d+)"
                          r"  spot (\d+)  on-demand base (\d+)  fallback (\d+)  (?:returning (\d+)  )?cost", re.M)


def run_demo(*args: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "spotpool", "demo", "--exit-when-healed", "--timeout", "240",
         "--run-dir", str(run_dir), *args],
        capture_output=True, text=True, timeout=360, stdin=subprocess.DEVNULL,
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


def ids_of(text: str) -> list[str]:
    return re.findall(r"\bins-\w{8}\b", text)


def check_story(output: str) -> None:
    converging, _, after_reclaim = output.partition("== healing")
    after_reclaim, _, sold_out = after_reclaim.partition("== spot sold out")
    sold_out, _, restocked = sold_out.partition("== spot restocked")
    restocked, _, summary = restocked.partition("== summary ==")
    assert summary, output
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
    healed, _, healed_line = after_reclaim.partition("healed:")
    assert healed_line, after_reclaim
    assert re.search(FULL_SIX, healed), healed
    assert re.search(r"Ready again with 6 running, [0-9.]+ s after the reclaim", healed_line)

    check_fallback(sold_out)
    check_return(restocked, bought_on_demand=fallback_ids(sold_out))

    # the summary, then the cleanup: the pool deleted with its instances released, processes stopped
    assert re.search(r"time to Ready +[0-9.]+ s", summary) and re.search(r"time to heal +[0-9.]+ s", summary)
    fallback = re.search(r"time to fallback +([0-9.]+) s \(from the spot sell-out to the first on-demand", summary)
    assert fallback and float(fallback.group(1)) >= FALLBACK_AFTER, summary
    assert re.search(r"time to spot +[0-9.]+ s \(from the restock to all spot again; running never below 6\)", summary)
    assert re.search(r"metrics +curl -s http://127\.0\.0\.1:\d+/metrics", summary)
    assert "instances still alive in the simulator: 0" in summary
    assert "nothing the demo started is left running" in summary


def fallback_ids(sold_out: str) -> set[str]:
    launched = re.findall(r"event .*Normal +Launched +Bought .*\(on-demand fallback\).*", sold_out)
    return {i for line in launched for i in ids_of(line.rpartition("):")[2])}


def check_fallback(sold_out: str) -> None:
    """Spot sold out and 3 instances reclaimed: short for fallback.after, then 3 on-demand, Ready."""
    market = re.search(r"^POST http://127\.0\.0\.1:\d+/_sim/market (\{.*\}): every spot pool", sold_out, re.M)
    assert market and market.group(1).count('"soldOut":true') == 4, sold_out
    reclaim = re.search(r'POST http://127\.0\.0\.1:\d+/_sim/reclaim \{"instanceIds": \[(.*)\]\}', sold_out)
    assert reclaim and len(ids_of(reclaim.group(1))) == 3, sold_out
    # short first: the operator reports spot short (SoldOut) while no on-demand instance exists yet
    short = re.search(r"^\[.*\|  spot short since \d\d:\d\d:\d\d \(SoldOut\)$", sold_out, re.M)
    assert short, sold_out
    states = [tuple(int(n or 0) for n in m.groups()) for m in SUMMARY_LINE.finditer(sold_out)]
    assert states and all(fallback == 0 for *_, fallback, _ in states[:1]), states
    first_fallback = next(i for i, (*_, fallback, _) in enumerate(states) if fallback)
    assert any(running == 3 for _, running, *_ in states[:first_fallback]), states  # stayed short a while
    assert sold_out.index(short.group(0)) < sold_out.index("FallbackToOnDemand")
    # then on-demand, announced as such, for exactly what spot could not fill
    assert re.search(rf"event .*Warning +FallbackToOnDemand +Bought 3 on-demand instances: spot could not fill the "
                     rf"pool for {FALLBACK_AFTER} s", sold_out), sold_out
    assert len(fallback_ids(sold_out)) == 3, sold_out
    waited = re.search(r"^fallback: the first on-demand instance ([0-9.]+) s after the sell-out", sold_out, re.M)
    assert waited and FALLBACK_AFTER <= float(waited.group(1)) < FALLBACK_AFTER + 60, sold_out
    assert re.search(ON_DEMAND_MIX, sold_out), sold_out
    assert re.search(r"^on-demand: Ready with 3 spot \+ 3 on-demand fallback instances", sold_out, re.M)
    assert re.search(r"capacity +spot 3 +on-demand base 0 +on-demand fallback 3", sold_out)  # the settled frame


def check_return(restocked: str, *, bought_on_demand: set[str]) -> None:
    """Spot restocked: replacements bought first, each fallback instance released once one runs,
    at most maxInFlight at a time, never fewer than 6 running, and all spot at the end."""
    market = re.search(r"^POST http://127\.0\.0\.1:\d+/_sim/market (\{.*\}): spot can be had again", restocked, re.M)
    assert market and market.group(1).count('"soldOut":false') == 4, restocked
    replacing = [m.start() for m in re.finditer(r"event .*Normal +Launched +Bought .*\(spot, replacing on-demand "
                                                r"fallback\)", restocked)]
    returned = list(re.finditer(r"event .*Normal +ReturnedToSpot +Released \d+ fallback on-demand instances: spot "
                                r"replacements run in their place: (.*)", restocked))
    assert replacing and returned, restocked
    assert replacing[0] < returned[0].start(), "an on-demand instance went before any replacement was bought"
    assert {i for m in returned for i in ids_of(m.group(1))} == bought_on_demand, restocked
    states = [tuple(int(n or 0) for n in m.groups()) for m in SUMMARY_LINE.finditer(restocked)]
    assert states and all(running >= 6 for _, running, *_ in states), states
    assert all(returning <= MAX_IN_FLIGHT for *_, returning in states), states
    assert any(returning for *_, returning in states), "no replacement was ever reported on its way"
    assert re.search(FULL_SIX, restocked), restocked
    assert re.search(r"^back to spot: 6 of 6 spot, no on-demand left, [0-9.]+ s after the restock; running never "
                     r"below 6 during the return$", restocked, re.M), restocked


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
