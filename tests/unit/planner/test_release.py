"""Release order: PENDING first, then the scale-in policy; id batches of at most 100."""

from __future__ import annotations

from decimal import Decimal

from spotpool.api.spec import ScaleInPolicy
from spotpool.cloud.models import PENDING, Instance
from spotpool.planner.release import batch_ids, release_order
from tests.unit.planner.plannerkit import S5, SA2, Z3, Z4, make_instance

OLD = make_instance("ins-old00001", age_minutes=300)
MID = make_instance("ins-mid00001", age_minutes=200, zone=Z4, instance_type=SA2)
NEW = make_instance("ins-new00001", age_minutes=100)
UNDATED = make_instance("ins-undated1", age_minutes=None)
STARTING = make_instance("ins-pending1", state=PENDING, age_minutes=500)
PRICES = {(Z3, S5): Decimal("0.0200"), (Z4, SA2): Decimal("0.0300")}


def order(policy: ScaleInPolicy, *instances: Instance) -> list[str]:
    return [i.instance_id for i in release_order(instances, policy, PRICES)]


def test_newest_first() -> None:
    assert order(ScaleInPolicy.NEWEST_FIRST, OLD, MID, NEW) == [
        "ins-new00001",
        "ins-mid00001",
        "ins-old00001",
    ]


def test_oldest_first() -> None:
    assert order(ScaleInPolicy.OLDEST_FIRST, NEW, MID, OLD) == [
        "ins-old00001",
        "ins-mid00001",
        "ins-new00001",
    ]


def test_most_expensive_first_then_newest() -> None:
    assert order(ScaleInPolicy.MOST_EXPENSIVE_FIRST, OLD, NEW, MID) == [
        "ins-mid00001",  # 0.03
        "ins-new00001",  # 0.02, newer
        "ins-old00001",
    ]


def test_most_expensive_first_puts_unpriced_pools_last() -> None:
    unpriced = make_instance("ins-far00001", zone="ap-guangzhou-7", age_minutes=1)
    assert order(ScaleInPolicy.MOST_EXPENSIVE_FIRST, unpriced, OLD)[-1] == "ins-far00001"


def test_pending_goes_first_whatever_the_policy() -> None:
    for policy in ScaleInPolicy:
        assert order(policy, OLD, NEW, MID, STARTING)[0] == "ins-pending1"


def test_instances_without_creation_time_go_after_dated_ones() -> None:
    assert order(ScaleInPolicy.NEWEST_FIRST, UNDATED, OLD)[-1] == "ins-undated1"
    assert order(ScaleInPolicy.OLDEST_FIRST, UNDATED, NEW)[-1] == "ins-undated1"


def test_ties_break_by_id_so_input_order_does_not_matter() -> None:
    twins = [make_instance(f"ins-twin000{i}", age_minutes=10) for i in (3, 1, 2)]
    assert order(ScaleInPolicy.NEWEST_FIRST, *twins) == ["ins-twin0001", "ins-twin0002", "ins-twin0003"]


def test_batches_hold_at_most_100_ids_in_order() -> None:
    instances = [make_instance(f"ins-{i:08d}") for i in range(205)]
    batches = batch_ids(instances)
    assert [len(b) for b in batches] == [100, 100, 5]
    assert [i for b in batches for i in b] == [i.instance_id for i in instances]
    assert batch_ids([]) == []
