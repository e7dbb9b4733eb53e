"""Benchmark of the operator: one pool from 0 to 1,000 instances against a slow, rate-limited cloud.

Everything is the real thing, as users run it: a local control plane (etcd + kube-apiserver from
.cache/bin), the SpotComputeEnvironment CRD, `spotpool simulator` and `spotpool operator` as
processes. The simulator keeps its documented rate limits (RunInstances 10/s, DescribeInstances
40/s, ...) and answers every action 150 ms late (`POST /_sim/faults {"*": {"latencyMs": 150}}`);
its stock is raised so one zone x type can hold the whole pool. Then one SpotComputeEnvironment
with expectedCount 1000, one zone and one instance type, is created and the clock runs from the
moment the create request is sent:

- launches returned: until the last RunInstances has returned, from the simulator's call ledger
  (a ledger entry's `time` is the simulator's wall clock when it finished answering, and
  `durationMs` is how long it spent on the call, injected latency included, so a call started at
  `time - durationMs/1000`). Same machine, same clock as this script.
- currentCount 1000 and Ready: when a watch on the object first showed them.

Lower bound on "launches returned": ceil(1000/100) = 10 RunInstances calls under 10 calls/s can
start no closer than 0.1 s apart, so the last one starts at least (10 - 1)/10 = 0.9 s after the
first, and returns one round trip (0.150 s) later:

    lower bound = (ceil(N/100) - 1) / 10 + 0.150 s = 1.05 s for N = 1000

The ratio measured/lower bound is printed per run and for the median run; target <= 1.3. Also
printed: calls per action from the ledger (creation to Ready), and a timeline of where the time
before the last launch went (cloud calls from the ledger, status writes from the watch).

Each run gets its own namespace, simulator and operator (so no rate-limit bucket, cache or
connection carries over); the control plane is shared. The operator runs with its default
intervals (observe 15 s, progress 2 s) and the simulator with its default 2 s boot delay, which is
most of the time from the last launch to Ready.

--profile adds the operator's own view to the timeline without changing its code: a
sitecustomize.py on the operator's PYTHONPATH marks kopf's watch events and handler calls, the
reconcile, the Secret read, the CVM client's construction, status patches and client-side CVM
calls. --until current|ready extends the timeline past the last launch.

    .venv/bin/python benchmarks/operator_bench.py [--runs 3] [--count 1000] [--latency-ms 150]
        [--profile] [--until launches|current|ready] [--timeline]
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
from benchlib import (  # first: it puts the repository on sys.path for tests.support
    PER_CALL,
    RUN_RATE,
    create_namespace,
    environment,
    install_crd,
    latency_faults,
    lower_bound,
    ready,
    status,
)

from spotpool.api.names import GROUP, PLURAL, VERSION
from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries
from spotpool.simulator import SimulatorConfig
from tests.support import specs
from tests.support.processes import OperatorProcess, SimulatorProcess

ZONE, INSTANCE_TYPE = "ap-guangzhou-3", "S5.MEDIUM4"
TARGET = 1.3


PROFILE_MARK = "SPOTPOOL_PROFILE"
# With --profile, this goes on the operator's PYTHONPATH as sitecustomize.py: it marks (wall clock,
# to stderr, i.e. the operator's log) the start and end of kopf's event processing and handler
# calls and of the reconcile's steps, without touching the operator's code.
PROFILE_SITECUSTOMIZE = r"""
import functools, sys, time

def _mark(text):
    sys.stderr.write("SPOTPOOL_PROFILE %.6f %s\n" % (time.time(), text))
    sys.stderr.flush()

def _wrap(owner, attr, label):
    original = getattr(owner, attr)
    @functools.wraps(original)
    async def wrapper(*args, **kwargs):
        name = label(args, kwargs)
        _mark(name + " start")
        try:
            return await original(*args, **kwargs)
        finally:
            _mark(name + " end")
    setattr(owner, attr, wrapper)

