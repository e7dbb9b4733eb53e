"""Properties of voluntary disruption (drift, expiry) over generated pools.

- running never drops below expectedCount for a voluntary reason;
- what the pool holds (alive, unseen, this pass's purchases, less its releases) never exceeds
  expectedCount plus the budget because of a replacement;
- a budget of 0 buys no replacement and releases no running instance beyond the surplus;
- a scheduled budget lets replacements be bought only inside its window, across a day.

Plus the unit facts: the fingerprint, which field drifted, and budgets' arithmetic.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from spotpool.api.names import DO_NOT_DISRUPT_TAG, LAUNCH_SPEC_TAG
from spotpool.api.spec import Budget, DisruptionReason, DriftReason, SpecError
from spotpool.cloud.models import PENDING, RUNNING, Instance
from spotpool.planner import plan
from spotpool.planner.disruption import budget_open, drift_of, fingerprint, limit
from spotpool.planner.model import Plan, Purpose
from tests.unit.planner.plannerkit import NOW, S5, UID, Z3, all_offered, make_instance, make_spec, observe

OLD_IMAGE, NEW_IMAGE = "img-pmqg1cw7", "img-8toqc6s3"


def tagged(instance: Instance, image: str) -> Instance:
    """The instance as bought with `image` (its launch-spec tag)."""
    spec = make_spec(imageId=image)
    return dataclasses.replace(instance, tags={**instance.tags, LAUNCH_SPEC_TAG: fingerprint(spec, instance.zone)})


@st.composite
def pools(draw: st.DrawFn) -> tuple[Any, list[Instance]]:
    expected = draw(st.integers(0, 12))
    count = draw(st.integers(0, 16))
    instances = []
    for n in range(count):
        instance = make_instance(f"ins-{n:08d}", state=draw(st.sampled_from([RUNNING, RUNNING, RUNNING, PENDING])),
                                 age_minutes=draw(st.integers(1, 600)))
        image = draw(st.sampled_from([OLD_IMAGE, NEW_IMAGE]))
        instance = tagged(instance, image)
        if draw(st.integers(0, 5)) == 0:
            instance = dataclasses.replace(instance, tags={**instance.tags, DO_NOT_DISRUPT_TAG: "true"})
        instances.append(instance)
    budget = draw(st.integers(0, 4) | st.sampled_from(["0%", "10%", "50%", "100%"]))
    spec = make_spec(expectedCount=expected, imageId=NEW_IMAGE, zones=[Z3], instanceTypes=[S5],
                     disruption={"budgets": [{"instances": budget}],
                                 "doNotDisruptMaxHold": draw(st.sampled_from([None, "1h"])) or "8760h"})
    return spec, instances


def run(spec: Any, instances: list[Instance], now: Any = NOW) -> Plan:
    return plan(spec=spec, observation=observe(*instances), journal=[], offers=all_offered(), backoff={},
                now=now, owner_uid=UID)


def voluntary_ids(p: Plan) -> set[str]:
    return {i for _, batch in p.voluntary for i in batch} | {i for batch in p.returns for i in batch}


def released_ids(p: Plan) -> set[str]:
    return voluntary_ids(p) | {i for batch in p.releases for i in batch}


def replacements(p: Plan) -> int:
    return sum(b.count for b in p.launches if b.purpose is Purpose.REPLACE)


def allowed(spec: Any) -> int:
    return spec.disruption.budgets[0].allowed(spec.expected_count)


@given(pools())
def test_running_never_drops_below_expected_for_a_voluntary_reason(pool: tuple[Any, list[Instance]]) -> None:
    spec, instances = pool
    p = run(spec, instances)
    running = {i.instance_id for i in instances if i.state == RUNNING}
    left = running - voluntary_ids(p)
    assert len(left) >= min(spec.expected_count, len(running))


@given(pools())
def test_a_replacement_never_takes_the_pool_above_expected_plus_the_budget(pool: tuple[Any, list[Instance]]) -> None:
    spec, instances = pool
    p = run(spec, instances)
    if replacements(p):
        held = len(instances) - len(released_ids(p)) + sum(b.count for b in p.launches)
        assert held <= spec.expected_count + allowed(spec)
        assert replacements(p) <= allowed(spec)


@given(pools())
def test_a_budget_of_zero_disrupts_nothing(pool: tuple[Any, list[Instance]]) -> None:
    spec, instances = pool
    if allowed(spec) != 0:
        return
    p = run(spec, instances)
    assert replacements(p) == 0 and not p.drains
    # Releases are exactly the surplus (no replacement protected), drifted ones first.
    assert len(released_ids(p)) == max(0, len(instances) - spec.expected_count)


@given(pools())
def test_held_instances_go_last(pool: tuple[Any, list[Instance]]) -> None:
    spec, instances = pool
    p = run(spec, instances)
    released = released_ids(p)
    held = {i.instance_id for i in instances if DO_NOT_DISRUPT_TAG in i.tags}
    if released & held:  # only as surplus, and only once every other instance goes too
        assert {i.instance_id for i in instances} - held <= released, "a held instance went before a free one"


@given(st.integers(0, 48 * 60 - 1))
@example(9 * 60)  # the window's first minute
@example(9 * 60 + 59)  # its last
@example(10 * 60)  # closed again
@example(33 * 60 + 30)  # the next day's window
def test_a_scheduled_budget_buys_only_inside_its_window(minute: int) -> None:
    # Open from 09:00 to 10:00 UTC every day; outside it no budget applies but a 0.
    spec = make_spec(expectedCount=3, imageId=NEW_IMAGE, zones=[Z3], instanceTypes=[S5], disruption={"budgets": [
        {"instances": 2, "schedule": "0 9 * * *", "duration": "1h"},
        {"instances": 0, "schedule": "0 10 * * *", "duration": "23h"},
    ]})
    start = NOW.replace(hour=0, minute=0)
    now = start + timedelta(minutes=minute)
    instances = [tagged(make_instance(f"ins-{n:08d}", age_minutes=30), OLD_IMAGE) for n in range(3)]
    bought = replacements(run(spec, instances, now))
    assert bought == (2 if now.hour == 9 else 0)


def test_the_fingerprint_names_the_field_that_changed() -> None:
    old = make_spec(imageId=OLD_IMAGE, userData="ZWNobyBoaQ==")
    instance = dataclasses.replace(make_instance("ins-00000001"),
                                   tags={LAUNCH_SPEC_TAG: fingerprint(old, Z3)})
    assert drift_of(instance, old) == ()
    assert drift_of(instance, make_spec(imageId=NEW_IMAGE, userData="ZWNobyBoaQ==")) == (DriftReason.IMAGE,)
    assert drift_of(instance, make_spec(imageId=OLD_IMAGE)) == (DriftReason.USER_DATA,)
    assert drift_of(instance, make_spec(imageId=OLD_IMAGE, userData="ZWNobyBoaQ==", zones=["ap-guangzhou-4"],
                                        network=None)) == (DriftReason.ZONE,)
    assert len(fingerprint(old, Z3)) <= 255
    # Untagged (bought before drift detection) or unreadable: no drift in the launch fields.
    for tags in ({}, {LAUNCH_SPEC_TAG: "v9.i12345678"}, {LAUNCH_SPEC_TAG: "garbage"}):
        assert drift_of(dataclasses.replace(instance, tags=tags), make_spec(imageId=NEW_IMAGE)) == ()


def test_ignored_drift_is_reported_and_never_replaced() -> None:
    spec = make_spec(imageId=NEW_IMAGE, zones=[Z3], instanceTypes=[S5], expectedCount=2,
                     disruption={"drift": {"Image": "Ignore"}})
    instances = [tagged(make_instance(f"ins-{n:08d}"), OLD_IMAGE) for n in range(2)]
    p = run(spec, instances)
    assert replacements(p) == 0 and not p.voluntary
    assert p.rollout is not None
    assert all(d.ignored == (DriftReason.IMAGE,) and not d.drifted for d in p.rollout.assessment.per_instance.values())


def test_budgets_most_restrictive_active_wins_and_percentages_round_up() -> None:
    budgets = (Budget(instances="10%"), Budget(instances=3, reasons=(DisruptionReason.EXPIRED,)),
               Budget(instances=0, schedule="0 9 * * *", duration="1h"))
    at_noon = NOW.replace(hour=12)
    assert limit(budgets, {DisruptionReason.DRIFTED}, 25, at_noon).allowed == 3  # ceil(2.5)
    assert limit(budgets, {DisruptionReason.EXPIRED}, 100, at_noon).allowed == 3
    assert limit(budgets, {DisruptionReason.EXPIRED}, 100, NOW.replace(hour=9, minute=30)).allowed == 0
    assert limit((), {DisruptionReason.DRIFTED}, 10, NOW).allowed is None
    assert budget_open(budgets[2], NOW.replace(hour=9, minute=0)) and not budget_open(budgets[2], NOW.replace(hour=10))


def test_bad_disruption_specs_name_the_field() -> None:
    cases = {
        "spec.disruption.expireAfter": {"expireAfter": "30m"},
        "spec.disruption.budgets[0].schedule": {"budgets": [{"instances": 1, "schedule": "every day",
                                                             "duration": "1h"}]},
        "spec.disruption.budgets[0]": {"budgets": [{"instances": 1, "schedule": "0 9 * * *"}]},
        "spec.disruption.budgets[0].instances": {"budgets": [{"instances": "150%"}]},
        "spec.disruption.drift.Colour": {"drift": {"Colour": "Replace"}},
    }
    for field, disruption in cases.items():
        try:
            make_spec(disruption=disruption)
        except SpecError as exc:
            assert field in str(exc), (field, str(exc))
        else:
            raise AssertionError(f"{disruption} was accepted")
