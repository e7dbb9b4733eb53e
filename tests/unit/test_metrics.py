"""The metrics registry forgets a deleted environment completely, so it does not grow with churn."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from spotpool.metrics import Metrics


def test_a_deleted_environment_leaves_no_series_behind() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    for name in ("gone", "kept"):
        metrics.observe_environment("team", name, expected=2, current=2, running=1, pending=1, hourly_cost=0.1,
                                    ready=False, degraded=False, pools=[("ap-guangzhou-3", "S5.MEDIUM4", 1, 1, 0.02)],
                                    max_price=0.05, capacity=(1, 1, 0), max_hourly_cost=1.5, spot_short=True)
        metrics.fallbacks.labels("team", name).inc()
        metrics.returns.labels("team", name).inc()
        metrics.launches.labels("team", name, "ap-guangzhou-3", "S5.MEDIUM4").inc(2)
        metrics.refusals.labels("team", name, "ap-guangzhou-3", "S5.MEDIUM4", "Other").inc()
        metrics.time_to_fulfil.labels("team", name).observe(12)
        metrics.reconcile_errors.labels("team", name).inc()
    metrics.forget_environment("team", "gone")
    text = generate_latest(metrics.registry).decode()
    assert 'environment="gone"' not in text
    assert text.count('environment="kept"') > 20  # the other environment keeps all of its series


def test_capacity_series_and_a_cap_that_goes_away() -> None:
    metrics = Metrics(registry=CollectorRegistry())

    def observe(**extra: object) -> str:
        metrics.observe_environment("team", "pool", expected=5, current=5, running=5, pending=0, hourly_cost=0.3,
                                    ready=True, degraded=False, pools=[], max_price=0.05, **extra)  # type: ignore[arg-type]
        return generate_latest(metrics.registry).decode()

    text = observe(capacity=(3, 1, 1), max_hourly_cost=0.5, spot_short=False)
    for role, count in (('capacity_type="spot",environment="pool",namespace="team",role="spot"', 3),
                        ('capacity_type="on-demand",environment="pool",namespace="team",role="base"', 1),
                        ('capacity_type="on-demand",environment="pool",namespace="team",role="fallback"', 1)):
        assert f"spotpool_environment_capacity_instances{{{role}}} {float(count)}" in text
    assert 'spotpool_environment_max_hourly_cost_usd{environment="pool",namespace="team"} 0.5' in text
    assert 'spotpool_fallback_instances_total{environment="pool",namespace="team"} 0.0' in text
    text = observe(capacity=(5, 0, 0), max_hourly_cost=None, spot_short=True)
    assert "spotpool_environment_max_hourly_cost_usd{" not in text
    assert 'spotpool_environment_spot_short{environment="pool",namespace="team"} 1.0' in text
