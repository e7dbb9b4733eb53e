"""Chaos end to end (issue 17, "money safety II"): two real `spotpool operator` processes with
--leader-elect (lease 4 s, renew deadline 3 s, retry 1 s, as the HA tests use them), one simulator,
three pools driven through user edits (scale up and down with `kubectl patch`, delete, recreate)
while a seeded random sequence of faults runs:

- the leader SIGKILLed (and a fresh process started in its place), the follower SIGKILLed;
- the leader SIGSTOPped for less than its renew deadline, or for its lease duration + 2 s, then
  SIGCONT;
- etcd SIGKILLed, and the apiserver SIGKILLed, each restarted after a random outage;
- the leader SIGKILLed in the middle of a deletion (once the first instance of the deleted pool is
  terminating, plus a random delay).

Every step is one user edit, then one fault, then the recovery, then a wait for every pool to
converge (exactly expectedCount alive and Ready; deleted pools gone; within 90 s, so an edit that
is never acted on fails the run too). The fault strikes at a random
moment after the edit, or (half of the leader and control-plane faults) as soon as a RunInstances or
TerminateInstances is on the wire: the simulator answers those after 600 and 400 ms, so a fault finds
money in flight. The first steps cover every kind of fault once, in a seeded order (a kill during a
deletion becomes a plain kill when no pool has instances to delete); more steps draw at random.

Who did what is established from outside the processes, never from their own account:

- **Cloud calls**: each operator process (each *incarnation*: a restarted slot is a new one) sends
  its CVM calls through an HTTP proxy of its own (`HTTP_PROXY`, which the CVM client's httpx
  honours; the Kubernetes clients talk https and ignore it). The proxy records the action, the
  parameters and the RequestId of the answer; the simulator's ledger (`GET /_sim/calls`) is joined
  to it by RequestId, so every call the cloud answered is attributed to exactly one process (a
  call the join cannot attribute fails the test). Metrics and logs die with a SIGKILLed process,
  and a log is the process's own word: neither is used to attribute.
- **Kubernetes writes**: this test runs its own control plane (so it can SIGKILL etcd and the
  apiserver without disturbing the session's cluster) with an audit policy that records every
  write of the operators; each incarnation authenticates with a client certificate of its own name
  (`chaos-a-2`), which is also its POD_NAME and so the prefix of its Lease identity. The audit log
  gives every Lease write (who renewed or acquired, when), every status write, Event and Secret
  write, and the finalizer removals.

Checked at the end, for the whole run (all violations are listed together):

1. every ledger call is attributed to a process; Lease terms never overlap (a holder change to
   another identity comes at least a lease duration after the previous holder's last renewal);
2. every RunInstances (the launch check's DryRun ones included: a RunInstances is a RunInstances)
   and TerminateInstances reached the cloud from a process holding the Lease at that moment, any
   answer: its last successful renewal before the call is less than a lease duration old (no
   follower can have taken over before that) and no other process acquired the Lease since;
3. the same for the operators' own Kubernetes writes that took effect: status writes (each also
   conditional on a resourceVersion), Events, Secret writes, and the removal of the pool's
   finalizer. Attempts the apiserver refused (a failed resourceVersion precondition, the object
   gone) changed nothing and are only listed: that is how the design makes a past leader's late
   write harmless (seen: kopf's finalizer removal, sent by a leader resumed past its lease after
   its delete handler had succeeded in its term, answered 404);
4. a leader SIGSTOPped past its lease and resumed sends no RunInstances/TerminateInstances and
   writes no status, Event or Secret until it acquires the Lease again (from the ledger and the
   audit log), and its own metrics counters for those two actions move by no more than the calls
   it had on the wire at the stop: the histogram counts *answered* attempts, and an answer that
   arrived while the process was stopped is counted when it resumes (seen in runs: 1 -> 3 with 3 on
   the wire), so "the counters do not move after SIGCONT" is not a sound criterion on its own;
5. purchases: every instance's ClientToken was written to the pool's journal (a successful status
   write) before the RunInstances that bought it reached the cloud, and right after each launch the
   pool's alive instances (from the simulator's instance view: launch and termination times per
   owner uid) number at most the largest expectedCount that may have been in force between that
   journal write and the launch (edits are timed by the test, each from before its kubectl to after
   it). The journal write is where the purchase was decided: it is conditional on the
   resourceVersion the pass planned from, so a spec edit in between would have made it fail. No
   reclaims, launch failures or failed terminations are simulated: no replacement is ever due;
6. deletions: every instance of a deleted pool's uid had finished terminating (its termination
   began at least the simulator's terminate delay before) when its finalizer was removed (the
   first successful patch taking it off after the delete, by anyone, from the audit log: the
   object goes with it), so none is launched later either; and no deleted pool has an instance
   alive at any convergence poll after it was seen gone. The orphan collector is given no role
   (--no-orphan-release): a deletion must complete cleanly on its own.

Sanity of the judges: `test_the_checks_can_fail` runs them on made-up histories. Run against
broken setups (not part of the suite), they fail as they should: a second operator without
--leader-elect gets its RunInstances, TerminateInstances, status writes and Events reported as "not
the leader: it had never held the Lease"; a finalizer stripped by hand right after `kubectl delete`
gets "ins-… of the deleted p1 (termination begun at …) was not gone when admin removed the
finalizer"; a count bound lowered by one reports every purchase that reached it.

Knobs: SPOTPOOL_CHAOS_SEED replays a run (the seed and the planned sequence are printed first);
unset, the run uses seed 13, so that `make test` is the same run every time (a CI gate must not
depend on a dice roll); `SPOTPOOL_CHAOS_SEED=random` draws one, for exploring. SPOTPOOL_CHAOS_FAULTS
sets the number of steps (default 12: 80-100 s in all on two cores, about 7 s a step).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import itertools
import json
import os
import random
import re
import signal
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotpool.api.names import FINALIZER, LAUNCH_TAG, OWNER_UID_TAG
from spotpool.controller.leadership import Timing, lease_name
from spotpool.devcluster import pki as pki_mod
from spotpool.devcluster.controlplane import ControlPlane, ensure_binaries
from spotpool.devcluster.processes import spawn
from spotpool.simulator import SimulatorConfig
from tests.conftest import CRD_FILE, CRD_NAME
from tests.e2e.conftest import Pools, ready, status
from tests.support.kube import Kubectl, unique_name, wait_for
from tests.support.processes import OperatorProcess, SimulatorProcess, simulator_config

pytestmark = pytest.mark.cluster

TIMING = Timing(lease_duration=4, renew_deadline=3.0, retry_period=1.0)
LEASE = float(TIMING.lease_duration)
OBSERVE_INTERVAL = 2.0
SLACK = 2.0
ELECTION_FLAGS = ("--leader-elect", f"--lease-duration={TIMING.lease_duration}",
                  f"--renew-deadline={TIMING.renew_deadline}", f"--retry-period={TIMING.retry_period}")
TERMINATE_DELAY = 0.5  # the simulator's lifecycle (tests.support.processes.simulator_config)
MAX_EXPECTED = 6
DEFAULT_STEPS = "12"  # SPOTPOOL_CHAOS_FAULTS: about a minute and a half on two cores
CONVERGE_TIMEOUT = 90.0
AUDIT_GROUP = "spotpool-chaos"
SPENDING = ("RunInstances", "TerminateInstances")

FAULT_KINDS = ("kill-leader", "kill-follower", "stop-leader", "stop-leader-past-lease", "kill-etcd",
               "kill-apiserver", "kill-leader-during-delete")
FAULT_WEIGHTS = (3, 1, 2, 2, 1.5, 1.5, 1.5)


# -- the control plane: our own, audited, with etcd and the apiserver killable ------------------------

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Request", "userGroups": [AUDIT_GROUP],
         "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        # Anyone's (the test's own edits too): when each pool's finalizer went, by whom.
        {"level": "Request", "verbs": ["update", "patch", "delete"],
         "resources": [{"group": "spotpool.io", "resources": ["spotcomputeenvironments"]}]},
        {"level": "None"},
    ],
}


class ChaosPlane(ControlPlane):
    """A ControlPlane whose apiserver writes an audit log of the operators' writes, and whose etcd
    and apiserver can be SIGKILLed and started again with the same flags, ports and data."""

    @property
    def audit_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "audit.log"

    def _spawn(self, name: str, args: list[str]) -> None:
        if name == "kube-apiserver" and not any(a.startswith("--audit-log-path=") for a in args):
            assert self.workdir is not None
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY))
            args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                    "--audit-log-mode=blocking", "--audit-log-format=json"]
        super()._spawn(name, args)

    def _index(self, name: str) -> int:
        return next(i for i, p in enumerate(self.procs) if p.name == name)

    def kill(self, name: str) -> None:
        child = self.procs[self._index(name)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.popen.wait(timeout=10)

    def respawn(self, name: str) -> None:
        """Start `name` again with the flags it had (same ports, certificates, data directory)."""
        assert self.workdir is not None and self.binaries is not None and self.pki is not None
        index = self._index(name)
        assert not self.procs[index].running, f"{name} is still running"
        self.procs[index] = spawn(name, [str(self.binaries / name), *self._commands[name]],
                                  self.workdir / f"{name}.log", death_signal=signal.SIGKILL)
        self.wait_ready()

    def wait_ready(self) -> None:
        assert self.pki is not None
        ctx = self._admin_ssl_context(self.pki)
        self._wait(lambda: self._http_ok(f"{self.server}/readyz", ctx), "kube-apiserver /readyz")

    def audit(self) -> list[dict[str, Any]]:
        """The operators' completed writes, in the order the apiserver logged them."""
        events = []
        if not self.audit_log.exists():
            return events
        for line in self.audit_log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("stage") == "ResponseComplete":
                    events.append(event)
        return events


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def kubeconfig_for(plane: ChaosPlane, user: str, directory: Path) -> Path:
    """The plane's admin kubeconfig, authenticating as `user` (groups system:masters and ours)."""
    assert plane.pki is not None
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{user}.crt", directory / f"{user}.key"
    pki_mod.issue_client(plane.pki, user, ("system:masters", AUDIT_GROUP), cert, key)
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"] = [{"name": user, "user": {
        "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(key.read_bytes()).decode()}}]
    for context in config["contexts"]:
        context["context"]["user"] = user
    path = directory / f"{user}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# -- the recording proxy: which process sent which CVM call -------------------------------------------

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
                         "trailers", "transfer-encoding", "upgrade", "content-length"})


