"""Benchmark of the operator at scale: many pools of 20 in one namespace, and big single pools.

Same machinery as `operator_bench.py` (real control plane, `spotpool simulator`, `spotpool operator`
as processes; shared helpers in `benchlib.py`). The simulator keeps its documented rate limits
(RunInstances 10/s, DescribeInstances 40/s, TerminateInstances 10/s) and answers every action
`--latency-ms` late (default 100 ms, `POST /_sim/faults {"*": {"latencyMs": 100}}`); its stock and
vCPU quota are raised so the run fits. The operator runs with its default intervals (observe 15 s,
progress 2 s).

Scenarios:

- `--pools 100,250,500,1000`: that many SpotComputeEnvironments of `expectedCount` 20 in one
  namespace (zones rotated over the four ap-guangzhou zones, S5.MEDIUM4), each size with its own
  simulator and operator. Phases per size:
  - *from zero*: the objects are created (4 threads), the clock runs from the first create request
    until every object's watch showed `Ready`. Lower bound: pools x ceil(20/100) RunInstances
    calls at 10/s plus one round trip, `(calls - 1)/10 + latency`.
  - *restart*: the operator is stopped (SIGTERM) with every instance present and started again;
    the clock runs from the new process's start (imports included) until its `/metrics` shows every
    pool ready
    (`spotpool_environment_ready`, read every 2 s, so +-2 s). The floor here is one sweep,
    `(ceil(instances/100) - 1)/40 + latency`. RunInstances/TerminateInstances in this phase must
    be 0, and DescribeInstances 15-30 s after the start (the restart burst) at most 1.1 sweeps.
  - *adoption*: the same with every object's status removed while the operator is down: the
    instances exist, carry the pools' uids, and nothing in the objects says so. Nothing bought.
  - *return to spot* (`--return-to-spot`): in a fresh process, every pool falls back to on-demand
    (spot sold out everywhere, every instance reclaimed) and, spot restocked, returns; the clock
    runs from the restock until no on-demand instance is left.
  After each phase, once settled (one observe interval after convergence), a steady window of
  `--steady-intervals` observe intervals measures: DescribeInstances per interval from the
  simulator's ledger (tag-filtered sweep pages apart from `InstanceIds` look-ups) against
  ceil(instances/100); the operator's RSS (VmRSS at the end, VmHWM = peak since start) and CPU in
  cores (utime+stime over the window, /proc/<pid>/stat); API server write requests per second
  (`apiserver_request_total` on kube-apiserver's /metrics, write verbs, leases excluded: the
  operator runs without leader election and nothing else writes during the window).
  A *naive* row is computed, not measured: one listing per pool per interval = pools x ceil(20/100)
  DescribeInstances per interval.
- `--single 1000,10000`: one pool from 0 to N (operator_bench's run, at this latency): time until
  the watch shows `currentCount` N, against `(ceil(N/100) - 1)/10 + latency`; target 1.1x.
- `--reclaim random,worst`: one pool of 1000, Ready and settled; 100 of its instances reclaimed
  (`POST /_sim/reclaim`) at a random moment of an interval, or at the worst one: just after a sweep
  (the ledger shows every page of a sweep answered). Time until status shows `currentCount` 1000
  again (at or after the replacement RunInstances returned) and `runningCount` 1000, against one
  observe interval + three round trips: the next sweep's last page, the look-up by id that
  confirms the absence (an instance a sweep lacks is never replaced on the sweep's word), the
  purchase. Sweeps start one interval apart (from start to start), so a reclaim just after one
  is seen by the next one interval after it began.

--profile-dir DIR (with a py-spy binary: --py-spy PATH, or `py-spy` on PATH) samples the operator
with py-spy during each convergence and steady window (collapsed stacks, `*.txt`) and prints the
heaviest frames.

    .venv/bin/python benchmarks/scale_bench.py                       # quick: 100 pools, 0->1000, reclaims
    .venv/bin/python benchmarks/scale_bench.py --pools 100,250,500,1000 --single 1000,10000
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import kubernetes
import operator_bench
from benchlib import (  # first: it puts the repository on sys.path for tests.support
    DESCRIBE_RATE,
    PER_CALL,
    RUN_RATE,
    apiserver_writes,
    cpu_seconds,
    create_namespace,
    delete_namespace,
    environment,
    install_crd,
    latency_faults,
    lower_bound,
    memory_mib,
    memray_launcher,
    memray_peak,
    ready,
    status,
)

from spotpool.api.names import GROUP, PLURAL, VERSION
from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries
from spotpool.simulator import SimulatorConfig
from spotpool.simulator.config import DEFAULT_ACCOUNT_ID, DEMO_SECRET_ID, DEMO_SECRET_KEY
from tests.support import specs
from tests.support.kube import wait_for
from tests.support.processes import OperatorProcess, SimulatorProcess

ZONES = ("ap-guangzhou-3", "ap-guangzhou-4", "ap-guangzhou-6", "ap-guangzhou-7")
INSTANCE_TYPE = "S5.MEDIUM4"  # 2 vCPUs
OBSERVE_INTERVAL = 15.0  # the operator's defaults
PROGRESS_INTERVAL = 2.0
TARGET_READY = 1.3
TARGET_SINGLE = 1.1
RETURN_IN_FLIGHT = 0.25  # returnToSpot.maxInFlight's default
TARGET_RECLAIM = 1.05  # a reclaim is bought back within 5% of the bound (the pass itself, its writes)
TARGET_DESCRIBE = 1.1
TARGET_RSS_MIB = {500: 256, 1000: 400}  # #22: in every phase (from zero, a restart, an adoption)
TARGET_CORES = 0.3


# -- the simulator -------------------------------------------------------------------------------

def account_keys(accounts: int) -> list[tuple[str, str, str]]:
    """(SecretId, SecretKey, account id) of `accounts` accounts: the demo key pair's first."""
    keys = [(DEMO_SECRET_ID, DEMO_SECRET_KEY, DEFAULT_ACCOUNT_ID)]
    for k in range(1, accounts):
        keys.append((f"AKIDSCALEBENCH{k:04d}{'0' * 18}", f"scaleBenchKey{k:04d}{'0' * 17}", f"3000000000{k:02d}"))
    return keys


