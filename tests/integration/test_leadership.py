"""Leader election against the real kube-apiserver: one leader among two, a paused leader fenced and
replaced, a clean release handed over at once, stale writes refused, and two installations from
different namespaces meeting on one Lease in kube-system with the default flags.

Each elector runs in a thread of its own with its own event loop, as it would in its own process:
pausing one is blocking its loop (what SIGSTOP, a frozen VM or a stuck handler does to it), while
the test thread keeps asking `is_leader()`, which must not need the loop to answer.

Short timings keep the tests quick: lease 3 s, renew deadline 2 s, retry 0.5 s.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from spotpool.controller.config import OperatorConfig
from spotpool.controller.leadership import (
    KubeLeaseStore,
    LeaderElector,
    LeaseConflict,
    LeaseRecord,
    Timing,
    from_config,
    lease_name,
)
from tests.conftest import Cluster
from tests.support.kube import unique_name, wait_for

pytestmark = pytest.mark.cluster

TIMING = Timing(lease_duration=3, renew_deadline=2.0, retry_period=0.5)
# The longest a follower may need, once the leader stopped renewing: the lease duration counted from
# its observation of the last renewal, which comes at most one jittered retry after that renewal, and
# one jittered retry more before it looks again. Plus scheduling slack on a loaded 2-core machine.
TAKEOVER_BOUND = TIMING.lease_duration + 2 * TIMING.retry_period * (1 + TIMING.jitter) + 1.0


def api_client(kubeconfig: Path) -> Any:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


class ThreadedElector:
    """A LeaderElector on an event loop in a thread of its own; `pause()` blocks that loop."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str, identity: str) -> None:
        self.kubeconfig, self.namespace, self.name, self.identity = kubeconfig, namespace, name, identity
        self.transitions: list[tuple[float, str, int, str]] = []  # (monotonic, started|stopped, term, reason)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.release_on_stop = True

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.elector = LeaderElector(
            KubeLeaseStore(self.namespace, api_client(self.kubeconfig), request_timeout=2.0),
            self.name, self.identity, TIMING,
            on_started_leading=lambda term: self.transitions.append((time.monotonic(), "started", term, "")),
            on_stopped_leading=lambda term, why: self.transitions.append((time.monotonic(), "stopped", term, why)),
        )
        self.elector.start()
        self._ready.set()
        await self._stop.wait()
        await self.elector.stop(release=self.release_on_stop)

    def start(self) -> ThreadedElector:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def is_leader(self) -> bool:
        return self.elector.is_leader()

    def pause(self) -> threading.Event:
        """Block the elector's loop until the returned event is set."""
        gate, blocked = threading.Event(), threading.Event()

        def block() -> None:
            blocked.set()
            gate.wait()

        self.loop.call_soon_threadsafe(block)
        assert blocked.wait(5)
        return gate

    def stop(self, *, release: bool = True) -> None:
        if not self._thread.is_alive():
            return
        self.release_on_stop = release
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()


@pytest.fixture
def electors(cluster: Cluster, namespace: str) -> Iterator[list[ThreadedElector]]:
    """Two candidates for one Lease named like the operator's, in the test's namespace."""
    name = lease_name(unique_name("cluster"))
    pair = [ThreadedElector(cluster.kubeconfig, namespace, name, f"{who}_{unique_name('pod')}").start()
            for who in ("a", "b")]
    yield pair
    for e in pair:
        e.stop()