@dataclass
class ProxiedCall:
    incarnation: str
    action: str
    params: dict[str, Any]
    received: float  # when the proxy had the whole request (epoch seconds)
    answered: float | None = None
    status: int | None = None
    request_id: str | None = None


def _request_id(data: bytes, encoding: str | None) -> str | None:
    try:
        if encoding == "gzip":
            data = gzip.decompress(data)
        elif encoding == "deflate":
            data = zlib.decompress(data)
        found = json.loads(data)["Response"]["RequestId"]
        return str(found) if found else None
    except (ValueError, KeyError, TypeError, OSError, zlib.error):
        return None


class _Forwarding(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of a proxy
    proxy: RecordingProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = time.time()
        target = urllib.parse.urlsplit(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            params = {}
        call = ProxiedCall(self.proxy.incarnation, self.headers.get("X-TC-Action") or "?",
                           params if isinstance(params, dict) else {}, received)
        self.proxy.add(call)
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=120)
        try:
            conn.request(self.command, target.path or "/", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except OSError:
            call.answered, call.status = time.time(), 502
            self.send_error(502)
            return
        finally:
            conn.close()
        call.answered, call.status = time.time(), response.status
        call.request_id = _request_id(data, response.getheader("Content-Encoding"))
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP | {"date", "server"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(data)

    do_GET = do_POST


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a SIGKILLed client leaves half a request behind: nothing to report


class RecordingProxy:
    """A forwarding HTTP proxy for one operator process, recording every call it forwards."""

    def __init__(self, incarnation: str) -> None:
        self.incarnation = incarnation
        self.calls: list[ProxiedCall] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Forwarding,), {"proxy": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, call: ProxiedCall) -> None:
        with self._lock:
            self.calls.append(call)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the plan: seeded, printed, replayable -------------------------------------------------------------

@dataclass
class Step:
    index: int
    edit: tuple[str, str, int]  # (scale|delete|recreate|none, pool, new expectedCount)
    fault: str
    offset: float  # seconds between the edit and the fault
    duration: float  # the fault's own length: a SIGSTOP held, a control-plane outage
    extra: float  # kill-leader-during-delete: delay after the first termination
    in_flight: bool  # strike when a RunInstances or TerminateInstances is on the wire (else at offset)

    def describe(self) -> str:
        kind, pool, value = self.edit
        edit = {"scale": f"scale {pool} to {value}", "delete": f"delete {pool}",
                "recreate": f"recreate {pool} with {value}", "none": "no edit"}[kind]
        timing = ("with a spending call on the wire" if self.in_flight else f"{self.offset:.2f} s after the edit")
        if self.fault in ("stop-leader", "stop-leader-past-lease"):
            timing += f", held {self.duration:.2f} s"
        elif self.fault in ("kill-etcd", "kill-apiserver"):
            timing += f", down {self.duration:.2f} s"
        elif self.fault == "kill-leader-during-delete":
            timing = f"{self.extra:.2f} s after the first termination"
        return f"step {self.index}: {edit}; {self.fault} {timing}"


def make_plan(seed: int, steps: int, initial: dict[str, int]) -> list[Step]:
    """The steps of a run; a shorter run of the same seed is a prefix of a longer one."""
    rng = random.Random(seed)
    model: dict[str, int | None] = dict(initial)
    every = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
    plan = []
    for index in range(1, steps + 1):
        fault = every[index - 1] if index <= len(every) else rng.choices(FAULT_KINDS, weights=FAULT_WEIGHTS)[0]
        existing = sorted(n for n, e in model.items() if e is not None)
        deleted = sorted(n for n, e in model.items() if e is None)
        edit: tuple[str, str, int]
        if fault == "kill-leader-during-delete" and any(model[n] for n in existing):
            name = rng.choice([n for n in existing if model[n]])
            edit = ("delete", name, 0)
        else:
            if fault == "kill-leader-during-delete":
                fault = "kill-leader"  # nothing with instances to delete: a plain kill
            choices = ["scale"] * 6 + ["delete"] * (1 if len(existing) >= 2 else 0) + ["recreate"] * (
                5 if deleted else 0) + ["none"]
            kind = rng.choice(choices) if existing else "recreate"
            if kind == "scale":
                name = rng.choice(existing)
                edit = ("scale", name, rng.choice([v for v in range(MAX_EXPECTED + 1) if v != model[name]]))
            elif kind == "delete":
                edit = ("delete", rng.choice(existing), 0)
            elif kind == "recreate":
                edit = ("recreate", rng.choice(deleted), rng.randint(1, MAX_EXPECTED))
            else:
                edit = ("none", "", 0)
        kind, name, value = edit
        if kind in ("scale", "recreate"):
            model[name] = value
        elif kind == "delete":
            model[name] = None
        duration = {"stop-leader": rng.uniform(0.3, TIMING.renew_deadline - 0.5),
                    "stop-leader-past-lease": LEASE + 2.0,
                    "kill-etcd": rng.uniform(0.5, 3.0),
                    "kill-apiserver": rng.uniform(0.0, 2.0)}.get(fault, 0.0)
        in_flight = rng.random() < 0.5 and edit[0] != "none" and fault not in ("kill-follower",
                                                                                 "kill-leader-during-delete")
        plan.append(Step(index, edit, fault, rng.uniform(0.0, 1.5), duration, rng.uniform(0.0, 0.6), in_flight))
    return plan


# -- the run -------------------------------------------------------------------------------------------

@dataclass
class Incarnation:
    name: str  # its audit user, its POD_NAME, the prefix of its Lease identity
    slot: str
    op: OperatorProcess
    proxy: RecordingProxy


@dataclass
class Pool:
    name: str
    uid: str
    expected: int
    # (set no earlier than, in force no later than, expectedCount): each edit as the test made it
    timeline: list[tuple[float, float, int]] = field(default_factory=list)
    deleting: bool = False
    gone_at: float | None = None  # when the test first saw the object gone

    def max_expected(self, start: float, end: float) -> int | None:
        """The largest expectedCount that may have been in force at some moment of [start, end]."""
        values = []
        for k, (since, _, value) in enumerate(self.timeline):
            until = self.timeline[k + 1][1] if k + 1 < len(self.timeline) else float("inf")
            if since <= end and until >= start:
                values.append(value)
        return max(values) if values else None


@dataclass
class Resumed:
    """A leader SIGSTOPped past its lease and resumed: the window it must stay silent in."""

    incarnation: str
    stopped: float
    resumed: float
    counts_before: float
    scraped_before: float
    counts_after: float | None = None
    scraped_after: float = 0.0


@dataclass
class Chaos:
    plane: ChaosPlane
    kubectl: Kubectl
    namespace: str
    simulator: SimulatorProcess
    pools_api: Pools
    workdir: Path
    seed: int
    cluster_id: str = field(default_factory=lambda: unique_name("chaos"))
    incarnations: list[Incarnation] = field(default_factory=list)
    slots: dict[str, Incarnation] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)  # by uid
    resumed: list[Resumed] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    sampled_violations: list[str] = field(default_factory=list)
    figures: list[tuple[str, float]] = field(default_factory=list)
    t0: float = field(default_factory=time.time)

    def note(self, text: str) -> None:
        line = f"[{time.time() - self.t0:6.1f} s] {text}"
        self.log.append(line)
        print(line, flush=True)

    # -- processes ---------------------------------------------------------------------------------
    def start(self, slot: str) -> Incarnation:
        name = f"chaos-{slot}-{sum(1 for i in self.incarnations if i.slot == slot) + 1}"
        proxy = RecordingProxy(name)
        env = {"POD_NAME": name, "HTTP_PROXY": proxy.url, "http_proxy": proxy.url,
               "NO_PROXY": "", "no_proxy": "", "HTTPS_PROXY": "", "https_proxy": "", "ALL_PROXY": "",
               "all_proxy": ""}
        op = OperatorProcess(
            workdir=self.workdir / name, kubeconfig=kubeconfig_for(self.plane, name, self.workdir / "users"),
            namespace=self.namespace, cluster_id=self.cluster_id, observe_interval=OBSERVE_INTERVAL,
            extra_args=(*ELECTION_FLAGS, f"--leader-election-namespace={self.namespace}", "--no-orphan-release"),
            env=env)
        incarnation = Incarnation(name, slot, op, proxy)
        self.incarnations.append(incarnation)
        self.slots[slot] = incarnation
        op.start()
        return incarnation

    def kill(self, incarnation: Incarnation) -> None:
        incarnation.op.kill()

    def leader(self, timeout: float = LEASE + OBSERVE_INTERVAL + 4 * SLACK) -> Incarnation:
        seen: list[str] = []

        def one() -> Incarnation | None:
            readings = [(i, i.op.leader_gauge()) for i in self.slots.values()]
            seen[:] = [f"{i.name}: {g}" for i, g in readings]  # None: not serving metrics (yet)
            leaders = [i for i, g in readings if g == 1.0]
            if len(leaders) == 1 and all(g == 0.0 for i, g in readings if i is not leaders[0]):
                return leaders[0]
            return None
        try:
            return wait_for(one, timeout=timeout, interval=0.1, what="exactly one leader")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; leader gauges at the end: {', '.join(seen)}") from None

    def follower(self, leader: Incarnation) -> Incarnation:
        (other,) = [i for i in self.slots.values() if i is not leader]
        return other

    # -- pools -------------------------------------------------------------------------------------
    def live(self, name: str) -> Pool | None:
        return next((p for p in self.pools.values() if p.name == name and not p.deleting), None)

    def create(self, name: str, expected: int) -> Pool:
        before = time.time()
        obj = self.pools_api.create(name, expectedCount=expected)
        pool = Pool(name, obj["metadata"]["uid"], expected, [(before, time.time(), expected)])
        self.pools[pool.uid] = pool
        return pool

    def scale(self, pool: Pool, expected: int) -> None:
        before = time.time()
        self.pools_api.patch_spec(pool.name, expectedCount=expected)
        pool.timeline.append((before, time.time(), expected))
        pool.expected = expected

    def delete(self, pool: Pool) -> None:
        before = time.time()
        pool.deleting = True
        self.kubectl.run("delete", "sce", pool.name, f"--namespace={self.namespace}", "--wait=false")
        pool.timeline.append((before, time.time(), 0))
        pool.expected = 0

    def converge(self, timeout: float = CONVERGE_TIMEOUT) -> float:
        """Until every pool holds exactly its expectedCount alive and says Ready with it, and every
        deleted one is gone; checks on every poll that no deleted pool has an instance alive."""
        started = time.monotonic()
        last: list[str] = []

        def settled() -> bool:
            nonlocal last
            proc = self.kubectl.run("get", "sce", f"--namespace={self.namespace}", "-o", "json", check=False)
            if proc.returncode != 0:
                last = [f"kubectl: {proc.stderr.strip()[:200]}"]
                return False
            objects = {o["metadata"]["uid"]: o for o in json.loads(proc.stdout)["items"]}
            alive: dict[str, int] = {}
            for instance in self.simulator.instances():
                if instance["state"] in ("PENDING", "RUNNING"):
                    owner = instance["tags"].get(OWNER_UID_TAG, "")
                    alive[owner] = alive.get(owner, 0) + 1
            now = time.time()
            waiting = []
            for pool in self.pools.values():
                obj = objects.get(pool.uid)
                if pool.deleting:
                    if obj is None and pool.gone_at is None:
                        pool.gone_at = now
                        self.note(f"{pool.name} ({pool.uid[:8]}) is gone")
                    if pool.gone_at is not None and alive.get(pool.uid):
                        self.sampled_violations.append(
                            f"{pool.name} ({pool.uid}) was deleted at {pool.gone_at:.3f} but has "
                            f"{alive[pool.uid]} instances alive at {now:.3f}")
                    if obj is not None:
                        waiting.append(f"{pool.name}: deleting, {alive.get(pool.uid, 0)} alive")
                    continue
                st = status(obj) if obj else {}
                if not (obj and ready(obj) and st.get("runningCount") == pool.expected
                        and st.get("currentCount") == pool.expected and alive.get(pool.uid, 0) == pool.expected):
                    waiting.append(f"{pool.name}: {alive.get(pool.uid, 0)} alive for {pool.expected}, "
                                   f"Ready={ready(obj) if obj else None}, running={st.get('runningCount')}")
            last = waiting
            return not waiting

        try:
            wait_for(settled, timeout=timeout, interval=0.5, what="every pool to converge")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last}\n{self.replay()}") from None
        assert not self.sampled_violations, "\n".join(self.sampled_violations) + "\n" + self.replay()
        return time.monotonic() - started

    def replay(self) -> str:
        steps = os.environ.get("SPOTPOOL_CHAOS_FAULTS", DEFAULT_STEPS)
        return (f"seed {self.seed} (replay: SPOTPOOL_CHAOS_SEED={self.seed} SPOTPOOL_CHAOS_FAULTS={steps})\n"
                + "\n".join(self.log))

    # -- faults ------------------------------------------------------------------------------------
    def spend_count(self, incarnation: Incarnation) -> float:
        text = incarnation.op.metrics()
        return sum(float(v) for action, v in re.findall(
            r'^spotpool_cvm_api_request_duration_seconds_count\{action="([^"]+)"\} (\S+)$', text, re.MULTILINE)
            if action in SPENDING)

    def in_flight(self, timeout: float = LEASE) -> str:
        """Until a RunInstances or TerminateInstances has reached a proxy and is not answered yet."""
        def on_the_wire() -> str | None:
            for incarnation in self.slots.values():
                for call in reversed(incarnation.proxy.calls[-20:]):
                    if call.action in SPENDING and call.answered is None:
                        return f"{incarnation.name}'s {call.action} on the wire"
            return None
        try:
            return wait_for(on_the_wire, timeout=timeout, interval=0.02, what="a spending call")
        except AssertionError:
            return "no spending call went on the wire"

    def replace(self, incarnation: Incarnation) -> Incarnation:
        """SIGKILL `incarnation`, start a fresh process in its slot, and wait for a leader."""
        killed = time.monotonic()
        self.kill(incarnation)
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(self.start, incarnation.slot)
            leader = self.leader()
            self.figures.append(("leader again after a SIGKILL", time.monotonic() - killed))
            fresh = starting.result()
        self.note(f"SIGKILLed {incarnation.name}; {fresh.name} started; {leader.name} leads")
        return fresh

    def stop_leader(self, leader: Incarnation, held: float, past_lease: bool) -> None:
        assert leader.op.proc is not None
        before, scraped = self.spend_count(leader), time.time()
        os.killpg(leader.op.proc.pid, signal.SIGSTOP)
        stopped = time.time()
        time.sleep(held)  # the fault itself
        with open(leader.op.log, "a") as out:
            out.write("\n===== SIGCONT =====\n")
        os.killpg(leader.op.proc.pid, signal.SIGCONT)
        resumed = time.time()
        self.note(f"SIGSTOPped {leader.name} for {resumed - stopped:.2f} s")
        if not past_lease:
            self.leader()
            return
        record = Resumed(leader.name, stopped, resumed, before, scraped)
        self.resumed.append(record)

        def stepped_down() -> bool:
            return "stops leading" in leader.op.logs().rsplit("===== SIGCONT =====", 1)[1]
        wait_for(stepped_down, timeout=OBSERVE_INTERVAL + SLACK, what=f"{leader.name} to step down after SIGCONT")
        new = self.leader()
        self.figures.append(("leader again after a SIGSTOP past the lease", time.time() - stopped))
        # A full pass of the new leader after the resume (its sweep lists the instances): the
        # resumed one had every chance to act on what it held.
        seen = len(self.simulator.calls("DescribeInstances"))
        wait_for(lambda: len(self.simulator.calls("DescribeInstances")) > seen + 1, timeout=3 * OBSERVE_INTERVAL,
                 what="the new leader's next observations")
        record.counts_after, record.scraped_after = self.spend_count(leader), time.time()
        self.note(f"{leader.name} stepped down after SIGCONT; {new.name} leads")

    def kill_plane(self, name: str, down: float) -> None:
        started = time.monotonic()
        self.plane.kill(name)
        time.sleep(down)  # the outage itself
        self.plane.respawn(name)
        self.note(f"SIGKILLed {name}; back after {time.monotonic() - started:.2f} s")
        leader = self.leader()
        self.figures.append((f"leader again after {name} SIGKILL", time.monotonic() - started))
        self.note(f"{leader.name} leads")

    def run_step(self, step: Step) -> None:
        self.note(step.describe())
        leader = self.leader()
        kind, name, value = step.edit
        deleted: Pool | None = None
        if kind == "scale":
            pool = self.live(name)
            assert pool is not None
            self.scale(pool, value)
        elif kind == "delete":
            deleted = self.live(name)
            assert deleted is not None
            self.delete(deleted)
        elif kind == "recreate":
            pool = self.create(name, value)
            self.note(f"{name} recreated as {pool.uid[:8]}")
        # The fault's moment.
        if step.fault == "kill-leader-during-delete":
            assert deleted is not None
            uid = deleted.uid

            def terminating() -> bool:
                return any(i["tags"].get(OWNER_UID_TAG) == uid and i["timeline"]["terminatedAt"] is not None
                           for i in self.simulator.instances(ever="true"))
            wait_for(terminating, timeout=LEASE + SLACK, interval=0.05, what=f"{name}'s first termination")
            time.sleep(step.extra)
        elif step.in_flight:
            self.note(self.in_flight())
        else:
            time.sleep(step.offset)
        if step.fault in ("kill-leader", "kill-leader-during-delete"):
            self.replace(leader)
        elif step.fault == "kill-follower":
            self.replace(self.follower(leader))
        elif step.fault == "stop-leader":
            self.stop_leader(leader, step.duration, past_lease=False)
        elif step.fault == "stop-leader-past-lease":
            self.stop_leader(leader, step.duration, past_lease=True)
        elif step.fault == "kill-etcd":
            self.kill_plane("etcd", step.duration)
        elif step.fault == "kill-apiserver":
            self.kill_plane("kube-apiserver", step.duration)
        took = self.converge()
        self.note(f"converged {took:.1f} s after the recovery")


