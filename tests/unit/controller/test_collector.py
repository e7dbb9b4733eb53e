"""The orphan collector's rules, against a fake client: what is an orphan, when it is reported,
when it is released and by whom."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spotpool.api.names import ENVIRONMENT_TAG, NAMESPACE_TAG, OWNER_UID_TAG
from spotpool.cloud.models import Instance
from spotpool.controller.collector import OrphanCollector
from spotpool.controller.fencing import NotLeader
from spotpool.controller.observer import ObserverKey

KEY = ObserverKey("https://cvm.tencentcloudapi.com", "ap-guangzhou", "100", "AKIDx", "digest")


class Terminator:
    def __init__(self) -> None:
        self.terminated: list[list[str]] = []
        self.guards: list[Any] = []

    async def terminate_instances(self, ids: list[str], *, guard: Any = None) -> None:
        if guard is not None:
            guard.check()
        self.guards.append(guard)
        self.terminated.append(list(ids))


def instance(instance_id: str, uid: str, namespace: str = "team", state: str = "RUNNING") -> Instance:
    tags = {OWNER_UID_TAG: uid, NAMESPACE_TAG: namespace, ENVIRONMENT_TAG: "pool"}
    return Instance(instance_id, "ap-guangzhou-3", "S5.MEDIUM4", state, "SPOTPAID", None, tags)


def swept(*instances: Instance) -> dict[str, dict[str, Instance]]:
    by_owner: dict[str, dict[str, Instance]] = {}
    for i in instances:
        by_owner.setdefault(i.tags[OWNER_UID_TAG], {})[i.instance_id] = i
    return by_owner


class Reports(list[tuple[str, str]]):
    def __call__(self, reason: str, message: str) -> None:
        self.append((reason, message))


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_an_orphan_is_reported_once_and_released_after_the_grace_and_two_sweeps() -> None:
    reports, cvm = Reports(), Terminator()
    collector = OrphanCollector(live_uids=lambda: ["live"], grace=60, report=reports)
    sweep = swept(instance("ins-orphan01", "gone"), instance("ins-live0001", "live"))
    collector.swept(KEY, sweep, cvm, 0.0)  # type: ignore[arg-type]
    collector.swept(KEY, sweep, cvm, 30.0)  # type: ignore[arg-type]
    await settle()
    assert cvm.terminated == [] and [r for r, _ in reports] == ["OrphanInstances"]
    assert "ins-orphan01" in reports[0][1] and "team/pool" in reports[0][1]
    collector.swept(KEY, sweep, cvm, 60.0)  # type: ignore[arg-type]
    await settle()
    assert cvm.terminated == [["ins-orphan01"]]
    assert [r for r, _ in reports] == ["OrphanInstances", "OrphanInstancesReleased"]


async def test_one_sweep_is_never_enough() -> None:
    cvm = Terminator()
    collector = OrphanCollector(live_uids=lambda: [], grace=0, report=Reports())
    collector.swept(KEY, swept(instance("ins-orphan01", "gone")), cvm, 0.0)  # type: ignore[arg-type]
    await settle()
    assert cvm.terminated == []


async def test_an_instance_whose_pool_shows_up_is_forgotten() -> None:
    """The pool list comes from a watch: a pool created this instant may buy before the watch
    reaches this replica. Its instance stops being an orphan the moment the pool is known."""
    live: list[str] = []
    cvm = Terminator()
    collector = OrphanCollector(live_uids=lambda: live, grace=10, report=Reports())
    sweep = swept(instance("ins-new00001", "new"))
    collector.swept(KEY, sweep, cvm, 0.0)  # type: ignore[arg-type]
    live.append("new")
    collector.swept(KEY, sweep, cvm, 5.0)  # type: ignore[arg-type]
    live.clear()
    collector.swept(KEY, sweep, cvm, 20.0)  # type: ignore[arg-type]  # an orphan again: the clock restarts
    await settle()
    assert cvm.terminated == []


@pytest.mark.parametrize("case", ["pools unknown", "terminating", "other namespace", "report only", "standby"])
async def test_what_is_never_released(case: str) -> None:
    cvm = Terminator()
    kwargs: dict[str, Any] = {"live_uids": lambda: [], "grace": 0, "report": Reports()}
    state, namespace = "RUNNING", "team"
    if case == "pools unknown":
        kwargs["live_uids"] = lambda: None  # kopf's index not handed over yet
    elif case == "terminating":
        state = "TERMINATING"
    elif case == "other namespace":
        kwargs["namespaces"] = ("team-*", "!team-x")
        namespace = "team-x"
    elif case == "report only":
        kwargs["release"] = False
    else:
        kwargs["acting"] = lambda: False
    collector = OrphanCollector(**kwargs)
    sweep = swept(instance("ins-orphan01", "gone", namespace, state))
    for at in (0.0, 10.0, 20.0):
        collector.swept(KEY, sweep, cvm, at)  # type: ignore[arg-type]
    await settle()
    assert cvm.terminated == []


def test_the_watched_scope_follows_kopfs_patterns() -> None:
    collector = OrphanCollector(live_uids=lambda: [], namespaces=("team-*", "ops", "!team-x"))
    assert collector.in_scope("team-a") and collector.in_scope("ops")
    assert not collector.in_scope("team-x") and not collector.in_scope("other")
    assert OrphanCollector(live_uids=lambda: []).in_scope("anything")


async def test_a_release_is_fenced_and_a_term_that_ended_releases_nothing() -> None:
    class Ended:
        def check(self) -> None:
            raise NotLeader("not the leader")

        def remaining(self) -> float:
            return 0.0

    cvm = Terminator()
    counts: list[int] = []
    collector = OrphanCollector(live_uids=lambda: [], grace=0, report=Reports(), guard=Ended,
                                on_count=lambda key, n: counts.append(n))
    sweep = swept(instance("ins-orphan01", "gone"))
    collector.swept(KEY, sweep, cvm, 0.0)  # type: ignore[arg-type]
    collector.swept(KEY, sweep, cvm, 1.0)  # type: ignore[arg-type]
    await settle()
    assert cvm.terminated == [] and counts == [1, 1]
    collector.forget(KEY)
    assert counts[-1] == 0
