"""The metrics registry forgets a deleted environment completely, so it does not grow with churn."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from spotpool.metrics import Metrics


def test_a_deleted_environment_leaves_no_series_behind() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    for name in ("gone", "kept"):
        metrics.observe_environment("team", name, expected=2, current=2, running=1, pending=1, hourly_cost=0.1,
                                    ready=False, degraded=False, pools=[("ap-guangzhou-3", "S5.MEDIUM4", 1, 1, 0.02)],
                                    max_price=0.05)
        metrics.launches.labels("team", name, "ap-guangzhou-3", "S5.MEDIUM4").inc(2)
        metrics.refusals.labels("team", name, "ap-guangzhou-3", "S5.MEDIUM4", "Other").inc()
        metrics.time_to_fulfil.labels("team", name).observe(12)
        metrics.reconcile_errors.labels("team", name).inc()
    metrics.forget_environment("team", "gone")
    text = generate_latest(metrics.registry).decode()
    assert 'environment="gone"' not in text
    assert text.count('environment="kept"') > 20  # the other environment keeps all of its series