# -- the checks ----------------------------------------------------------------------------------------

def sent(call: dict[str, Any]) -> float:
    """When the simulator received a call: the ledger records when it answered."""
    return float(call["time"]) - float(call["durationMs"]) / 1000


@dataclass
class LeaseWrite:
    at: float  # the apiserver received it
    user: str
    holder: str
    renewed: float  # the renewTime the writer put in: its clock right before it sent the write


def lease_writes(audit: list[dict[str, Any]], name: str) -> list[LeaseWrite]:
    writes = []
    for event in audit:
        ref = event.get("objectRef") or {}
        code = (event.get("responseStatus") or {}).get("code", 0)
        if ref.get("resource") != "leases" or ref.get("name") != name or not 200 <= code < 300:
            continue
        spec = (event.get("requestObject") or {}).get("spec") or {}
        if spec.get("renewTime") is None:
            continue
        writes.append(LeaseWrite(epoch(event["requestReceivedTimestamp"]), event["user"]["username"],
                                 spec.get("holderIdentity") or "", epoch(spec["renewTime"])))
    return sorted(writes, key=lambda w: w.at)


def out_of_term(writes: list[LeaseWrite], incarnation: str, at: float) -> str | None:
    """Why `incarnation` did not hold the Lease at `at`, or None if it did: its last successful
    renewal before `at` is less than a lease duration old, and nobody else acquired since."""
    mine = [w for w in writes if w.at <= at and w.user == incarnation and w.holder.startswith(incarnation + "_")]
    if not mine:
        return "it had never held the Lease"
    last = mine[-1]
    taken = [w for w in writes if last.at < w.at <= at and not w.holder.startswith(incarnation + "_")]
    if taken:
        return f"the Lease went to {taken[0].holder or '(released)'} at {taken[0].at:.3f}"
    if at - last.renewed >= LEASE:
        return f"its last renewal was {at - last.renewed:.2f} s before (lease {LEASE:.0f} s)"
    return None


