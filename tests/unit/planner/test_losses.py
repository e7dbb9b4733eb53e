"""Loss detection, pure: alive before, not alive now, not released by spotpool."""

from __future__ import annotations

import dataclasses

from spotpool.cloud.models import LAUNCH_FAILED, PENDING, TERMINATING
from spotpool.planner.losses import find_losses
from tests.unit.planner.plannerkit import census_of, make_instance


def test_lost_failed_released_and_still_alive_are_told_apart() -> None:
    before = {f"ins-0000000{n}": make_instance(f"ins-0000000{n}") for n in range(1, 6)}
    now = census_of([
        make_instance("ins-00000001"),  # still running
        dataclasses.replace(make_instance("ins-00000002"), state=PENDING),  # alive (rebooting)
        dataclasses.replace(make_instance("ins-00000003"), state=LAUNCH_FAILED),
        dataclasses.replace(make_instance("ins-00000004"), state=TERMINATING),  # released by us
        # ins-00000005: gone without spotpool
    ])
    losses = find_losses(before, now, released={"ins-00000004"})
    assert [i.instance_id for i in losses.lost] == ["ins-00000005"]
    assert [i.instance_id for i in losses.failed] == ["ins-00000003"]


def test_a_terminating_instance_spotpool_did_not_release_is_lost() -> None:
    before = {"ins-00000001": make_instance("ins-00000001")}
    now = census_of([dataclasses.replace(make_instance("ins-00000001"), state=TERMINATING)])
    assert [i.instance_id for i in find_losses(before, now, released=set()).lost] == ["ins-00000001"]
    assert find_losses({}, now, released=set()) == find_losses({}, census_of([]), released=set())
