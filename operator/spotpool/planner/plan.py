"""The planner's entry point: observed state in, the next actions out. Pure: no I/O, no clock.

How the numbers are derived (see `Census` for the counting, `planner.journal` for the records):

    deficit = max(0, expected - alive - inflight_unseen)
    surplus = max(0, alive - expected)

In-flight launches count toward the deficit (they will be alive) but not toward the surplus. This
is deliberate. `alive - expected` instances are surplus however the in-flight launches end: if they
all fail, exactly that many are too many; if they succeed, more are, and those are released once
they are observed (as PENDING, first in line). Releasing that lower bound at once is therefore
never wrong and stops paying for surplus sooner, whereas waiting for launches to resolve would tie
scale-in to the launch bookkeeping: one stuck record would block releases. Counting unseen
launches into the surplus instead could release instances that are still needed if a launch then
fails. Deficit and surplus can never both be positive.

Capacity types (spec.onDemand), in the order a pass buys them, each within the quota and the
hourly spend cap (`planner.allowance`):

1. base: the deficit's share that restores `baseCount` on-demand instances;
2. spot: the rest of the deficit, over the spot pools in the strategy's order;
3. fallback: what spot could not fill, bought on-demand once spot has been short for
   `fallback.after` for one of `fallback.reasons` (the shortage's start is carried from pass to
   pass in the status; it ends only when nothing is missing for spot);
4. return: with nothing missing and spot buyable, spot replacements for fallback on-demand
   instances, at most `returnToSpot.maxInFlight` in flight. A fallback instance is released
   (`ReturnToSpot`) only once a running spot instance takes its place, so a replacement that
   fails to launch costs nothing but its own attempt; pending replacements are not surplus.

Releases prefer fallback on-demand instances (the dearest, and the ones meant to go), keep the
base, and otherwise follow scaleInPolicy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from spotpool.api.spec import AllocationStrategy, EnvironmentSpec
from spotpool.cloud.models import (
    LAUNCH_FAILED,
    RUNNING,
    SHUTDOWN,
    TERMINATING,
    Instance,
    SpotOffer,
)
from spotpool.planner.allowance import Allowance
from spotpool.planner.capacity import Mix, Prices, hourly_cost, take_mix
from spotpool.planner.census import Census, take_census
from spotpool.planner.degraded import DegradedReason
from spotpool.planner.disruption import (
    Assessment,
    Candidate,
    assess,
    held,
    limit,
    releasable_after_drain,
    return_budget,
)
from spotpool.planner.formatting import as_utc, format_cost
from spotpool.planner.journal import JournalDecision, decide_journal
from spotpool.planner.launch import Launches, plan_launches
from spotpool.planner.model import (
    MAX_JOURNAL_RECORDS,
    InflightLaunch,
    LaunchBatch,
    Observation,
    Plan,
    PoolBackoff,
    PoolKey,
    PurchaseSignals,
    PurchaseVerdict,
    Purpose,
    ReleaseReason,
    Rollout,
)
from spotpool.planner.pools import PoolAssessment, assess_pools, order_buyable, shortage_reason
from spotpool.planner.release import batch_ids, release_order

DEAD_STATES = frozenset({LAUNCH_FAILED, SHUTDOWN})
"""States of instances that will never serve again but still exist: released as Unwanted.