def removes_finalizer(patch: dict[str, Any]) -> bool:
    """Whether a patch of the pool (a merge patch, or a JSON patch as {"operations": [...]}) takes
    spotpool's finalizer off."""
    finalizers = (patch.get("metadata") or {}).get("finalizers", ...)
    if finalizers is None or (isinstance(finalizers, list) and FINALIZER not in finalizers):
        return True
    for op in patch.get("operations") or []:
        path = str(op.get("path", "")) if isinstance(op, dict) else ""
        if path.startswith("/metadata/finalizers") and op.get("op") == "remove":
            return True
        if path == "/metadata/finalizers" and op.get("op") == "replace" and FINALIZER not in (op.get("value") or []):
            return True
    return False


def finalizer_removed(audit: list[dict[str, Any]], pool: Pool) -> tuple[float, str] | None:
    """(when, by whom) the deleted `pool`'s finalizer was removed: the first successful patch of its
    name that takes it off, after the deletion was asked for (the object goes with it)."""
    asked = pool.timeline[-1][0]
    for event in audit:
        ref = event.get("objectRef") or {}
        body = event.get("requestObject") or {}
        at = epoch(event["requestReceivedTimestamp"])
        if ref.get("resource") == "spotcomputeenvironments" and ref.get("name") == pool.name \
                and not ref.get("subresource") and event.get("verb") in ("patch", "update") and at >= asked \
                and 200 <= (event.get("responseStatus") or {}).get("code", 0) < 300 \
                and removes_finalizer(body if isinstance(body, dict) else {"operations": body}):
            return at, event["user"]["username"]
    return None


