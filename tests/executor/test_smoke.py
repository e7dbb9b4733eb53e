from __future__ import annotations

from tests.support.inprocess import pool_spec, world


async def test_buys_to_expected_then_releases_on_delete() -> None:
    async with world() as w:
        w.kube.put_secret("team", "creds", *_demo())
        obj = w.kube.create("team", "pool", pool_spec(w.sim, expectedCount=5))
        uid = obj["metadata"]["uid"]
        await w.settle("team", "pool")
        assert len(w.owned(uid)) == 5
        status = w.kube.objects[("team", "pool")]["status"]
        assert status["currentCount"] == 5, status
        w.kube.delete("team", "pool")
        await w.settle("team", "pool")
        assert ("team", "pool") not in w.kube.objects
        assert w.owned(uid) == []
        assert w.bought(uid) == 5


def _demo() -> tuple[str, str]:
    from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY

    return DEMO_SECRET_ID, DEMO_SECRET_KEY