def _wrap_sync(owner, attr, label):
    original = getattr(owner, attr)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            _mark("%s took %.1f ms" % (label, (time.time() - started) * 1000))
    setattr(owner, attr, wrapper)

def _patch_label(args, kwargs):
    patch = args[3] if len(args) > 3 else {}
    return "status patch (%s)" % (", ".join(sorted(patch)) if len(patch) <= 3 else "full status")

def _wrap_stream(owner, attr):
    original = getattr(owner, attr)
    @functools.wraps(original)
    async def wrapper(*args, **kwargs):
        async for item in original(*args, **kwargs):
            if isinstance(item, dict):
                _mark("kopf watch stream yields %s %s" % (item.get("type"),
                      (item.get("object") or {}).get("kind")))
            yield item
    setattr(owner, attr, wrapper)

_gc_started = [0.0]

def _gc_mark(phase, info):
    if phase == "start":
        _gc_started[0] = time.time()
    elif time.time() - _gc_started[0] > 0.002:
        _mark("gc of generation %d took %.1f ms" % (info["generation"], (time.time() - _gc_started[0]) * 1000))

try:
    import gc
    gc.callbacks.append(_gc_mark)
    from kopf._cogs.clients import watching
    from kopf._core.actions import invocation
    from kopf._core.reactor import processing
    _wrap_stream(watching, "infinite_watch")
    from spotpool.cloud import transport
    from spotpool.controller import cloudaccess, kube, reconciler
    _wrap(processing, "process_resource_event", lambda a, k: "kopf processes a watch event")
    _wrap(invocation, "invoke",
          lambda a, k: "kopf handler " + getattr(a[0] if a else k.get("fn"), "__name__", "?"))
    _wrap(reconciler.Reconciler, "reconcile", lambda a, k: "reconcile")
    from spotpool.controller import context, purchasing, reporting, statusstore
    import spotpool.planner as planner
    _wrap(context, "load_credentials", lambda a, k: "load_credentials (Secret read)")
    _wrap(context, "resolve", lambda a, k: "resolve")
    _wrap(kube.ClusterKubeApi, "patch_status", _patch_label)
    _wrap(purchasing.Purchasing, "execute", lambda a, k: "purchases")
    _wrap(reporting.Reporting, "write", lambda a, k: "status report write")
    _wrap_sync(reconciler, "build_status", "build_status")
    _wrap_sync(reconciler, "plan", "plan")
    _wrap_sync(reporting.Reporting, "observe", "Reporting.observe (metrics)")
    _wrap_sync(reporting.Reporting, "notice_losses", "Reporting.notice_losses")
    _wrap(transport.Transport, "_attempt", lambda a, k: "CVM %s (client side)" % a[1])
    _wrap_sync(cloudaccess.CloudAccess, "client", "CloudAccess.client (a new CvmClient on first use)")
except Exception as exc:  # profiling must never stop the operator
    sys.stderr.write("SPOTPOOL_PROFILE 0 instrumentation failed: %r\n" % (exc,))