def check_run(chaos: Chaos) -> tuple[list[str], list[str]]:
    """(violations, figures): every invariant of the module docstring, over the whole run."""
    violations: list[str] = list(chaos.sampled_violations)
    figures: list[str] = []
    everyone = chaos.plane.audit()
    audit = [e for e in everyone if AUDIT_GROUP in (e.get("user") or {}).get("groups", [])]
    writes = lease_writes(audit, lease_name(chaos.cluster_id, [chaos.namespace]))
    names = {i.name for i in chaos.incarnations}
    if not writes:
        violations.append("no Lease write in the audit log: the attribution cannot work")

    # 1. attribution, and terms that never overlap
    proxied = {c.request_id: c for i in chaos.incarnations for c in i.proxy.calls if c.request_id}
    ledger = chaos.simulator.calls()
    unattributed = [(c["action"], c["requestId"]) for c in ledger if c["requestId"] not in proxied]
    if unattributed:
        violations.append(f"{len(unattributed)} ledger calls sent by no operator's proxy: {unattributed[:5]}")
    in_ledger = {c["requestId"] for c in ledger}
    unrecorded = [(c.incarnation, c.action) for c in proxied.values() if c.request_id not in in_ledger]
    if unrecorded:
        violations.append(f"{len(unrecorded)} answered calls missing from the ledger: {unrecorded[:5]}")
    for previous, write in itertools.pairwise(writes):
        prefix = previous.holder.split("_")[0]
        if previous.holder and not write.holder.startswith(prefix + "_") and \
                write.renewed - previous.renewed < LEASE - 0.05:
            violations.append(f"{write.holder} acquired the Lease {write.renewed - previous.renewed:.2f} s after "
                              f"{previous.holder}'s last renewal (lease {LEASE:.0f} s)")
    holders = [w for k, w in enumerate(writes) if k == 0 or w.holder != writes[k - 1].holder]
    figures.append("Lease holders: " + " -> ".join(h.holder.split("_")[0] or "(released)" for h in holders))

    # 2. spending calls from the holder only
    owner = {c["requestId"]: proxied[c["requestId"]].incarnation for c in ledger if c["requestId"] in proxied}
    spending = [c for c in ledger if c["action"] in SPENDING and c["requestId"] in owner]
    closest = 0.0
    for call in spending:
        who, at = owner[call["requestId"]], sent(call)
        why = out_of_term(writes, who, at)
        if why is not None:
            violations.append(f"{call['action']}{' DryRun' if call['params'].get('DryRun') else ''} "
                              f"(token {call['params'].get('ClientToken')}, ids "
                              f"{call['params'].get('InstanceIds')}, {call['errorCode'] or 'OK'}) reached the "
                              f"cloud at {at:.3f} from {who}, not the leader: {why}")
        else:
            last = max(w.renewed for w in writes if w.at <= at and w.user == who)
            closest = max(closest, at - last)
    figures.append(f"{len(spending)} spending calls, all from the holder; the latest came {closest:.2f} s after "
                   f"its sender's last renewal (renew deadline {TIMING.renew_deadline} s)")
    by_process: dict[str, dict[str, int]] = {}
    for call in ledger:
        who = owner.get(call["requestId"], "?")
        by_process.setdefault(who, {}).setdefault(call["action"], 0)
        by_process[who][call["action"]] += 1
    for who in sorted(by_process):
        figures.append(f"  {who}: " + ", ".join(f"{a} {n}" for a, n in sorted(by_process[who].items())))
    reads_outside = [c for c in ledger if c["action"] not in SPENDING and c["requestId"] in owner
                     and out_of_term(writes, owner[c["requestId"]], sent(c)) is not None]
    figures.append(f"{len(reads_outside)} read-only calls reached the cloud outside their sender's term "
                   f"(allowed: a pass begun in term may finish its reads)")

    # 3. the operators' own Kubernetes writes, from the holder only
    kinds: dict[str, int] = {}
    refused_late: list[str] = []
    journal: dict[str, float] = {}  # ClientToken -> first successful journal write
    for event in audit:
        ref = event.get("objectRef") or {}
        user = event["user"]["username"]
        code = (event.get("responseStatus") or {}).get("code", 0)
        at = epoch(event["requestReceivedTimestamp"])
        body = event.get("requestObject") or {}
        what = None
        if not isinstance(body, dict):  # a JSON patch (a list of operations)
            body = {"operations": body}
        if ref.get("resource") == "spotcomputeenvironments" and ref.get("subresource") == "status":
            what = "status write"
            # (An apiserver on its way down may answer before it decodes the body: nothing to check.)
            if (body or 200 <= code < 300) and not (body.get("metadata") or {}).get("resourceVersion"):
                violations.append(f"an unconditional status write of {ref.get('name')} by {user} at {at:.3f}")
            if 200 <= code < 300:
                for record in (body.get("status") or {}).get("inflightLaunches") or []:
                    token = record.get("clientToken") if isinstance(record, dict) else None
                    if token and token not in journal:
                        journal[token] = at
        elif ref.get("resource") == "events":
            what = "Event"
        elif ref.get("resource") == "secrets":
            what = "Secret write"
        elif ref.get("resource") == "spotcomputeenvironments" and event.get("verb") == "patch" \
                and removes_finalizer(body):
            what = "finalizer removal"
        if what is None:
            continue
        kinds[what] = kinds.get(what, 0) + 1
        why = out_of_term(writes, user, at) if user in names else "not an operator process"
        if why is not None:
            said = (f"{what} ({event['verb']} {ref.get('resource')}/{ref.get('name')}"
                    f"{'/' + ref['subresource'] if ref.get('subresource') else ''}, answered {code}) by "
                    f"{user} at {at:.3f}: not the leader: {why}")
            # A write the apiserver refused (its resourceVersion precondition, or the object gone)
            # changed nothing: the design makes late writes of a past leader harmless that way.
            (violations if 200 <= code < 300 else refused_late).append(said)
    figures.append("operator writes that took effect, all from the holder: "
                   + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    figures.append(f"{len(refused_late)} write attempts from outside a term, refused by the apiserver"
                   + "".join(f"\n    {said}" for said in refused_late[:10]))
    conflicts = sum(1 for e in audit if (e.get("objectRef") or {}).get("subresource") == "status"
                    and (e.get("responseStatus") or {}).get("code") == 409)
    bookkeeping = [e for e in audit if (e.get("objectRef") or {}).get("resource") == "spotcomputeenvironments"
                   and not (e.get("objectRef") or {}).get("subresource") and e.get("verb") == "patch"
                   and e["user"]["username"] in names
                   and out_of_term(writes, e["user"]["username"], epoch(e["requestReceivedTimestamp"])) is not None]
    figures.append(f"{conflicts} status writes refused on their resourceVersion (409); {len(bookkeeping)} patches "
                   f"of kopf's own annotations by non-leaders (its delete handler retrying, fenced)")
    if not kinds.get("status write"):
        violations.append("no status write in the audit log: the attribution cannot work")

    # 4. a leader resumed past its lease stays silent until it leads again
    for record in chaos.resumed:
        again = next((w.at for w in writes if w.at > record.resumed and w.user == record.incarnation
                      and w.holder.startswith(record.incarnation + "_")), float("inf"))
        late = [(c["action"], round(sent(c) - record.resumed, 3)) for c in spending
                if owner[c["requestId"]] == record.incarnation and record.resumed <= sent(c) < again]
        if late:
            violations.append(f"{record.incarnation} resumed at {record.resumed:.3f} and sent {late}")
        wrote = []
        for event in audit:
            ref, at = event.get("objectRef") or {}, epoch(event["requestReceivedTimestamp"])
            mutation = ref.get("resource") in ("events", "secrets") or ref.get("subresource") == "status"
            if event["user"]["username"] == record.incarnation and mutation and record.resumed <= at < again \
                    and 200 <= (event.get("responseStatus") or {}).get("code", 0) < 300:
                wrote.append((event["verb"], ref.get("resource"), ref.get("subresource"),
                              round(at - record.resumed, 3)))
        if wrote:
            violations.append(f"{record.incarnation} resumed at {record.resumed:.3f} and wrote {wrote}")
        # Its own counters count answered attempts: at most the calls it had on the wire when
        # stopped may still be counted after the scrape before the stop.
        mine = next(i for i in chaos.incarnations if i.name == record.incarnation)
        allowance = sum(1 for c in mine.proxy.calls if c.action in SPENDING and c.received <= record.stopped
                        and (c.answered or float("inf")) >= record.scraped_before - 1)
        if record.counts_after is None:
            violations.append(f"{record.incarnation}: no metrics after SIGCONT")
        elif again > record.scraped_after and record.counts_after - record.counts_before > allowance:
            violations.append(f"{record.incarnation}'s RunInstances/TerminateInstances counters moved by "
                              f"{record.counts_after - record.counts_before:.0f} over the stop and resume, "
                              f"with {allowance} calls on the wire at the stop")
        figures.append(f"{record.incarnation} stopped {record.resumed - record.stopped:.1f} s: after SIGCONT "
                       f"{len(late)} spending calls, {len(wrote)} writes; its spending counters "
                       f"{record.counts_before:.0f} -> {record.counts_after:.0f} ({allowance} on the wire at the stop)")

    # 5. purchases: journaled first, never past the count they were decided on
    ever = chaos.simulator.instances(ever="true")
    first_call: dict[str, float] = {}
    for call in ledger:
        token = call["params"].get("ClientToken")
        if call["action"] == "RunInstances" and token and not call["params"].get("DryRun"):
            first_call.setdefault(token, sent(call))
    checked = 0
    for pool in chaos.pools.values():
        mine = sorted((i for i in ever if i["tags"].get(OWNER_UID_TAG) == pool.uid),
                      key=lambda i: i["timeline"]["launchedAt"])
        figures.append(f"{pool.name} ({pool.uid[:8]}): {len(mine)} bought over expectedCount "
                       f"{[v for _, _, v in pool.timeline]}" + (" (deleted)" if pool.deleting else ""))
        for instance in mine:
            token = instance["tags"].get(LAUNCH_TAG, "")
            launched = float(instance["timeline"]["launchedAt"])
            journaled = journal.get(token)
            if journaled is None or journaled >= first_call.get(token, launched):
                violations.append(f"{instance['instanceId']} of {pool.name} bought by {token} at {launched:.3f} "
                                  f"with no journal write before (journal: {journaled})")
                continue
            checked += 1
            alive = sum(1 for other in mine if float(other["timeline"]["launchedAt"]) <= launched
                        and (other["timeline"]["terminatedAt"] is None
                             or float(other["timeline"]["terminatedAt"]) > launched))
            allowed = pool.max_expected(journaled, launched)
            if allowed is None or alive > allowed:
                violations.append(f"{pool.name}: {alive} alive after {instance['instanceId']} was bought at "
                                  f"{launched:.3f} (token {token}, journaled at {journaled:.3f}); expectedCount "
                                  f"was at most {allowed} from the journal write to the launch")

    # 6. a deleted pool left nothing, ever after
        if pool.deleting:
            removed = finalizer_removed(everyone, pool)
            if pool.gone_at is None or removed is None:
                violations.append(f"{pool.name} ({pool.uid}): never seen gone ({pool.gone_at}), or no removal of its "
                                  f"finalizer in the audit log ({removed})")
                continue
            at, user = removed
            for instance in mine:
                ended = instance["timeline"]["terminatedAt"]
                if ended is None or float(ended) + TERMINATE_DELAY > at:
                    violations.append(f"{instance['instanceId']} of the deleted {pool.name} ({instance['state']}, "
                                      f"termination begun at {ended}) was not gone when {user} removed the "
                                      f"finalizer at {at:.3f}")
        else:
            alive_now = [i for i in mine if i["state"] in ("PENDING", "RUNNING")]
            if len(alive_now) != pool.expected:
                violations.append(f"{pool.name}: {len(alive_now)} alive at the end for {pool.expected}")
    figures.append(f"{checked} purchased instances checked against their journal write and the count")
    return violations, figures


# -- the test ------------------------------------------------------------------------------------------

DEFAULT_SEED = 13


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    chosen = os.environ.get("SPOTPOOL_CHAOS_SEED") or str(DEFAULT_SEED)
    seed = random.SystemRandom().randrange(1, 1_000_000) if chosen == "random" else int(chosen)
    plane = ChaosPlane(workdir=tmp_path / "plane", binaries=ensure_binaries(), with_controller_manager=False)
    plane.start()
    config = simulator_config().model_dump(mode="json")
    config["api"]["ledger_size"] = 1_000_000  # the whole run: every call is attributed
    simulator = SimulatorProcess(tmp_path / "simulator", SimulatorConfig.model_validate(config))
    harness: Chaos | None = None
    try:
        assert plane.binaries is not None
        kubectl = Kubectl(plane.binaries / "kubectl", plane.kubeconfig)
        kubectl.apply(CRD_FILE.read_text(), "--force-conflicts")
        kubectl.run("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        namespace = unique_name("chaos")
        kubectl.run("create", "namespace", namespace)
        simulator.start()
        pools = Pools(kubectl, namespace, simulator)
        pools.secret()
        harness = Chaos(plane, kubectl, namespace, simulator, pools, tmp_path, seed)
        yield harness
    finally:
        if harness is not None:
            for incarnation in harness.incarnations:
                proc = incarnation.op.proc
                if proc is not None and proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGCONT)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda i: i.op.stop(), harness.incarnations))
            for incarnation in harness.incarnations:
                incarnation.proxy.close()
        simulator.stop()
        plane.stop()


