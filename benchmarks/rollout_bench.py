"""Benchmark of a day-2 rollout: one running pool's image changed, every instance replaced
surge-first under a disruption budget, against the lower bound of its rounds.

Same machinery as `scale_bench.py` and `beyond_spot_bench.py` (real control plane, `spotpool
simulator` and `spotpool operator` as processes; the run's stack and readings are
`beyond_spot_bench`'s). The simulator keeps its documented rate limits (RunInstances 10/s,
TerminateInstances 10/s, DescribeInstances 40/s, at most 100 instances per RunInstances) and its
default lifecycle (boot delay 2 s, read from its configuration), answers every action
`--latency-ms` late (default 100 ms: the round trip, RTT below), and has stock and vCPU quota for
twice the pool (a rollout holds up to N + budget). Its default market knows every well-formed
image id, so the new image passes the launch check's DryRun. The operator runs with its default
intervals unless a flag says otherwise (`--observe-interval` 15 s, `--progress-interval` 2 s). The
pool has one zone (ap-guangzhou-3) and one type (S5.MEDIUM4).

What it does, per `--sizes` N and `--budgets` B (`spec.disruption.budgets: [{instances: B}]`,
default "10%"): the pool is created, Ready on N running instances and settled; then its
`spec.imageId` is changed with a merge patch: the clock starts when the patch is sent.

What it measures, in seconds from the patch:

- *first purchase*: the first RunInstances that bought (DryRun launch checks excluded);
- *cloud done*: the last old instance's TerminateInstances answered, with every old instance
  released and N alive on the new image (the simulator's instance timelines, `GET
  /_sim/instances?ever=true`: alive from launch to TerminateInstances);
- *status done*: the first version of the object, as a watch delivered it, with
  `status.updatedCount` = `currentCount` = `runningCount` = N;
- per round (the purchases of one pass): when its replacements were bought, when the last of them
  ran, and when the next release of old instances came (the lag is how long the operator took to
  see them run);
- peak alive and minimum running from the patch until cloud done, from the timelines (changes at
  one instant applied together): the money bounds are peak alive <= N + budget and minimum running
  >= N, and exactly N replacements bought, every one with the new image; a violation prints FAIL
  and the script exits 1;
- RunInstances (purchases, their instances, DryRun checks) and TerminateInstances (calls, and
  instances released from the timelines: the ledger keeps only the first ten InstanceIds of a call).

Lower bound, with budget B and r = ceil(N/B) rounds of k_i = min(B, N - i B) instances:

    notice = RTT                                               (the changed spec's DryRun check)
    round  = run(k_i) + max(boot delay, progress interval) + terminate(k_i)
    run(k) = terminate(k) = (ceil(k/100) - 1) / 10 + RTT       (10 calls/s, 100 per call)
    bound  = notice + sum of the r rounds

A round's replacements must run before the instances they replace go (surge-first), and the next
round's purchase must wait for that release (alive never above N + B): nothing of one round
overlaps the next. The pass that sees the replacements running comes a progress interval after the
buying pass, and sees them only once they run: both waits overlap, hence the max (with the
defaults, 2 s either way). The observation that sees them running is left out.

    .venv/bin/python benchmarks/rollout_bench.py                          # N=1000, budget 10%
    .venv/bin/python benchmarks/rollout_bench.py --sizes 200,1000 --budgets 10%,25
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (  # first: it puts the repository on sys.path
    environment,
    install_crd,
    ready,
)
from beyond_spot_bench import (
    INSTANCE_TYPE,
    POOL,
    ZONE,
    Extremes,
    Settings,
    calls_time,
    fleet_extremes,
    group_rounds,
    purchases,
    ratio,
    release_lags,
    simulator_config,
    stack,
)
from scale_bench import fmt, verdict

from spotpool.api.names import GROUP, PLURAL, VERSION
from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries
from spotpool.simulator import SimulatorConfig
from tests.support.specs import IMAGE_ID

OLD_IMAGE = IMAGE_ID  # benchlib.environment's
NEW_IMAGE = "img-0patched"


def budget_of(text: str, size: int) -> int:
    """`spec.disruption.budgets[].instances`: a count, or a percentage of expectedCount rounded up."""
    if text.endswith("%"):
        return -(-size * int(text[:-1]) // 100)
    return int(text)


def rollout_bound(size: int, budget: int, s: Settings, boot: float) -> tuple[float, str]:
    notice = s.latency
    rounds: list[int] = []
    left = size
    while left > 0:
        rounds.append(min(budget, left))
        left -= rounds[-1]
    per = {k: calls_time(k, s.latency) + max(boot, s.progress) + calls_time(k, s.latency) for k in set(rounds)}
    total = notice + sum(per[k] for k in rounds)
    text = (f"{notice:.2f} s DryRun + " + " + ".join(
        f"{rounds.count(k)} x ({calls_time(k, s.latency):.2f} run + max(boot {boot:g}, progress {s.progress:g}) "
        f"+ {calls_time(k, s.latency):.2f} terminate = {per[k]:.2f})" for k in sorted(per, reverse=True))
        + f" = {total:.2f} s")
    return total, text


def up_to_date(st: dict[str, Any], size: int, generation: int = 0) -> bool:
    """Status of `generation` (or later) says N alive, running and matching the spec."""
    return (int(st.get("observedGeneration") or 0) >= generation and st.get("updatedCount") == size
            and st.get("currentCount") == size and st.get("runningCount") == size and ready({"status": st}))


@dataclass(frozen=True)
class Round:
    bought: float  # the round's last RunInstances answered, seconds from the patch
    count: int
    running: float  # its last replacement running
    released: float | None  # the first release of an old instance after that


@dataclass
class Rollout:
    size: int
    budget_text: str
    budget: int
    first_purchase: float | None
    cloud_done: float | None  # last old instance's TerminateInstances answered, all replaced
    status_done: float | None  # status.updatedCount == currentCount == runningCount == N
    rounds: list[Round]
    bought: int  # instances bought after the patch
    purchase_calls: int
    dry_runs: int
    images: set[str]  # ImageId of the purchases after the patch
    terminate_calls: int
    released_old: int
    released_other: int  # instances released after the patch that were not old ones
    old_left: int
    extremes: Extremes
    bound: float
    bound_formula: str
    errors: int
    refused: dict[str, int]


def run_rollout(plane: ControlPlane, kubectl: Path, workdir: Path, s: Settings, size: int,
                budget_text: str) -> Rollout:
    budget = budget_of(budget_text, size)
    with stack(plane, kubectl, workdir, s, simulator_config(size), "rollout") as st:
        body = environment(POOL, st.namespace, size, ZONE, INSTANCE_TYPE, st.sim.url)
        assert body["spec"]["imageId"] == OLD_IMAGE
        body["spec"]["disruption"] = {"budgets": [{"instances": int(budget_text) if budget_text.isdigit()
                                                   else budget_text}]}
        st.create(body)
        st.wait(lambda w: up_to_date(w.latest.get(POOL, {}), size), s.timeout_slack + size / 50,
                f"Ready on {size} running")
        uid = st.uid()
        old = {i["instanceId"] for i in st.ever(uid) if i["timeline"]["terminatedAt"] is None}
        rounds = math.ceil(size / budget)
        t0 = time.time()
        patched = st.custom.patch_namespaced_custom_object(GROUP, VERSION, st.namespace, PLURAL, POOL,
                                                           {"spec": {"imageId": NEW_IMAGE}})
        generation = int(patched["metadata"]["generation"])
        st.wait(lambda w: any(t > t0 and up_to_date(v, size, generation) for t, _, v in w.versions),
                2 * s.observe + rounds * (st.boot_delay + s.progress + 15) + s.timeout_slack,
                f"{size} up to date")
        deadline = time.monotonic() + 30
        while True:  # the status says so; the cloud must too
            ever = st.ever(uid)
            old_alive = [i for i in ever if i["instanceId"] in old and i["timeline"]["terminatedAt"] is None]
            if not old_alive or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        calls = [c for c in st.sim.calls() if c["time"] > t0]
        errors = st.operator_errors()
    versions = [(t, v) for t, _, v in st.watch.versions if t > t0]
    status_done = next((t - t0 for t, v in versions if up_to_date(v, size, generation)), None)
    ends = [i["timeline"]["terminatedAt"] for i in ever if i["instanceId"] in old]
    done = max(ends) if ends and None not in ends else None
    buys = purchases(calls)
    bought_ids = [i for i in ever if i["instanceId"] not in old]
    extremes = fleet_extremes(ever, t0, done if done is not None else time.time())
    bound, formula = rollout_bound(size, budget, s, st.boot_delay)
    old_releases = sorted(i["timeline"]["terminatedAt"] for i in ever
                          if i["instanceId"] in old and i["timeline"]["terminatedAt"] is not None)
    marks = []
    for group in group_rounds(buys, min(st.boot_delay, s.progress) / 2):
        ids = {c["requestId"] for c in group}
        booted = [i["timeline"]["runningAt"] for i in bought_ids if i["launchRequestId"] in ids]
        running = math.inf if not booted or None in booted else max(booted)
        released = next((r for r in old_releases if r >= running), None)
        marks.append(Round(max(c["time"] for c in group) - t0, sum(int(c["params"]["InstanceCount"]) for c in group),
                           running - t0, None if released is None else released - t0))
    refused: dict[str, int] = {}
    for c in calls:
        if c["errorCode"] and c["errorCode"] != "DryRunOperation":
            key = f"{c['action']} {c['errorCode']}"
            refused[key] = refused.get(key, 0) + 1
    return Rollout(
        size=size, budget_text=budget_text, budget=budget,
        first_purchase=buys[0]["time"] - t0 if buys else None,
        cloud_done=None if done is None else done - t0, status_done=status_done, rounds=marks,
        bought=sum(int(c["params"].get("InstanceCount", 0)) for c in buys), purchase_calls=len(buys),
        dry_runs=sum(1 for c in calls if c["action"] == "RunInstances" and c["params"].get("DryRun")),
        images={str(c["params"].get("ImageId")) for c in buys},
        terminate_calls=sum(1 for c in calls if c["action"] == "TerminateInstances" and c["errorCode"] is None),
        released_old=sum(1 for r in old_releases if r > t0),
        released_other=sum(1 for i in bought_ids if (i["timeline"]["terminatedAt"] or 0) > t0),
        old_left=len(old_alive), extremes=extremes, bound=bound, bound_formula=formula, errors=errors,
        refused=refused,
    )


# -- report ------------------------------------------------------------------------------------------

def table(results: list[Rollout]) -> list[str]:
    rows = ["| N | budget | first purchase | all replaced (cloud) | bound | ratio | updatedCount = N (status) "
            "| rounds | running -> released (median, max) | peak alive (<= N + budget) | min running (>= N) "
            "| RunInstances (+ DryRun) | TerminateInstances |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lags = release_lags(r.rounds)
        lag_text = f"{statistics.median(lags):.2f} s, {max(lags):.2f} s" if lags else "-"
        rows.append(f"| {r.size} | {r.budget_text} ({r.budget}) | {fmt(r.first_purchase)} | {fmt(r.cloud_done)} "
                    f"| {r.bound:.2f} s | {ratio(r.cloud_done, r.bound)} | {fmt(r.status_done)} "
                    f"| {len(r.rounds)} ({math.ceil(r.size / r.budget)}) | {lag_text} "
                    f"| {r.extremes.peak_alive} (<= {r.size + r.budget}) | {r.extremes.min_running} (>= {r.size}) "
                    f"| {r.purchase_calls} (+ {r.dry_runs}) | {r.terminate_calls} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000", help="comma-separated pool sizes N")
    parser.add_argument("--budgets", default="10%",
                        help="comma-separated spec.disruption.budgets[0].instances values, counts or percentages")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="latency injected on every action")
    parser.add_argument("--observe-interval", type=float, default=15.0, help="operator --observe-interval")
    parser.add_argument("--progress-interval", type=float, default=2.0, help="operator --progress-interval")
    parser.add_argument("--market-max-age", type=float, default=30.0, help="operator --market-max-age")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run's simulator and operator logs under this directory (default: a "
                             "temporary one, removed), with each simulator's ledger and instances as JSON")
    parser.add_argument("--operator-log-level", default="info", help="operator --log-level (debug: plan notes)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    budgets = [x.strip() for x in args.budgets.split(",") if x.strip()]
    s = Settings(latency=args.latency_ms / 1000, observe=args.observe_interval, progress=args.progress_interval,
                 market_max_age=args.market_max_age, after=0, keep=args.keep is not None,
                 log_level=args.operator_log_level)

    bin_dir = ensure_binaries()
    kubectl = bin_dir / "kubectl"
    results: list[Rollout] = []
    load = Path("/proc/loadavg").read_text().split()[:3]
    boot = SimulatorConfig.default().lifecycle.boot_delay_seconds
    print(f"machine: {len(__import__('os').sched_getaffinity(0))} cores, load average {' '.join(load)} at start; "
          f"simulator boot delay {boot:g} s, {args.latency_ms:.0f} ms on every action; operator observe "
          f"{s.observe:g} s, progress {s.progress:g} s", flush=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(
            prefix="spotpool-rollout-")) as tmp, ControlPlane(binaries=bin_dir, with_controller_manager=False) as plane:
        install_crd(kubectl, plane)
        for size in sizes:
            for budget in budgets:
                started = time.monotonic()
                r = run_rollout(plane, kubectl, Path(tmp) / f"rollout-{size}-{budget.rstrip('%')}", s, size, budget)
                results.append(r)
                print(f"  rollout, N={size}, budget {budget} ({r.budget}): first purchase {fmt(r.first_purchase)}, "
                      f"all replaced {fmt(r.cloud_done)} (bound {r.bound:.2f} s), updatedCount {size} "
                      f"{fmt(r.status_done)}, {len(r.rounds)} rounds, peak alive {r.extremes.peak_alive}, min "
                      f"running {r.extremes.min_running} (run's wall time {time.monotonic() - started:.0f} s)",
                      flush=True)

    print()
    print(f"Rollout (spec.imageId patched), {args.latency_ms:.0f} ms injected latency on every action (RTT), "
          f"documented rate limits (RunInstances and TerminateInstances 10/s, 100 per call), simulator boot delay "
          f"{boot:g} s, operator observe interval {s.observe:g} s, progress interval {s.progress:g} s; load average "
          f"at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; seconds from the patch")
    print("\n".join(table(results)))
    verdicts: list[str] = []
    money_ok = True
    for r in results:
        print(f"  N={r.size}, budget {r.budget_text}: bound {r.bound_formula}; bought {r.bought} in "
              f"{r.purchase_calls} calls (images {sorted(r.images)}), released {r.released_old} old and "
              f"{r.released_other} new in {r.terminate_calls} TerminateInstances; peak alive at "
              f"+{r.extremes.peak_at:.1f} s, min running at +{r.extremes.min_at:.1f} s"
              + (f"; refused: {r.refused}" if r.refused else "")
              + (f"; the operator logged {r.errors} errors" if r.errors else ""))
        print("    rounds (instances: bought / all running / next release, seconds from the patch): " + "; ".join(
            f"{m.count}: {m.bought:.1f} / {m.running:.1f} / {fmt(m.released, '')}" for m in r.rounds))
        ok = (r.extremes.peak_alive <= r.size + r.budget and r.extremes.min_running >= r.size
              and r.cloud_done is not None and r.bought == r.size and r.images == {NEW_IMAGE}
              and r.released_old == r.size and r.released_other == 0 and r.old_left == 0)
        money_ok = money_ok and ok
        verdicts.append(verdict(ok, f"rollout N={r.size} budget {r.budget_text}: peak alive {r.extremes.peak_alive} "
                                    f"<= {r.size + r.budget}, min running {r.extremes.min_running} >= {r.size}, "
                                    f"bought {r.bought} (expected {r.size}, images {sorted(r.images)}), released "
                                    f"{r.released_old} old (expected {r.size}) and {r.released_other} new "
                                    f"(expected 0), old left {r.old_left}"))
        verdicts.append(f"INFO: rollout N={r.size} budget {r.budget_text}: all replaced {fmt(r.cloud_done)}, ratio "
                        f"{ratio(r.cloud_done, r.bound)} against {r.bound:.2f} s; updatedCount {r.size} in status "
                        f"{fmt(r.status_done)}")
    print("\n".join(verdicts))
    return 0 if money_ok else 1


if __name__ == "__main__":
    sys.exit(main())