"""


@dataclass
class Watcher:
    """Every version of one object, with the local wall-clock time it arrived, from a watch."""

    custom: kubernetes.client.CustomObjectsApi
    namespace: str
    name: str
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _watch: kubernetes.watch.Watch | None = None

    def start(self) -> None:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        version = listing["metadata"]["resourceVersion"]
        self._watch = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()

    def _run(self, version: str) -> None:
        assert self._watch is not None
        try:
            for event in self._watch.stream(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                field_selector=f"metadata.name={self.name}", resource_version=version,
                timeout_seconds=600,
            ):
                self.events.append((time.time(), event["object"]))
                if ready(event["object"]):
                    self.done.set()
                    return
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()

    def first(self, predicate: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        return next(((t, obj) for t, obj in self.events if predicate(obj)), None)


def simulator_config(count: int) -> SimulatorConfig:
    # Stock for the whole pool in the one zone x type (the default is 500) and vCPU quota for it
    # (the default, 20,000 per zone, holds 10,000 2-vCPU instances); rate limits stay the
    # documented defaults.
    return specs.simulator_config(
        seed=1,
        market={"default_stock": max(2 * count, 500), "spot_quota_vcpus": max(20_000, 4 * count)},
        api={"ledger_size": max(100_000, 10 * count)},
    )


@dataclass
class RunResult:
    create_sent: float
    create_returned: float
    launches_returned: float
    current_reached: float | None
    ready_reached: float | None
    calls: Counter[str]
    errors: Counter[tuple[str, str]]
    timeline: list[str]
    status_write: float  # the API server's time for one write of the final status (`write_floor`)


STATUS_WRITES_TIMED = 5


def write_floor(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str) -> float:
    """Seconds the API server takes to write the pool's final status once (median of a few), timed
    with the operator stopped: the status write that shows `currentCount` can be no faster. The
    time grows with the object: about 60-90 ms for 1,000 instances on this machine, whatever the
    patch holds (decoding, validating and storing the whole object), 4 ms for an empty one."""
    final = custom.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name)
    times = []
    for n in range(STATUS_WRITES_TIMED):
        status = {**final["status"], "lastReconcileTime": f"2026-01-01T00:00:{n:02d}Z"}
        started = time.perf_counter()
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def current_bound(count: int, latency: float, status_write: float) -> float:
    """The least time until a watch can show `currentCount` = `count` for a new pool: the launch
    check's DryRun takes the first RunInstances slot (ceil(count/100) + 1 calls at 10/s), the last
    purchase returns a round trip after it starts, then one write of the status that lists them.
    The account look-up, the sweep and the market read fit in the DryRun's round trip."""
    return lower_bound(count, latency, math.ceil(count / PER_CALL) + 1) + status_write


def one_run(
    plane: ControlPlane, kubectl: Path, workdir: Path, count: int, latency_ms: float,
    observe_interval: float, progress_interval: float, timeout: float, profile: bool, until: str,
) -> RunResult:
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    create_namespace(kubectl, plane, core, namespace)

    sim = SimulatorProcess(workdir / "simulator", simulator_config(count)).start()
    env: dict[str, str] = {}
    if profile:
        (workdir / "profile").mkdir(parents=True)
        (workdir / "profile" / "sitecustomize.py").write_text(PROFILE_SITECUSTOMIZE)
        env["PYTHONPATH"] = str(workdir / "profile")
    operator = OperatorProcess(
        workdir=workdir / "operator", kubeconfig=plane.kubeconfig, namespace=namespace,
        cluster_id=f"bench-{uuid.uuid4().hex[:8]}", observe_interval=observe_interval,
        progress_interval=progress_interval,
        extra_args=("--log-level=info",),  # the wrapper's debug logging costs the operator CPU
        env=env,
    )
    watcher = Watcher(custom, namespace, "bench")
    try:
        sim.control("POST", "faults", latency_faults(latency_ms))
        operator.start()
        time.sleep(1.0)  # let kopf's watch of the namespace settle after /readyz
        sim.control("DELETE", "calls")
        watcher.start()
        body = environment("bench", namespace, count, ZONE, INSTANCE_TYPE, sim.url)
        create_sent = time.time()
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        create_returned = time.time()
        if not watcher.done.wait(timeout):
            raise RuntimeError(f"not Ready after {timeout:.0f} s; operator log tail:\n{operator.logs()[-3000:]}")
        if watcher.error is not None:
            raise RuntimeError(f"watch failed: {watcher.error!r}")
        calls = sim.calls()
        marks = profile_marks(operator.logs(), create_sent) if profile else []
        operator.stop()  # nothing else writes the object while its status write is timed
        status_write = write_floor(custom, namespace, "bench")
    finally:
        watcher.stop()
        operator.stop()
        sim.stop()
        # Our finalizer would pin the object (and the namespace) now that the operator is gone.
        subprocess.run([str(kubectl), f"--kubeconfig={plane.kubeconfig}", "delete", "namespace", namespace,
                        "--wait=false"], capture_output=True)
        api.close()

    launches = [c for c in calls if c["action"] == "RunInstances" and c["errorCode"] is None]
    bought = sum(int(c["params"].get("InstanceCount", 0)) for c in launches)
    if bought < count:
        raise RuntimeError(f"the ledger shows {bought} instances bought, expected {count}")
    launches_returned = max(c["time"] for c in launches)
    current = watcher.first(lambda o: status(o).get("currentCount") == count)
    ready_at = watcher.first(ready)
    end = {"launches": launches_returned, "current": current[0] if current else launches_returned,
           "ready": ready_at[0] if ready_at else launches_returned}[until]
    return RunResult(
        create_sent=create_sent,
        create_returned=create_returned,
        launches_returned=launches_returned - create_sent,
        current_reached=None if current is None else current[0] - create_sent,
        ready_reached=None if ready_at is None else ready_at[0] - create_sent,
        calls=Counter(c["action"] for c in calls),
        errors=Counter((c["action"], c["errorCode"]) for c in calls if c["errorCode"]),
        timeline=timeline(calls, watcher.events, marks, create_sent, create_returned, end),
        status_write=status_write,
    )