def lease(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj = cluster.kubectl.get("lease", name, namespace)
    assert obj is not None
    return obj


def one_leader(pair: list[ThreadedElector]) -> tuple[ThreadedElector, ThreadedElector] | None:
    leaders = [e for e in pair if e.is_leader()]
    assert len(leaders) <= 1, "two leaders at once"
    if not leaders:
        return None
    return leaders[0], next(e for e in pair if e is not leaders[0])


def watch_for(seconds: float, pair: list[ThreadedElector]) -> None:
    """Ask both, every 20 ms for `seconds`: never two leaders (no sleeping in place of checking)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert sum(e.is_leader() for e in pair) <= 1, "two leaders at once"
        time.sleep(0.02)


def test_two_candidates_elect_exactly_one_leader(cluster: Cluster, namespace: str,
                                                 electors: list[ThreadedElector]) -> None:
    leader, follower = wait_for(lambda: one_leader(electors), timeout=10, what="a leader")
    # Several lease durations: renewals keep the same leader, the follower never claims.
    watch_for(2 * TIMING.lease_duration, electors)
    assert leader.is_leader() and not follower.is_leader()
    spec = lease(cluster, namespace, leader.name)["spec"]
    assert spec["holderIdentity"] == leader.identity
    assert spec["leaseDurationSeconds"] == TIMING.lease_duration
    assert spec["leaseTransitions"] == 0
    # Renewed, and with the microsecond timestamps the API server insists on.
    assert spec["renewTime"] > spec["acquireTime"]
    assert follower.elector.holder == leader.identity
    assert [t[1] for t in leader.transitions] == ["started"] and follower.transitions == []


def test_a_paused_leader_is_fenced_and_replaced(cluster: Cluster, namespace: str,
                                                electors: list[ThreadedElector]) -> None:
    leader, follower = wait_for(lambda: one_leader(electors), timeout=10, what="a leader")
    gate = leader.pause()
    paused_at = time.monotonic()
    try:
        # The paused leader's own answer turns False within the renew deadline, its loop still blocked.
        wait_for(lambda: not leader.is_leader(), timeout=TIMING.renew_deadline + 0.2, interval=0.02,
                 what="the paused leader to stop answering True")
        fenced_after = time.monotonic() - paused_at
        assert fenced_after <= TIMING.renew_deadline + 0.2
        # The follower takes over after the lease duration, never while the old one answers True.
        wait_for(lambda: one_leader(electors) and follower.is_leader(), timeout=TAKEOVER_BOUND, interval=0.02,
                 what="the follower to take over")
        took_over_after = time.monotonic() - paused_at
        # Not before the lease duration from the last renewal, sent at most a retry period (plus a
        # round trip) before the pause.
        assert took_over_after >= TIMING.lease_duration - TIMING.retry_period - 0.2, took_over_after
        assert lease(cluster, namespace, leader.name)["spec"]["holderIdentity"] == follower.identity
        assert leader.transitions[-1][1] == "started"  # its loop has not run: no callback yet
    finally:
        gate.set()
    # Woken up: still no leadership, the end of its term is reported, and it never claims while the
    # follower renews.
    assert not leader.is_leader()
    watch_for(2 * TIMING.lease_duration, electors)
    assert follower.is_leader() and not leader.is_leader()
    assert leader.transitions[-1][1:3] == ("stopped", 1) and "renew deadline" in leader.transitions[-1][3]
    spec = lease(cluster, namespace, leader.name)["spec"]
    assert spec["holderIdentity"] == follower.identity and spec["leaseTransitions"] == 1
    print(f"fenced {fenced_after:.2f} s and replaced {took_over_after:.2f} s after the pause")


def test_a_killed_leader_is_replaced_within_the_lease_duration(electors: list[ThreadedElector]) -> None:
    leader, follower = wait_for(lambda: one_leader(electors), timeout=10, what="a leader")
    leader.stop(release=False)  # like SIGKILL: the Lease is left to expire
    killed_at = time.monotonic()
    wait_for(lambda: follower.is_leader(), timeout=TAKEOVER_BOUND, interval=0.02, what="the follower to take over")
    elapsed = time.monotonic() - killed_at
    assert TIMING.lease_duration - TIMING.retry_period * (1 + TIMING.jitter) <= elapsed <= TAKEOVER_BOUND
    print(f"replaced {elapsed:.2f} s after the kill")


def test_a_clean_stop_hands_over_within_a_retry_period(cluster: Cluster, namespace: str,
                                                       electors: list[ThreadedElector]) -> None:
    leader, follower = wait_for(lambda: one_leader(electors), timeout=10, what="a leader")
    watch_for(TIMING.retry_period * 2, electors)  # the follower has seen the record by now
    started = time.monotonic()
    leader.stop(release=True)
    stopped = time.monotonic()
    assert leader.transitions[-1][1:3] == ("stopped", 1)
    assert leader.transitions[-1][0] <= stopped  # the term ended before stop() returned
    wait_for(lambda: follower.is_leader(), timeout=TIMING.retry_period * (1 + TIMING.jitter) + 1.0,
             interval=0.02, what="the follower to take the released lease")
    elapsed = time.monotonic() - started
    assert elapsed < TIMING.lease_duration, "the release did not shorten the handover"
    spec = lease(cluster, namespace, leader.name)["spec"]
    assert spec["holderIdentity"] == follower.identity and spec["leaseTransitions"] == 1
    print(f"handed over {elapsed:.2f} s after stop()")


async def test_writes_with_a_stale_resource_version_are_refused(cluster: Cluster, namespace: str) -> None:
    store = KubeLeaseStore(namespace, api_client(cluster.kubeconfig))
    name = lease_name(unique_name("cluster"))
    assert await store.get(name) is None
    whole_second = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)  # no microseconds: must still be accepted
    first = await store.create(name, LeaseRecord("a", 3, whole_second, whole_second, 0))
    with pytest.raises(LeaseConflict):
        await store.create(name, LeaseRecord("b", 3, whole_second, whole_second, 0))
    second = await store.update(name, LeaseRecord("a", 3, whole_second, datetime.now(UTC), 0), first)
    assert second != first
    with pytest.raises(LeaseConflict):
        await store.update(name, LeaseRecord("b", 3, whole_second, datetime.now(UTC), 1), first)
    got = await store.get(name)
    assert got is not None and got[0].holder == "a" and got[1] == second
    assert got[0].acquire_time is not None and got[0].acquire_time.replace(microsecond=0) == whole_second


def test_a_leader_overwritten_behind_its_back_steps_down(cluster: Cluster, namespace: str,
                                                         electors: list[ThreadedElector]) -> None:
    """Someone else (another installation with a different timing, or a person) writes the Lease:
    the leader's next renewal fails its precondition; it reads the new record, does not overwrite
    it, and stops acting at its renew deadline."""
    leader, _ = wait_for(lambda: one_leader(electors), timeout=10, what="a leader")
    intruder = "intruder_x"
    cluster.kubectl.run("patch", "lease", leader.name, f"--namespace={namespace}", "--type=merge", "-p",
                        json.dumps({"spec": {"holderIdentity": intruder, "leaseDurationSeconds": 30}}))
    patched_at = time.monotonic()
    wait_for(lambda: not leader.is_leader(), timeout=TIMING.renew_deadline + 0.5, interval=0.02,
             what="the overwritten leader to stop")
    # Neither candidate touches the intruder's record before its 30 s run out.
    watch_for(TIMING.lease_duration * 2, electors)
    assert not any(e.is_leader() for e in electors)
    assert lease(cluster, namespace, leader.name)["spec"]["holderIdentity"] == intruder
    assert time.monotonic() - patched_at < 30


async def test_installations_in_different_namespaces_meet_on_one_lease_by_default(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two installations with the default flags but for the timings, running in different namespaces
    (POD_NAMESPACE) and watching the same namespace, with the default cluster id: their electors (as
    the operator builds them) campaign for the same Lease in kube-system and elect one leader.
    Watching another namespace, a third has a Lease, and a leader, of its own."""
    monkeypatch.delenv("SPOTPOOL_CLUSTER_ID", raising=False)
    config = OperatorConfig(leader_elect=True, namespaces=(namespace,), lease_duration=TIMING.lease_duration,
                            renew_deadline=TIMING.renew_deadline, retry_period=TIMING.retry_period)
    other_scope = unique_name("elsewhere")
    electors = []
    for home, scope in (("ops", namespace), ("canary", namespace), ("team", other_scope)):
        monkeypatch.setenv("POD_NAMESPACE", home)
        monkeypatch.setenv("POD_NAME", f"spotpool-{home}")
        elector = from_config(replace(config, namespaces=(scope,)), unique_name("kube-system-uid"),
                              api_client(cluster.kubeconfig))
        assert isinstance(elector, LeaderElector) and isinstance(elector.store, KubeLeaseStore)
        assert elector.store.namespace == "kube-system" and elector.name == lease_name(None, [scope])
        electors.append(elector)
    ops, canary, team = electors
    assert ops.name == canary.name != team.name
    try:
        for elector in electors:
            elector.start()
        await asyncio.wait_for(team.wait_leading(), timeout=TAKEOVER_BOUND)
        end = time.monotonic() + 2 * TIMING.lease_duration
        while time.monotonic() < end:
            assert ops.is_leader() + canary.is_leader() <= 1, "two leaders for one scope"
            await asyncio.sleep(0.02)
        assert ops.is_leader() + canary.is_leader() == 1 and team.is_leader()
        leader = ops if ops.is_leader() else canary
        assert lease(cluster, "kube-system", ops.name)["spec"]["holderIdentity"] == leader.identity
    finally:
        for elector in electors:
            await elector.stop()
        for name in {ops.name, team.name}:
            cluster.kubectl.run("delete", "lease", name, "--namespace=kube-system", "--ignore-not-found")