def simulator_config(pools: int, size: int, accounts: int = 1) -> SimulatorConfig:
    """Stock and spot vCPU quota for twice what the pools need, per zone x type (pools rotate over
    ZONES, one type); a ledger big enough for a whole phase; `accounts` accounts, each a key pair
    with its own rate limits and quota (the simulator keeps accounts apart)."""
    per_zone = math.ceil(pools / len(ZONES)) * size
    return specs.simulator_config(
        seed=1,
        market={"default_stock": max(500, 2 * per_zone), "spot_quota_vcpus": max(20_000, 2 * 2 * per_zone),
                # a return to spot holds up to twice the pools' instances, on-demand ones among them
                "default_on_demand_stock": max(10_000, 2 * per_zone),
                "on_demand_quota_vcpus": max(20_000, 2 * 2 * per_zone)},
        api={"ledger_size": 500_000},
        credentials=[{"secret_id": i, "secret_key": k, "account_id": a} for i, k, a in account_keys(accounts)],
    )


def is_lookup(call: dict[str, Any]) -> bool:
    return "InstanceIds" in call["params"]


@dataclass
class Calls:
    """A phase's calls from the ledger."""

    calls: list[dict[str, Any]]

    def of(self, action: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["action"] == action]

    @property
    def sweep_pages(self) -> list[dict[str, Any]]:
        return [c for c in self.of("DescribeInstances") if not is_lookup(c)]

    @property
    def lookups(self) -> list[dict[str, Any]]:
        return [c for c in self.of("DescribeInstances") if is_lookup(c)]

    def pages_per_sweep(self) -> float | None:
        """Median pages of the sweeps that started and ended in these calls (a sweep's pages follow
        its first page in the ledger; the window's first and last sweeps may be cut off)."""
        sizes: list[int] = []
        for page in self.sweep_pages:
            if not page["params"].get("Offset"):
                sizes.append(0)
            if sizes:
                sizes[-1] += 1
        complete = sizes[:-1]  # the last one may still run at the window's end
        return statistics.median(complete) if complete else None

    @property
    def sweeps(self) -> int:
        """Listings started (first pages: Offset 0 or none)."""
        return sum(1 for c in self.sweep_pages if not c["params"].get("Offset"))

    @property
    def purchases(self) -> list[dict[str, Any]]:
        """RunInstances that could buy: the launch checks' DryRun calls buy nothing."""
        return [c for c in self.of("RunInstances") if not c["params"].get("DryRun")]

    def describes_between(self, start: float, end: float) -> int:
        return sum(1 for c in self.of("DescribeInstances") if start <= c["time"] < end)

    def errors(self) -> Counter[tuple[str, str]]:
        return Counter((c["action"], c["errorCode"]) for c in self.calls if c["errorCode"])

    def per_action(self) -> Counter[str]:
        return Counter(c["action"] for c in self.calls)


# -- watching many objects -----------------------------------------------------------------------