STOPPED and the transient states (rebooting, migrating...) are left alone: someone or something
may bring those back, and they are not the planner's to destroy while the object lives.
"""


@dataclass(frozen=True)
class _OnDemandPool:
    key: PoolKey
    market_price: Decimal | None


def plan(
    *,
    spec: EnvironmentSpec,
    observation: Observation,
    journal: list[InflightLaunch] | tuple[InflightLaunch, ...],
    offers: Mapping[PoolKey, SpotOffer],
    backoff: Mapping[PoolKey, PoolBackoff],
    now: datetime,
    owner_uid: str,
    deleting: bool = False,
    purchases_refused: str | None = None,
    signals: PurchaseSignals | None = None,
    held_since: Mapping[str, datetime] | None = None,
) -> Plan:
    """Decide, once per pass, what to replay, buy and release.

    Only observed instances carrying `spotpool.io/environment-uid == owner_uid` count. `offers` is
    the spot market per pool; `backoff` the per-pool refusal history; `journal` the launch records
    read back from status (see `planner.journal` for what happens to each). Deleting overrides
    `paused`: a deletion must release everything before the finalizer goes, or instances leak.
    `purchases_refused` (why: a spend guard the administrator set) buys and replays nothing but
    releases as usual: a guard stops spending, never scale-in, cleanup or deletion.
    `held_since`: when each do-not-disrupt hold began, as the status recorded it
    (`planner.disruption`).
    """
    signals = signals or PurchaseSignals()
    observed = take_census(
        instances=observation.listed, inflight=journal, owner_uid=owner_uid, confirmed=observation.confirmed,
        now=now, released=observation.released,
    )
    decision = decide_journal(spec=spec, census=observed, now=now, deleting=deleting,
                              purchases_refused=purchases_refused, unbought=observation.unbought)
    census = observed.keeping(decision.keep)
    prices = Prices(offers, signals.on_demand or {})
    if deleting:
        return _plan_deletion(spec, census, prices, decision)

    expected = spec.expected_count
    deficit = census.deficit(expected)
    assessment = assess(spec, census.alive, now, held_since or {})
    leaving = [c.instance for c in assessment.candidates]
    # The mix as the pool will be once its candidates are replaced: a drifted base instance's
    # replacement is bought on-demand as base, and the return to spot never takes a candidate.
    mix = take_mix(census, spec.base_count, excluding={i.instance_id for i in leaving})
    notes = [f"ignored {census.foreign} instances not owned by {owner_uid}"] if census.foreign else []
    outcome = PurchaseVerdict()
    launches: list[LaunchBatch] = []
    returns: list[Instance] = []
    releases: list[Instance] = []
    voluntary: list[Instance] = []
    drains: list[Instance] = []
    cleanup: list[Instance] = []
    rollout: Rollout | None = None

    if spec.paused:
        notes.append("paused: buying and releasing nothing")
    else:
        if purchases_refused and deficit:
            notes.append(f"{deficit} instances short: {purchases_refused}")
        bound = limit(spec.disruption.budgets, assessment.reasons(), expected, now).allowed
        returns, voluntary, releases = _release(spec, census, mix, prices, leaving,
                                                len(leaving) if bound is None else bound)
        # Voluntary releases (the return to spot, drift, expiry) wait out the drain grace first.
        grace = spec.disruption.drain_grace_seconds
        returns, marked = releasable_after_drain(returns, grace, now)
        voluntary, marked_too = releasable_after_drain(voluntary, grace, now)
        drains = marked + marked_too
        if not purchases_refused:
            # One assessment of the spot pools and one allowance serve the deficit and the return
            # (which only buys when nothing is missing, so the two never share a pass's room).
            assessments = assess_pools(spec, offers, backoff, now, signals.quota)
            buyable = order_buyable(spec, assessments, signals.reclaims)
            allowance = _allowance(spec, census, offers, signals, prices)
            market = _Market(spec, census, mix, assessments, buyable, allowance, signals, prices, now)
            bought, outcome, why = _buy(market, deficit)
            notes += why
            launches += bought
            if not deficit:
                returning, waits = _return_to_spot(market, returns, releases)
                launches += returning
                if waits:
                    outcome = replace(outcome, return_held=waits)
        rollout = _rollout(spec, census, assessment, returns + voluntary + releases, launches, now,
                           None if deficit else signals.held_ceiling, refused=purchases_refused, deficit=deficit)
        if rollout.replacing and not purchases_refused and not deficit:
            wanted = rollout.replacing
            bought, replacing_outcome, why = _buy(market, wanted)
            notes += why
            launches += [replace(b, purpose=Purpose.REPLACE) if b.purpose is Purpose.SPOT else b for b in bought]
            outcome = replace(replacing_outcome, return_held=outcome.return_held)
        cleanup = sorted((i for i in census.owned if i.state in DEAD_STATES), key=lambda i: i.instance_id)

    if returns and not mix.spot_running:  # no spot runs: nothing returns, it is plain scale-in
        releases, returns = returns + releases, []
    room = MAX_JOURNAL_RECORDS - len(decision.keep)
    if len(launches) > room:
        # Never more records than are read back: the rest waits for records to resolve.
        notes.append(f"{len(launches) - max(room, 0)} launch batches wait: the journal holds "
                     f"{len(decision.keep)} of {MAX_JOURNAL_RECORDS} records")
        launches = launches[:max(room, 0)]
    reasons = {c.instance.instance_id: c.reason for c in assessment.candidates}
    return Plan(
        journal=decision.keep,
        replays=decision.replay,
        launches=tuple(launches),
        releases=_frozen(batch_ids(releases)),
        release_reason=ReleaseReason.SCALE_IN if releases else None,
        cleanup=_frozen(batch_ids(cleanup)),
        dropped=decision.dropped,
        census=census,
        unlisted_overdue=decision.unlisted_overdue,
        notes=tuple(notes),
        returns=_frozen(batch_ids(returns)),
        verdict=outcome,
        voluntary=tuple((ReleaseReason(reason.value), ids) for reason in sorted(set(reasons.values()))
                        for ids in _frozen(batch_ids(i for i in voluntary if reasons[i.instance_id] is reason))),
        drains=tuple(i.instance_id for i in drains),
        rollout=rollout or Rollout(assessment, replacing=0, remaining=len(assessment.candidates)
                                   + len(assessment.waiting)),
    )


def _rollout(
    spec: EnvironmentSpec,
    census: Census,
    assessment: Assessment,
    released: list[Instance],
    launches: list[LaunchBatch],
    now: datetime,
    ceiling: int | None,
    *,
    refused: str | None,
    deficit: int,
) -> Rollout:
    """How many drifted or expired instances to buy replacements for now, within the budget.

    Replacements in flight are what the pool holds beyond expectedCount once this pass's
    releases and purchases are counted (booting replacements, unseen purchases, candidates that
    wait out their drain grace): new ones only fill the budget up. The budget is the most
    restrictive active one for the reasons still to replace; the spend guards' ceiling bounds the
    surge as it bounds the return to spot's. Nothing is bought while a deficit is open (the
    deficit comes first) or purchases are refused (`refused` says why: the rollout is blocked).
    """
    gone = {i.instance_id for i in released}
    left = [c for c in assessment.candidates if c.instance.instance_id not in gone]
    remaining = len(left) + len(assessment.waiting)
    if not left:
        blocked = _held_words(assessment.waiting, spec) if assessment.waiting else None
        return Rollout(assessment, replacing=0, remaining=remaining, blocked=blocked)
    holding = (census.alive_count + census.inflight_unseen - len(released)
               + sum(b.count for b in launches))
    in_flight = max(0, holding - spec.expected_count)
    bound = limit(spec.disruption.budgets, {c.reason for c in left}, spec.expected_count, now)
    allowed = len(left) if bound.allowed is None else min(len(left), bound.allowed)
    wanted = allowed - in_flight
    blocked = None
    if bound.allowed == 0:
        blocked = f"{bound.which} allows no voluntary replacement now"
    elif ceiling is not None and wanted > 0 and holding + wanted > ceiling:
        wanted = max(0, ceiling - holding)
        if not wanted and not in_flight:
            blocked = (f"the administrator's spend guards let this pool hold {ceiling} instances at once, and a "
                       f"replacement boots while the instance it replaces still runs (it holds {holding})")
    if refused:
        wanted = 0
        blocked = blocked or f"buying nothing: {refused}"
    elif deficit:
        wanted = 0
    return Rollout(assessment, replacing=max(0, wanted), remaining=remaining, blocked=blocked, limit=bound.which)


def _held_words(waiting: tuple[Candidate, ...], spec: EnvironmentSpec) -> str:
    hold = spec.disruption.do_not_disrupt_max_hold_seconds
    until = f"for up to {hold}s (spec.disruption.doNotDisruptMaxHold)" if hold else "until the tag goes"
    return f"{len(waiting)} instances carry spotpool.io/do-not-disrupt and are kept {until}"


def _allowance(
    spec: EnvironmentSpec,
    census: Census,
    offers: Mapping[PoolKey, SpotOffer],
    signals: PurchaseSignals,
    prices: Prices,
) -> Allowance:
    """What is left of the quota and the cap once the alive instances and in-flight purchases
    are counted. Under a cap an unpriced spot instance counts at the bid (the most it can bill)."""
    cost = hourly_cost(census.alive, prices, unknown=spec.max_price)
    for record in census.records:
        price = prices.of(record.launch.pool, record.launch.on_demand)
        cost += (price if price is not None else spec.max_price) * record.unseen
    cpu = {key: offer.cpu for key, offer in offers.items()}
    for key, od in (signals.on_demand or {}).items():
        cpu.setdefault(key, od.cpu)
    return Allowance(quota=signals.quota, cpu=cpu, cap=spec.max_hourly_cost, cost=cost)


@dataclass(frozen=True)
class _Market:
    """What one pass buys against: the spec, the count, the capacity types, the spot pools as
    assessed and ordered, what the quota and the cap leave (shared by every purchase of the pass),
    the purchase signals, the prices and the time. Made once per pass."""

    spec: EnvironmentSpec
    census: Census
    mix: Mix
    assessments: list[PoolAssessment]
    buyable: list[PoolAssessment]
    allowance: Allowance
    signals: PurchaseSignals
    prices: Prices
    now: datetime


def _buy(market: _Market, deficit: int) -> tuple[list[LaunchBatch], PurchaseVerdict, list[str]]:
    """Base, spot and fallback purchases for the deficit (steps 1 to 3 in the module's docstring),
    the purchase verdict, and notes on why less was planned."""
    spec, census, mix, allowance, signals, prices, now = (market.spec, market.census, market.mix, market.allowance,
                                                          market.signals, market.prices, market.now)
    assessments, buyable = market.assessments, market.buyable
    notes: list[str] = []
    base_need = min(deficit, max(0, spec.base_count - mix.on_demand - mix.on_demand_unseen))
    base = _on_demand(spec, base_need, Purpose.BASE, signals, prices, allowance, now)
    guarded = _over_ceiling(spec, signals, prices, base_need - sum(b.count for b in base.batches))
    spot_need = deficit - base_need
    spot = plan_launches(
        deficit=spot_need, strategy=spec.allocation_strategy, pools=list(buyable),
        occupancy=census.alive_by_pool() + census.unseen_by_pool, max_price=spec.max_price, allowance=allowance,
    )
    reasons: set[str] = set()
    if spot.unfilled and not allowance.capped:
        reasons = {r.value for a in assessments if not a.buyable and (r := shortage_reason(a)) is not None}
        if allowance.quota_bound:
            reasons.add("QuotaExceeded")
        if not buyable:
            why = "; ".join(a.why_not(spec.max_price) for a in assessments)
            notes.append(f"{spot.unfilled} instances short and no spot pool can be bought: {why}")
    # The shortage starts when spot cannot be planned, and ends only when nothing is missing for spot:
    # a pool that looks buyable again once its backoff lapses is tried, but one more refusal must
    # not restart the wait (with refusals every few minutes it would never end).
    previous = as_utc(signals.spot_short_since) if signals.spot_short_since else None
    since = (previous or now) if reasons else (previous if spot_need else None)
    fallback = spec.on_demand.fallback if spec.on_demand else None
    due = (fallback is not None and since is not None and bool(reasons & {r.value for r in fallback.reasons})
           and now >= since + timedelta(seconds=fallback.after_seconds))
    fallen_back: Launches = Launches((), 0)
    if due and fallback is not None:
        room = spot.unfilled
        if fallback.max_count is not None:
            inflight = max(0, mix.on_demand_unseen - max(0, spec.base_count - mix.on_demand))
            room = min(room, max(0, fallback.max_count - len(mix.fallback) - inflight))
        fallen_back = _on_demand(spec, room, Purpose.FALLBACK, signals, prices, allowance, now)
        guarded = guarded or _over_ceiling(spec, signals, prices, room - sum(b.count for b in fallen_back.batches))
    launches = [*base.batches, *spot.batches, *fallen_back.batches]
    capped = deficit - sum(b.count for b in launches) if allowance.capped else 0
    message = None
    if capped:
        message = (f"the pool costs {format_cost(allowance.cost)} USD/h with this pass's purchases, against "
                   f"spec.maxHourlyCost {spec.max_hourly_cost} USD/h: {capped} instances short are not bought")
    outcome = PurchaseVerdict(
        spot_short_since=since,
        spot_short_reasons=tuple(sorted(reasons)),
        fallback_due=due,
        capped_count=capped if message else 0,
        capped=message,
        price_guarded=guarded,
    )
    return launches, outcome, notes


def _over_ceiling(spec: EnvironmentSpec, signals: PurchaseSignals, prices: Prices, short: int) -> str | None:
    """Why `short` on-demand instances were not bought, when an administrator's guard is what left
    them out: the namespace may buy none, or every candidate pool's list price is above `--max-price`."""
    if short > 0 and signals.on_demand_refused:
        return f"{short} on-demand instances are not bought: {signals.on_demand_refused}"
    ceiling = signals.price_ceiling
    if short <= 0 or ceiling is None:
        return None
    listed = [p for key in _candidates(spec) if (p := prices.of(key, on_demand=True)) is not None]
    if not listed or min(listed) <= ceiling:
        return None
    return (f"{short} on-demand instances are not bought: the cheapest list price of the pool's zones and types, "
            f"{format_cost(min(listed))} USD/h, is over the administrator's limit of {ceiling} USD/h (--max-price)")


def _candidates(spec: EnvironmentSpec) -> list[PoolKey]:
    return [(zone, kind) for kind in spec.instance_types for zone in spec.zones]


def _on_demand(
    spec: EnvironmentSpec, need: int, purpose: Purpose, signals: PurchaseSignals, prices: Prices, allowance: Allowance,
    now: datetime,
) -> Launches:
    """On-demand batches for `need` instances: the cheapest list price first (candidate order on
    ties), skipping pools sold out as pay-as-you-go, unpriced, or backing off after a refusal."""
    if need <= 0 or signals.on_demand_refused:
        return Launches((), 0)
    od_offers = signals.on_demand or {}
    od_backoff = signals.on_demand_backoff or {}
    pools = []
    ceiling = signals.price_ceiling
    for index, key in enumerate(_candidates(spec)):
        offer = od_offers.get(key)
        if offer is not None and (offer.sold_out or offer.status_category == "WithoutStock"):
            continue
        entry = od_backoff.get(key)
        if entry is not None and entry.retry_after is not None and as_utc(entry.retry_after) > now:
            continue
        price = prices.of(key, on_demand=True)
        if price is None or (ceiling is not None and price > ceiling):
            continue  # unpriced, or over the administrator's --max-price: never bought on-demand
        pools.append((price, index, _OnDemandPool(key, price)))
    ordered = [pool for _, _, pool in sorted(pools, key=lambda item: (item[0], item[1]))]
    return plan_launches(deficit=need, strategy=AllocationStrategy.LOWEST_PRICE, pools=list(ordered),
                         occupancy=Counter(), max_price=spec.max_price, purpose=purpose, allowance=allowance)


def _release(
    spec: EnvironmentSpec, census: Census, mix: Mix, prices: Prices, leaving: list[Instance], budget: int,
) -> tuple[list[Instance], list[Instance], list[Instance]]:
    """(fallback on-demand instances a running spot instance replaces, drifted or expired
    instances a running instance replaces, other surplus to release).

    With `alive - expected` instances too many: first the fallback on-demand instances that
    running spot instances make redundant; then the candidates (`leaving`, in order) as long as
    running instances still number expectedCount without them; pending instances that replace
    the remaining fallback ones and candidates are kept (they are a replacement in progress, not
    surplus; of the candidates', at most `budget`, the most restrictive active budget's count);
    the rest goes by scaleInPolicy, candidates first, the base on-demand instances and
    do-not-disrupt ones last.
    """
    expected = spec.expected_count
    surplus = census.surplus(expected)
    if not surplus:
        return [], [], []
    fallback = [i for i in mix.fallback if not held(i)]
    redundant = min(len(fallback), max(0, mix.spot_running + mix.on_demand - expected))
    returns = list(reversed(fallback))[:redundant]  # newest fallback first
    running_left = census.running - sum(1 for i in returns if i.state == RUNNING)
    # A candidate is replaced when an up-to-date instance runs in its place: beyond the share of
    # expectedCount the candidates do not fill. Other surplus is a scale-in (candidates first).
    leaving_ids = {i.instance_id for i in leaving}
    returning_ids = {i.instance_id for i in returns}
    current_running = sum(1 for i in census.alive if i.state == RUNNING and i.instance_id not in leaving_ids
                          and i.instance_id not in returning_ids)
    # Only candidates that fill expectedCount need replacing: beyond it they are surplus.
    inside = min(len(leaving), expected)
    in_place = max(0, current_running - (expected - inside))
    replaced = leaving[: max(0, min(inside, in_place, running_left - expected, surplus - len(returns)))]
    returning = spec.on_demand is not None and spec.on_demand.return_to_spot.enabled
    protected = list(mix.returning(expected, returned=redundant)) if returning else []
    if inside > len(replaced):
        kept = {i.instance_id for i in protected}
        booting = [i for i in census.alive if i.state != RUNNING and i.instance_id not in leaving_ids
                   and i.instance_id not in kept]
        protected += booting[: max(0, min(inside - len(replaced), budget))]
    rest = surplus - len(returns) - len(replaced) - len(protected)
    if rest <= 0:
        return returns, replaced, []
    gone = {i.instance_id for i in (*returns, *replaced, *protected)}
    base = {i.instance_id for i in mix.base}
    candidates = [i for i in census.alive if i.instance_id not in gone]
    ordered = release_order(candidates, spec.scale_in_policy, _known(prices, on_demand=False),
                            _known(prices, on_demand=True))
    # Stable: pending and candidates first, then the rest; base and do-not-disrupt instances last.
    ordered.sort(key=lambda i: (held(i), i.instance_id in base,
                                not (i.state != RUNNING or i.instance_id in leaving_ids)))
    return returns, replaced, ordered[:rest]


def _return_to_spot(
    market: _Market, returns: list[Instance], releases: list[Instance],
) -> tuple[list[LaunchBatch], tuple[str, str] | None]:
    """Spot replacements for fallback on-demand instances (step 4), within the disruption budget.

    And within what the administrator's guards let the pool hold at once (`ceiling`): the
    replacements boot while the fallback instances they replace still run, so a return holds up to
    `maxInFlight` beyond expectedCount, and a guard on expectedCount alone let a pool hold twice
    its limit. With no room left under the guard, or under the cap, the return waits, and the
    second value says why (Degraded names the limit, the cost and what it holds back).

    Replacements in flight are what the pool has beyond expectedCount once this pass's releases
    are done (pending spot, unseen purchases): new ones only fill the budget up.

    Under `spec.maxHourlyCost` a replacement is weighed against the cost the pool will have once
    the return is done: each replaces a fallback instance, which goes as soon as it runs. Counted
    on top of the fallback instances it replaces, a return could never start under a cap the
    fallback itself nearly fills, and the pool would pay on-demand prices for as long as the cap
    stands (5.5x the spot cost, measured). The pool may so pass the cap while replacements boot,
    by at most `maxInFlight` spot prices; it costs less as soon as they run.
    """
    spec, census, mix, allowance, prices = market.spec, market.census, market.mix, market.allowance, market.prices
    ceiling = market.signals.held_ceiling
    if spec.on_demand is None or not spec.on_demand.return_to_spot.enabled:
        return [], None
    # A fallback instance its workload holds (spotpool.io/do-not-disrupt) is not returned: no
    # replacement is bought for it (bought, it would run beside it and go as surplus, pass after pass).
    returnable = [i for i in mix.fallback if not held(i)]
    fallback_left = len(returnable) - len(returns)
    if fallback_left <= 0:
        return [], None
    holding = census.alive_count + census.inflight_unseen - len(returns) - len(releases)
    in_flight = holding - spec.expected_count
    budget, _ = return_budget(spec, market.now)
    wanted = min(fallback_left, budget) - max(0, in_flight)
    if wanted <= 0:
        return [], None
    if ceiling is not None and holding + wanted > ceiling:
        wanted = ceiling - holding
        if wanted <= 0:
            return [], (DegradedReason.SPEND_GUARD,
                        f"the return to spot of {fallback_left} on-demand fallback instances waits: a spot "
                        f"replacement boots while the instance it replaces still runs, and the administrator's "
                        f"spend guards let this pool hold {ceiling} instances at once (it holds {holding})")
    # The fallback instances released this pass, and those the new replacements will replace
    # (newest first, as they are released), no longer count against the cap.
    replaced = list(reversed(returnable))[: len(returns) + max(0, in_flight) + wanted]
    credit = sum((price for i in replaced if (price := prices.of((i.zone, i.instance_type), True)) is not None),
                 Decimal(0))
    allowance.cost -= credit
    try:
        batches = list(plan_launches(
            deficit=wanted, strategy=spec.allocation_strategy, pools=list(market.buyable),
            occupancy=census.alive_by_pool() + census.unseen_by_pool, max_price=spec.max_price,
            purpose=Purpose.RETURN, allowance=allowance,
        ).batches)
        if not batches and allowance.capped and max(0, in_flight) == 0:
            return [], (DegradedReason.MAX_HOURLY_COST_REACHED,
                        f"the return to spot of {fallback_left} on-demand fallback instances waits: with a spot "
                        f"replacement bought the pool would cost over spec.maxHourlyCost {spec.max_hourly_cost} "
                        f"USD/h (it costs {format_cost(allowance.cost + credit)} USD/h now, on-demand prices)")
        return batches, None
    finally:
        allowance.cost += credit


def _plan_deletion(spec: EnvironmentSpec, census: Census, prices: Prices, decision: JournalDecision) -> Plan:
    """Release every owned instance not already terminating; buy and replay nothing (unanswered
    records are resolved from a listing, see `planner.journal`).

    Done only when nothing owned is observed any more, terminating included, AND no launch record
    is left. Observed means listed by the pool's own sweep or found by an `InstanceIds` look-up of
    an id the pool knew: a terminating instance may yet fail to terminate (CVM's
    LatestOperationState), so only the cloud's "not found" lets an id go. Ids the pool's key
    cannot find (`Census.hidden`) are never released by id: nothing proves them the pool's (an id
    forged into status could name another team's instance); their record keeps the deletion
    waiting, saying why, until they show or `NOT_VISIBLE_HOLD` passes.
    """
    remaining = [instance for instance in census.owned if instance.state != TERMINATING]
    releases = batch_ids(release_order(remaining, spec.scale_in_policy, _known(prices, on_demand=False),
                                       _known(prices, on_demand=True)))
    return Plan(
        journal=decision.keep,
        replays=(),
        launches=(),
        releases=_frozen(releases),
        release_reason=ReleaseReason.DELETE if releases else None,
        cleanup=(),
        dropped=decision.dropped,
        census=census,
        unlisted_overdue=decision.unlisted_overdue,
        deletion_complete=not census.owned and not decision.keep,
    )


def _frozen(batches: list[list[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(batch) for batch in batches)


def _known(prices: Prices, *, on_demand: bool) -> dict[PoolKey, Decimal]:
    keys = set(prices.spot) | set(prices.on_demand)
    known = {key: prices.of(key, on_demand) for key in keys}
    return {key: price for key, price in known.items() if price is not None}
