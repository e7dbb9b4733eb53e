"""Benchmark of leader failover: how long after the leader dies a standby leads.

Two processes run only the leader elector (`spotpool.controller.leadership`, the operator's) against a
real local control plane (etcd + kube-apiserver from .cache/bin), with the chart's default timings
(lease 15 s, renew deadline 10 s, retry period 2 s) unless told otherwise. Each run:

1. two fresh electors on one Lease; wait until one leads and the other has seen it lead for a
   random part of a retry period more (so the kill falls anywhere between two renewals);
2. signal the leader: SIGKILL (crash: the Lease is left to expire), SIGSTOP (a frozen process, which
   stays frozen: same as a crash for the standby), or SIGTERM (clean stop: the leader releases the
   Lease);
3. the clock runs from the signal until the standby reports that it leads (each child prints
   CLOCK_MONOTONIC readings, which are system-wide, with every transition).

Expected: a crash is taken over between `lease duration - one jittered retry` and
`lease duration + one jittered retry` after the signal (the standby counts the lease duration from
its own sight of the last renewal, then looks again within one retry); a clean stop within one
jittered retry period (3 s: 2 s x (1 + 1.2 x random)). The lead engineer extends this to "first
reconcile by the new leader".

    .venv/bin/python benchmarks/failover_bench.py [--runs 10] [--signals KILL,TERM]
        [--lease-duration 15 --renew-deadline 10 --retry-period 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from spotpool.controller.leadership import KubeLeaseStore, LeaderElector, Timing


# -- the child: an elector and nothing else ------------------------------------------------------

def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def elector_main(args: argparse.Namespace) -> None:
    import kubernetes

    api = kubernetes.config.new_client_from_config(config_file=args.kubeconfig)
    elector = LeaderElector(
        KubeLeaseStore(args.namespace, api), args.lease, args.identity,
        Timing(args.lease_duration, args.renew_deadline, args.retry_period),
        on_started_leading=lambda term: emit("started", term=term),
        on_stopped_leading=lambda term, reason: emit("stopped", term=term, reason=reason),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    elector.start()
    emit("running", identity=elector.identity)
    await stop.wait()
    await elector.stop(release=True)
    emit("released")


# -- the parent ----------------------------------------------------------------------------------

class Child:
    """One elector process; its JSON lines arrive on a queue read by a thread."""

    def __init__(self, args: argparse.Namespace, kubeconfig: Path, namespace: str, lease: str, log: Path) -> None:
        self.identity = f"bench-{uuid.uuid4().hex[:6]}"
        self.events: Queue[dict[str, Any]] = Queue()
        self.log = open(log, "ab")  # closed in end()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--elector", "--kubeconfig", str(kubeconfig), "--namespace", namespace,
             "--lease", lease, "--identity", self.identity, "--lease-duration", str(args.lease_duration),
             "--renew-deadline", str(args.renew_deadline), "--retry-period", str(args.retry_period)],
            stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def wait(self, event: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self.events.get(timeout=left)
            except Empty:
                return None
            if got["event"] == event:
                return got
        return None

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


def one_run(args: argparse.Namespace, kubeconfig: Path, namespace: str, sig: signal.Signals, log: Path) -> float:
    lease = f"bench-{uuid.uuid4().hex[:8]}"
    a = Child(args, kubeconfig, namespace, lease, log)
    b = Child(args, kubeconfig, namespace, lease, log)
    try:
        for child in (a, b):
            if child.wait("running", 30) is None:
                raise RuntimeError(f"elector did not start; see {log}")
        first = a.wait("started", 15)
        leader, standby = (a, b) if first is not None else (b, a)
        if first is None and leader.wait("started", 15) is None:
            raise RuntimeError("no leader within 30 s")
        # Let the standby see the leader renew, then kill anywhere between two renewals.
        time.sleep(args.retry_period * (2 + random.random()))
        if standby.events.qsize():
            raise RuntimeError(f"the standby reported {standby.events.get()} while the other led")
        sent = time.monotonic()
        leader.signal(sig)
        took = standby.wait("started", args.lease_duration + 4 * args.retry_period + 10)
        if took is None:
            raise RuntimeError(f"the standby did not take over after {sig.name}")
        return float(took["t"]) - sent
    finally:
        a.end()
        b.end()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--signals", default="KILL,TERM", help="comma-separated: KILL, STOP, TERM")
    parser.add_argument("--lease-duration", type=int, default=15)
    parser.add_argument("--renew-deadline", type=float, default=10.0)
    parser.add_argument("--retry-period", type=float, default=2.0)
    # The child's own flags.
    parser.add_argument("--elector", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--lease", help=argparse.SUPPRESS)
    parser.add_argument("--identity", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.elector:
        asyncio.run(elector_main(args))
        return

    from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries

    timing = Timing(args.lease_duration, args.renew_deadline, args.retry_period)
    jittered = timing.retry_period * (1 + timing.jitter)
    bounds = {"KILL": timing.lease_duration + jittered + 1, "STOP": timing.lease_duration + jittered + 1,
              "TERM": jittered + 1}
    signals = [signal.Signals["SIG" + name.strip().upper()] for name in args.signals.split(",") if name.strip()]
    bin_dir = ensure_binaries()
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spotpool-failover-") as tmp, \
            ControlPlane(binaries=bin_dir, with_controller_manager=False) as plane:
        namespace = "failover-bench"
        subprocess.run([str(bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "create", "namespace",
                        namespace], check=True, capture_output=True)
        print(f"lease {timing.lease_duration} s, renew deadline {timing.renew_deadline} s, retry period "
              f"{timing.retry_period} s (jitter x{timing.jitter}); {args.runs} runs per signal", flush=True)
        for sig in signals:
            times = []
            for index in range(args.runs):
                took = one_run(args, plane.kubeconfig, namespace, sig, Path(tmp) / "electors.log")
                times.append(took)
                print(f"  {sig.name} run {index + 1}: standby leads {took:.3f} s after the signal", flush=True)
            name = sig.name.removeprefix("SIG")
            print(f"SIG{name}: min {min(times):.3f} s, median {statistics.median(times):.3f} s, "
                  f"max {max(times):.3f} s (bound {bounds[name]:.1f} s)", flush=True)
            verdicts.append(f"{'PASS' if max(times) <= bounds[name] else 'FAIL'}: SIG{name} failover max "
                            f"{max(times):.3f} s against the bound {bounds[name]:.1f} s")
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
