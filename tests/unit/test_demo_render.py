"""The demo's live view: one frame is a pure function of the object, its events and the market."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from spotpool.demo import render

ZONES = ["ap-guangzhou-3", "ap-guangzhou-4"]
TYPES = ["S5.MEDIUM4", "SA2.MEDIUM4"]


def environment(*, running: int = 6, pending: int = 0, expected: int = 6, generation: int = 1,
                observed: int = 1, ready: str = "True", with_status: bool = True,
                capacity: dict[str, Any] | None = None, on_demand: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "spotpool.io/v1alpha1",
        "kind": "SpotComputeEnvironment",
        "metadata": {"name": "demo", "namespace": "spotpool-demo", "uid": "u-1", "generation": generation},
        "spec": {"expectedCount": expected, "maxPrice": "0.0923", "region": "ap-guangzhou", "zones": ZONES,
                 "instanceTypes": TYPES, "allocationStrategy": "Diversified"},
    }
    if on_demand is not None:
        obj["spec"]["onDemand"] = on_demand
    if not with_status:
        return obj
    per_pool = [(running // 4 + (1 if i < running % 4 else 0), pending if i == 0 else 0) for i in range(4)]
    prices = ["0.01546", "0.0178", "0.0189", "0.01424"]
    pools = []
    for (zone, itype), (run, pend), price in zip(((z, t) for z in ZONES for t in TYPES), per_pool, prices, strict=True):
        pools.append({"zone": zone, "instanceType": itype, "running": run, "pending": pend,
                      "marketPrice": price, "available": True})
    obj["status"] = {
        "observedGeneration": observed,
        "currentCount": running + pending,
        "runningCount": running,
        "pendingCount": pending,
        "hourlyCost": "0.1008",
        "pools": pools,
        "instances": [{"id": f"ins-{i:08d}", "zone": ZONES[0], "instanceType": TYPES[0], "state": "RUNNING"}
                      for i in range(running)],
        "conditions": [
            {"type": "Ready", "status": ready, "reason": "ExpectedCountRunning" if ready == "True" else
             "RunningBelowExpected", "message": f"{running} of {expected} instances running, {pending} pending"},
            {"type": "Progressing", "status": "False", "reason": "Stable", "message": "6 instances alive as expected"},
            {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "no refusals from the cloud"},
        ],
    }
    if capacity is not None:
        obj["status"]["capacity"] = capacity
    return obj


FALLBACK = {"fallback": {"after": "20s"}, "returnToSpot": {"maxInFlight": 2}}
SHORT = {"spot": 3, "onDemandBase": 0, "onDemandFallback": 0, "spotShortSince": "2026-01-01T10:00:05Z",
         "spotShortReasons": ["SoldOut"]}


def event(n: int, reason: str = "Launched", message: str = "Bought 1", *, type_: str = "Normal",
          second: int | None = None, count: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": f"spotpool-{n}", "uid": f"e-{n}", "resourceVersion": str(100 + n)},
        "type": type_, "reason": reason, "message": message, "count": count,
        "lastTimestamp": f"2026-01-01T10:00:{second if second is not None else n:02d}Z",
    }


MARKET = {"pools": [
    {"zone": "ap-guangzhou-3", "instanceType": "S5.MEDIUM4", "spotPrice": 0.01546, "onDemandPrice": 0.0859,
     "stock": 498},
    {"zone": "ap-guangzhou-3", "instanceType": "SA2.MEDIUM4", "spotPrice": 0.0178, "onDemandPrice": 0.0712,
     "stock": 499},
    {"zone": "ap-guangzhou-4", "instanceType": "S5.MEDIUM4", "spotPrice": 0.0189, "onDemandPrice": 0.0859, "stock": 0,
     "soldOut": True},
    {"zone": "ap-guangzhou-4", "instanceType": "SA2.MEDIUM4", "spotPrice": 0.01424, "onDemandPrice": 0.0712,
     "stock": 499},
]}


def test_frame_shows_counts_pools_with_prices_conditions_cost_and_events() -> None:
    events = [event(1, message="Bought 2 S5.MEDIUM4 in ap-guangzhou-3"),
              event(2, "InstanceLost", "ins-aaaaaaaa (ap-guangzhou-3/S5.MEDIUM4) was lost (gone)", type_="Warning")]
    frame = render.render_frame(environment(running=4, pending=2, ready="False"), events, MARKET)
    lines = frame.splitlines()

    assert lines[0].startswith("SpotComputeEnvironment spotpool-demo/demo")
    assert "Diversified" in lines[0] and "maxPrice 0.0923" in lines[0]
    assert re.search(r"expected 6 +current 6 +running 4 +pending 2", frame)
    assert "[####++]" in frame
    assert "hourly cost  0.1008 USD" in frame
    row = next(line for line in lines if line.startswith("ap-guangzhou-3  S5.MEDIUM4"))
    assert row.split()[2:6] == ["1", "2", "0.01546", "498"]
    sold_out = next(line for line in lines if line.startswith("ap-guangzhou-4  S5.MEDIUM4"))
    assert sold_out.endswith("sold out")
    assert re.search(r"^Ready +False +RunningBelowExpected +4 of 6 instances running", frame, re.M)
    assert re.search(r"^Progressing +False +Stable", frame, re.M)
    assert re.search(r"^Degraded +False +AsExpected +no refusals", frame, re.M)
    assert "10:00:02  Warning  InstanceLost   ins-aaaaaaaa" in frame
    assert "\x1b[" not in frame


def test_cost_line_compares_with_on_demand_from_the_market() -> None:
    frame = render.render_frame(environment(running=6), [], MARKET)
    # alive per pool (2, 2, 1, 1) at on-demand 0.0859, 0.0712, 0.0859, 0.0712 = 0.4713
    assert "(on demand: 0.4713 USD, 79% saved)" in frame
    assert "on demand" not in render.render_frame(environment(running=6), [], None)


def test_only_the_latest_six_events_oldest_first() -> None:
    events = [event(n) for n in range(10, 0, -1)]  # newest first, as they may come
    frame = render.render_frame(environment(), events, MARKET)
    shown = re.findall(r"10:00:(\d\d)", frame)
    assert shown == ["05", "06", "07", "08", "09", "10"]
    assert "Latest events (6)" in frame


def test_events_in_the_same_second_keep_the_api_servers_order() -> None:
    first, second = event(1, message="first", second=5), event(2, message="second", second=5)
    assert [e["message"] for e in render.sorted_events([second, first])] == ["first", "second"]


def test_repeated_event_shows_its_count_and_is_new_again() -> None:
    once, thrice = event(1, count=1), event(1, count=3)
    assert "(x3)" in render.event_line(thrice)
    assert render.event_key(once) != render.event_key(thrice)


def test_frame_before_the_operator_wrote_status_lists_the_candidate_pools() -> None:
    frame = render.render_frame(environment(with_status=False), [], MARKET)
    assert re.search(r"expected 6 +current 0 +running 0 +pending 0", frame)
    assert "hourly cost  -" in frame
    assert len([line for line in frame.splitlines() if line.startswith("ap-guangzhou-")]) == 4
    assert frame.count("(waiting for the operator)") == 3
    assert "Latest events: none yet" in frame
    # prices come from the simulator's market while the status has none
    assert "0.01424" in frame


def test_frame_without_an_object() -> None:
    assert "waiting for the SpotComputeEnvironment" in render.render_frame(None, [], None)
    assert "waiting for the SpotComputeEnvironment" in render.summary_line(None)


def test_width_clips_every_line_and_color_only_when_asked() -> None:
    long = event(1, message="x" * 300)
    frame = render.render_frame(environment(), [long], MARKET, width=60)
    assert all(len(line) <= 60 for line in frame.splitlines())
    assert "…" in frame
    colored = render.render_frame(environment(), [long], MARKET, width=60, color=True)
    assert "\x1b[32m" in colored  # Ready True in green
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == frame


def test_degraded_pool_shows_its_error_and_retry() -> None:
    obj = environment(running=4, ready="False")
    obj["status"]["pools"][0].update(available=False, lastError={"code": "ResourceInsufficient.SpecifiedInstanceType"},
                                     retryAfter="2026-01-01T10:01:30Z")
    obj["status"]["conditions"][2].update(status="True", reason="InsufficientCapacity", message="sold out")
    frame = render.render_frame(obj, [], MARKET)
    assert "not buyable, ResourceInsufficient.SpecifiedInstanceType, retry 10:01:30" in frame
    assert re.search(r"^Degraded +True +InsufficientCapacity", frame, re.M)
    colored = render.render_frame(obj, [], MARKET, color=True)
    assert "\x1b[31mDegraded" in colored


def test_summary_line_has_counts_cost_and_conditions() -> None:
    line = render.summary_line(environment(running=4, pending=2, ready="False"))
    assert line == ("expected 6  current 6  running 4  pending 2  cost 0.1008 USD/h  |  "
                    "Ready False RunningBelowExpected  Progressing False Stable  Degraded False AsExpected")
    deleting = environment()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T10:00:00Z"
    assert render.summary_line(deleting).startswith("deleting  ")


@pytest.mark.parametrize(("change", "expected"), [
    ({}, True),
    ({"ready": "False"}, False),
    ({"running": 5}, False),
    ({"generation": 2, "observed": 1}, False),  # a new spec the operator has not seen yet
])
def test_is_ready(change: dict[str, Any], expected: bool) -> None:
    assert render.is_ready(environment(**change)) is expected


def test_healed_needs_both_losses_reported_and_ready_without_them() -> None:
    lost = [event(1, "InstanceLost", "ins-aaaaaaaa (ap-guangzhou-3/S5.MEDIUM4) was lost (gone)", type_="Warning"),
            event(2, "InstanceLost", "ins-bbbbbbbb (ap-guangzhou-4/S5.MEDIUM4) was lost (gone)", type_="Warning")]
    reclaimed = ["ins-aaaaaaaa", "ins-bbbbbbbb"]
    obj = environment()
    assert render.healed(obj, lost, reclaimed)
    assert not render.healed(obj, lost[:1], reclaimed)  # the operator has not noticed the second yet
    stale = copy.deepcopy(obj)
    stale["status"]["instances"].append({"id": "ins-aaaaaaaa", "state": "RUNNING"})
    assert not render.healed(stale, lost, reclaimed)  # status from before the reclaim
    assert not render.healed(environment(running=4, ready="False"), lost, reclaimed)


def test_one_loss_event_names_every_instance_of_the_pass() -> None:
    message = ("2 instances were lost (reclaimed by the cloud or released outside spotpool); replacements are "
               "being bought: ins-aaaaaaaa, ins-bbbbbbbb")
    assert render.lost_ids([event(1, "InstanceLost", message, type_="Warning")]) == {"ins-aaaaaaaa", "ins-bbbbbbbb"}
    assert render.lost_ids([event(1, "Launched", message)]) == set()


def test_pick_victims_prefers_running_instances_in_different_pools() -> None:
    instances = [
        {"instanceId": "ins-1", "zone": "z3", "instanceType": "A", "state": "RUNNING"},
        {"instanceId": "ins-2", "zone": "z3", "instanceType": "A", "state": "RUNNING"},
        {"instanceId": "ins-3", "zone": "z4", "instanceType": "A", "state": "PENDING"},
        {"instanceId": "ins-4", "zone": "z4", "instanceType": "B", "state": "RUNNING"},
    ]
    assert [i["instanceId"] for i in render.pick_victims(instances)] == ["ins-1", "ins-4"]
    same_pool = [i for i in instances if i["zone"] == "z3"]
    assert [i["instanceId"] for i in render.pick_victims(same_pool)] == ["ins-1", "ins-2"]
    assert render.pick_victims(instances[2:3]) == []


def test_frame_shows_the_capacity_mix_and_the_replacements_on_their_way() -> None:
    mix = {"spot": 5, "onDemandBase": 1, "onDemandFallback": 2, "returning": 2}
    frame = render.render_frame(environment(running=6, pending=2, expected=6, capacity=mix, on_demand=FALLBACK),
                                [], MARKET)
    assert ("capacity     spot 5   on-demand base 1   on-demand fallback 2   returning to spot 2 "
            "(replacements first)") in frame
    assert "spot short" not in frame
    # before the operator reports capacity (an older status), no capacity line at all
    assert "capacity" not in render.render_frame(environment(), [], MARKET)


def test_frame_counts_down_to_the_fallback_while_spot_is_short() -> None:
    obj = environment(running=3, ready="False", capacity=SHORT, on_demand=FALLBACK)
    now = datetime(2026, 1, 1, 10, 0, 17, tzinfo=UTC)
    frame = render.render_frame(obj, [], MARKET, now=now)
    assert "spot short   since 10:00:05 (SoldOut): on-demand fallback after 20 s, in 8 s" in frame
    late = render.render_frame(obj, [], MARKET, now=datetime(2026, 1, 1, 10, 0, 40, tzinfo=UTC))
    assert "on-demand fallback after 20 s, due now" in late
    # without a clock the frame still says why and how long the wait is
    unclocked = render.render_frame(obj, [], MARKET)
    assert "spot short   since 10:00:05 (SoldOut): on-demand fallback after 20 s" in unclocked
    no_fallback = environment(running=3, ready="False", capacity=SHORT)
    assert "no spec.onDemand.fallback, the pool waits for spot" in render.render_frame(no_fallback, [], MARKET, now=now)
    colored = render.render_frame(obj, [], MARKET, now=now, color=True)
    assert "\x1b[33mspot short" in colored


def test_summary_line_has_the_capacity_mix_and_the_shortage() -> None:
    short = environment(running=3, ready="False", capacity=SHORT, on_demand=FALLBACK)
    line = render.summary_line(short)
    assert "running 3  pending 0  spot 3  on-demand base 0  fallback 0  cost 0.1008 USD/h  |  Ready False" in line
    assert line.endswith("  |  spot short since 10:00:05 (SoldOut)")
    returning = environment(capacity={"spot": 5, "onDemandBase": 0, "onDemandFallback": 3, "returning": 2})
    assert "spot 5  on-demand base 0  fallback 3  returning 2  cost" in render.summary_line(returning)


def test_all_spot_needs_ready_with_every_instance_spot_and_nothing_returning() -> None:
    assert render.is_all_spot(environment(capacity={"spot": 6, "onDemandBase": 0, "onDemandFallback": 0}))
    assert not render.is_all_spot(environment(capacity={"spot": 3, "onDemandBase": 0, "onDemandFallback": 3}))
    assert not render.is_all_spot(environment(capacity={"spot": 5, "onDemandBase": 1, "onDemandFallback": 0}))
    assert not render.is_all_spot(environment(capacity={"spot": 6, "onDemandBase": 0, "onDemandFallback": 0,
                                                        "returning": 1}))
    assert not render.is_all_spot(environment(running=5, ready="False",
                                              capacity={"spot": 6, "onDemandBase": 0, "onDemandFallback": 0}))


@pytest.mark.parametrize(("after", "seconds"), [("20s", 20), ("5m", 300), ("1h30m", 5400), ("", None), ("soon", None)])
def test_fallback_after_reads_the_duration(after: str, seconds: int | None) -> None:
    assert render.fallback_after(environment(on_demand={"fallback": {"after": after}})) == seconds
    assert render.fallback_after(environment()) is None


def test_cost_line_shows_the_cap() -> None:
    obj = environment()
    obj["spec"]["maxHourlyCost"] = "0.5"
    assert "hourly cost  0.1008 USD   (on demand: 0.4713 USD, 79% saved)   cap 0.5 USD/h" in render.render_frame(
        obj, [], MARKET)


def test_pick_victims_takes_spot_instances_only() -> None:
    instances = [
        {"instanceId": "ins-1", "zone": "z3", "instanceType": "A", "state": "RUNNING",
         "chargeType": "POSTPAID_BY_HOUR"},
        {"instanceId": "ins-2", "zone": "z3", "instanceType": "A", "state": "RUNNING", "chargeType": "SPOTPAID"},
    ]
    assert [i["instanceId"] for i in render.pick_victims(instances)] == ["ins-2"]
