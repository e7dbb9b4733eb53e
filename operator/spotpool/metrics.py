"""Prometheus metrics: the series the Grafana dashboard and a platform team's alerts are built on.

Names follow Prometheus conventions (prefix `spotpool_`, base units, `_total` counters). Labels are
bounded by the number of environments and their candidate pools; an instance id is never a label.
The metric names are API: the dashboard test checks that every series it queries is defined here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from spotpool import __version__

ENV_LABELS = ("namespace", "environment")
POOL_LABELS = (*ENV_LABELS, "zone", "instance_type")

# CVM calls take tens to hundreds of milliseconds; reconciles up to tens of seconds; fulfilment of a
# large pool can take many minutes when the market is tight.
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RELEASE_REASONS = ("ScaleIn", "Delete", "Cleanup", "ReturnToSpot", "Drifted", "Expired")
DISRUPTION_REASONS = ("Drifted", "Expired", "ReturnToSpot")
"""Voluntary disruptions (`spotpool_disruptions_total`): replaced once their replacement ran."""
CAPACITY_SERIES = (("spot", "spot"), ("on-demand", "base"), ("on-demand", "fallback"))
"""(capacity_type, role) of spotpool_environment_capacity_instances, in `capacity` order."""
INTERRUPTION_KINDS = ("lost", "launch_failed")
# Seven buckets: one histogram per environment, so every bucket costs a series per pool.
FULFIL_BUCKETS = (5, 30, 60, 300, 900, 1800, 3600)


class Metrics:
    """All of spotpool's series in one registry (one per process; tests may make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        if registry is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.build_info = Gauge("spotpool_build_info", "Always 1; the running spotpool version.",
                                ["version"], registry=r)
        self.build_info.labels(__version__).set(1)

        self.expected = Gauge("spotpool_environment_expected_instances",
                              "Instances the environment asks for (spec.expectedCount).", ENV_LABELS, registry=r)
        self.current = Gauge("spotpool_environment_current_instances",
                             "Alive instances (pending plus running).", ENV_LABELS, registry=r)
        self.running = Gauge("spotpool_environment_running_instances",
                             "Running instances.", ENV_LABELS, registry=r)
        self.pending = Gauge("spotpool_environment_pending_instances",
                             "Instances bought but not yet running.", ENV_LABELS, registry=r)
        self.hourly_cost = Gauge("spotpool_environment_hourly_cost_usd",
                                 "What the alive instances cost per hour, USD: spot at the market price, "
                                 "on-demand at the list price.", ENV_LABELS, registry=r)
        self.max_hourly_cost = Gauge("spotpool_environment_max_hourly_cost_usd",
                                     "spec.maxHourlyCost, USD per hour (absent when the pool sets no cap).",
                                     ENV_LABELS, registry=r)
        self.capacity = Gauge("spotpool_environment_capacity_instances",
                              "Alive instances by capacity type (spot, on-demand) and role (spot; base: "
                              "spec.onDemand.baseCount; fallback: bought while spot was short).",
                              (*ENV_LABELS, "capacity_type", "role"), registry=r)
        self.spot_short = Gauge("spotpool_environment_spot_short",
                                "1 while spot cannot fill the pool's deficit (the fallback's wait runs), else 0.",
                                ENV_LABELS, registry=r)
        self.fallbacks = Counter("spotpool_fallback_instances_total",
                                 "On-demand instances bought because spot stayed short past "
                                 "spec.onDemand.fallback.after.", ENV_LABELS, registry=r)
        self.returns = Counter("spotpool_returns_to_spot_total",
                               "Fallback on-demand instances released once a spot replacement ran.",
                               ENV_LABELS, registry=r)
        self.disruptions = Counter("spotpool_disruptions_total",
                                   "Running instances released voluntarily once their replacement ran, by reason "
                                   "(Drifted, Expired, ReturnToSpot).", (*ENV_LABELS, "reason"), registry=r)
        self.drifted = Gauge("spotpool_environment_drifted_instances",
                             "Alive instances that differ from the spec in a field spec.disruption.drift "
                             "replaces.", ENV_LABELS, registry=r)
        self.updated = Gauge("spotpool_environment_updated_instances",
                             "Alive instances that match the current spec (status.updatedCount).", ENV_LABELS,
                             registry=r)
        self.ready = Gauge("spotpool_environment_ready",
                           "1 when every expected instance is running, else 0.", ENV_LABELS, registry=r)
        self.degraded = Gauge("spotpool_environment_degraded",
                              "1 when the cloud refuses the environment's purchases, else 0.", ENV_LABELS,
                              registry=r)

        self.pool_instances = Gauge("spotpool_pool_instances",
                                    "Alive instances per zone and type, by state (pending, running).",
                                    (*POOL_LABELS, "state"), registry=r)
        self.market_price = Gauge("spotpool_pool_market_price_usd",
                                  "Spot market price of the pool, USD per instance-hour.", POOL_LABELS, registry=r)
        self.max_price = Gauge("spotpool_environment_max_price_usd",
                               "The environment's maxPrice, USD per instance-hour (one series per "
                               "environment, not per pool: it is the same for all of them).",
                               ENV_LABELS, registry=r)

        self.launches = Counter("spotpool_instance_launches_total",
                                "Instances bought (returned by RunInstances).", POOL_LABELS, registry=r)
        self.refusals = Counter("spotpool_launch_refusals_total",
                                "RunInstances calls the cloud refused, by Tencent error code.",
                                (*POOL_LABELS, "code"), registry=r)
        self.releases = Counter("spotpool_instance_releases_total",
                                "Instances released by spotpool, by reason (ScaleIn, Delete, Cleanup, ReturnToSpot, "
                                "Drifted, Expired).",
                                (*ENV_LABELS, "reason"), registry=r)
        self.interruptions = Counter("spotpool_instance_interruptions_total",
                                     "Instances lost without spotpool releasing them: reclaimed or released "
                                     "outside spotpool (kind=lost), or failed to launch (kind=launch_failed).",
                                     (*POOL_LABELS, "kind"), registry=r)
        self.time_to_fulfil = Histogram("spotpool_time_to_fulfil_seconds",
                                        "Time from a shortfall appearing until every expected instance runs.",
                                        ENV_LABELS, buckets=FULFIL_BUCKETS, registry=r)

        self.api_latency = Histogram("spotpool_cvm_api_request_duration_seconds",
                                     "CVM API request latency, per HTTP attempt, by action.",
                                     ["action"], buckets=API_BUCKETS, registry=r)
        self.api_errors = Counter("spotpool_cvm_api_errors_total",
                                  "CVM API errors by action and Tencent error code (ClientNetworkError for "
                                  "transport failures).", ["action", "code"], registry=r)

        self.reconcile_duration = Histogram("spotpool_reconcile_duration_seconds",
                                            "Duration of one reconcile of one environment.",
                                            buckets=RECONCILE_BUCKETS, registry=r)
        self.reconcile_errors = Counter("spotpool_reconcile_errors_total",
                                        "Reconciles that ended in an error, by environment.", ENV_LABELS,
                                        registry=r)
        self.orphans = Gauge("spotpool_orphan_instances",
                             "Instances of this installation whose SpotComputeEnvironment no longer exists, as "
                             "the last sweep of each key pair showed them (released after --orphan-grace).",
                             ["region", "account"], registry=r)
        self.orphans_released = Counter("spotpool_orphan_instances_released_total",
                                        "Orphan instances the collector released.", ["region", "account"],
                                        registry=r)
        self.leader = Gauge("spotpool_leader",
                            "1 while this replica may act: it holds the leader Lease within its renew "
                            "deadline, or runs without leader election; else 0.", registry=r)
        # A lone operator (no --leader-elect) always acts; track_leader() replaces this.
        self.track_leader(lambda: True)

    def track_leader(self, is_leader: Callable[[], bool]) -> None:
        """Read the leader gauge from `is_leader` (LeaderElector.is_leader) at every scrape, so a
        replica that was paused past its renew deadline reports 0 at once, before its loop has run."""
        self.leader.set_function(lambda: 1.0 if is_leader() else 0.0)

    # -- the CVM client's observer hook ------------------------------------------------------------
    def observe_api_call(self, action: str, seconds: float, code: str | None) -> None:
        self.api_latency.labels(action).observe(seconds)
        if code:
            self.api_errors.labels(action, code).inc()

    # -- per-environment state ---------------------------------------------------------------------
    def observe_environment(
        self,
        namespace: str,
        name: str,
        *,
        expected: int,
        current: int,
        running: int,
        pending: int,
        hourly_cost: float,
        ready: bool,
        degraded: bool,
        pools: Iterable[tuple[str, str, int, int, float | None]],
        max_price: float,
        capacity: tuple[int, int, int] = (0, 0, 0),
        max_hourly_cost: float | None = None,
        spot_short: bool = False,
        drifted: int = 0,
        updated: int = 0,
    ) -> None:
        """Set every gauge of one environment; `pools` yields (zone, type, running, pending, price);
        `capacity` is (spot, on-demand base, on-demand fallback) alive; `drifted` and `updated`
        are alive instances that differ from the spec (in a field that replaces) and that match it."""
        env = (namespace, name)
        for (capacity_type, role), count in zip(CAPACITY_SERIES, capacity, strict=True):
            self.capacity.labels(*env, capacity_type, role).set(count)
        if max_hourly_cost is None:
            with contextlib.suppress(KeyError):  # no cap (any more): no series
                self.max_hourly_cost.remove(*env)
        else:
            self.max_hourly_cost.labels(*env).set(max_hourly_cost)
        self.spot_short.labels(*env).set(1 if spot_short else 0)
        self.fallbacks.labels(*env)
        self.returns.labels(*env)
        for reason in DISRUPTION_REASONS:
            self.disruptions.labels(*env, reason)
        self.drifted.labels(*env).set(drifted)
        self.updated.labels(*env).set(updated)
        self.expected.labels(*env).set(expected)
        self.current.labels(*env).set(current)
        self.running.labels(*env).set(running)
        self.pending.labels(*env).set(pending)
        self.hourly_cost.labels(*env).set(hourly_cost)
        self.ready.labels(*env).set(1 if ready else 0)
        self.degraded.labels(*env).set(1 if degraded else 0)
        self.max_price.labels(*env).set(max_price)
        for reason in RELEASE_REASONS:
            self.releases.labels(*env, reason)  # series exist from the start: rate() sees the first
        for zone, instance_type, running_n, pending_n, price in pools:
            pool = (*env, zone, instance_type)
            self.launches.labels(*pool)
            for kind in INTERRUPTION_KINDS:
                self.interruptions.labels(*pool, kind)
            self.pool_instances.labels(*pool, "running").set(running_n)
            self.pool_instances.labels(*pool, "pending").set(pending_n)
            if price is not None:
                self.market_price.labels(*pool).set(price)

    def forget_environment(self, namespace: str, name: str) -> None:
        """Drop every series of a deleted environment, counters and histograms included: pools come
        and go, and a registry that kept each one's series would grow with the churn. (A counter
        that disappears reads to Prometheus as a series that ended, which is what happened.)"""
        per_environment = (
            self.expected, self.current, self.running, self.pending, self.hourly_cost, self.ready,
            self.degraded, self.pool_instances, self.market_price, self.max_price, self.launches,
            self.refusals, self.releases, self.interruptions, self.time_to_fulfil, self.reconcile_errors,
            self.max_hourly_cost, self.capacity, self.spot_short, self.fallbacks, self.returns,
            self.disruptions, self.drifted, self.updated,
        )
        for metric in per_environment:
            for labels in list(_label_sets(metric)):
                if labels[:2] == (namespace, name):
                    metric.remove(*labels)


def _label_sets(metric: Gauge | Counter | Histogram) -> Iterable[tuple[str, ...]]:
    # prometheus-client keeps children keyed by label tuples; collect() is the public way to read them.
    names = metric._labelnames
    seen: set[tuple[str, ...]] = set()
    for family in metric.collect():
        for sample in family.samples:
            key = tuple(sample.labels[n] for n in names)
            if key not in seen:
                seen.add(key)
                yield key


METRICS = Metrics()
