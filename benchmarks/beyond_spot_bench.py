"""Benchmark of the operator beyond spot: how fast a pool falls back to on-demand when spot sells
out, how fast (and how safely) it returns to spot once spot is restocked, and whether the hourly
spend cap holds at scale.

Same machinery as `operator_bench.py` and `scale_bench.py` (real control plane, `spotpool simulator`
and `spotpool operator` as processes; shared helpers in `benchlib.py`). The simulator keeps its
documented rate limits (RunInstances 10/s, TerminateInstances 10/s, DescribeInstances 40/s) and
its default lifecycle (boot delay 2 s, read from its configuration), answers every action
`--latency-ms` late (default 100 ms: the round trip, RTT below), and has stock and vCPU quota for
the run. Every run gets its own namespace, simulator and operator (no rate-limit bucket, cache or
connection carries over). The operator runs with its default intervals unless a flag says otherwise:
`--observe-interval` 15 s, `--progress-interval` 2 s, `--market-max-age` 30 s. Pools have one zone
(ap-guangzhou-3) and one type (S5.MEDIUM4), so "sold out" is one market switch.

Scenarios (`--scenarios fallback,return,cap`):

- *fallback*, per `--sizes` (default 100,1000): a pool of N with `onDemand.fallback.after: --after`
  (default 60 s), Ready on spot and settled. Just after a sweep (the simulator's ledger shows every
  page of a sweep answered), every spot pool of it is sold out and all N instances are reclaimed
  (`POST /_sim/market`, `POST /_sim/reclaim`): the clock starts. A reclaim at that moment is the
  worst case for noticing it, and a defined one: the operator's next sweep starts one observe
  interval after the last one ended, so the time to see the shortage is known, not a random slice of
  an interval. (Starting from zero with spot sold out would measure no detection at all.) Measured:
  when the status showed `capacity.spotShortSince` (and the time it records), the first on-demand
  RunInstances answered, the last one answered, and `Ready` on N on-demand fallback instances (the
  watch). Lower bounds, from the reclaim:

      seen  = (last sweep's end + observe interval - reclaim) + RTT   (the next sweep's one page)
      first = floor(seen) + after + RTT                               (fallback.after counts from
                                                                       spotShortSince, kept in whole
                                                                       seconds, rounded down)
      all   = first + (ceil(N/100) - 1) / 10                          (RunInstances at 10/s)
      Ready = all + boot delay                                        (the observation that sees
                                                                       them run is left out)

  Money check: no on-demand instance may be bought before `spotShortSince + after`.

- *return*, per size and per `--budgets` (`returnToSpot.maxInFlight`, default 10%,100%): a pool of N
  created with spot sold out and `fallback.after: 0s`, Ready on N on-demand fallback instances. Just
  after the operator's next market read (DescribeZoneInstanceConfigInfos in the ledger), spot is
  restocked: the clock starts. That is the worst moment: the operator reuses that read for
  `--market-max-age`. Measured: the first spot RunInstances (restock noticed) and the end of the
  return, when the last on-demand instance's TerminateInstances was answered (0 on-demand alive, from
  the simulator's instance timelines, `GET /_sim/instances?ever=true`). Lower bound, with budget B,
  r = ceil(N/B) rounds of k_i = min(B, N - i B) instances:

      notice = (market read's start + market max age - restock) + RTT   (the fresh read)
      round  = run(k_i) + max(boot delay, progress interval) + terminate(k_i)
      run(k) = terminate(k) = (ceil(k/100) - 1) / 10 + RTT              (10 calls/s, 100 per call)
      bound  = notice + sum of the r rounds

  A round buys k_i replacements; the next pass comes a progress interval after the buying pass
  ended, and sees them only once they run (the boot delay): both waits overlap, hence the max. It
  releases the k_i fallback instances (returns go before purchases in a pass) and buys the next
  round. The lookup that sees the replacements running is left out. Per round the script also
  prints when its replacements were bought, when the last ran and when the next release came: the
  lag from running to released is how long the operator took to see them run. Money bounds, over the return
  (restock to its end), from every instance's timeline (alive from launch to TerminateInstances,
  running from boot to TerminateInstances): peak alive <= N + B and minimum running >= N; a
  violation prints FAIL and the script exits 1.

- *cap* (`--cap-pools` 100 x `--cap-size` 20, `--cap-allows` 10): each pool's `maxHourlyCost` is its
  zone's spot price x (allows + 0.5), room for 10 and not 11 (zones rotate over the four ap-guangzhou
  zones, whose prices differ). Measured: instances bought (successful RunInstances, DryRun launch
  checks excluded) against exactly pools x allows (any other number exits 1), the time from the first
  create until every pool showed `currentCount` = allows and `Degraded`/`MaxHourlyCostReached`, and
  that nothing more is bought during one more observe interval. Bound: one RunInstances per pool at
  10/s, (pools - 1)/10 + RTT (the DryRun launch checks, one per pool, share that limit; they are
  counted apart).

A default run (sizes 100 and 1000, both budgets, the cap) takes about 10 minutes. `--keep DIR` keeps
each run's logs, ledger and instance timelines (JSON) for a post-mortem.

    .venv/bin/python benchmarks/beyond_spot_bench.py                       # everything, defaults
    .venv/bin/python benchmarks/beyond_spot_bench.py --sizes 100 --budgets 100% --after 10 \\
        --scenarios fallback,return                                        # quick (about 2 min)
    .venv/bin/python benchmarks/beyond_spot_bench.py --sizes 1000,5000 --budgets 5%,25%,100% \\
        --cap-pools 500                                                     # bigger
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes
from benchlib import (  # first: it puts the repository on sys.path for tests.support
    PER_CALL,
    RUN_RATE,
    create_namespace,
    delete_namespace,
    environment,
    install_crd,
    latency_faults,
    lower_bound,
    ready,
)
from scale_bench import ZONES, NamespaceWatch, fmt, is_lookup, verdict

from spotpool.api.names import GROUP, PLURAL, VERSION
from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries
from spotpool.simulator import SimulatorConfig
from tests.support import specs
from tests.support.processes import OperatorProcess, SimulatorProcess

ZONE, INSTANCE_TYPE = ZONES[0], "S5.MEDIUM4"  # 2 vCPUs
SPOT, ON_DEMAND = "SPOTPAID", "POSTPAID_BY_HOUR"
POOL = "pool"


@dataclass(frozen=True)
class Settings:
    latency: float  # seconds injected on every action: the round trip
    observe: float
    progress: float
    market_max_age: float
    after: int
    keep: bool = False
    log_level: str = "info"  # the wrapper's debug logging costs the operator CPU
    timeout_slack: float = 120.0

    @property
    def operator_args(self) -> tuple[str, ...]:
        return (f"--log-level={self.log_level}", f"--market-max-age={self.market_max_age:g}")


# -- the simulator, the operator and a namespace for one run ------------------------------------------

def simulator_config(instances: int, zones: int = 1) -> SimulatorConfig:
    """Spot and on-demand stock and vCPU quota for twice what the run needs per zone x type
    (a return holds up to 2N), a ledger for the whole run; rate limits and lifecycle as documented."""
    per_zone = math.ceil(instances / zones)
    return specs.simulator_config(
        seed=1,
        market={
            "default_stock": max(500, 2 * per_zone), "spot_quota_vcpus": max(20_000, 2 * 2 * per_zone),
            "default_on_demand_stock": max(10_000, 2 * per_zone),
            "on_demand_quota_vcpus": max(20_000, 2 * 2 * per_zone),
        },
        api={"ledger_size": max(200_000, 100 * instances)},
    )


@dataclass
class Stack:
    """One run's namespace, simulator, operator and namespace watch (with every status version)."""

    namespace: str
    custom: kubernetes.client.CustomObjectsApi
    sim: SimulatorProcess
    operator: OperatorProcess
    watch: NamespaceWatch

    @property
    def boot_delay(self) -> float:
        return self.sim.config.lifecycle.boot_delay_seconds

    def create(self, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def set_sold_out(self, sold_out: bool, zone: str = ZONE) -> None:
        self.sim.control("POST", "market", {"pools": [{"zone": zone, "instanceType": INSTANCE_TYPE,
                                                       "soldOut": sold_out}]})

    def wait(self, predicate: Callable[[NamespaceWatch], bool], timeout: float, what: str) -> None:
        if not self.watch.wait(predicate, timeout):
            latest = self.watch.latest.get(POOL, {})
            raise RuntimeError(f"not {what} after {timeout:.0f} s; last status: currentCount "
                               f"{latest.get('currentCount')}, runningCount {latest.get('runningCount')}, capacity "
                               f"{latest.get('capacity')}; operator log tail:\n{self.operator.logs()[-2500:]}")
        if self.watch.error is not None:
            raise RuntimeError(f"the watch failed: {self.watch.error!r}")

    def uid(self, name: str = POOL) -> str:
        return str(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
                   ["metadata"]["uid"])

    def ever(self, uid: str) -> list[dict[str, Any]]:
        """Every instance of the pool since the simulator started, gone ones included."""
        return self.sim.instances(ever="true", tag=f"spotpool.io/environment-uid={uid}")

    def operator_errors(self) -> int:
        log = self.operator.logs()
        return log.count("Traceback") + log.count("reconcile failed")


@contextmanager
def stack(plane: ControlPlane, kubectl: Path, workdir: Path, settings: Settings, config: SimulatorConfig,
          label: str) -> Iterator[Stack]:
    namespace = f"{label}-{uuid.uuid4().hex[:5]}"
    api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    api.rest_client.pool_manager.connection_pool_kw["maxsize"] = 8
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    create_namespace(kubectl, plane, core, namespace)
    sim = SimulatorProcess(workdir / "simulator", config).start()
    operator = OperatorProcess(
        workdir=workdir / "operator", kubeconfig=plane.kubeconfig, namespace=namespace,
        cluster_id=f"{label}-{uuid.uuid4().hex[:8]}", observe_interval=settings.observe,
        progress_interval=settings.progress, extra_args=settings.operator_args,
    )
    watch = NamespaceWatch(custom, namespace, history=True)
    try:
        sim.control("POST", "faults", latency_faults(settings.latency * 1000))
        operator.start()
        time.sleep(1.0)  # let kopf's watch of the namespace settle after /readyz
        watch.start()
        yield Stack(namespace, custom, sim, operator, watch)
    finally:
        watch.stop()
        operator.stop()
        if settings.keep:  # for a post-mortem: the whole ledger and every instance's timeline
            with contextlib.suppress(Exception):
                (workdir / "calls.json").write_text(json.dumps(sim.calls()))
                (workdir / "instances.json").write_text(json.dumps(sim.instances(ever="true")))
        sim.stop()
        delete_namespace(kubectl, plane, namespace)
        api.close()


def pool_body(stack: Stack, count: int, on_demand: dict[str, Any]) -> dict[str, Any]:
    body = environment(POOL, stack.namespace, count, ZONE, INSTANCE_TYPE, stack.sim.url)
    body["spec"]["onDemand"] = on_demand
    return body


# -- readings --------------------------------------------------------------------------------------

def capacity(st: dict[str, Any]) -> dict[str, Any]:
    return dict(st.get("capacity") or {})


def ready_on(st: dict[str, Any], count: int, role: str) -> bool:
    """Ready with `count` instances of `role` (spot, onDemandFallback) and none of the others."""
    mix = capacity(st)
    others = sum(int(mix.get(r) or 0) for r in ("spot", "onDemandBase", "onDemandFallback") if r != role)
    return (ready({"status": st}) and st.get("runningCount") == count and int(mix.get(role) or 0) == count
            and others == 0)


def purchases(calls: list[dict[str, Any]], charge: str | None = None) -> list[dict[str, Any]]:
    """RunInstances that bought (DryRun launch checks and refusals excluded), one per ClientToken
    (a replayed purchase buys nothing new), oldest first; only `charge` ones when given."""
    bought: dict[str, dict[str, Any]] = {}
    for call in calls:
        if call["action"] == "RunInstances" and call["errorCode"] is None and not call["params"].get("DryRun"):
            bought.setdefault(call["params"].get("ClientToken") or call["requestId"], call)
    return sorted((c for c in bought.values()
                   if charge is None or c["params"].get("InstanceChargeType", SPOT) == charge),
                  key=lambda c: c["time"])


def started(call: dict[str, Any]) -> float:
    """When the simulator began on a call (its ledger `time` is when it answered)."""
    return float(call["time"]) - float(call["durationMs"]) / 1000


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def wait_after_sweep(sim: SimulatorProcess, pages: int, timeout: float) -> float:
    """Block until every page of a sweep that began after now has been answered; the ledger time of
    its last page. (A sweep is the tag-filtered DescribeInstances listing; its first page has no
    Offset. InstanceIds look-ups are not sweeps.)"""
    since = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep = [c for c in sim.calls("DescribeInstances") if not is_lookup(c) and c["time"] > since]
        firsts = [i for i, c in enumerate(sweep) if not c["params"].get("Offset")]
        if firsts:
            current = sweep[firsts[-1]:]
            if len({c["params"].get("Offset", 0) for c in current}) >= pages:
                return float(current[-1]["time"])
        time.sleep(0.02)
    raise RuntimeError(f"no complete sweep of {pages} pages seen in {timeout:.0f} s")


def wait_for_market_read(sim: SimulatorProcess, after: float, timeout: float) -> dict[str, Any]:
    """Block until the operator's next market read (DescribeZoneInstanceConfigInfos) answered after
    `after`; that call."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reads = [c for c in sim.calls("DescribeZoneInstanceConfigInfos") if c["time"] > after]
        if reads:
            return reads[0]
        time.sleep(0.02)
    raise RuntimeError(f"no market read in {timeout:.0f} s")


@dataclass(frozen=True)
class Extremes:
    peak_alive: int
    min_running: int
    peak_at: float
    min_at: float


def fleet_extremes(instances: list[dict[str, Any]], start: float, end: float) -> Extremes:
    """Peak of alive instances (launched, not yet TerminateInstances'd) and minimum of running ones
    (booted, not yet terminated) over [start, end], from the simulator's instance timelines. Events
    at one instant are applied together before counting, so a release answered in the same
    instant as a boot is not counted as a dip."""
    deltas: dict[float, list[int]] = {}  # time -> [alive delta, running delta]
    alive = running = 0
    for inst in instances:
        line = inst["timeline"]
        launched, booted, gone = line["launchedAt"], line["runningAt"], line["terminatedAt"]
        gone = math.inf if gone is None else gone
        if launched <= start < gone:
            alive += 1
        if booted is not None and booted <= start < gone:
            running += 1
        for at, which, sign in ((launched, 0, 1), (gone, 0, -1), (booted, 1, 1), (gone if booted else None, 1, -1)):
            if at is not None and start < at <= end:
                deltas.setdefault(at, [0, 0])[which] += sign
    peak, low, peak_at, low_at = alive, running, start, start
    for at in sorted(deltas):
        alive += deltas[at][0]
        running += deltas[at][1]
        if alive > peak:
            peak, peak_at = alive, at
        if running < low:
            low, low_at = running, at
    return Extremes(peak, low, peak_at - start, low_at - start)


def calls_time(count: int, latency: float) -> float:
    """RunInstances or TerminateInstances for `count` instances: 100 per call, 10 calls/s."""
    return lower_bound(count, latency)


# -- scenario 1: spot sells out, on-demand after `after` ----------------------------------------------

@dataclass
class Fallback:
    size: int
    after: int
    reclaimed: int
    since_sweep: float  # seconds from the last sweep page's answer to the reclaim
    seen: float | None  # status first showed capacity.spotShortSince
    short_since: float | None  # the time it records
    first: float | None  # first on-demand RunInstances answered
    last: float | None  # last on-demand RunInstances answered
    ready: float | None  # Ready on N on-demand fallback instances
    bought_on_demand: int
    spot_refusals: int
    early: int  # on-demand RunInstances started before spotShortSince + after (money)
    bound_seen: float
    bound_first: float
    bound_last: float
    bound_ready: float
    errors: int


def run_fallback(plane: ControlPlane, kubectl: Path, workdir: Path, s: Settings, size: int, budget: str) -> Fallback:
    with stack(plane, kubectl, workdir, s, simulator_config(size), "fallback") as st:
        st.create(pool_body(st, size, {"fallback": {"after": f"{s.after}s"}, "returnToSpot": {"maxInFlight": budget}}))
        st.wait(lambda w: ready_on(w.latest.get(POOL, {}), size, "spot"), s.timeout_slack + size / 50,
                f"Ready on {size} spot")
        st.sim.control("DELETE", "calls")
        sweep_end = wait_after_sweep(st.sim, math.ceil(size / PER_CALL), 3 * s.observe + 10)
        t0 = time.time()
        st.set_sold_out(True)
        reclaimed = len(st.sim.control("POST", "reclaim", {"zone": ZONE, "instanceType": INSTANCE_TYPE,
                                                          "count": size})["reclaimed"])
        st.wait(lambda w: any(t > t0 and ready_on(v, size, "onDemandFallback") for t, _, v in w.versions),
                s.after + 4 * s.observe + s.timeout_slack + size / 20, f"Ready on {size} on-demand")
        calls = [c for c in st.sim.calls() if c["time"] > t0]
        errors = st.operator_errors()
    versions = [(t, v) for t, _, v in st.watch.versions if t > t0]
    seen_at = next(((t, capacity(v)["spotShortSince"]) for t, v in versions if capacity(v).get("spotShortSince")),
                   None)
    short_since = epoch(seen_at[1]) if seen_at else None
    on_demand = purchases(calls, ON_DEMAND)
    due = (short_since or math.inf) + s.after
    ready_at = next((t for t, v in versions if ready_on(v, size, "onDemandFallback")), None)
    rel = lambda v: None if v is None else v - t0  # noqa: E731
    rtt = s.latency
    bound_seen = sweep_end + s.observe - t0 + rtt
    # The wait counts from spotShortSince as status keeps it: whole seconds, rounded down.
    bound_first = math.floor(t0 + bound_seen) - t0 + s.after + rtt
    bound_last = bound_first + (math.ceil(size / PER_CALL) - 1) / RUN_RATE
    return Fallback(
        size=size, after=s.after, reclaimed=reclaimed, since_sweep=t0 - sweep_end,
        seen=rel(seen_at[0]) if seen_at else None, short_since=rel(short_since),
        first=rel(on_demand[0]["time"]) if on_demand else None, last=rel(on_demand[-1]["time"]) if on_demand else None,
        ready=rel(ready_at), bought_on_demand=sum(int(c["params"].get("InstanceCount", 0)) for c in on_demand),
        spot_refusals=sum(1 for c in calls if c["action"] == "RunInstances" and c["errorCode"]
                          and c["params"].get("InstanceChargeType", SPOT) == SPOT),
        early=sum(1 for c in on_demand if started(c) < due),
        bound_seen=bound_seen, bound_first=bound_first, bound_last=bound_last,
        bound_ready=bound_last + st.boot_delay, errors=errors,
    )


# -- scenario 2: spot restocked, back to spot under the budget -----------------------------------------

@dataclass
class Return:
    size: int
    budget_text: str
    budget: int
    noticed: float | None  # first spot RunInstances answered
    done: float | None  # last on-demand TerminateInstances answered (0 on-demand alive)
    rounds: list[Round]  # passes that bought replacements
    spot_bought: int
    released: int
    extremes: Extremes
    notice_bound: float
    bound: float
    bound_formula: str
    errors: int
    leftover_on_demand: int


def budget_of(text: str, size: int) -> int:
    """`returnToSpot.maxInFlight`: a count, or a percentage of expectedCount rounded up (>= 1)."""
    if text.endswith("%"):
        return max(1, -(-size * int(text[:-1]) // 100))
    return int(text)


def return_bound(size: int, budget: int, notice: float, s: Settings, boot: float) -> tuple[float, str]:
    rounds, total = [], notice
    left = size
    while left > 0:
        k = min(budget, left)
        rounds.append(k)
        total += calls_time(k, s.latency) + max(boot, s.progress) + calls_time(k, s.latency)
        left -= k
    sizes = sorted(set(rounds), reverse=True)
    per = {k: calls_time(k, s.latency) + max(boot, s.progress) + calls_time(k, s.latency) for k in sizes}
    text = (f"{notice:.2f} s notice + " + " + ".join(
        f"{rounds.count(k)} x ({calls_time(k, s.latency):.2f} run + max(boot {boot:g}, progress {s.progress:g}) "
        f"+ {calls_time(k, s.latency):.2f} terminate = {per[k]:.2f})" for k in sizes) + f" = {total:.2f} s")
    return total, text


def group_rounds(calls: list[dict[str, Any]], gap: float) -> list[list[dict[str, Any]]]:
    """Passes that bought: purchase calls closer than `gap` belong to one pass."""
    groups: list[list[dict[str, Any]]] = []
    for call in sorted(calls, key=lambda c: c["time"]):
        if groups and call["time"] - groups[-1][-1]["time"] <= gap:
            groups[-1].append(call)
        else:
            groups.append([call])
    return groups


@dataclass(frozen=True)
class Round:
    bought: float  # the round's last RunInstances answered, seconds from the restock
    running: float  # its last replacement running
    released: float | None  # the first on-demand release after that


def round_marks(groups: list[list[dict[str, Any]]], ever: list[dict[str, Any]], t0: float) -> list[Round]:
    """Per round: when its replacements were bought, when the last of them ran, and when the next
    on-demand release came (the pass that saw them running); from the ledger and the timelines."""
    releases = sorted(i["timeline"]["terminatedAt"] for i in ever
                      if i["chargeType"] == ON_DEMAND and i["timeline"]["terminatedAt"] is not None)
    marks = []
    for group in groups:
        ids = {c["requestId"] for c in group}
        booted = [i["timeline"]["runningAt"] for i in ever if i["launchRequestId"] in ids]
        running = math.inf if not booted or None in booted else max(booted)
        released = next((r for r in releases if r >= running), None)
        marks.append(Round(max(c["time"] for c in group) - t0, running - t0,
                           None if released is None else released - t0))
    return marks


def run_return(plane: ControlPlane, kubectl: Path, workdir: Path, s: Settings, size: int, budget_text: str) -> Return:
    budget = budget_of(budget_text, size)
    with stack(plane, kubectl, workdir, s, simulator_config(size), "return") as st:
        st.set_sold_out(True)
        st.create(pool_body(st, size, {"fallback": {"after": "0s"}, "returnToSpot": {"maxInFlight": budget_text}}))
        st.wait(lambda w: ready_on(w.latest.get(POOL, {}), size, "onDemandFallback"), s.timeout_slack + size / 50,
                f"Ready on {size} on-demand fallback instances")
        read = wait_for_market_read(st.sim, time.time(), s.market_max_age + 2 * s.observe + 30)
        t0 = time.time()
        st.set_sold_out(False)
        uid = st.uid()
        rounds = math.ceil(size / budget)
        st.wait(lambda w: any(t > t0 and ready_on(v, size, "spot") for t, _, v in w.versions),
                s.market_max_age + 2 * s.observe + rounds * (st.boot_delay + s.progress + 15) + s.timeout_slack,
                f"back on {size} spot")
        deadline = time.monotonic() + 30
        while True:  # the status says so; the cloud must too
            ever = st.ever(uid)
            alive_on_demand = [i for i in ever
                               if i["chargeType"] == ON_DEMAND and i["timeline"]["terminatedAt"] is None]
            if not alive_on_demand or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        calls = [c for c in st.sim.calls() if c["time"] > t0]
        errors = st.operator_errors()
    on_demand = [i for i in ever if i["chargeType"] == ON_DEMAND]
    ends = [i["timeline"]["terminatedAt"] for i in on_demand if i["timeline"]["terminatedAt"] is not None]
    done = max(ends) if ends and not alive_on_demand else None
    spot_buys = purchases(calls, SPOT)
    groups = group_rounds(spot_buys, min(st.boot_delay, s.progress) / 2)
    extremes = fleet_extremes(ever, t0, done if done is not None else time.time())
    notice = max(0.0, started(read) + s.market_max_age - t0) + s.latency
    bound, formula = return_bound(size, budget, notice, s, st.boot_delay)
    # (The ledger keeps the first ten InstanceIds of a call: count releases from the timelines.)
    released = sum(1 for i in on_demand if (i["timeline"]["terminatedAt"] or 0) > t0)
    return Return(
        size=size, budget_text=budget_text, budget=budget,
        noticed=spot_buys[0]["time"] - t0 if spot_buys else None, done=None if done is None else done - t0,
        rounds=round_marks(groups, ever, t0),
        spot_bought=sum(int(c["params"].get("InstanceCount", 0)) for c in spot_buys), released=released,
        extremes=extremes, notice_bound=notice, bound=bound, bound_formula=formula, errors=errors,
        leftover_on_demand=len(alive_on_demand),
    )


# -- scenario 3: the hourly spend cap at scale -----------------------------------------------------------

@dataclass
class Cap:
    pools: int
    size: int
    allows: int
    bought: int
    purchase_calls: int
    dry_runs: int
    refused: int
    all_capped: float | None
    bound: float
    bought_later: int  # instances bought during one more observe interval once all were capped
    max_per_pool: int
    errors: int
    capped_pools: int = 0
    costs: list[str] = field(default_factory=list)


def capped(st: dict[str, Any], allows: int) -> bool:
    degraded = next((c for c in st.get("conditions") or [] if c.get("type") == "Degraded"), {})
    return st.get("currentCount") == allows and degraded.get("reason") == "MaxHourlyCostReached"


def run_cap(plane: ControlPlane, kubectl: Path, workdir: Path, s: Settings, pools: int, size: int,
            allows: int) -> Cap:
    config = simulator_config(pools * size, len(ZONES))
    with stack(plane, kubectl, workdir, s, config, "cap") as st:
        prices = {p["zone"]: Decimal(str(p["spotPrice"])) for p in st.sim.control("GET", "market")["pools"]
                  if p["instanceType"] == INSTANCE_TYPE and p["zone"] in ZONES}
        caps = {z: (price * (Decimal(allows) + Decimal("0.5"))).quantize(Decimal("0.000001"))
                for z, price in prices.items()}
        bodies = []
        for i in range(pools):
            zone = ZONES[i % len(ZONES)]
            body = environment(f"pool-{i:04d}", st.namespace, size, zone, INSTANCE_TYPE, st.sim.url)
            body["spec"]["maxHourlyCost"] = str(caps[zone])
            bodies.append(body)
        st.sim.control("DELETE", "calls")
        t0 = time.time()
        for body in bodies:
            st.create(body)
        all_capped = st.watch.wait(lambda w: sum(1 for v in w.latest.values() if capped(v, allows)) >= pools,
                                   s.timeout_slack + pools)
        capped_at = time.time() if all_capped else None
        count_capped = sum(1 for v in st.watch.latest.values() if capped(v, allows))
        time.sleep(s.observe + 2)
        calls = st.sim.calls()
        errors = st.operator_errors()
        per_pool: dict[str, int] = {}
        for inst in st.sim.instances():
            owner = inst["tags"].get("spotpool.io/environment-uid", "")
            if inst["state"] in ("PENDING", "RUNNING"):
                per_pool[owner] = per_pool.get(owner, 0) + 1
    bought = purchases(calls)
    later = [c for c in bought if capped_at is not None and c["time"] > capped_at]
    return Cap(
        pools=pools, size=size, allows=allows,
        bought=sum(int(c["params"].get("InstanceCount", 0)) for c in bought), purchase_calls=len(bought),
        dry_runs=sum(1 for c in calls if c["action"] == "RunInstances" and c["params"].get("DryRun")),
        refused=sum(1 for c in calls if c["action"] == "RunInstances" and c["errorCode"]
                    and c["errorCode"] != "DryRunOperation"),
        all_capped=None if capped_at is None else capped_at - t0,
        bound=lower_bound(pools * allows, s.latency, calls=pools),
        bought_later=sum(int(c["params"].get("InstanceCount", 0)) for c in later),
        max_per_pool=max(per_pool.values(), default=0), errors=errors, capped_pools=count_capped,
        costs=[f"{z} {prices[z]} x {allows}.5 = {caps[z]}" for z in sorted(caps)],
    )


# -- report ------------------------------------------------------------------------------------------

def ratio(measured: float | None, bound: float) -> str:
    return "-" if measured is None or bound <= 0 else f"{measured / bound:.2f}"


def fallback_table(results: list[Fallback]) -> list[str]:
    rows = ["| N | after | shortage seen (bound) | first on-demand RunInstances (bound) | all on-demand launched "
            "(bound, ratio) | Ready on on-demand (bound, ratio) |",
            "|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.size} | {r.after} s | {fmt(r.seen)} ({r.bound_seen:.2f} s) | {fmt(r.first)} "
                    f"({r.bound_first:.2f} s) | {fmt(r.last)} ({r.bound_last:.2f} s, {ratio(r.last, r.bound_last)}) "
                    f"| {fmt(r.ready)} ({r.bound_ready:.2f} s, {ratio(r.ready, r.bound_ready)}) |")
    return rows


def return_table(results: list[Return]) -> list[str]:
    rows = ["| N | maxInFlight | restock noticed (bound) | all spot, 0 on-demand alive | bound | ratio "
            "| rounds | replacements running -> released (median, max) | peak alive (<= N + budget) "
            "| min running (>= N) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lags = release_lags(r.rounds)
        lag_text = f"{statistics.median(lags):.2f} s, {max(lags):.2f} s" if lags else "-"
        rows.append(f"| {r.size} | {r.budget_text} ({r.budget}) | {fmt(r.noticed)} ({r.notice_bound:.2f} s) "
                    f"| {fmt(r.done)} | {r.bound:.2f} s | {ratio(r.done, r.bound)} "
                    f"| {len(r.rounds)} ({math.ceil(r.size / r.budget)}) | {lag_text} | {r.extremes.peak_alive} "
                    f"(<= {r.size + r.budget}) | {r.extremes.min_running} (>= {r.size}) |")
    return rows


def release_lags(rounds: list[Round]) -> list[float]:
    """Per round, from its last replacement running to the release of the fallback instances it
    replaces: how long the operator took to see them run."""
    return [r.released - r.running for r in rounds if r.released is not None and math.isfinite(r.running)]


def cap_table(results: list[Cap]) -> list[str]:
    rows = ["| pools x size | cap allows | instances bought (exactly) | purchase calls (+ DryRun) | all capped "
            "(bound, ratio) | bought in the next interval |",
            "|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.pools} x {r.size} | {r.allows} each | {r.bought} ({r.pools * r.allows}) "
                    f"| {r.purchase_calls} (+ {r.dry_runs}) | {fmt(r.all_capped)} ({r.bound:.2f} s, "
                    f"{ratio(r.all_capped, r.bound)}) | {r.bought_later} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="fallback,return,cap", help="any of fallback, return, cap")
    parser.add_argument("--sizes", default="100,1000", help="comma-separated pool sizes N (fallback and return)")
    parser.add_argument("--after", type=int, default=60, help="onDemand.fallback.after, seconds (fallback)")
    parser.add_argument("--budgets", default="10%,100%",
                        help="comma-separated returnToSpot.maxInFlight values, counts or percentages (return)")
    parser.add_argument("--cap-pools", type=int, default=100, help="pools (cap)")
    parser.add_argument("--cap-size", type=int, default=20, help="expectedCount of each pool (cap)")
    parser.add_argument("--cap-allows", type=int, default=10, help="instances each pool's maxHourlyCost allows (cap)")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="latency injected on every action")
    parser.add_argument("--observe-interval", type=float, default=15.0, help="operator --observe-interval")
    parser.add_argument("--progress-interval", type=float, default=2.0, help="operator --progress-interval")
    parser.add_argument("--market-max-age", type=float, default=30.0, help="operator --market-max-age")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run's simulator and operator logs under this directory (default: a "
                             "temporary one, removed), with each simulator's ledger and instances as JSON")
    parser.add_argument("--operator-log-level", default="info", help="operator --log-level (debug: plan notes)")
    args = parser.parse_args()
    scenarios = {x.strip() for x in args.scenarios.split(",") if x.strip()}
    unknown = scenarios - {"fallback", "return", "cap"}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    budgets = [x.strip() for x in args.budgets.split(",") if x.strip()]
    s = Settings(latency=args.latency_ms / 1000, observe=args.observe_interval, progress=args.progress_interval,
                 market_max_age=args.market_max_age, after=args.after, keep=args.keep is not None,
                 log_level=args.operator_log_level)

    bin_dir = ensure_binaries()
    kubectl = bin_dir / "kubectl"
    fallbacks: list[Fallback] = []
    returns: list[Return] = []
    caps: list[Cap] = []
    load = Path("/proc/loadavg").read_text().split()[:3]
    boot = SimulatorConfig.default().lifecycle.boot_delay_seconds
    print(f"machine: {len(__import__('os').sched_getaffinity(0))} cores, load average {' '.join(load)} at start; "
          f"simulator boot delay {boot:g} s, {args.latency_ms:.0f} ms on every action; operator observe "
          f"{s.observe:g} s, progress {s.progress:g} s, market max age {s.market_max_age:g} s", flush=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(
            prefix="spotpool-beyond-")) as tmp, ControlPlane(binaries=bin_dir, with_controller_manager=False) as plane:
        install_crd(kubectl, plane)
        for size in sizes if "fallback" in scenarios else []:
            r = run_fallback(plane, kubectl, Path(tmp) / f"fallback-{size}", s, size, budgets[0] if budgets else "25%")
            fallbacks.append(r)
            print(f"  fallback, N={size}: reclaimed {r.reclaimed} {r.since_sweep * 1000:.0f} ms after a sweep; "
                  f"shortage seen {fmt(r.seen)} (spotShortSince {fmt(r.short_since)}), first on-demand "
                  f"RunInstances {fmt(r.first)}, last {fmt(r.last)}, Ready on on-demand {fmt(r.ready)}", flush=True)
        for size in sizes if "return" in scenarios else []:
            for budget in budgets:
                r2 = run_return(plane, kubectl, Path(tmp) / f"return-{size}-{budget.rstrip('%')}", s, size, budget)
                returns.append(r2)
                print(f"  return, N={size}, maxInFlight {budget} ({r2.budget}): noticed {fmt(r2.noticed)}, all spot "
                      f"{fmt(r2.done)} (bound {r2.bound:.2f} s), {len(r2.rounds)} rounds, peak alive "
                      f"{r2.extremes.peak_alive}, min running {r2.extremes.min_running}", flush=True)
        if "cap" in scenarios:
            r3 = run_cap(plane, kubectl, Path(tmp) / "cap", s, args.cap_pools, args.cap_size, args.cap_allows)
            caps.append(r3)
            print(f"  cap, {r3.pools} x {r3.size} allowing {r3.allows}: bought {r3.bought}, all capped "
                  f"{fmt(r3.all_capped)}", flush=True)

    print()
    print(f"Beyond spot, {args.latency_ms:.0f} ms injected latency on every action (RTT), documented rate limits "
          f"(RunInstances and TerminateInstances 10/s, 100 per call), simulator boot delay {boot:g} s, operator "
          f"observe interval {s.observe:g} s, progress interval {s.progress:g} s, market max age "
          f"{s.market_max_age:g} s; load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    verdicts: list[str] = []
    money_ok = True
    if fallbacks:
        print("\nFallback: spot sold out and every instance reclaimed just after a sweep; seconds from the reclaim")
        print("\n".join(fallback_table(fallbacks)))
        for r in fallbacks:
            print(f"  N={r.size}: bounds: seen = {s.observe:g} s interval after the sweep's end - "
                  f"{r.since_sweep:.3f} s + {s.latency:.2f} RTT; "
                  f"first = floor(seen) + after {r.after} s + {s.latency:.2f} RTT; "
                  f"all = first + (ceil({r.size}/100) - 1)/10; Ready = all + boot {boot:g} s. "
                  f"On-demand bought {r.bought_on_demand}, spot RunInstances refused {r.spot_refusals}"
                  + (f"; the operator logged {r.errors} errors" if r.errors else ""))
            ok = r.early == 0 and r.bought_on_demand == r.size
            money_ok = money_ok and ok
            verdicts.append(verdict(ok, f"fallback N={r.size}: {r.bought_on_demand} on-demand bought (expected "
                                        f"{r.size}), {r.early} RunInstances before spotShortSince + after"))
            verdicts.append(f"INFO: fallback N={r.size}: all on-demand launched {fmt(r.last)}, ratio "
                            f"{ratio(r.last, r.bound_last)} against {r.bound_last:.2f} s; Ready {fmt(r.ready)}")
    if returns:
        print("\nReturn to spot: restocked just after a market read; seconds from the restock")
        print("\n".join(return_table(returns)))
        for r2 in returns:
            print(f"  N={r2.size}, maxInFlight {r2.budget_text}: bound {r2.bound_formula}; spot bought "
                  f"{r2.spot_bought}, on-demand released {r2.released}; peak alive at +{r2.extremes.peak_at:.1f} s, "
                  f"min running at +{r2.extremes.min_at:.1f} s"
                  + (f"; the operator logged {r2.errors} errors" if r2.errors else ""))
            print("    rounds (bought / all running / released, seconds from the restock): " + "; ".join(
                f"{m.bought:.1f} / {m.running:.1f} / {fmt(m.released, '')}" for m in r2.rounds))
            ok = (r2.extremes.peak_alive <= r2.size + r2.budget and r2.extremes.min_running >= r2.size
                  and r2.done is not None and r2.spot_bought == r2.size)
            money_ok = money_ok and ok
            verdicts.append(verdict(ok, f"return N={r2.size} maxInFlight {r2.budget_text}: peak alive "
                                        f"{r2.extremes.peak_alive} <= {r2.size + r2.budget}, min running "
                                        f"{r2.extremes.min_running} >= {r2.size}, spot bought {r2.spot_bought} "
                                        f"(expected {r2.size}), on-demand left {r2.leftover_on_demand}"))
            verdicts.append(f"INFO: return N={r2.size} maxInFlight {r2.budget_text}: all spot {fmt(r2.done)}, ratio "
                            f"{ratio(r2.done, r2.bound)} against {r2.bound:.2f} s")
    if caps:
        print("\nSpend cap: every pool's maxHourlyCost allows part of its expectedCount; seconds from the first create")
        print("\n".join(cap_table(caps)))
        for r3 in caps:
            print(f"  caps: {'; '.join(r3.costs)}; RunInstances refused {r3.refused}; pools capped "
                  f"{r3.capped_pools}/{r3.pools}; most alive in one pool {r3.max_per_pool}"
                  + (f"; the operator logged {r3.errors} errors" if r3.errors else ""))
            ok = r3.bought == r3.pools * r3.allows and r3.max_per_pool <= r3.allows and r3.bought_later == 0
            money_ok = money_ok and ok
            verdicts.append(verdict(ok, f"cap {r3.pools} x {r3.size}: bought {r3.bought} (exactly "
                                        f"{r3.pools * r3.allows}), at most {r3.max_per_pool} in a pool, "
                                        f"{r3.bought_later} after all were capped"))
    print("\n".join(verdicts))
    return 0 if money_ok else 1


if __name__ == "__main__":
    sys.exit(main())