@dataclass
class NamespaceWatch:
    """Every version of every SpotComputeEnvironment of a namespace, from one watch: the first time
    each was Ready, and (with `history`) each status version with its arrival time."""

    custom: kubernetes.client.CustomObjectsApi
    namespace: str
    history: bool = False
    first_ready: dict[str, float] = field(default_factory=dict)
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    error: BaseException | None = None
    _watch: kubernetes.watch.Watch | None = None
    _stopped: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> NamespaceWatch:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        for obj in listing["items"]:
            self._seen(time.time(), obj)
        threading.Thread(target=self._run, args=(listing["metadata"]["resourceVersion"],), daemon=True).start()
        return self

    def _seen(self, at: float, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self._changed:
            self.latest[name] = status(obj)
            if ready(obj) and name not in self.first_ready:
                self.first_ready[name] = at
            if self.history:
                self.versions.append((at, name, status(obj)))
            self._changed.notify_all()

    def _run(self, version: str) -> None:
        """Watch on from `version`, as an informer does: a stream the API server ends (it closes
        a watcher that falls behind, as this one did at 1,000 busy objects) is opened again from
        the last version seen, and an expired version (410 Gone) is answered by listing again."""
        while not self._stopped:
            self._watch = kubernetes.watch.Watch()
            try:
                for event in self._watch.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                                self.namespace, PLURAL, resource_version=version,
                                                timeout_seconds=3600):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise kubernetes.client.ApiException(status=obj.get("code"), reason=obj.get("reason"))
                    version = obj["metadata"]["resourceVersion"]
                    self._seen(time.time(), obj)
            except kubernetes.client.ApiException as exc:
                if exc.status != 410:
                    self.error = exc
                    return
                listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
                for obj in listing["items"]:
                    self._seen(time.time(), obj)
                version = listing["metadata"]["resourceVersion"]
            except Exception as exc:  # a dropped watch: say so, the figures would be wrong
                self.error = exc
                return

    def wait(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                self._changed.wait(min(left, 1.0))
        return True

    def stop(self) -> None:
        self._stopped = True
        if self._watch is not None:
            self._watch.stop()


# -- profiling with py-spy (optional) --------------------------------------------------------------

@dataclass
class Profiler:
    binary: str | None
    directory: Path | None
    running: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, pid: int, label: str, seconds: float) -> None:
        if self.binary is None or self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        out = self.directory / f"{label}.txt"
        proc = subprocess.Popen([self.binary, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                                 "--rate", "50", "--format", "raw", "--nonblocking", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.running.append((proc, out))

    def finish(self) -> list[str]:
        """Wait for the recordings; the heaviest frames (self and inclusive) of each."""
        lines = []
        for proc, out in self.running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
            if out.exists():
                lines += [f"  profile {out.name}:"] + ["    " + line for line in top_frames(out)]
        self.running = []
        return lines


def top_frames(path: Path, limit: int = 12) -> list[str]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        total += count
        if frames:
            own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    if not total:
        return ["(no samples)"]
    rows = [f"{total} samples; self:"] + [f"  {n / total:5.1%}  {f}" for f, n in own.most_common(limit)]
    rows += ["inclusive (spotpool/kopf/kubernetes frames):"]
    rows += [f"  {n / total:5.1%}  {f}" for f, n in inclusive.most_common(200)
             if any(k in f for k in ("spotpool", "kopf", "kubernetes", "httpx", "aiohttp"))][:limit]
    return rows


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "operator/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where.rsplit(':', 1)[0]})"


# -- one size: many pools of 20 --------------------------------------------------------------------

@dataclass
class Steady:
    seconds: float
    intervals: float
    sweep_pages: float  # per interval
    lookups: float  # per interval
    sweeps: float  # listings started per interval
    pages_per_sweep: float | None
    others: Counter[str]
    rss: float
    hwm: float
    cores: float
    writes_per_s: float
    write_detail: Counter[tuple[str, str, str]]


@dataclass
class Phase:
    name: str
    converge: float | None  # seconds until every pool ready (None: not within the timeout)
    ready_count: int
    bound: float
    converge_calls: Calls
    converge_cores: float
    converge_writes: float = 0.0  # apiserver write requests per second while converging (leases excluded)
    started: float = 0.0  # clock (time.time) the phase's clock started
    steady: Steady | None = None
    burst: int | None = None  # DescribeInstances in BURST_WINDOW after a restart


@dataclass
class SizeResult:
    pools: int
    size: int
    phases: list[Phase]
    operator_errors: int
    crashed: str | None = None
    accounts: int = 1


def writes_excluding_leases(counts: Counter[tuple[str, str, str]]) -> Counter[tuple[str, str, str]]:
    return Counter({k: v for k, v in counts.items() if k[1] != "leases" and v > 0})


def measure_steady(sim: SimulatorProcess, operator: OperatorProcess, api: kubernetes.client.ApiClient,
                   intervals: float, profiler: Profiler, label: str) -> Steady:
    seconds = intervals * OBSERVE_INTERVAL
    sim.control("DELETE", "calls")
    assert operator.proc is not None
    pid = operator.proc.pid
    profiler.start(pid, label, seconds)
    writes0, cpu0, t0 = apiserver_writes(api), cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    writes1, cpu1, t1 = apiserver_writes(api), cpu_seconds(pid), time.monotonic()
    memory = memory_mib(pid)
    calls = Calls(sim.calls())
    elapsed = t1 - t0
    per = elapsed / OBSERVE_INTERVAL
    delta = writes_excluding_leases(writes1 - writes0)
    return Steady(
        seconds=elapsed, intervals=per,
        sweep_pages=len(calls.sweep_pages) / per, lookups=len(calls.lookups) / per, sweeps=calls.sweeps / per,
        pages_per_sweep=calls.pages_per_sweep(),
        others=Counter({a: n for a, n in calls.per_action().items() if a != "DescribeInstances"}),
        rss=memory["VmRSS"], hwm=memory["VmHWM"], cores=(cpu1 - cpu0) / elapsed,
        writes_per_s=sum(delta.values()) / elapsed, write_detail=delta,
    )


def ready_in_metrics(operator: OperatorProcess) -> int:
    try:
        text = operator.metrics()
    except httpx.HTTPError:
        return -1
    return sum(1 for line in text.splitlines()
               if line.startswith("spotpool_environment_ready{") and line.rstrip().endswith(" 1.0"))


def run_size(plane: ControlPlane, kubectl: Path, workdir: Path, pools: int, size: int, latency_ms: float,
             steady_intervals: float, profiler: Profiler, timeout: float | None, accounts: int = 1,
             memray_dir: Path | None = None, with_return: bool = False) -> SizeResult:
    latency = latency_ms / 1000
    instances = pools * size
    namespace = f"scale-{pools}-{uuid.uuid4().hex[:4]}"
    api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 8
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    create_namespace(kubectl, plane, core, namespace)
    for k, (secret_id, secret_key, _) in enumerate(account_keys(accounts)[1:], start=1):
        core.create_namespaced_secret(namespace, {"metadata": {"name": f"cvm-{k}"},
                                                  "stringData": {"secretId": secret_id, "secretKey": secret_key}})
    sim = SimulatorProcess(workdir / "simulator", simulator_config(pools, size, accounts)).start()
    operator = OperatorProcess(
        workdir=workdir / "operator", kubeconfig=plane.kubeconfig, namespace=namespace,
        cluster_id=f"scale-{uuid.uuid4().hex[:8]}", observe_interval=OBSERVE_INTERVAL,
        progress_interval=PROGRESS_INTERVAL, extra_args=("--log-level=info",),
    )
    watch = NamespaceWatch(custom, namespace)
    phases: list[Phase] = []
    # Each account's RunInstances limit is its own: the slowest account (the most pools) bounds it.
    run_calls = math.ceil(pools / accounts) * math.ceil(size / PER_CALL)
    bound = lower_bound(instances, latency, calls=run_calls)
    timeout = timeout or 120 + 5 * bound
    result = SizeResult(pools, size, phases, 0, accounts=accounts)
    try:
        sim.control("POST", "faults", latency_faults(latency_ms))
        if memray_dir is not None:
            operator.launcher = memray_launcher(memray_dir / f"{pools}-zero.bin")
        operator.start()
        time.sleep(1.0)  # let kopf's watch of the namespace settle after /readyz
        sim.control("DELETE", "calls")
        watch.start()
        assert operator.proc is not None
        pid = operator.proc.pid
        profiler.start(pid, f"{pools}-zero-converge", min(timeout, 1.5 * bound + 30))
        cpu0, writes0 = cpu_seconds(pid), apiserver_writes(api)
        bodies = [environment(f"pool-{i:04d}", namespace, size, ZONES[i % len(ZONES)], INSTANCE_TYPE, sim.url)
                  for i in range(pools)]
        for i, body in enumerate(bodies):
            if i % accounts:
                body["spec"]["credentialsSecretRef"] = {"name": f"cvm-{i % accounts}"}
            if with_return:  # fall back to on-demand at once when spot sells out, return when it is back
                body["spec"]["onDemand"] = {"fallback": {"after": "0s"}}
        started = time.time()
        with ThreadPoolExecutor(4) as creators:
            list(creators.map(lambda b: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, b),
                              bodies))
        created = time.time() - started
        all_ready = watch.wait(lambda w: len(w.first_ready) >= pools, timeout)
        converge = max(watch.first_ready.values()) - started if all_ready else None
        ready_count = len(watch.first_ready)
        if not all_ready:
            # The watch falls behind at about 1,000 objects (a harness limit): read the objects
            # themselves, each Ready condition's lastTransitionTime (1 s resolution).
            converge, ready_count = ready_from_objects(custom, namespace, started)
            if converge is not None:
                print(f"  (from the objects' Ready transitions: the watch saw {len(watch.first_ready)})", flush=True)
        cores = (cpu_seconds(pid) - cpu0) / (time.time() - started)
        writes = sum(writes_excluding_leases(apiserver_writes(api) - writes0).values()) - pools  # less our creates
        phases.append(Phase("from zero", converge, ready_count, bound, Calls(sim.calls()), cores,
                            writes / (time.time() - started), started))
        print(f"  {pools} pools from zero: created in {created:.1f} s; "
              + (f"all Ready after {converge:.1f} s" if converge else
                 f"{len(watch.first_ready)} of {pools} Ready after {timeout:.0f} s"), flush=True)
        time.sleep(OBSERVE_INTERVAL)  # settle: the next sweep lists what the look-ups confirmed
        phases[-1].steady = measure_steady(sim, operator, api, steady_intervals, profiler, f"{pools}-zero-steady")
        print(f"  {pools} pools steady: {steady_text(phases[-1].steady, instances)}", flush=True)

        # Restart with every instance present; then adoption: the same instances, the status gone.
        sweep_bound = (math.ceil(math.ceil(pools / accounts) * size / PER_CALL) - 1) / DESCRIBE_RATE + latency
        for name, strip in (("restart", False), ("adoption", True)):
            phases.append(restart_phase(name, strip, sim, operator, api, custom, namespace, pools, sweep_bound,
                                        timeout, profiler, memray_dir))
            print(f"  {pools} pools {name}: " + (
                f"all ready (operator metrics) after {phases[-1].converge:.1f} s" if phases[-1].converge
                else f"{phases[-1].ready_count} of {pools} ready after {timeout:.0f} s"), flush=True)
            phases[-1].steady = measure_steady(sim, operator, api, steady_intervals, profiler,
                                               f"{pools}-{name}-steady")
            print(f"  {pools} pools steady after {name}: {steady_text(phases[-1].steady, instances)}", flush=True)
        if with_return:
            phases.append(return_phase(sim, operator, api, pools, size, latency, timeout, memray_dir))
            print(f"  {pools} pools return to spot: " + (f"done after {phases[-1].converge:.1f} s"
                                                         if phases[-1].converge else "not done"), flush=True)
        if watch.error is not None:
            raise RuntimeError(f"the watch failed: {watch.error!r}")
    except Exception as exc:  # report what was measured, and why the rest is missing
        result.crashed = f"{type(exc).__name__}: {exc}"
    finally:
        watch.stop()
        operator.stop()
        log = operator.logs()
        result.operator_errors = log.count("Traceback") + log.count("reconcile failed")
        sim.stop()
        delete_namespace(kubectl, plane, namespace)
        api.close()
    return result


BURST_WINDOW = (15.0, 30.0)  # seconds after a restart in which #22 counted the burst of DescribeInstances


def restart_phase(name: str, strip: bool, sim: SimulatorProcess, operator: OperatorProcess,
                  api: kubernetes.client.ApiClient, custom: kubernetes.client.CustomObjectsApi, namespace: str,
                  pools: int, bound: float, timeout: float, profiler: Profiler, memray_dir: Path | None) -> Phase:
    """The operator stopped (SIGTERM) with every instance present and started again; with `strip`,
    every object's status is removed while it is down (adoption: the instances exist, tagged with
    the pools' uids, and nothing in the objects says so: a restore that dropped status, a status
    wiped by hand). The clock runs from the start until /metrics shows every pool ready; then on
    to the end of `BURST_WINDOW` (and at least one interval), whose DescribeInstances are the
    restart burst. RunInstances and TerminateInstances must stay 0."""
    operator.stop()
    if strip:
        with ThreadPoolExecutor(4) as strippers:
            names = [o["metadata"]["name"] for o in
                     custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]]
            list(strippers.map(lambda n: custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, n, {"status": None}), names))
    sim.control("DELETE", "calls")
    if memray_dir is not None:
        operator.launcher = memray_launcher(memray_dir / f"{pools}-{name}.bin")
    started = time.time()
    operator.start()
    assert operator.proc is not None
    pid = operator.proc.pid
    profiler.start(pid, f"{pools}-{name}-converge", 30)
    cpu0, writes0 = cpu_seconds(pid), apiserver_writes(api)
    converge = None
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = ready_in_metrics(operator)
        if count >= pools:
            converge = time.time() - started
            break
        time.sleep(2.0)
    cores = (cpu_seconds(pid) - cpu0) / (time.time() - started)
    writes = sum(writes_excluding_leases(apiserver_writes(api) - writes0).values())
    phase = Phase(name, converge, count, bound, Calls(sim.calls()), cores, writes / (time.time() - started), started)
    time.sleep(max(OBSERVE_INTERVAL, started + BURST_WINDOW[1] - time.time()))
    phase.burst = Calls(sim.calls()).describes_between(started + BURST_WINDOW[0], started + BURST_WINDOW[1])
    return phase


