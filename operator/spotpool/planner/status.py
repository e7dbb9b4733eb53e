"""The object's `status`, exactly as the CRD contract spells it (camelCase), built from scratch.

The status is derived from the same census and pool assessment as the plan, never patched
incrementally, so a status written after a crash is as right as any other.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.models import RUNNING, Instance, SpotOffer
from spotpool.planner import conditions
from spotpool.planner.census import take_census
from spotpool.planner.degraded import find_problems
from spotpool.planner.formatting import format_cost, format_price, format_time
from spotpool.planner.model import ErrorRecord, InflightLaunch, PoolBackoff, PoolKey
from spotpool.planner.persistence import backoff_to_status, inflight_to_status
from spotpool.planner.pools import assess_pools

ENVIRONMENT_LABEL = "spotpool.io/environment"
MAX_STATUS_INSTANCES = 1000
"""`status.instances` lists at most this many (about 110 KB). expectedCount goes to 10000, and the
full list would approach etcd's 1.5 MiB object limit; `instancesOmitted` says how many are left
out. Instances that are not RUNNING are listed first, as they are the interesting ones."""

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def selector(environment_label: str) -> str:
    """The scale subresource's label selector; HPA and KEDA refuse an empty or invalid one."""
    if not _LABEL_VALUE.fullmatch(environment_label):
        raise ValueError(f"{environment_label!r} is not a valid label value (<=63 chars, alphanumeric ends)")
    return f"{ENVIRONMENT_LABEL}={environment_label}"


def build_status(
    *,
    spec: EnvironmentSpec,
    generation: int,
    instances: list[Instance],
    offers: dict[PoolKey, SpotOffer],
    inflight: list[InflightLaunch],
    backoff: dict[PoolKey, PoolBackoff],
    now: datetime,
    previous_conditions: list[dict[str, Any]],
    environment_label: str,
    owner_uid: str,
    last_error: ErrorRecord | None = None,
    config_error: tuple[str, str] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """The full status after this reconcile's actions (pass the post-execution inflight/backoff).

    - `last_error`: an environment-wide cloud failure seen this reconcile (observation failed,
      a release was refused...); it makes the environment Degraded whatever the counts.
    - `config_error`: (reason, message) for a problem found before any cloud call, e.g.
      ("AuthFailure", "Secret batch/creds has no key secretKey") or ("InvalidConfig", <SpecError>).
    - `inflight` is written as given: it is the executor's crash-safe record, so drop resolved
      launches (`Plan.resolved_inflight`) before calling this, not after.
    """
    census = take_census(instances=instances, inflight=inflight, owner_uid=owner_uid, now=now)
    pools = assess_pools(spec, offers, backoff, now)
    expected = 0 if deleting else spec.expected_count  # a deletion wants nothing alive
    counts = conditions.Counts(
        expected=spec.expected_count,
        running=census.running,
        pending=census.pending,
        deficit=census.deficit(expected),
        surplus=census.surplus(expected),
        inflight_unseen=census.inflight_unseen,
        remaining=census.remaining,
    )
    problems = find_problems(
        pools=pools,
        max_price=spec.max_price,
        deficit=counts.deficit,
        last_error=last_error,
        config_error=config_error,
    )

    def condition(kind: str, decision: tuple[bool, str, str]) -> dict[str, Any]:
        return conditions.condition(
            kind, decision, generation=generation, now=now, previous=previous_conditions
        )

    alive_by_pool = census.alive_by_pool()
    running_by_pool = census.alive_by_pool(RUNNING)
    pool_entries = []
    for pool in pools:
        entry: dict[str, Any] = {
            "zone": pool.zone,
            "instanceType": pool.instance_type,
            "running": running_by_pool[pool.key],
            "pending": alive_by_pool[pool.key] - running_by_pool[pool.key],
            "available": pool.buyable,
        }
        if pool.market_price is not None:
            entry["marketPrice"] = format_price(pool.market_price)
        if pool.backoff is not None:
            entry.update(backoff_to_status(pool.backoff))
            if not pool.backing_off:
                entry.pop("retryAfter", None)
        pool_entries.append(entry)

    listed = sorted(census.owned, key=lambda i: (i.state == RUNNING, i.instance_id))
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "currentCount": census.alive_count,
        "runningCount": census.running,
        "pendingCount": census.pending,
        "selector": selector(environment_label),
        "hourlyCost": format_cost(_hourly_cost(census.alive, offers)),
        "pools": pool_entries,
        "instances": [_instance_entry(instance) for instance in listed[:MAX_STATUS_INSTANCES]],
        "inflightLaunches": [inflight_to_status(launch) for launch in inflight],
        "conditions": [
            condition("Ready", conditions.ready(counts, deleting=deleting)),
            condition("Progressing", conditions.progressing(counts, paused=spec.paused, deleting=deleting)),
            condition("Degraded", conditions.degraded(problems)),
        ],
    }
    if len(listed) > MAX_STATUS_INSTANCES:
        status["instancesOmitted"] = len(listed) - MAX_STATUS_INSTANCES
    return status


def _hourly_cost(alive: tuple[Instance, ...], offers: dict[PoolKey, SpotOffer]) -> Decimal:
    """What the alive instances cost per hour at today's market (spot bills the market price).

    An instance whose pool has no known price adds nothing: the sum is a lower bound then.
    """
    total = Decimal(0)
    for instance in alive:
        offer = offers.get((instance.zone, instance.instance_type))
        if offer is not None and offer.spot_price is not None:
            total += offer.spot_price
    return total


def _instance_entry(instance: Instance) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": instance.instance_id,
        "zone": instance.zone,
        "instanceType": instance.instance_type,
        "state": instance.state,
    }
    if instance.created_time is not None:
        entry["launchTime"] = format_time(instance.created_time)
    return entry
