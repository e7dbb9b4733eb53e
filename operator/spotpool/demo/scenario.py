"""`spotpool demo`: bring everything up on one machine and show a pool converge, lose two instances
to a reclaim and heal, fall back to on-demand when spot sells out, and return to spot.

The scenario: a cluster (the local control plane, or the current kube context), the CRD, the CVM
simulator and the operator as child processes, the example pool applied; a live view until Ready;
two instances reclaimed through the simulator's control API; the live view until the operator has
reported both lost and is Ready again. Then every spot pool of the example sells out and three more
instances are reclaimed: the pool stays short for `spec.onDemand.fallback.after`, buys on-demand
instances for what is missing, and is Ready on a spot/on-demand mix. Then spot is restocked: the
operator buys spot replacements first and releases each fallback on-demand instance only once its
replacement runs, `returnToSpot.maxInFlight` at a time, until the pool is all spot again. A
summary with the measured times; then exit (`--exit-when-healed`) or keep showing the pool until
Ctrl-C. Whatever happens, the pool is deleted first (so the operator releases its instances) and
every process the demo started is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from spotpool.api.names import CRD_NAME
from spotpool.demo import render
from spotpool.demo.stack import (
    Cluster,
    DemoError,
    Operator,
    RunDir,
    Simulator,
    binaries,
    check,
    checkout,
    port_is_free,
    shown,
    wait_until,
)
from spotpool.devcluster.controlplane import free_port

EXAMPLE = Path("deploy") / "examples" / "simulator-pool.yaml"
DEFAULT_SIMULATOR_PORT = 9000
TICK = 1.0  # seconds between frames of the live view
PAUSE_FOR_HUMANS = 3.0  # on a terminal, seconds the Ready frame stays before the reclaim
DELETE_TIMEOUT = 60.0
RECLAIMED = 2  # instances reclaimed to show healing
RECLAIMED_WHEN_SOLD_OUT = 3  # instances reclaimed once spot has sold out: what the fallback buys


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="spotpool demo",
        description="Start a local Kubernetes control plane (or use an existing cluster), the CVM "
        "simulator and the operator; apply deploy/examples/simulator-pool.yaml and show the pool "
        "converge, lose two instances to a spot reclaim and heal, fall back to on-demand while spot is "
        "sold out, and return to spot once it is restocked. Everything started is stopped on exit.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--use-current-context", action="store_true",
                       help="use the cluster of the current kube context (e.g. kind) instead of a local control plane")
    where.add_argument("--kubeconfig", type=Path, help="use the cluster of this kubeconfig's current context")
    parser.add_argument("--namespace", default="spotpool-demo",
                        help="namespace of the demo pool (default spotpool-demo)")
    parser.add_argument("--exit-when-healed", action="store_true",
                        help="exit once the story is over: healed, fallen back to on-demand and back on spot "
                        "(default: keep running until Ctrl-C)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds allowed to bring everything up and play the whole story (default 300)")
    parser.add_argument("--simulator-port", type=int, default=None,
                        help=f"port of the simulator (default {DEFAULT_SIMULATOR_PORT}, or a free one when taken)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where logs and the kubeconfig go (default run/demo in the checkout)")
    return parser.parse_args(argv)


@dataclass
class Snapshot:
    obj: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    market: dict[str, Any] | None = None
    problem: str = ""  # a read that failed this tick (shown, not fatal)


# -- output ---------------------------------------------------------------------------------------------------

class View:
    """The live view: redrawn in place on a terminal; on a pipe, one line per change."""

    def __init__(self, out: TextIO, start: float, tty: bool | None = None) -> None:
        self.out = out
        self.start = start
        self.tty = out.isatty() if tty is None else tty
        self.color = self.tty and not os.environ.get("NO_COLOR")  # https://no-color.org
        self._last_line = ""
        self._seen: set[tuple[str, int]] = set()
        self._drawn = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def show(self, title: str, snap: Snapshot, footer: str = "") -> None:
        if self.tty:
            self._redraw(title, snap, footer)
        else:
            self._log_changes(snap)

    def settle(self, snap: Snapshot) -> None:
        """A phase ended: on a pipe, print the whole frame once so the log has the table."""
        if not self.tty:
            frame = render.render_frame(snap.obj, snap.events, snap.market, now=datetime.now(UTC))
            self.say("\n".join("    " + line for line in frame.splitlines()))
        self._drawn = False  # the next phase redraws below what was said in between

    def restore(self) -> None:
        if self.tty:
            self.out.write("\x1b[?25h")  # the cursor, hidden while redrawing
            self.out.flush()

    def _redraw(self, title: str, snap: Snapshot, footer: str) -> None:
        size = shutil.get_terminal_size((100, 40))
        header = render.style(f"spotpool demo · {title} · {self.elapsed():.0f} s", "bold", self.color)
        problem = [render.style(render.clip("read failed: " + snap.problem, size.columns), "red", self.color)]
        tail = (problem if snap.problem else []) + footer.splitlines()  # commands wrap rather than clip
        # Fit the terminal: fewer events rather than a frame that scrolls.
        fixed = render.render_frame(snap.obj, snap.events, snap.market, max_events=0,
                                    now=datetime.now(UTC)).count("\n") + 1
        tail_rows = sum(max(1, -(-len(line) // size.columns)) for line in tail)
        room = size.lines - 1 - fixed - tail_rows - 3  # header, blank lines
        frame = render.render_frame(snap.obj, snap.events, snap.market, width=size.columns, color=self.color,
                                    max_events=max(0, min(render.MAX_EVENTS, room)), now=datetime.now(UTC))
        lines = [header, "", *frame.splitlines(), "", *tail]
        home = "\x1b[H" if self._drawn else "\x1b[H\x1b[2J"
        self.out.write("\x1b[?25l" + home + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J")
        self.out.flush()
        self._drawn = True

    def _log_changes(self, snap: Snapshot) -> None:
        stamp = f"[{self.elapsed():6.1f}s]"
        if snap.problem:
            self.say(f"{stamp} read failed: {snap.problem}")
        line = render.summary_line(snap.obj)
        if line != self._last_line:
            self.say(f"{stamp} {line}")
            self._last_line = line
        for event in render.sorted_events(snap.events):
            key = render.event_key(event)
            if key not in self._seen:
                self._seen.add(key)
                self.say(f"{stamp} event {render.event_line(event)}")


# -- the demo -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo the way Ctrl-C does: through the cleanup."""
    def interrupt(signum: int, _: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def interrupt_flag() -> Iterator[list[bool]]:
    """While cleaning up, a Ctrl-C (or SIGTERM) only sets a flag: waits are cut short, stops still happen."""
    flag = [False]

    def note(*_: object) -> None:
        flag[0] = True

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Demo:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.namespace: str = args.namespace
        self.name = "demo"
        self.view = View(out, time.monotonic())
        self.deadline = time.monotonic() + args.timeout
        self.root = checkout()
        self.run_dir = RunDir((args.run_dir or self.root / "run" / "demo").resolve())
        self.cluster: Cluster | None = None
        self.simulator: Simulator | None = None
        self.operator: Operator | None = None
        self.uid = ""
        self.applied_at = self.ready_after = self.healed_after = 0.0
        self.short_after = self.fallback_after = self.fallback_ready_after = self.spot_after = 0.0
        self.lowest_running = 0  # the fewest instances running in the cloud during the return to spot
        self.story_over = False
        self.reclaimed: list[dict[str, Any]] = []
        self.started: list[tuple[str, Any]] = []  # (name, Popen) of every process the demo started
        self._skip = [False]  # set by a Ctrl-C during cleanup: stop waiting for the pool to go

    # -- the whole run --------------------------------------------------------------------------------------
    def run(self) -> int:
        self.run_dir.acquire()
        cleanup = contextlib.ExitStack()
        try:
            with interrupts_as_keyboard_interrupt():
                self.bring_up(cleanup)
                self.converge()
                self.heal()
                self.pause(f"healed {RECLAIMED} reclaimed instances in {self.healed_after:.1f} s")
                self.fall_back()
                self.pause(f"on a spot/on-demand mix; on-demand {self.fallback_after:.1f} s after the sell-out")
                self.return_to_spot()
                self.story_over = True
                if self.args.exit_when_healed or not self.view.tty:  # a terminal gets it as a footer
                    self.say_summary()
                if not self.args.exit_when_healed:
                    self.play()
            return 0
        except KeyboardInterrupt:
            if self.story_over:  # the way to end the default mode
                return 0
            self.view.say("\ninterrupted")
            return 130
        except DemoError as exc:
            self.view.say(f"\nspotpool demo failed: {exc}")
            self.view.say(f"logs: {shown(self.run_dir.path)}/")
            return 1
        except Exception:
            traceback.print_exc()
            self.view.say(f"\nspotpool demo failed; logs: {shown(self.run_dir.path)}/")
            return 1
        finally:
            self.view.restore()
            with interrupt_flag() as interrupted:
                self._skip = interrupted
                cleanup.close()
                self.say_stopped()
            self.run_dir.release()

    def remaining(self) -> float:
        left = float(self.deadline - time.monotonic())
        if left <= 0:
            raise DemoError(f"the demo's --timeout of {self.args.timeout:.0f} s ran out")
        return left

    # -- bring-up -------------------------------------------------------------------------------------------
    def bring_up(self, cleanup: contextlib.ExitStack) -> None:
        say = self.view.say
        bins = binaries()
        say("spotpool demo: a pool of 6 Tencent Cloud spot instances, kept at its size by the operator, "
            "bought from the bundled CVM simulator; on-demand while spot is sold out, then back to spot")
        say(f"  run directory   {shown(self.run_dir.path)}/ (logs, kubeconfig)")

        port = self._simulator_port()
        simulator = Simulator.spawn(self.run_dir.path, port)
        cleanup.callback(self._stop_child, simulator.child)
        self.simulator = simulator
        self.started.append(("simulator", simulator.child.popen))

        started = time.monotonic()
        if self.args.use_current_context or self.args.kubeconfig:
            self.cluster = Cluster.existing(bins, self.args.kubeconfig)
            context = self.cluster.kubectl("config", "current-context", check=False).stdout.strip()
            say(f"  cluster         the existing cluster of context {context or '?'}")
            kubeconfig_hint = str(self.args.kubeconfig) if self.args.kubeconfig else None
            self._warn_about_installed_operators()
        else:
            say("  cluster         starting etcd, kube-apiserver and kube-controller-manager ...")
            self.cluster = Cluster.local(bins, self.run_dir.path, timeout=self.remaining())
            cleanup.callback(self._stop_cluster)
            self.started[:0] = [(p.name, p.popen) for p in self.cluster.plane.procs]  # type: ignore[union-attr]
            say(f"                  ready in {time.monotonic() - started:.1f} s")
            kubeconfig_hint = shown(self.cluster.kubeconfig) if self.cluster.kubeconfig else None
        if kubeconfig_hint:
            say(f"  KUBECONFIG      export KUBECONFIG={kubeconfig_hint}")
        self._install_crd()
        self._ensure_namespace(cleanup)

        operator = Operator.spawn(self.run_dir.path, self.namespace, self.cluster.kubeconfig, free_port(),
                                  free_port())
        cleanup.callback(self._stop_child, operator.child)
        self.operator = operator
        self.started.append(("operator", operator.child.popen))
        simulator.wait_ready(timeout=self.remaining())
        say(f"  simulator       {simulator.url} (control API {simulator.url}/_sim/)")
        operator.wait_ready(timeout=self.remaining())
        say(f"  operator        watching namespace {self.namespace}; metrics {operator.metrics_url}/metrics")
        say(f"  logs            {shown(operator.child.log)}, {shown(simulator.child.log)}")
        say("  processes       " + ", ".join(f"{name} pid {popen.pid}" for name, popen in self.started))

        cleanup.callback(self._delete_pool)
        self._apply_pool()

    def _warn_about_installed_operators(self) -> None:
        assert self.cluster is not None
        found = self.cluster.kubectl("get", "deployments", "--all-namespaces", "-l", "app.kubernetes.io/name=spotpool",
                                     "-o", "name", check=False).stdout.split()
        if found:
            self.view.say(f"  note            a spotpool operator is installed here ({', '.join(found)}); if it "
                          f"watches namespace {self.namespace}, it manages the demo pool too: pick another "
                          "with --namespace")

    def _simulator_port(self) -> int:
        if self.args.simulator_port is not None:
            if self.args.simulator_port and not port_is_free(self.args.simulator_port):
                raise DemoError(f"port {self.args.simulator_port} is taken; pass another --simulator-port")
            return self.args.simulator_port or free_port()
        if port_is_free(DEFAULT_SIMULATOR_PORT):
            return DEFAULT_SIMULATOR_PORT
        port = free_port()
        self.view.say(f"  (port {DEFAULT_SIMULATOR_PORT} is taken: the simulator listens on {port})")
        return port

    def _install_crd(self) -> None:
        assert self.cluster is not None
        if self.cluster.plane is None and self.cluster.exists("crd", CRD_NAME):
            self.view.say(f"  CRD             {CRD_NAME} is installed already; left as it is")
        else:
            for path in sorted((self.root / "crds").glob("*.yaml")):
                self.cluster.apply(path.read_text(), "--force-conflicts")
        self.cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}",
                             f"--timeout={max(1, int(min(60, self.remaining())))}s")
        self.view.say(f"  CRD             {CRD_NAME} Established")

    def _ensure_namespace(self, cleanup: contextlib.ExitStack) -> None:
        """Create the namespace when missing; in someone's cluster, leave no trace of the demo."""
        assert self.cluster is not None
        existed = self.cluster.exists("namespace", self.namespace)
        if not existed:
            self.cluster.kubectl("create", "namespace", self.namespace)
        if self.cluster.plane is not None:
            return  # the whole cluster goes away
        if existed:  # the example's other objects (its Secret), once the pool is gone
            for kind, name in self._example_extras():
                cleanup.callback(self.cluster.kubectl, "delete", kind, name, "-n", self.namespace,
                                 "--ignore-not-found", check=False)
        else:
            cleanup.callback(self.cluster.kubectl, "delete", "namespace", self.namespace, "--wait=false",
                             "--ignore-not-found", check=False)

    def _example_extras(self) -> list[tuple[str, str]]:
        docs = [d for d in yaml.safe_load_all((self.root / EXAMPLE).read_text()) if d]
        return [(d["kind"].lower(), d["metadata"]["name"]) for d in docs if d["kind"] != "SpotComputeEnvironment"]

    def _manifest(self) -> tuple[str, dict[str, Any]]:
        assert self.simulator is not None
        docs = [d for d in yaml.safe_load_all((self.root / EXAMPLE).read_text()) if d]
        pool: dict[str, Any] = {}
        for doc in docs:
            doc["metadata"]["namespace"] = self.namespace
            if doc["kind"] == "SpotComputeEnvironment":
                doc["spec"]["endpoint"] = self.simulator.url
                pool = doc
        return yaml.safe_dump_all(docs, sort_keys=False), pool

    def _apply_pool(self) -> None:
        assert self.cluster is not None
        manifest, pool = self._manifest()
        self.name = pool["metadata"]["name"]
        stale = self.cluster.get_environment(self.namespace, self.name)
        if stale is not None and stale["metadata"].get("deletionTimestamp"):
            wait_until(lambda: self.cluster.get_environment(self.namespace, self.name) is None,  # type: ignore[union-attr]
                       child=None, timeout=min(DELETE_TIMEOUT, self.remaining()),
                       what="an earlier demo pool to finish deleting")
        self.cluster.apply(manifest)
        self.applied_at = time.monotonic()
        obj = self.cluster.get_environment(self.namespace, self.name)
        assert obj is not None
        self.uid = obj["metadata"]["uid"]
        fallback = ((pool["spec"].get("onDemand") or {}).get("fallback") or {}).get("after")
        extra = f", on-demand fallback after {fallback}" if fallback else ""
        self.view.say(f"\napplied {EXAMPLE} to namespace {self.namespace} (endpoint {self.simulator.url}, "  # type: ignore[union-attr]
                      f"expectedCount {pool['spec']['expectedCount']}, {pool['spec']['allocationStrategy']}{extra})")

    # -- the live view --------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        assert self.cluster is not None and self.simulator is not None
        snap = Snapshot()
        problems = []
        try:
            snap.obj = self.cluster.get_environment(self.namespace, self.name)
            if snap.obj is not None:
                snap.events = self.cluster.events_of(snap.obj)
        except Exception as exc:  # a slow or restarting API server: show it, try again next tick
            problems.append(f"kubernetes: {type(exc).__name__}: {str(exc)[:200]}")
        try:
            snap.market = self.simulator.control("GET", "market")
        except Exception as exc:
            problems.append(f"simulator: {type(exc).__name__}: {str(exc)[:200]}")
        snap.problem = "; ".join(problems)
        return snap

    def watch(self, title: str, done: Callable[[Snapshot], bool] | None, *, until: float | None = None,
              footer: str = "") -> Snapshot:
        """Show the live view every TICK seconds until `done` (or the monotonic time `until`)."""
        while True:
            tick = time.monotonic()
            for child in (self.simulator.child, self.operator.child):  # type: ignore[union-attr]
                check(child)
            snap = self.snapshot()
            self.view.show(title, snap, footer)
            if done is not None and done(snap):
                return snap
            if until is not None and time.monotonic() >= until:
                return snap
            if done is not None and time.monotonic() > self.deadline:
                raise DemoError(f"the --timeout of {self.args.timeout:.0f} s ran out while {title}; "
                                f"last seen: {render.summary_line(snap.obj)}")
            time.sleep(max(0.0, TICK - (time.monotonic() - tick)))

    def converge(self) -> None:
        expected = render.counts(self.cluster.get_environment(self.namespace, self.name))["expected"]  # type: ignore[union-attr]
        title = f"converging: the operator buys {expected} spot instances"
        if not self.view.tty:
            self.view.say(f"\n== {title} ==")
        snap = self.watch(title, lambda s: render.is_ready(s.obj))
        self.ready_after = time.monotonic() - self.applied_at
        if self.view.tty:
            self.watch(title + f" · Ready after {self.ready_after:.1f} s", None,
                       until=time.monotonic() + PAUSE_FOR_HUMANS)
        else:
            self.view.settle(snap)
        self.view.say(f"Ready: {render.counts(snap.obj)['running']} of {render.counts(snap.obj)['expected']} "
                      f"running, {self.ready_after:.1f} s after the pool was applied")

    def heal(self) -> None:
        assert self.simulator is not None
        victims = self._reclaim(RECLAIMED)
        reclaimed_at = time.monotonic()
        ids = [v["instanceId"] for v in victims]
        self.reclaimed = victims
        names = " and ".join(f"{v['instanceId']} ({v['zone']}/{v['instanceType']})" for v in victims)
        title = f"healing: the cloud reclaimed {' and '.join(ids)}"
        self.view.say(f"\n== {title} ==")
        self.view.say(f"POST {self.simulator.url}/_sim/reclaim {json.dumps({'instanceIds': ids})}: "
                      f"reclaimed {names}")
        snap = self.watch(title, lambda s: render.healed(s.obj, s.events, ids))
        self.view.settle(snap)
        self.healed_after = time.monotonic() - reclaimed_at
        lost = sorted(render.lost_ids(snap.events) & set(ids))
        self.view.say(f"healed: InstanceLost reported for {', '.join(lost)}; replaced, Ready again with "
                      f"{render.counts(snap.obj)['running']} running, {self.healed_after:.1f} s after the reclaim")

    def _reclaim(self, count: int) -> list[dict[str, Any]]:
        """Reclaim `count` running spot instances of the pool through the simulator's control API."""
        assert self.simulator is not None
        victims = render.pick_victims(self.simulator.owned(self.uid, "RUNNING"), count)
        if len(victims) < count:
            raise DemoError(f"expected {count} running spot instances to reclaim, found {len(victims)}")
        ids = [v["instanceId"] for v in victims]
        answer = self.simulator.control("POST", "reclaim", {"instanceIds": ids})
        if sorted(answer.get("reclaimed") or []) != sorted(ids):
            raise DemoError(f"the simulator did not reclaim {ids}: {answer}")
        return victims

    def _set_sold_out(self, sold_out: bool) -> str:
        """Sell out (or restock) every spot pool the example may buy from; returns the request shown."""
        assert self.simulator is not None and self.cluster is not None
        spec = render.spec_of(self.cluster.get_environment(self.namespace, self.name))
        body = {"pools": [{"zone": zone, "instanceType": kind, "soldOut": sold_out}
                          for zone in spec.get("zones") or [] for kind in spec.get("instanceTypes") or []]}
        self.simulator.control("POST", "market", body)
        return f"POST {self.simulator.url}/_sim/market {json.dumps(body, separators=(',', ':'))}"

    def pause(self, title: str) -> None:
        """On a terminal, leave the settled frame up a moment (titled with what just happened)."""
        if self.view.tty:
            self.watch(title, None, until=time.monotonic() + PAUSE_FOR_HUMANS)

    def fall_back(self) -> None:
        """Sell out spot, take instances back: short, then on-demand after the fallback's wait."""
        assert self.cluster is not None
        after = render.fallback_after(self.cluster.get_environment(self.namespace, self.name))
        if after is None:
            raise DemoError(f"{EXAMPLE} has no spec.onDemand.fallback: nothing to show when spot sells out")
        request = self._set_sold_out(True)
        sold_out_at, sold_out_clock = time.monotonic(), datetime.now(UTC)
        victims = self._reclaim(RECLAIMED_WHEN_SOLD_OUT)
        ids = [v["instanceId"] for v in victims]
        title = f"spot sold out: {len(ids)} instances gone, on-demand fallback after {after} s"
        say = self.view.say
        say(f"\n== {title} ==")
        say(f"{request}: every spot pool of the pool sold out")
        say(f"POST {self.simulator.url}/_sim/reclaim {json.dumps({'instanceIds': ids})}: "  # type: ignore[union-attr]
            f"reclaimed {', '.join(ids)}")

        short_since = [""]  # status.capacity.spotShortSince as last seen: when the fallback's wait began

        def first_on_demand(snap: Snapshot) -> bool:
            short = render.spot_short(snap.obj)
            if short:
                short_since[0] = short[0]
            return render.capacity(snap.obj)["onDemandFallback"] > 0

        self.watch(title, first_on_demand)
        self.fallback_after = time.monotonic() - sold_out_at
        began = render.parse_time(short_since[0])
        self.short_after = (began - sold_out_clock).total_seconds() if began else 0.0
        say(f"fallback: the first on-demand instance {self.fallback_after:.1f} s after the sell-out; the operator's "
            f"wait (status.capacity.spotShortSince {short_since[0][11:19] or '?'}) began {self.short_after:.0f} s "
            f"after it, and spec.onDemand.fallback.after is {after} s")
        missing = render.counts(self.cluster.get_environment(self.namespace, self.name))["expected"]
        snap = self.watch(title, lambda s: render.is_ready(s.obj)
                          and render.capacity(s.obj)["spot"] + render.capacity(s.obj)["onDemandFallback"] == missing
                          and render.capacity(s.obj)["onDemandFallback"] > 0)
        self.fallback_ready_after = time.monotonic() - sold_out_at
        self.view.settle(snap)
        mix = render.capacity(snap.obj)
        say(f"on-demand: Ready with {mix['spot']} spot + {mix['onDemandFallback']} on-demand fallback instances, "
            f"{self.fallback_ready_after:.1f} s after the sell-out")

    def return_to_spot(self) -> None:
        """Restock spot: replacements first, then each fallback instance released, until all spot."""
        assert self.simulator is not None and self.cluster is not None
        budget = ((render.spec_of(self.cluster.get_environment(self.namespace, self.name)).get("onDemand") or {})
                  .get("returnToSpot") or {}).get("maxInFlight", "25%")
        request = self._set_sold_out(False)
        restocked_at = time.monotonic()
        title = f"spot restocked: back to spot, replacements first, {budget} at a time"
        self.view.say(f"\n== {title} ==")
        self.view.say(f"{request}: spot can be had again")
        expected = render.counts(self.cluster.get_environment(self.namespace, self.name))["expected"]
        self.lowest_running = expected

        def all_spot(snap: Snapshot) -> bool:
            # Replacement first, checked in the cloud itself: running never drops below expectedCount.
            running = len(self.simulator.owned(self.uid, "RUNNING"))  # type: ignore[union-attr]
            self.lowest_running = min(self.lowest_running, running)
            return render.is_all_spot(snap.obj) and any(e.get("reason") == "ReturnedToSpot" for e in snap.events)

        snap = self.watch(title, all_spot)
        self.spot_after = time.monotonic() - restocked_at
        self.view.settle(snap)
        self.view.say(f"back to spot: {render.capacity(snap.obj)['spot']} of {expected} spot, no on-demand left, "
                      f"{self.spot_after:.1f} s after the restock; running never below {self.lowest_running} "
                      f"during the return")

    def play(self) -> None:
        if not self.view.tty:
            self.view.say("\nThe demo keeps running: try the commands above. Ctrl-C stops it and cleans up.")
        self.watch("yours to play with (Ctrl-C stops and cleans up)", None, footer=self.short_help())

    # -- words for the user ---------------------------------------------------------------------------------
    def _shell_setup(self) -> str:
        """The line that makes plain `kubectl` talk to the demo's cluster in another terminal."""
        assert self.cluster is not None
        path = f"PATH={self.cluster.kubectl_path.parent}:$PATH"
        if self.cluster.kubeconfig is not None:
            return f"export KUBECONFIG={self.cluster.kubeconfig} {path}"
        return f"export {path}"

    def _reclaim_example(self) -> str:
        pool = self.reclaimed[0] if self.reclaimed else {"zone": "ap-guangzhou-3", "instanceType": "S5.MEDIUM4"}
        body = json.dumps({"zone": pool["zone"], "instanceType": pool["instanceType"], "count": 1},
                          separators=(",", ":"))
        return f"curl -X POST {self.simulator.url}/_sim/reclaim -d '{body}'"  # type: ignore[union-attr]

    def say_summary(self) -> None:
        assert self.simulator is not None and self.operator is not None
        ns, say = self.namespace, self.view.say
        say("")
        say("== summary ==")
        say(f"  time to Ready   {self.ready_after:.1f} s (from kubectl apply to 6 of 6 running)")
        say(f"  time to heal    {self.healed_after:.1f} s (from the reclaim of {RECLAIMED} instances to Ready again)")
        say(f"  time to fallback {self.fallback_after:.1f} s (from the spot sell-out to the first on-demand "
            "instance: fallback.after plus one pass)")
        say(f"  time to spot    {self.spot_after:.1f} s (from the restock to all spot again; running never "
            f"below {self.lowest_running})")
        say(f"  logs            {shown(self.operator.child.log)}, {shown(self.simulator.child.log)}")
        say(f"  kubectl         {self._shell_setup()}")
        say(f"                  kubectl get sce -n {ns}")
        say(f"                  kubectl scale sce/{self.name} --replicas=10 -n {ns}")
        say(f"                  kubectl get events -n {ns} --sort-by=.lastTimestamp")
        say(f"  simulator       curl {self.simulator.url}/_sim/instances")
        say(f"                  {self._reclaim_example()}")
        say(f"                  curl -X POST {self.simulator.url}/_sim/market -d "
            "'{\"pools\":[{\"zone\":\"ap-guangzhou-4\",\"instanceType\":\"SA2.MEDIUM4\",\"stock\":0}]}'")
        say(f"  metrics         curl -s {self.operator.metrics_url}/metrics | grep ^spotpool_")
        if self.args.exit_when_healed:
            say("  (--exit-when-healed: stopping now; without it the demo keeps running until Ctrl-C)")

    def short_help(self) -> str:
        """The footer of the live view once the demo is the user's to play with."""
        assert self.simulator is not None and self.operator is not None
        return "\n".join([
            f"Ready in {self.ready_after:.1f} s; healed {RECLAIMED} reclaimed instances in {self.healed_after:.1f} s; "
            f"on-demand {self.fallback_after:.1f} s after spot sold out, all spot {self.spot_after:.1f} s after "
            "the restock. In another terminal, try:",
            f"  {self._shell_setup()}",
            f"  kubectl scale sce/{self.name} --replicas=10 -n {self.namespace}",
            f"  {self._reclaim_example()}",
            f"  metrics {self.operator.metrics_url}/metrics   logs {shown(self.run_dir.path)}/   Ctrl-C stops it all",
        ])

    # -- cleanup (runs on success, error and Ctrl-C) -----------------------------------------------------------
    def _delete_pool(self) -> None:
        """Delete the pool while the operator still runs, so it releases every instance it bought."""
        cluster, simulator, operator = self.cluster, self.simulator, self.operator
        if cluster is None or simulator is None:
            return
        say = self.view.say
        try:
            if cluster.get_environment(self.namespace, self.name) is None:
                return
            started = time.monotonic()
            say(f"\ncleaning up: deleting {self.namespace}/{self.name}; the operator releases its instances "
                "(Ctrl-C skips the wait) ...")
            cluster.kubectl("delete", "sce", self.name, "-n", self.namespace, "--wait=false", "--ignore-not-found")
            deadline = started + DELETE_TIMEOUT
            while cluster.get_environment(self.namespace, self.name) is not None:
                why = ("Ctrl-C" if self._skip[0] else
                       "the operator is not running" if operator is None or not operator.child.running else
                       f"still there after {DELETE_TIMEOUT:.0f} s" if time.monotonic() > deadline else "")
                if why:
                    if cluster.plane is None:  # someone's cluster: leave nothing pinned by our finalizer
                        cluster.kubectl("patch", "sce", self.name, "-n", self.namespace, "--type=merge",
                                        "-p", '{"metadata":{"finalizers":[]}}', check=False)
                    say(f"  {why}: not waiting for the operator; its instances go with the simulator")
                    break
                time.sleep(0.25)
            else:
                alive = simulator.owned(self.uid, "PENDING", "RUNNING") if self.uid else []
                say(f"  deleted in {time.monotonic() - started:.1f} s; instances still alive in the "
                    f"simulator: {len(alive)}")
        except Exception as exc:  # cleanup goes on with the processes whatever happens here
            say(f"  could not delete the pool: {type(exc).__name__}: {exc}")

    def _stop_child(self, child: Any) -> None:
        child.stop()

    def _stop_cluster(self) -> None:
        assert self.cluster is not None
        self.cluster.stop(self.run_dir.path)

    def say_stopped(self) -> None:
        if not self.started:
            return
        left = [f"{name} pid {popen.pid}" for name, popen in self.started if popen.poll() is None]
        if left:
            self.view.say(f"still running (could not stop): {', '.join(left)}")
        else:
            self.view.say("stopped: " + ", ".join(f"{name} pid {popen.pid}" for name, popen in self.started)
                          + "; nothing the demo started is left running")


def cli(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return Demo(args, sys.stdout).run()
    except DemoError as exc:  # before anything was started: no checkout, run directory in use
        print(f"spotpool demo: {exc}", file=sys.stderr)
        return 1