@pytest.mark.timeout(300 + 60 * int(os.environ.get("SPOTPOOL_CHAOS_FAULTS", DEFAULT_STEPS)))
def test_chaos_never_spends_outside_a_term_nor_past_the_count(chaos: Chaos) -> None:
    steps = int(os.environ.get("SPOTPOOL_CHAOS_FAULTS", DEFAULT_STEPS))
    rng = random.Random(chaos.seed)
    initial = {f"p{k}": rng.randint(2, 4) for k in range(3)}
    plan = make_plan(chaos.seed, steps, initial)
    chaos.note(f"chaos seed {chaos.seed}, {steps} steps (SPOTPOOL_CHAOS_SEED={chaos.seed} "
               f"SPOTPOOL_CHAOS_FAULTS={steps} replays it); pools {initial}")
    for step in plan:
        chaos.note("  planned " + step.describe())
    # Purchases and releases take a moment on the wire, so that faults find calls in flight.
    chaos.simulator.control("POST", "faults", {"RunInstances": {"latencyMs": 600},
                                               "TerminateInstances": {"latencyMs": 400}})
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(chaos.start, ("a", "b")))
    chaos.note(f"{chaos.leader().name} leads")
    for name, expected in initial.items():
        chaos.create(name, expected)
    chaos.note(f"initial pools converged in {chaos.converge():.1f} s")

    for step in plan:
        chaos.run_step(step)

    violations, figures = check_run(chaos)
    for label, seconds in chaos.figures:
        figures.append(f"{label}: {seconds:.2f} s")
    print("\n" + "\n".join(figures))
    assert not violations, f"{len(violations)} violations:\n" + "\n".join(violations[:40]) + "\n" + chaos.replay()


