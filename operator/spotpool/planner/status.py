"""The object's `status`, exactly as the CRD contract spells it (camelCase), built from scratch.

The status is derived from the same census and pool assessment as the plan, never patched
incrementally, so a status written after a crash is as right as any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from spotpool.api.names import ENVIRONMENT_LABEL
from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.models import RUNNING, Instance, SpotOffer
from spotpool.planner import conditions
from spotpool.planner.capacity import Capacity, Prices, hourly_cost, take_mix
from spotpool.planner.census import Census
from spotpool.planner.degraded import DegradedReason, Problem, find_problems
from spotpool.planner.disruption import InstanceDisruption
from spotpool.planner.formatting import format_cost, format_price, format_time
from spotpool.planner.model import (
    ErrorRecord,
    InflightLaunch,
    PoolBackoff,
    PoolKey,
    PurchaseSignals,
    PurchaseVerdict,
    Rollout,
)
from spotpool.planner.persistence import VALIDATED_LAUNCH_SPEC, backoff_to_status, inflight_to_status
from spotpool.planner.pools import assess_pools

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


@dataclass(frozen=True)
class Figures:
    """The counts and prices the status reports, typed, for the metrics and the caller: nothing
    outside the builder reads them back out of the status body."""

    current: int
    running: int
    pending: int
    updated: int
    hourly_cost: Decimal
    spot: int
    on_demand_base: int
    on_demand_fallback: int
    spot_short: bool
    pools: tuple[tuple[str, str, int, int, Decimal | None], ...]  # zone, type, running, pending, market price


@dataclass(frozen=True)
class StatusReport:
    """A status to merge-patch (`body`), and what the caller decides on, as values rather than
    conditions to read back (`figures`: None for a pass that could not observe)."""

    body: dict[str, Any]
    ready: bool
    progressing: bool
    degraded: bool
    figures: Figures | None = None

    @property
    def conditions(self) -> dict[str, conditions.ConditionState]:
        """The conditions this status writes, typed (the Events of their transitions are judged
        on these, never on raw status fields)."""
        return conditions.states(self.body.get("conditions"))


def build_status(
    *,
    spec: EnvironmentSpec | None,
    generation: int,
    environment_label: str,
    now: datetime,
    previous_conditions: list[dict[str, Any]],
    census: Census | None = None,
    journal: tuple[InflightLaunch, ...] | list[InflightLaunch] = (),
    sequence: int = 0,
    account: Mapping[str, str] | None = None,
    offers: Mapping[PoolKey, SpotOffer] | None = None,
    backoff: Mapping[PoolKey, PoolBackoff] | None = None,
    last_error: ErrorRecord | None = None,
    blocked: tuple[str, str] | None = None,
    deleting: bool = False,
    unlisted_overdue: int = 0,
    purchases_refused: tuple[str, str] | None = None,
    signals: PurchaseSignals | None = None,
    outcome: PurchaseVerdict | None = None,
    rollout: Rollout | None = None,
    validated_launch_spec: str | None = None,
    credentials: Mapping[str, str | None] | None = None,
) -> StatusReport:
    """The status after this pass, for every kind of pass.

    - With a `census` (the pass observed): the whole status. Pass the census after the actions
      (`Census.after`) and the journal as it now stands: the journal is the executor's crash-safe
      record and is written as given.
    - Without one (`blocked`: (reason, message) for a pass stopped before it could observe: bad
      spec, Secret, account, a failed listing): only the conditions, generation and selector.
      A merge-patch leaves every other field as it was: nothing new is known about the instances.
    - `last_error`: an environment-wide cloud failure seen this pass (a release was refused...);
      it makes the environment Degraded whatever the counts.
    - `purchases_refused`: (reason, message) of a spend guard (the pass observed and may release,
      but buys nothing): Degraded with that reason, and a deficit is not Progressing.
    - `signals` and `outcome`: the plan's purchase inputs and verdict (on-demand prices, quota,
      the fallback timer, the spend cap): `status.capacity`, and a deficit the cap leaves unbought
      is Degraded `MaxHourlyCostReached` like a spend guard.
    - `rollout`: drift and expiry (`planner.disruption`): `status.updatedCount`, per instance
      what differs and when it expires, `status.disruption`, and Progressing while instances are
      replaced (or why they are not).
    - `validated_launch_spec`: the launch spec digest the DryRun checks passed this pass (written
      as `validatedLaunchSpec`; None leaves the recorded one); `credentials`: where this pass's
      credentials came from (`status.credentials`, never a secret).
    """
    offers = offers or {}
    backoff = backoff or {}

    def condition(kind: str, decision: tuple[bool, str, str]) -> dict[str, Any]:
        return conditions.condition(
            kind, decision, generation=generation, now=now, previous=previous_conditions
        )

    if census is None or spec is None:
        reason, message = blocked or ("InvalidConfig", "no observation")
        decisions = {
            "Ready": (False, reason, message),
            "Progressing": (False, reason, "blocked: " + message),
            "Degraded": conditions.degraded([Problem(reason, message)]),
        }
        return StatusReport(
            body={
                "observedGeneration": generation,
                "selector": selector(environment_label),
                "conditions": [condition(kind, d) for kind, d in decisions.items()],
            },
            ready=False, progressing=False, degraded=True,
        )

    signals = signals or PurchaseSignals()
    outcome = outcome or PurchaseVerdict()
    if purchases_refused is None and outcome.capped:
        purchases_refused = (DegradedReason.MAX_HOURLY_COST_REACHED.value, outcome.capped)
    if purchases_refused is None and outcome.price_guarded:
        purchases_refused = (DegradedReason.SPEND_GUARD.value, outcome.price_guarded)
    held_back = None  # a return to spot waiting for room: Degraded, but no purchase of the count is refused
    if purchases_refused is None and outcome.return_held:
        held_back = outcome.return_held
    pools = assess_pools(spec, offers, backoff, now, signals.quota)
    expected = 0 if deleting else spec.expected_count  # a deletion wants nothing alive
    mix = take_mix(census, spec.base_count)
    returning = 0 if deleting else len(mix.returning(spec.expected_count))
    counts = conditions.Counts(
        expected=spec.expected_count,
        running=census.running,
        pending=census.pending,
        deficit=census.deficit(expected),
        surplus=census.surplus(expected),
        inflight_unseen=census.inflight_unseen,
        remaining=census.remaining,
        returning=returning,
        terminating=len(census.owned) - census.remaining,
    )
    problems = find_problems(
        pools=pools,
        max_price=spec.max_price,
        deficit=counts.deficit,
        last_error=last_error,
        config_error=blocked or (None if deleting else purchases_refused or held_back),
        unlisted_overdue=unlisted_overdue,
        hidden=len(census.hidden),
    )
    ready = conditions.ready(counts, deleting=deleting)
    rolling = None if deleting or rollout is None or not rollout.active else _rollout_words(rollout)
    progressing = conditions.progressing(counts, paused=spec.paused, deleting=deleting,
                                         refused=purchases_refused, rollout=rolling)
    degraded = conditions.degraded(problems)

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

    roles = mix.roles()
    capacity_body: dict[str, Any] = {
        "spot": len(mix.spot),
        "onDemandBase": len(mix.base),
        "onDemandFallback": len(mix.fallback),
        # merge-patch null removes what no longer holds
        "spotShortSince": format_time(outcome.spot_short_since) if outcome.spot_short_since else None,
        "spotShortReasons": list(outcome.spot_short_reasons) or None,
        "returning": returning or None,
    }
    listed = sorted(census.owned, key=lambda i: (i.state == RUNNING, i.instance_id))
    assessment = rollout.assessment if rollout is not None else None
    disrupted = dict(assessment.per_instance) if assessment is not None else {}
    body: dict[str, Any] = {
        "observedGeneration": generation,
        "currentCount": census.alive_count,
        # Counted on the census after the pass (its releases and purchases), as every count here.
        "updatedCount": sum(1 for i in census.alive
                            if not (disrupted.get(i.instance_id) and disrupted[i.instance_id].drifted)),
        "runningCount": census.running,
        "pendingCount": census.pending,
        "selector": selector(environment_label),
        "hourlyCost": format_cost(hourly_cost(census.alive, Prices(offers, signals.on_demand or {}))),
        "capacity": capacity_body,
        "pools": pool_entries,
        # What differs is said of alive instances only: a released one is on its way out.
        "instances": [_instance_entry(instance, roles.get(instance.instance_id),
                                      disrupted.get(instance.instance_id) if instance.alive else None)
                      for instance in listed[:MAX_STATUS_INSTANCES]],
        # merge-patch null removes a stale count
        "instancesOmitted": len(listed) - MAX_STATUS_INSTANCES if len(listed) > MAX_STATUS_INSTANCES else None,
        "inflightLaunches": [inflight_to_status(launch) for launch in journal],
        "launchSequence": sequence,
        "conditions": [
            condition("Ready", ready),
            condition("Progressing", progressing),
            condition("Degraded", degraded),
        ],
    }
    if account is not None:
        body["account"] = dict(account)
    if rollout is not None:
        body["disruption"] = _disruption_body(rollout)
    if validated_launch_spec is not None:
        body[VALIDATED_LAUNCH_SPEC] = validated_launch_spec
    if credentials is not None:
        body["credentials"] = dict(credentials)
    # The figures are the status's own numbers, rounded as it shows them: a dashboard and
    # `kubectl get` never disagree.
    cost = Decimal(body["hourlyCost"])
    figures = Figures(
        current=census.alive_count, running=census.running, pending=census.pending, updated=body["updatedCount"],
        hourly_cost=cost, spot=len(mix.spot), on_demand_base=len(mix.base), on_demand_fallback=len(mix.fallback),
        spot_short=outcome.spot_short_since is not None,
        pools=tuple((p.zone, p.instance_type, running_by_pool[p.key], alive_by_pool[p.key] - running_by_pool[p.key],
                     Decimal(format_price(p.market_price)) if p.market_price is not None else None) for p in pools),
    )
    return StatusReport(body=body, ready=ready[0], progressing=progressing[0], degraded=degraded[0], figures=figures)


def _rollout_words(rollout: Rollout) -> tuple[bool, str, str]:
    """Progressing while drifted or expired instances are replaced: what, how many remain, and
    what holds it back."""
    assessment = rollout.assessment
    kinds = []
    if assessment.outdated:
        kinds.append(f"{assessment.outdated} drifted")
    if assessment.expired:
        kinds.append(f"{assessment.expired} expired")
    what = " and ".join(kinds) or "marked"
    message = f"replacing {what} instances: {rollout.remaining} remain"
    if rollout.limit:
        message += f", under {rollout.limit}"
    if rollout.blocked:
        return False, "RolloutBlocked", f"{message}; blocked: {rollout.blocked}"
    return True, "RollingOut", message


def _disruption_body(rollout: Rollout) -> dict[str, Any]:
    held = sorted(rollout.assessment.held_since.items())
    return {
        "remaining": rollout.remaining,
        # merge-patch null removes what no longer holds
        "blockedBy": rollout.blocked,
        "budget": rollout.limit,
        "held": [{"id": instance_id, "since": format_time(since)} for instance_id, since in held] or None,
    }


def _instance_entry(instance: Instance, role: Capacity | None,
                    disrupted: InstanceDisruption | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": instance.instance_id,
        "zone": instance.zone,
        "instanceType": instance.instance_type,
        "state": instance.state,
    }
    if role is not None:
        entry["capacity"] = role.value
    if instance.created_time is not None:
        entry["launchTime"] = format_time(instance.created_time)
    if disrupted is not None:
        if disrupted.drifted:
            entry["drifted"] = [r.value for r in disrupted.drifted]
        if disrupted.ignored:
            entry["driftIgnored"] = [r.value for r in disrupted.ignored]
        if disrupted.expires_at is not None:
            entry["expiresAt"] = format_time(disrupted.expires_at)
        if disrupted.held:
            entry["doNotDisrupt"] = True
        if disrupted.draining_since is not None:
            entry["drainingSince"] = format_time(disrupted.draining_since)
    return entry
