"""The journal write over kopf's own writes: the live body lets it skip the refused write and the
read a new pool's first purchase used to pay, by the same rule the conflict path applies."""

from __future__ import annotations

from typing import Any

import pytest

from spotpool.controller.kube import Conflict
from spotpool.controller.statusstore import StatusMemory, StatusStore
from tests.support.inprocess import FakeKube

NS, NAME = "team", "pool"
JOURNAL = {"inflightLaunches": [{"clientToken": "t-1", "zone": "ap-guangzhou-3", "instanceType": "S5.MEDIUM4",
                                 "count": 10, "requestedAt": "2026-01-01T00:00:00Z"}], "launchSequence": 1}


class CountingKube(FakeKube):
    reads: int = 0
    refused: int = 0

    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return await super().read_object(namespace, name)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], **kwargs: Any) -> str:
        try:
            return await super().patch_status(namespace, name, status, **kwargs)
        except Conflict:
            self.refused += 1
            raise


def planned_from_a_new_pool() -> tuple[CountingKube, StatusStore, StatusMemory]:
    kube = CountingKube()
    kube.create(NS, NAME, {"expectedCount": 10})
    store, memory = StatusStore(kube), StatusMemory()
    body = kube.body(NS, NAME)
    assert body is not None
    store.read(body, memory, term=None)  # the picture the pass plans from
    kube.annotate(NS, NAME, "kopf.zalando.org/last-handled-configuration", "{}")  # kopf, meanwhile
    return kube, store, memory


async def test_a_live_body_newer_only_in_kopfs_annotations_is_written_over_at_once() -> None:
    kube, store, memory = planned_from_a_new_pool()
    await store.write_journal(NS, NAME, memory, dict(JOURNAL), generation=1, latest=kube.body(NS, NAME))
    assert (kube.refused, kube.reads) == (0, 0)
    assert kube.objects[(NS, NAME)]["status"]["launchSequence"] == 1


async def test_without_the_live_body_the_same_write_pays_a_refusal_and_a_read() -> None:
    kube, store, memory = planned_from_a_new_pool()
    await store.write_journal(NS, NAME, memory, dict(JOURNAL), generation=1)
    assert (kube.refused, kube.reads) == (1, 1)


@pytest.mark.parametrize("change", ["status", "spec", "deletion"])
async def test_a_live_body_that_changed_what_plans_read_is_not_written_over(change: str) -> None:
    kube, store, memory = planned_from_a_new_pool()
    if change == "status":
        await kube.patch_status(NS, NAME, {"launchSequence": 7})  # another writer (a new leader)
    elif change == "spec":
        kube.edit_spec(NS, NAME, {"expectedCount": 20})
    else:
        kube.delete(NS, NAME)
    with pytest.raises(Conflict):
        await store.write_journal(NS, NAME, memory, dict(JOURNAL), generation=1, latest=kube.body(NS, NAME))
    assert kube.objects[(NS, NAME)]["status"].get("inflightLaunches") is None, "nothing recorded, nothing bought"