def return_phase(sim: SimulatorProcess, operator: OperatorProcess, api: kubernetes.client.ApiClient, pools: int,
                 size: int, latency: float, timeout: float, memray_dir: Path | None) -> Phase:
    """Every pool falls back to on-demand and returns to spot, in a fresh operator process (its peak
    RSS is this scenario's alone): spot sells out in every zone and every instance is reclaimed;
    once every pool runs on on-demand fallback instances, spot is restocked and the clock runs until
    no on-demand instance is left and every pool runs its count on spot again. Each pool returns in
    rounds of its `returnToSpot.maxInFlight` (25% by default: 5 of 20), one RunInstances per round,
    so the bound is the API's: pools x rounds RunInstances at 10/s (the releases go beside them at
    their own 10/s), plus a round trip."""
    operator.stop()
    if memray_dir is not None:
        operator.launcher = memray_launcher(memray_dir / f"{pools}-return.bin")
    operator.start()
    assert operator.proc is not None
    pid = operator.proc.pid
    wait_for(lambda: ready_in_metrics(operator) >= pools, timeout=timeout, interval=2.0,
             what="every pool ready after the restart")
    instances = pools * size

    def alive(charge: str) -> int:
        return sum(1 for i in sim.instances() if i["state"] in ("PENDING", "RUNNING") and i["chargeType"] == charge)

    def spot_sold_out(sold_out: bool) -> None:
        sim.control("POST", "market", {"pools": [{"zone": z, "instanceType": INSTANCE_TYPE, "soldOut": sold_out}
                                                 for z in ZONES]})

    spot_sold_out(True)
    for zone in ZONES:
        sim.control("POST", "reclaim", {"zone": zone, "instanceType": INSTANCE_TYPE, "count": instances})
    wait_for(lambda: alive("POSTPAID_BY_HOUR") >= instances and ready_in_metrics(operator) >= pools,
             timeout=timeout, interval=2.0, what="every pool on on-demand fallback")
    sim.control("DELETE", "calls")
    cpu0, writes0 = cpu_seconds(pid), apiserver_writes(api)
    started = time.time()
    spot_sold_out(False)
    try:
        wait_for(lambda: alive("POSTPAID_BY_HOUR") == 0 and alive("SPOTPAID") >= instances
                 and ready_in_metrics(operator) >= pools, timeout=timeout, interval=2.0,
                 what="every pool back on spot")
        done = True
    except AssertionError as exc:  # measured as not converged, the rest still reported
        print(f"  ({exc})", flush=True)
        done = False
    converge = time.time() - started if done else None
    calls = math.ceil(size / math.ceil(size * RETURN_IN_FLIGHT)) * pools  # one RunInstances per round
    bound = (calls - 1) / RUN_RATE + latency  # RunInstances and TerminateInstances each at 10/s, in parallel
    phase = Phase("return to spot", converge, ready_in_metrics(operator), bound, Calls(sim.calls()),
                  (cpu_seconds(pid) - cpu0) / (time.time() - started),
                  sum(writes_excluding_leases(apiserver_writes(api) - writes0).values()) / (time.time() - started),
                  started)
    memory = memory_mib(pid)
    phase.steady = Steady(seconds=0, intervals=0, sweep_pages=0, lookups=0, sweeps=0, pages_per_sweep=None,
                          others=Counter(), rss=memory["VmRSS"], hwm=memory["VmHWM"], cores=phase.converge_cores,
                          writes_per_s=phase.converge_writes, write_detail=Counter())
    return phase