def profile_marks(log: str, t0: float) -> list[tuple[float, str]]:
    """The operator's profile marks at or after `t0` (absolute time, text)."""
    marks = []
    for line in log.splitlines():
        if not line.startswith(PROFILE_MARK):
            continue
        _, at, text = line.split(" ", 2)
        if float(at) >= t0 or float(at) == 0:
            marks.append((float(at), "operator: " + text))
    return marks


def timeline(calls: list[dict[str, Any]], events: list[tuple[float, dict[str, Any]]],
             marks: list[tuple[float, str]], t0: float, created: float, until: float) -> list[str]:
    """Where the time up to the last launch went: cloud calls (start-end, from the ledger), the
    object's versions as the watch delivered them (status writes) and, with --profile, the
    operator's own marks."""
    rows: list[tuple[float, str]] = [(0.0, "create request sent"),
                                     (created - t0, "create request returned")]
    rows += [(at - t0, text) for at, text in marks if at <= until + 0.001]
    for call in calls:
        end = call["time"]
        if end > until + 0.001:
            continue
        start = end - call["durationMs"] / 1000
        extra = f" x{call['params'].get('InstanceCount')}" if call["action"] == "RunInstances" else ""
        if call["action"] == "DescribeInstances":
            extra = f" offset {call['params'].get('Offset', 0)}"
        error = f" -> {call['errorCode']}" if call["errorCode"] else ""
        rows.append((start - t0, f"{call['action']}{extra}{error}: {start - t0:6.3f} .. {end - t0:6.3f} s"))
    for at, obj in events:
        if at > until + 0.001:
            break
        st = status(obj)
        what = ("object added (no status)" if not st else
                f"status write seen: currentCount={st.get('currentCount')} "
                f"inflightLaunches={len(st.get('inflightLaunches') or [])}")
        rows.append((at - t0, what))
    rows.sort(key=lambda r: r[0])
    return [f"  {at:7.3f} s  {what}" for at, what in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="independent runs (median reported)")
    parser.add_argument("--count", type=int, default=1000, help="expectedCount of the pool")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="latency injected on every action")
    parser.add_argument("--observe-interval", type=float, default=15.0,
                        help="operator --observe-interval (default: the operator's default)")
    parser.add_argument("--progress-interval", type=float, default=2.0,
                        help="operator --progress-interval (default: the operator's default)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for Ready per run")
    parser.add_argument("--timeline", action="store_true", help="print every run's timeline (else the median run's)")
    parser.add_argument("--until", choices=["launches", "current", "ready"], default="launches",
                        help="end the timeline at the last launch (default), at currentCount reached, or at Ready")
    parser.add_argument("--profile", action="store_true",
                        help="instrument the operator (a sitecustomize on its PYTHONPATH, no code change) and "
                             "add its marks to the timeline: kopf event processing and handlers, reconcile "
                             "steps, Secret read, status patches, client-side CVM calls")
    args = parser.parse_args()

    latency = args.latency_ms / 1000
    bound = lower_bound(args.count, latency)
    bin_dir = ensure_binaries()
    kubectl = bin_dir / "kubectl"
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="spotpool-bench-") as tmp, \
            ControlPlane(binaries=bin_dir, with_controller_manager=False) as plane:
        install_crd(kubectl, plane)
        for index in range(args.runs):
            result = one_run(plane, kubectl, Path(tmp) / f"run-{index}", args.count, args.latency_ms,
                             args.observe_interval, args.progress_interval, args.timeout, args.profile, args.until)
            results.append(result)
            fmt = lambda v: "n/a" if v is None else f"{v:.3f} s"  # noqa: E731
            print(f"run {index + 1}: launches returned {result.launches_returned:.3f} s "
                  f"(ratio {result.launches_returned / bound:.2f}), currentCount {args.count} "
                  f"{fmt(result.current_reached)}, Ready {fmt(result.ready_reached)}", flush=True)
            if args.timeline:
                print("\n".join(result.timeline), flush=True)

    median = sorted(results, key=lambda r: r.launches_returned)[(len(results) - 1) // 2]
    ratio = median.launches_returned / bound
    print()
    print(f"0 -> {args.count} instances, one pool ({ZONE} / {INSTANCE_TYPE}), {args.latency_ms:.0f} ms injected "
          f"latency on every action, documented rate limits; {len(results)} run(s), median run:")
    print(f"  time until all launches returned: {median.launches_returned:.3f} s "
          f"(from the create request; the create call itself took "
          f"{(median.create_returned - median.create_sent) * 1000:.0f} ms)")
    for label, values in (("time until currentCount " + str(args.count), [r.current_reached for r in results]),
                          ("time until Ready", [r.ready_reached for r in results])):
        shown = [v for v in values if v is not None]
        print(f"  {label}: median {statistics.median(shown):.3f} s" if shown else f"  {label}: not seen")
    print(f"  lower bound: (ceil({args.count}/{PER_CALL}) - 1) / {RUN_RATE:.0f} calls/s "
          f"+ {latency:.3f} s round trip = {bound:.3f} s")
    print(f"  ratio: {ratio:.2f} (target <= {TARGET}); every run: "
          + ", ".join(f"{r.launches_returned / bound:.2f}" for r in results))
    if median.current_reached is not None:
        current = current_bound(args.count, latency, median.status_write)
        print(f"  currentCount bound: (ceil({args.count}/{PER_CALL}) + 1 - 1) / {RUN_RATE:.0f} calls/s (the "
              f"launch check's DryRun takes a slot) + {latency:.3f} s + one status write "
              f"{median.status_write * 1000:.0f} ms = {current:.3f} s; ratio {median.current_reached / current:.2f}")
    print("  calls per action, creation to Ready (median run): "
          + ", ".join(f"{action} {n}" for action, n in sorted(median.calls.items())))
    if median.errors:
        print("  refused calls: " + ", ".join(f"{a} {code} x{n}" for (a, code), n in sorted(median.errors.items())))
    if not args.timeline:
        print(f"  timeline of the median run (seconds from the create request), up to {args.until}:")
        print("\n".join(median.timeline))
    print(f"{'PASS' if ratio <= TARGET else 'FAIL'}: ratio {ratio:.2f} against the target <= {TARGET}")


if __name__ == "__main__":
    main()