def test_plan_is_replayable_and_covers_every_fault() -> None:
    initial = {"p0": 3, "p1": 2, "p2": 4}
    first, again = make_plan(42, 8, initial), make_plan(42, 8, initial)
    assert [s.describe() for s in first] == [s.describe() for s in again]
    assert {s.fault for s in first} >= set(FAULT_KINDS) - {"kill-leader-during-delete"}
    assert any(s.fault == "kill-leader-during-delete" and s.edit[0] == "delete" for s in first)
    assert [s.describe() for s in make_plan(42, 20, initial)][:8] == [s.describe() for s in first]
    model: dict[str, int | None] = dict(initial)
    for step in make_plan(7, 200, initial):
        kind, name, value = step.edit
        if kind == "scale":
            assert model[name] is not None and 0 <= value <= MAX_EXPECTED and value != model[name]
            model[name] = value
        elif kind == "delete":
            assert model[name] is not None
            model[name] = None
        elif kind == "recreate":
            assert model[name] is None
            model[name] = value



def test_the_checks_can_fail() -> None:
    """The judges of the run, on made-up histories: each says no when it should."""
    writes = [LeaseWrite(10.0, "chaos-a-1", "chaos-a-1_x", 9.99), LeaseWrite(11.0, "chaos-a-1", "chaos-a-1_x", 10.99),
              LeaseWrite(16.0, "chaos-b-1", "chaos-b-1_y", 15.99)]
    assert out_of_term(writes, "chaos-a-1", 12.0) is None
    assert "4.51 s" in (out_of_term(writes, "chaos-a-1", 15.5) or "")  # expired, nobody took it yet
    assert "went to chaos-b-1_y" in (out_of_term(writes, "chaos-a-1", 16.5) or "")
    assert "never held" in (out_of_term(writes, "chaos-b-1", 12.0) or "")
    assert out_of_term(writes, "chaos-b-1", 17.0) is None
    pool = Pool("p", "uid", 2, [(0.0, 1.0, 3), (10.0, 11.0, 5), (20.0, 21.0, 2)])
    assert pool.max_expected(12.0, 15.0) == 5
    assert pool.max_expected(21.5, 25.0) == 2
    assert pool.max_expected(10.5, 10.6) == 5 and pool.max_expected(9.0, 9.5) == 3
    assert pool.max_expected(-5.0, -1.0) is None
    assert removes_finalizer({"operations": [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
                                             {"op": "remove", "path": "/metadata/finalizers"}]})
    assert not removes_finalizer({"operations": [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]})
    assert removes_finalizer({"metadata": {"finalizers": None}})
    assert not removes_finalizer({"metadata": {"annotations": {"spotpool.io/touch-dummy": None}}})