def ready_from_objects(custom: kubernetes.client.CustomObjectsApi, namespace: str,
                       started: float) -> tuple[float | None, int]:
    """(seconds from `started` to the last Ready transition, if every object is Ready; how many are)."""
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    times = []
    for item in items:
        ready_condition = next((c for c in (item.get("status") or {}).get("conditions") or []
                                if c.get("type") == "Ready" and c.get("status") == "True"), None)
        if ready_condition is not None:
            at = datetime.fromisoformat(ready_condition["lastTransitionTime"].replace("Z", "+00:00"))
            times.append(at.timestamp())
    if items and len(times) == len(items):
        return max(times) - started, len(times)
    return None, len(times)


def steady_text(s: Steady, instances: int) -> str:
    return (f"Describe per interval {s.sweep_pages + s.lookups:.1f} ({s.sweep_pages:.1f} sweep pages in "
            f"{s.sweeps:.2f} sweeps of {fmt(s.pages_per_sweep, '')} pages, {s.lookups:.1f} InstanceIds look-ups; "
            f"ceil({instances}/100) = "
            f"{math.ceil(instances / PER_CALL)}), RSS {s.rss:.0f} MiB (peak {s.hwm:.0f}), CPU {s.cores:.3f} cores, "
            f"apiserver writes {s.writes_per_s:.2f}/s")


# -- one pool: 0 -> N, and reclaims ------------------------------------------------------------------

def run_single(plane: ControlPlane, kubectl: Path, workdir: Path, count: int, latency_ms: float,
               ) -> operator_bench.RunResult:
    bound = lower_bound(count, latency_ms / 1000)
    return operator_bench.one_run(plane, kubectl, workdir, count, latency_ms, OBSERVE_INTERVAL, PROGRESS_INTERVAL,
                                  timeout=120 + 10 * bound, profile=False, until="current")


@dataclass
class Reclaim:
    moment: str
    at: float  # clock (time.time) of the reclaim request
    since_sweep: float | None  # seconds since the last sweep page was answered
    reclaimed: int
    noticed: float | None
    bought: float | None
    current_back: float | None
    running_back: float | None
    calls: Counter[str]


