"""Leader election without a cluster: the pure decision, the records written, the timing rules, the
Lease name, and electors on an in-memory store with a fake clock, down to a randomised schedule
that checks the safety property (never two replicas acting) at every step."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from spotpool.controller.cli import parse
from spotpool.controller.config import DEFAULT_LEASE_NAMESPACE, OperatorConfig
from spotpool.controller.leadership import (
    Action,
    InMemoryLeaseStore,
    KubeLeaseStore,
    LeaderElector,
    LeaseConflict,
    LeaseRecord,
    Standalone,
    Timing,
    claim,
    decide,
    expires_at,
    from_config,
    lease_name,
    released,
)
from spotpool.metrics import Metrics

ME, OTHER = "me_1", "other_2"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAST = Timing(lease_duration=15, renew_deadline=10, retry_period=2)

records = st.builds(
    LeaseRecord,
    holder=st.sampled_from(["", ME, OTHER, "third_3"]),
    lease_duration=st.integers(1, 120),
    acquire_time=st.none() | st.just(T0),
    renew_time=st.none() | st.just(T0),
    transitions=st.integers(0, 1000),
)
times = st.floats(0, 1e6, allow_nan=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now)


# -- decide ---------------------------------------------------------------------------------------

def test_decide_table() -> None:
    theirs = LeaseRecord(OTHER, 15)
    assert decide(None, ME, 0, None) is Action.CREATE
    assert decide(LeaseRecord(ME, 15), ME, 0, 0) is Action.RENEW
    assert decide(LeaseRecord("", 1), ME, 0, 0) is Action.ACQUIRE
    assert decide(theirs, ME, 14.999, 0) is Action.WAIT
    assert decide(theirs, ME, 15.0, 0) is Action.ACQUIRE
    assert decide(theirs, ME, 1e9, None) is Action.WAIT  # never seen unchanged: no basis to expire it
    # A Lease deleted under a live holder: wait that holder out before creating a new one.
    assert decide(None, ME, 10, 0, last_seen=theirs) is Action.WAIT
    assert decide(None, ME, 15, 0, last_seen=theirs) is Action.CREATE
    assert decide(None, ME, 0, 0, last_seen=LeaseRecord("", 1)) is Action.CREATE


@given(record=records, now=times, observed_at=times)
def test_decide_never_takes_a_live_foreign_lease(record: LeaseRecord, now: float, observed_at: float) -> None:
    action = decide(record, ME, now, observed_at)
    if record.holder == ME:
        assert action is Action.RENEW
    elif not record.holder:
        assert action is Action.ACQUIRE
    else:
        # The holder's own duration counts, measured only from our own observation.
        assert (action is Action.ACQUIRE) == (now >= observed_at + record.lease_duration)
        assert action in (Action.ACQUIRE, Action.WAIT)


@given(record=st.none() | records, duration=st.integers(1, 60), seconds=st.integers(0, 10**6))
def test_claim_counts_transitions_and_keeps_the_acquire_time(
    record: LeaseRecord | None, duration: int, seconds: int
) -> None:
    now = T0 + timedelta(seconds=seconds)
    new = claim(record, ME, duration, now)
    assert new.holder == ME and new.lease_duration == duration and new.renew_time == now
    if record is not None and record.holder == ME:
        assert new.transitions == record.transitions
        assert new.acquire_time == (record.acquire_time or now)
    else:
        assert new.transitions == (0 if record is None else record.transitions + 1)
        assert new.acquire_time == now
    gone = released(new, now)
    assert gone.holder == "" and gone.lease_duration == 1 and gone.transitions == new.transitions
    assert decide(gone, OTHER, 0, 0) is Action.ACQUIRE  # anyone may take a released lease at once


def test_expires_at_uses_the_holders_duration() -> None:
    assert expires_at(LeaseRecord(OTHER, 40), 100.0) == 140.0


# -- timing and names -----------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lease_duration": 10, "renew_deadline": 10}, "greater than the renew deadline"),
    ({"renew_deadline": 2.4, "retry_period": 2}, "greater than jitter"),
    ({"lease_duration": 15.5}, "whole number"),
    ({"retry_period": 0}, "positive"),
])
def test_timing_refuses_unsafe_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        Timing(**kwargs)  # type: ignore[arg-type]


def test_timing_defaults_are_client_gos() -> None:
    assert Timing() == Timing(lease_duration=15, renew_deadline=10.0, retry_period=2.0, jitter=1.2)


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
namespace_lists = st.lists(st.from_regex(r"[a-z0-9*?-]{1,63}", fullmatch=True), max_size=5)


@given(a=st.text(max_size=300), b=st.text(max_size=300))
def test_lease_name_is_a_valid_name_per_cluster_id(a: str, b: str) -> None:
    name = lease_name(a)
    assert DNS_LABEL.match(name) and len(name) <= 63, name
    assert name == lease_name(a)
    if a != b:
        assert lease_name(a) != lease_name(b)


@given(cluster_id=st.none() | st.text(max_size=300), namespaces=namespace_lists)
def test_lease_name_is_a_valid_name_for_any_scope(cluster_id: str | None, namespaces: list[str]) -> None:
    name = lease_name(cluster_id, namespaces)
    assert DNS_LABEL.match(name) and len(name) <= 63, name
    # The order and repetition of the patterns do not matter, only the set.
    assert name == lease_name(cluster_id, [*reversed(namespaces), *namespaces])
    assert (name == lease_name(cluster_id)) == (not namespaces)


def test_a_long_cluster_id_still_makes_a_valid_lease_name() -> None:
    name = lease_name("0" * 37)  # found by the property above: 64 characters before the fix
    assert DNS_LABEL.match(name) and len(name) == 63, name
    name = lease_name("0" * 37, ["team-a"])
    assert DNS_LABEL.match(name) and len(name) == 63, name


def test_lease_name_is_readable() -> None:
    name = lease_name("1f0c6a8e-7d1b-4cde-9b1e-2a3f4b5c6d7e")
    assert name.startswith("spotpool-leader-1f0c6a8e-7d1b-4cde-9b1e-2a3f4b5c6d")
    assert lease_name("Prod") != lease_name("prod")
    assert re.fullmatch(r"spotpool-leader-prod-gz-[0-9a-f]{10}-ns-[0-9a-f]{10}", lease_name("prod-gz", ["team-a"]))


def test_the_default_cluster_id_gives_one_lease_per_cluster() -> None:
    # The kube-system UID is the same for every installation of a cluster, and the Lease lives in that
    # cluster: it tells nobody apart, so the name leaves it out (and the chart can name the Lease).
    assert lease_name() == lease_name(None) == lease_name(None, []) == "spotpool-leader"
    assert lease_name(None) != lease_name("1f0c6a8e-7d1b-4cde-9b1e-2a3f4b5c6d7e")


def test_the_watched_namespaces_enter_the_lease_name() -> None:
    cluster_wide, team_a = lease_name(None), lease_name(None, ["team-a"])
    # Teams with their own operator, disjoint scopes: a leader each.
    assert len({cluster_wide, team_a, lease_name(None, ["team-b"]), lease_name(None, ["team-a", "team-b"])}) == 4
    assert re.fullmatch(r"spotpool-leader-ns-[0-9a-f]{10}", team_a)
    # The same scope, however written: one leader between them.
    assert lease_name(None, ["team-b", "team-a", "team-a"]) == lease_name(None, ("team-a", "team-b"))
    # The same with a configured cluster id; and the scope's hash never passes for a cluster id's.
    assert lease_name("prod", ["team-a"]) == lease_name("prod", ["team-a"]) != lease_name("prod")
    assert lease_name("prod", ["team-a"]) != lease_name("staging", ["team-a"])
    assert lease_name(None, ["ns"]) != lease_name("ns") and lease_name(None, ["x"]) != lease_name("ns", ["x"])


# -- electors on an in-memory store with a fake clock -----------------------------------------------

def elector(store: InMemoryLeaseStore, clock: FakeClock, identity: str, timing: Timing = FAST,
            **kwargs: object) -> LeaderElector:
    return LeaderElector(store, "lease", identity, timing, clock=clock, wall_clock=clock.wall,
                         rng=lambda: 0.0, **kwargs)  # type: ignore[arg-type]


async def test_one_leader_then_fencing_then_takeover() -> None:
    clock, store = FakeClock(), InMemoryLeaseStore()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    assert await a.step() == 2.0
    assert a.is_leader() and a.term == 1 and a.leading.is_set()
    await b.step()
    assert not b.is_leader() and b.holder == "a"
    for _ in range(3):  # a renews; b keeps seeing fresh records, so its wait restarts
        clock.now += 2
        await a.step()
        await b.step()
        assert a.is_leader() and not b.is_leader()
    renewed_at = clock.now
    # a stops renewing (paused). Its own answer flips at exactly the renew deadline, with no step.
    clock.now = renewed_at + 9.999
    assert a.is_leader() and 0 < a.remaining() <= 0.001 + 1e-9
    clock.now = renewed_at + 10
    assert not a.is_leader() and a.remaining() == 0.0
    assert a.leading.is_set()  # the loop has not run: the event lags, is_leader() does not
    # b last saw a change at renewed_at; it waits the full lease duration from then.
    clock.now = renewed_at + 14.9
    await b.step()
    assert not b.is_leader()
    clock.now = renewed_at + 15
    await b.step()
    assert b.is_leader() and b.term == 1
    assert store.leases["lease"][0].transitions == 1
    # a wakes up: it steps down, sees b's record, and does not claim it.
    stopped: list[tuple[int, str]] = []
    a._on_stopped = lambda term, reason: stopped.append((term, reason))
    await a.step()
    assert not a.is_leader() and not a.leading.is_set() and a.following.is_set()
    assert stopped and stopped[0][0] == 1 and "renew deadline" in stopped[0][1]
    assert store.leases["lease"][0].holder == "b"


async def test_follower_wakes_when_the_lease_expires() -> None:
    clock, store = FakeClock(), InMemoryLeaseStore()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.step()
    clock.now += 1
    assert await b.step() == 2.0  # retry period (no jitter with rng 0)
    clock.now += 13.5
    # b first saw the record 1 s after it was written, and counts from then: it expires at +16 s,
    # sooner than the next retry would come.
    assert await b.step() == pytest.approx(1.5)


async def test_release_hands_over_at_once() -> None:
    clock, store = FakeClock(), InMemoryLeaseStore()
    stopped: list[int] = []

    async def on_stopped(term: int, reason: str) -> None:
        await asyncio.sleep(0)
        # The term ends before the Lease is released: the holder is still us while we wind down.
        assert store.leases["lease"][0].holder == "a"
        stopped.append(term)

    a = elector(store, clock, "a", on_stopped_leading=on_stopped)
    b = elector(store, clock, "b")
    await a.step()
    await b.step()
    await a.stop()
    assert stopped == [1]
    record = store.leases["lease"][0]
    assert record.holder == "" and record.lease_duration == 1
    await b.step()
    assert b.is_leader() and store.leases["lease"][0].transitions == 1


async def test_a_stale_write_loses_and_the_winner_stays_alone() -> None:
    clock, store = FakeClock(), InMemoryLeaseStore()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.step()
    await b.step()
    # Someone else rewrites the Lease behind a's back: a's next renewal carries a stale version.
    record, version = store.leases["lease"]
    await store.update("lease", claim(record, "c", 15, clock.wall()), version)
    clock.now += 2
    await a.step()  # conflict on the fast path
    assert a.is_leader()  # still within its deadline: nobody could have waited c's record out yet
    clock.now += 2
    await a.step()  # reads, sees c holding it: stops at once, whatever its deadline says
    assert not a.is_leader() and not a.leading.is_set()
    for _ in range(5):  # and never overwrites c's record while c's lease runs
        clock.now += 2
        await a.step()
    assert store.leases["lease"][0].holder == "c" and not a.is_leader()
    with pytest.raises(LeaseConflict):
        await store.update("lease", record, version)


async def test_a_vanished_lease_is_not_recreated_under_a_live_holder() -> None:
    clock, store = FakeClock(), InMemoryLeaseStore()
    a, b = elector(store, clock, "a"), elector(store, clock, "b")
    await a.step()
    await b.step()
    del store.leases["lease"]
    clock.now += 5
    await b.step()
    assert "lease" not in store.leases and not b.is_leader()
    clock.now += 10
    await b.step()
    assert b.is_leader()


async def test_callbacks_and_events() -> None:
    clock, store = FakeClock(), InMemoryLeaseStore()
    started: list[int] = []
    a = elector(store, clock, "a", on_started_leading=started.append)
    waiter = asyncio.create_task(a.wait_leading())
    await a.step()
    assert await asyncio.wait_for(waiter, 1) == 1 and started == [1]
    clock.now += 11
    await a.step()  # steps down (deadline), then re-acquires its own record: a new term
    assert a.is_leader() and a.term == 2 and started == [1, 2]
    assert not a.is_leader(term=1) and a.is_leader(term=2)


async def test_a_slow_write_past_the_deadline_does_not_make_a_leader() -> None:
    clock = FakeClock()

    class Slow(InMemoryLeaseStore):
        async def create(self, name: str, record: LeaseRecord) -> str:
            clock.now += 10
            return await super().create(name, record)

    a = elector(Slow(), clock, "a")
    await a.step()
    assert not a.is_leader() and a.term == 0


# -- a randomised schedule: safety at every step -----------------------------------------------------

class LaggingStore(InMemoryLeaseStore):
    """Each call takes simulated time, drawn by the test: the clock moves while a request is out."""

    def __init__(self, clock: FakeClock, lags: list[float]) -> None:
        super().__init__()
        self.clock, self.lags = clock, lags

    def _lag(self) -> None:
        self.clock.now += self.lags.pop() if self.lags else 0.0

    async def get(self, name: str) -> tuple[LeaseRecord, str] | None:
        self._lag()
        return await super().get(name)

    async def update(self, name: str, record: LeaseRecord, resource_version: str) -> str:
        self._lag()
        version = await super().update(name, record, resource_version)
        self._lag()
        return version

    async def create(self, name: str, record: LeaseRecord) -> str:
        self._lag()
        return await super().create(name, record)


@settings(max_examples=150, deadline=None)
@given(
    schedule=st.lists(st.tuples(st.integers(0, 2), st.floats(0, 6), st.booleans()), min_size=1, max_size=80),
    lags=st.lists(st.floats(0, 3), max_size=200),
)
def test_never_two_leaders(schedule: list[tuple[int, float, bool]], lags: list[float]) -> None:
    """Any interleaving of attempts, pauses (an elector not stepped while time passes) and slow
    requests: at no observed instant do two electors answer is_leader() True."""

    async def play() -> None:
        clock = FakeClock()
        store = LaggingStore(clock, list(lags))
        electors = [elector(store, clock, f"e{i}") for i in range(3)]
        for who, pause, release in schedule:
            clock.now += pause
            assert sum(e.is_leader() for e in electors) <= 1
            if release and electors[who].is_leader():
                await electors[who].stop()
                electors[who] = elector(store, clock, f"e{who}-{clock.now}")
            else:
                await electors[who].step()
            assert sum(e.is_leader() for e in electors) <= 1

    asyncio.run(play())


@settings(max_examples=50, deadline=None)
@given(pauses=st.lists(st.floats(0, 30), max_size=20))
def test_someone_leads_once_attempts_are_regular(pauses: list[float]) -> None:
    """Liveness: after any disorder, electors that attempt every retry period elect a leader within
    one lease duration plus a retry period."""

    async def play() -> None:
        clock, store = FakeClock(), InMemoryLeaseStore()
        electors = [elector(store, clock, f"e{i}") for i in range(3)]
        for i, pause in enumerate(pauses):
            clock.now += pause
            await electors[i % 3].step()
        start = clock.now
        while clock.now - start <= FAST.lease_duration + FAST.retry_period:
            for e in electors:
                await e.step()
            if any(e.is_leader() for e in electors):
                return
            clock.now += FAST.retry_period
        raise AssertionError("no leader")

    asyncio.run(play())


async def test_the_leader_gauge_reads_is_leader_at_scrape_time() -> None:
    metrics = Metrics(CollectorRegistry())
    assert metrics.registry.get_sample_value("spotpool_leader") == 1.0  # no election: it acts
    clock, store = FakeClock(), InMemoryLeaseStore()
    a = elector(store, clock, "a")
    metrics.track_leader(a.is_leader)
    assert metrics.registry.get_sample_value("spotpool_leader") == 0.0
    await a.step()
    assert metrics.registry.get_sample_value("spotpool_leader") == 1.0
    clock.now += FAST.renew_deadline  # paused past its deadline: 0 before its loop runs again
    assert metrics.registry.get_sample_value("spotpool_leader") == 0.0


# -- wiring from the operator's flags -------------------------------------------------------------

async def test_standalone_without_leader_election() -> None:
    chosen = from_config(OperatorConfig(), "cluster-a")
    assert isinstance(chosen, Standalone)
    assert chosen.is_leader() and chosen.is_leader(chosen.term) and not chosen.is_leader(chosen.term + 1)
    assert chosen.remaining() == float("inf") and await chosen.wait_leading() == 1


def test_elector_from_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "spotpool-7d9f-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "ops")  # where it runs: no say in where the Lease is
    monkeypatch.delenv("SPOTPOOL_CLUSTER_ID", raising=False)
    config = OperatorConfig(leader_elect=True, cluster_id="cluster-a", lease_duration=30, renew_deadline=20,
                            retry_period=4)
    chosen = from_config(config, "cluster-a", api_client=object())
    assert isinstance(chosen, LeaderElector)
    assert chosen.name == lease_name("cluster-a")
    assert chosen.timing == Timing(30, 20, 4)
    assert re.fullmatch(r"spotpool-7d9f-abcde_[0-9a-f]{10}", chosen.identity)
    assert isinstance(chosen.store, KubeLeaseStore) and chosen.store.namespace == "kube-system"
    other = from_config(replace(config, leader_election_namespace="shared"), "cluster-a", api_client=object())
    assert isinstance(other, LeaderElector) and isinstance(other.store, KubeLeaseStore)
    assert other.store.namespace == "shared" and other.identity != chosen.identity


def lease_of(config: OperatorConfig, cluster_id: str) -> tuple[str, str]:
    """(namespace, name) of the Lease the elector from `config` campaigns for."""
    chosen = from_config(config, cluster_id, api_client=object())
    assert isinstance(chosen, LeaderElector) and isinstance(chosen.store, KubeLeaseStore)
    return chosen.store.namespace, chosen.name


@pytest.mark.parametrize("home", ["ops", "canary", None])
def test_installations_in_any_namespace_share_the_default_lease(monkeypatch: pytest.MonkeyPatch,
                                                                 home: str | None) -> None:
    """Two cluster-wide installations in different namespaces, default settings: the same Lease (same
    namespace, same name), so they elect one leader between them and never both buy."""
    monkeypatch.delenv("SPOTPOOL_CLUSTER_ID", raising=False)
    if home is None:
        monkeypatch.delenv("POD_NAMESPACE", raising=False)
    else:
        monkeypatch.setenv("POD_NAMESPACE", home)
    config = OperatorConfig(leader_elect=True)
    assert config.leader_election_namespace == DEFAULT_LEASE_NAMESPACE == "kube-system"
    # The resolved cluster id (the kube-system UID the runtime read) is not configured: not in the name.
    assert lease_of(config, "1f0c6a8e-7d1b-4cde-9b1e-2a3f4b5c6d7e") == ("kube-system", "spotpool-leader")


def test_a_configured_cluster_id_and_the_watched_namespaces_name_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOTPOOL_CLUSTER_ID", raising=False)
    base = OperatorConfig(leader_elect=True)
    assert lease_of(replace(base, cluster_id="prod"), "prod") == ("kube-system", lease_name("prod"))
    assert lease_of(replace(base, namespaces=("team-b", "team-a")), "uid") == \
        ("kube-system", lease_name(None, ["team-a", "team-b"]))
    assert lease_of(replace(base, cluster_id="prod", namespaces=("team-a",)), "prod") == \
        ("kube-system", lease_name("prod", ["team-a"]))
    # $SPOTPOOL_CLUSTER_ID configures the id as --cluster-id does (the CLI reads it as the flag's default).
    monkeypatch.setenv("SPOTPOOL_CLUSTER_ID", "prod")
    assert lease_of(replace(parse([]), leader_elect=True), "prod") == ("kube-system", lease_name("prod"))


def test_the_cli_defaults_to_the_shared_lease_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([]).leader_election_namespace == "kube-system"
    assert parse(["--leader-election-namespace=spotpool-leases"]).leader_election_namespace == "spotpool-leases"
    for bad in ("", "Not_Valid"):
        with pytest.raises(SystemExit):
            parse([f"--leader-election-namespace={bad}"])
        assert "--leader-election-namespace" in capsys.readouterr().err