def run_reclaims(plane: ControlPlane, kubectl: Path, workdir: Path, moments: list[str], latency_ms: float,
                 count: int = 1000, lost: int = 100) -> list[Reclaim]:
    namespace = f"reclaim-{uuid.uuid4().hex[:6]}"
    api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    create_namespace(kubectl, plane, core, namespace)
    sim = SimulatorProcess(workdir / "simulator", operator_bench.simulator_config(count)).start()
    operator = OperatorProcess(
        workdir=workdir / "operator", kubeconfig=plane.kubeconfig, namespace=namespace,
        cluster_id=f"reclaim-{uuid.uuid4().hex[:8]}", observe_interval=OBSERVE_INTERVAL,
        progress_interval=PROGRESS_INTERVAL, extra_args=("--log-level=info",),
    )
    watch = NamespaceWatch(custom, namespace, history=True)
    results = []
    zone = ZONES[0]
    try:
        sim.control("POST", "faults", latency_faults(latency_ms))
        operator.start()
        watch.start()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               environment("pool", namespace, count, zone, INSTANCE_TYPE, sim.url))
        if not watch.wait(lambda w: "pool" in w.first_ready, 120):
            raise RuntimeError("the pool of 1000 did not become Ready in 120 s")
        time.sleep(OBSERVE_INTERVAL + 2)  # settled: a sweep has listed every instance
        for moment in moments:
            sim.control("DELETE", "calls")
            since_sweep = None
            if moment == "random":
                time.sleep(random.uniform(0, OBSERVE_INTERVAL))
            else:  # just after a sweep: every page of a new sweep has been answered
                pages = math.ceil(count / PER_CALL)
                deadline = time.monotonic() + 3 * OBSERVE_INTERVAL
                while time.monotonic() < deadline:
                    sweep = [c for c in sim.calls("DescribeInstances") if not is_lookup(c)]
                    firsts = [i for i, c in enumerate(sweep) if not c["params"].get("Offset")]
                    if firsts and len({c["params"].get("Offset", 0) for c in sweep[firsts[-1]:]}) >= pages:
                        break
                    time.sleep(0.02)
                else:
                    raise RuntimeError("no sweep seen in three intervals")
            calls_before = sim.calls("DescribeInstances")
            sweeps = [c for c in calls_before if not is_lookup(c)]
            at = time.time()
            since_sweep = at - sweeps[-1]["time"] if sweeps else None
            taken = sim.control("POST", "reclaim", {"zone": zone, "instanceType": INSTANCE_TYPE, "count": lost})
            reclaimed = len(taken["reclaimed"])
            deadline = 3 * OBSERVE_INTERVAL + 30

            def back(w: NamespaceWatch, at: float = at) -> bool:
                st = w.latest.get("pool", {})
                return st.get("runningCount") == count and any(
                    t > at and (s.get("currentCount", 0) < count or s.get("runningCount", 0) < count)
                    for t, _, s in w.versions)
            watch.wait(back, deadline)
            calls = sim.calls()
            buys = [c for c in calls if c["action"] == "RunInstances" and c["errorCode"] is None
                    and c["time"] > at]
            bought = buys[0]["time"] if buys else None
            after = [(t, s) for t, _, s in watch.versions if t > at]
            noticed = next((t for t, s in after if s.get("runningCount", count) < count), None)
            current = next((t for t, s in after if s.get("currentCount") == count and bought is not None
                            and t >= bought), None)
            running = next((t for t, s in after if noticed is not None and t > noticed
                            and s.get("runningCount") == count), None)
            rel = lambda v, at=at: None if v is None else v - at  # noqa: E731
            results.append(Reclaim(moment, at, since_sweep, reclaimed, rel(noticed), rel(bought), rel(current),
                                   rel(running), Counter(c["action"] for c in calls if c["time"] > at)))
            r = results[-1]
            print(f"  reclaim at a {moment} moment ({fmt(r.since_sweep)} after the last sweep page): "
                  f"{reclaimed} reclaimed; status noticed {fmt(r.noticed)}, replacements bought {fmt(r.bought)}, "
                  f"currentCount back {fmt(r.current_back)}, running back {fmt(r.running_back)}", flush=True)
            time.sleep(OBSERVE_INTERVAL + 2)
    finally:
        watch.stop()
        operator.stop()
        sim.stop()
        delete_namespace(kubectl, plane, namespace)
        api.close()
    return results


def fmt(value: float | None, unit: str = " s") -> str:
    return "n/a" if value is None else f"{value:.2f}{unit}"


def verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}: {text}"


# -- report ------------------------------------------------------------------------------------------

def size_table(results: list[SizeResult], latency_ms: float) -> list[str]:
    rows = [
        "| pools x 20 | phase | all ready | bound | ratio | Describe to converge (sweep pages + look-ups) "
        "| Describe 15-30 s after start | steady Describe / interval (sweeps x pages) | ceil(inst/100) | peak RSS "
        "| steady RSS | CPU steady | apiserver writes/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        instances = r.pools * r.size
        pages = math.ceil(instances / PER_CALL)
        for p in r.phases:
            s = p.steady
            c = p.converge_calls
            ratio = f"{p.converge / p.bound:.2f}" if p.converge else "-"
            ready_text = fmt(p.converge) if p.converge else f"{p.ready_count}/{r.pools} (timeout)"
            where = f"{r.pools} ({r.accounts} accounts)" if r.accounts > 1 else f"{r.pools}"
            rows.append(
                f"| {where} | {p.name} | {ready_text} | {p.bound:.2f} s | {ratio} "
                f"| {len(c.sweep_pages)} + {len(c.lookups)} | {'-' if p.burst is None else p.burst} "
                + (f"| {s.sweep_pages + s.lookups:.1f} ({s.sweeps:.2f} x {fmt(s.pages_per_sweep, '')}) | {pages} "
                   f"| {s.hwm:.0f} MiB | {s.rss:.0f} MiB "
                   f"| {s.cores:.3f} | {s.writes_per_s:.2f} |" if s else f"| - | {pages} | - | - | - | - |"))
        naive = r.pools * math.ceil(r.size / PER_CALL)
        rows.append(f"| {r.pools} | naive (computed) | | | | | | {naive} (one listing per pool) | {pages} | | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", default="100", help="comma-separated pool counts (e.g. 100,250,500,1000); "
                                                       "'' for none")
    parser.add_argument("--size", type=int, default=20, help="expectedCount of each pool")
    parser.add_argument("--single", default="1000", help="comma-separated single-pool sizes (e.g. 1000,10000)")
    parser.add_argument("--reclaim", default="random,worst", help="reclaim moments: random, worst ('' for none)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="latency injected on every action")
    parser.add_argument("--steady-intervals", type=float, default=2.0, help="observe intervals per steady window")
    parser.add_argument("--accounts", type=int, default=1,
                        help="spread the pools over this many accounts (a key pair and Secret each, pool i in "
                             "account i mod N): each account's API limits are its own, so the lower bound is the "
                             "busiest account's and the figure measures the operator itself")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for all pools ready per phase (default 120 + 5 x the bound)")
    parser.add_argument("--profile-dir", type=Path, default=None, help="record py-spy profiles of the operator here")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy binary (for --profile-dir)")
    parser.add_argument("--return-to-spot", action="store_true",
                        help="pools fall back to on-demand (fallback.after 0s); after the other phases, every "
                             "pool falls back and returns to spot in a fresh operator process (its RSS and time)")
    parser.add_argument("--memray-dir", type=Path, default=None,
                        help="run the operator under memray (the bench extra) and print what it held at its peak "
                             "in each phase (slower: figures of such a run are profiles, not timings)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.pools.split(",") if x.strip()]
    singles = [int(x) for x in args.single.split(",") if x.strip()]
    moments = [x.strip() for x in args.reclaim.split(",") if x.strip()]
    latency = args.latency_ms / 1000
    profiler = Profiler(args.py_spy if args.profile_dir else None, args.profile_dir)

    bin_dir = ensure_binaries()
    kubectl = bin_dir / "kubectl"
    size_results: list[SizeResult] = []
    single_results: list[tuple[int, operator_bench.RunResult]] = []
    reclaims: list[Reclaim] = []
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"machine: {len(__import__('os').sched_getaffinity(0))} cores, load average {' '.join(load)} at start "
          f"(shared: other work runs beside this benchmark)", flush=True)
    with tempfile.TemporaryDirectory(prefix="spotpool-scale-") as tmp, \
            ControlPlane(binaries=bin_dir, with_controller_manager=False) as plane:
        install_crd(kubectl, plane)
        for count in singles:
            result = run_single(plane, kubectl, Path(tmp) / f"single-{count}", count, args.latency_ms)
            single_results.append((count, result))
            print(f"  0 -> {count} in one pool: launches returned {result.launches_returned:.3f} s, currentCount "
                  f"{count} {fmt(result.current_reached)}, Ready {fmt(result.ready_reached)}", flush=True)
        if moments:
            reclaims = run_reclaims(plane, kubectl, Path(tmp) / "reclaim", moments, args.latency_ms)
        for pools in sizes:  # last: the biggest take longest
            print(f"{pools} pools x {args.size}:", flush=True)
            size_results.append(run_size(plane, kubectl, Path(tmp) / f"pools-{pools}", pools, args.size,
                                         args.latency_ms, args.steady_intervals, profiler, args.timeout,
                                         args.accounts, args.memray_dir, args.return_to_spot))
            print("\n".join(size_table(size_results[-1:], args.latency_ms)[2:]), flush=True)
            for capture in sorted(args.memray_dir.glob(f"{pools}-*.bin")) if args.memray_dir else []:
                print(f"  memory profile {capture.name}:\n" + "\n".join("    " + line for line in memray_peak(capture)),
                      flush=True)
            print("\n".join(profiler.finish()), flush=True)

    print()
    print(f"Scale, {args.latency_ms:.0f} ms injected latency on every action, documented rate limits "
          f"(RunInstances 10/s, DescribeInstances 40/s), observe interval {OBSERVE_INTERVAL:.0f} s; "
          f"load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    verdicts: list[str] = []
    if size_results:
        print("\n".join(size_table(size_results, args.latency_ms)))
    for r in size_results:
        zero = r.phases[0] if r.phases else None
        for p in r.phases:
            errors = p.converge_calls.errors()
            calls = p.converge_calls.per_action()
            print(f"  {r.pools} pools, {p.name}: calls to converge "
                  + ", ".join(f"{a} {n}" for a, n in sorted(calls.items()))
                  + ("; refused: " + ", ".join(f"{a} {c} x{n}" for (a, c), n in sorted(errors.items()))
                     if errors else "; none refused")
                  + f"; {p.converge_calls.sweeps} sweeps; while converging: operator CPU {p.converge_cores:.2f} cores, "
                  f"apiserver writes {p.converge_writes:.1f}/s")
            launches = sorted(c["time"] - p.started for c in p.converge_calls.of("RunInstances"))
            if launches and p.started:
                half = launches[len(launches) // 2]
                print(f"    RunInstances answered from {launches[0]:.1f} s to {launches[-1]:.1f} s "
                      f"(half by {half:.1f} s; "
                      f"{len(launches) / max(launches[-1] - launches[0], 1e-9):.1f} calls/s against 10/s); "
                      f"DescribeInstances sweep pages {len(p.converge_calls.sweep_pages)} in "
                      f"{p.converge_calls.sweeps} sweeps, InstanceIds look-ups {len(p.converge_calls.lookups)}")
            if p.steady:
                print(f"    steady: {p.steady.seconds:.0f} s window; other calls "
                      + (", ".join(f"{a} {n}" for a, n in sorted(p.steady.others.items())) or "none")
                      + "; apiserver writes: "
                      + (", ".join(f"{v} {res}{'/' + sub if sub else ''} x{n}"
                                   for (v, res, sub), n in sorted(p.steady.write_detail.items())) or "none"))
        pages = math.ceil(r.pools * r.size / PER_CALL)
        for p in (p for p in r.phases if p.name in ("restart", "adoption")):  # buy and release nothing
            bought = len(p.converge_calls.purchases)
            released = len(p.converge_calls.of("TerminateInstances"))
            verdicts.append(verdict(bought == 0 and released == 0,
                                    f"{r.pools} pools {p.name}: RunInstances {bought} (launch checks with DryRun "
                                    f"apart), TerminateInstances {released} (expected 0)"))
            if p.burst is not None:
                verdicts.append(verdict(p.burst <= TARGET_DESCRIBE * pages,
                                        f"{r.pools} pools {p.name}: DescribeInstances {p.burst} in "
                                        f"{BURST_WINDOW[0]:.0f}-{BURST_WINDOW[1]:.0f} s after the start against "
                                        f"<= {TARGET_DESCRIBE} x {pages} (one sweep per interval)"))
        rss_limit = TARGET_RSS_MIB.get(r.pools)
        for p in r.phases:
            if p.steady and rss_limit is not None:
                verdicts.append(verdict(max(p.steady.hwm, p.steady.rss) <= rss_limit,
                                        f"{r.pools} pools ({p.name}) RSS peak {p.steady.hwm:.0f} MiB, steady "
                                        f"{p.steady.rss:.0f} MiB against <= {rss_limit} MiB"))
            elif p.steady:
                verdicts.append(f"INFO: {r.pools} pools ({p.name}): RSS peak {p.steady.hwm:.0f} MiB, "
                                f"steady CPU {p.steady.cores:.3f} cores")
        if r.pools == 500 and zero is not None:
            ratio = zero.converge / zero.bound if zero.converge else math.inf
            verdicts.append(verdict(ratio <= TARGET_READY, f"500 x 20 all Ready {fmt(zero.converge)}, "
                                    f"ratio {ratio:.2f} against <= {TARGET_READY} x {zero.bound:.2f} s"))
        if r.pools >= 500:
            for p in r.phases:
                if p.steady and p.steady.seconds:
                    s = p.steady
                    limit = TARGET_DESCRIBE * pages
                    verdicts.append(verdict(s.sweep_pages + s.lookups <= limit,
                                            f"{r.pools} pools ({p.name}) steady Describe per interval "
                                            f"{s.sweep_pages + s.lookups:.1f} against <= {limit:.0f}"))
                    verdicts.append(verdict(s.sweeps >= 0.9, f"{r.pools} pools ({p.name}) sweeps per interval "
                                            f"{s.sweeps:.2f} (the period stays --observe-interval)"))
                    verdicts.append(verdict(s.cores <= TARGET_CORES, f"{r.pools} pools ({p.name}) steady CPU "
                                            f"{s.cores:.3f} cores against <= {TARGET_CORES}"))
        if r.pools == 1000:
            ok = (r.crashed is None and r.operator_errors == 0 and all(p.converge for p in r.phases)
                  and len(r.phases) == 3)
            verdicts.append(verdict(ok, f"1000 pools complete without error (crash: {r.crashed}, operator "
                                        f"errors logged: {r.operator_errors}, phases converged: "
                                        f"{sum(1 for p in r.phases if p.converge)}/3)"))
        if r.crashed:
            print(f"  {r.pools} pools: the run stopped early: {r.crashed}")
        if r.operator_errors:
            print(f"  {r.pools} pools: the operator logged {r.operator_errors} errors (Traceback / reconcile failed)")
    for count, result in single_results:
        bound = lower_bound(count, latency)
        launches = lower_bound(count, latency, math.ceil(count / PER_CALL) + 1)  # the DryRun takes a slot
        current_at = operator_bench.current_bound(count, latency, result.status_write)
        current = result.current_reached
        ratio = current / current_at if current else math.inf
        print(f"  0 -> {count} in one pool: launches returned {result.launches_returned:.3f} s (ratio "
              f"{result.launches_returned / bound:.2f} to (ceil({count}/100) - 1)/10 + {latency:.3f} = {bound:.3f} s, "
              f"{result.launches_returned / launches:.2f} to {launches:.3f} s with the launch check's DryRun), "
              f"currentCount {count} {fmt(current)} (ratio {ratio:.2f} to {launches:.3f} s + one status write of "
              f"{result.status_write * 1000:.0f} ms = {current_at:.3f} s; "
              f"{current / launches if current else math.inf:.2f} to {launches:.3f} s), "
              f"Ready {fmt(result.ready_reached)}; "
              "calls to Ready: " + ", ".join(f"{a} {n}" for a, n in sorted(result.calls.items())))
        verdicts.append(verdict(result.launches_returned <= TARGET_SINGLE * launches,
                                f"0 -> {count} launches returned at {result.launches_returned:.3f} s, ratio "
                                f"{result.launches_returned / launches:.2f} against <= {TARGET_SINGLE} x "
                                f"{launches:.3f} s"))
        verdicts.append(verdict(ratio <= TARGET_SINGLE, f"0 -> {count} currentCount at {fmt(current)}, ratio "
                                f"{ratio:.2f} against <= {TARGET_SINGLE} x {current_at:.3f} s (the launches' "
                                f"bound and one status write)"))
    target = OBSERVE_INTERVAL + 3 * latency
    for r in reclaims:
        print(f"  {r.reclaimed} of 1000 reclaimed at a {r.moment} moment ({fmt(r.since_sweep)} after the last sweep "
              f"page): noticed {fmt(r.noticed)}, replacements bought {fmt(r.bought)}, currentCount back "
              f"{fmt(r.current_back)}, running back {fmt(r.running_back)} (boot delay 2 s); calls after: "
              + ", ".join(f"{a} {n}" for a, n in sorted(r.calls.items())))
        ok = r.current_back is not None and r.current_back <= TARGET_RECLAIM * target
        verdicts.append(verdict(ok, f"reclaim ({r.moment}) currentCount back {fmt(r.current_back)} against <= "
                                    f"{TARGET_RECLAIM} x (one interval + three round trips = {target:.2f} s) "
                                    f"(running back {fmt(r.running_back)})"))
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
