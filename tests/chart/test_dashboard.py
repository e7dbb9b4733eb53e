"""The Grafana dashboard shipped in the chart: generated, provisioning-safe, and built only from series
the operator exports. The rules re-implement grafana/dashboard-linter's (datasource variable, panel
datasource, units, $__rate_interval) plus our own (every spotpool_* series exists)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from spotpool import dashboard as generator
from spotpool.metrics import Metrics
from tests.chart.helm import CHART

DASHBOARD_FILE = CHART / "dashboards" / "spotpool.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ENV_FILTER = ('namespace=~"$namespace"', 'environment=~"$environment"')
# Series without namespace/environment labels: their panels cover the whole operator.
OPERATOR_WIDE = {"spotpool_cvm_api_request_duration_seconds_bucket", "spotpool_cvm_api_errors_total",
                 "spotpool_reconcile_duration_seconds_bucket"}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(board) for t in p["targets"]]


def exported_series() -> set[str]:
    """Every series name the operator's registry can expose."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum",
                      f"{family.name}_created"}
        else:
            names.add(family.name)
    return names


def test_committed_dashboard_is_the_generated_one() -> None:
    assert DASHBOARD_FILE.read_text() == generator.render(), (
        "charts/spotpool/dashboards/spotpool.json is stale: "
        "run `python -m spotpool.dashboard charts/spotpool/dashboards/spotpool.json`")


def test_identity(board: dict[str, Any]) -> None:
    assert board["uid"] == "spotpool-pools"
    assert board["title"] == "spotpool: spot pools"


def test_no_inputs_and_no_hard_wired_datasource(board: dict[str, Any]) -> None:
    text = DASHBOARD_FILE.read_text()
    assert "__inputs" not in board
    assert "${DS_" not in text


def test_variables(board: dict[str, Any]) -> None:
    variables = board["templating"]["list"]
    assert [v["name"] for v in variables] == ["datasource", "namespace", "environment"]
    datasource_variables = [v for v in variables if v["type"] == "datasource"]
    assert len(datasource_variables) == 1
    assert datasource_variables[0]["name"] == "datasource"
    assert datasource_variables[0]["query"] == "prometheus"
    namespace, environment = variables[1:]
    assert namespace["query"] == "label_values(spotpool_environment_expected_instances, namespace)"
    assert environment["query"].startswith("label_values(spotpool_environment_expected_instances{")
    assert '$namespace' in environment["query"]
    for variable in (namespace, environment):
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["refresh"] == 2  # on time range change


def test_every_panel_uses_the_datasource_variable(board: dict[str, Any]) -> None:
    for panel in panels(board):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


def test_every_panel_has_a_unit_and_a_description(board: dict[str, Any]) -> None:
    for panel in panels(board):
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert len(panel.get("description", "")) > 40, panel["title"]


def test_unique_panel_ids(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and i > 0 for i in ids)


def test_unique_ref_ids_per_panel(board: dict[str, Any]) -> None:
    for panel in panels(board):
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(refs), panel["title"]


def test_rates_use_rate_interval(board: dict[str, Any]) -> None:
    for expr in exprs(board):
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        assert all(r == "$__rate_interval" for r in ranges), expr
        if re.search(r"\b(rate|irate|increase)\(", expr):
            assert ranges, expr


def test_every_series_exists_in_the_registry(board: dict[str, Any]) -> None:
    exported = exported_series()
    used = {name for expr in exprs(board) for name in re.findall(r"\bspotpool_[a-z0-9_]+", expr)}
    assert used, "no spotpool series in the dashboard"
    assert used <= exported, f"not exported by spotpool.metrics: {sorted(used - exported)}"
    # the variables too
    for variable in board["templating"]["list"][1:]:
        assert set(re.findall(r"\bspotpool_[a-z0-9_]+", variable["query"])) <= exported


def test_environment_series_are_filtered_by_the_variables(board: dict[str, Any]) -> None:
    for expr in exprs(board):
        for name, selector in re.findall(r"\b(spotpool_[a-z0-9_]+)(\{[^}]*\})?", expr):
            if name in OPERATOR_WIDE:
                assert not selector, expr
            else:
                assert all(f in selector for f in ENV_FILTER), expr


def test_operator_wide_series_really_have_no_environment_label() -> None:
    metrics = Metrics()
    for metric in (metrics.api_latency, metrics.api_errors, metrics.reconcile_duration):
        assert "environment" not in metric._labelnames


# The panels the on-call engineer relies on, and a series each must show.
REQUIRED_PANELS = {
    "Expected vs current vs running": ["spotpool_environment_expected_instances",
                                       "spotpool_environment_current_instances",
                                       "spotpool_environment_running_instances"],
    "Fulfilment ratio": ["spotpool_environment_running_instances", "spotpool_environment_expected_instances"],
    "Pending instances": ["spotpool_environment_pending_instances"],
    "Launch refusals by code": ["spotpool_launch_refusals_total"],
    "Interruptions by zone x type": ["spotpool_instance_interruptions_total"],
    "Market price per pool vs max price": ["spotpool_pool_market_price_usd", "spotpool_environment_max_price_usd"],
    "Hourly cost": ["spotpool_environment_hourly_cost_usd"],
    "Instances per pool": ["spotpool_pool_instances"],
    "CVM API latency by action (p50, p95, p99)": ["spotpool_cvm_api_request_duration_seconds_bucket"],
    "CVM API errors by action x code": ["spotpool_cvm_api_errors_total"],
    "Reconcile duration (p95)": ["spotpool_reconcile_duration_seconds_bucket"],
    "Reconcile errors": ["spotpool_reconcile_errors_total"],
    "Time to fulfil (p95)": ["spotpool_time_to_fulfil_seconds_bucket"],
    "Instances by capacity type and role": ["spotpool_environment_capacity_instances"],
    "Hourly cost vs max hourly cost": ["spotpool_environment_hourly_cost_usd",
                                       "spotpool_environment_max_hourly_cost_usd"],
    "Fallbacks to on-demand and returns to spot": ["spotpool_fallback_instances_total",
                                                   "spotpool_returns_to_spot_total"],
    "Spot short": ["spotpool_environment_spot_short"],
    "Drifted vs up-to-date instances": ["spotpool_environment_drifted_instances",
                                        "spotpool_environment_updated_instances"],
    "Voluntary disruptions by reason": ["spotpool_disruptions_total"],
    "Launches and releases": ["spotpool_instance_launches_total", "spotpool_instance_releases_total"],
}


def test_required_panels(board: dict[str, Any]) -> None:
    by_title = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels(board)}
    for title, series in REQUIRED_PANELS.items():
        assert title in by_title, f"missing panel {title!r}"
        for name in series:
            assert name in by_title[title], f"{title!r} does not show {name}"
    latency = by_title["CVM API latency by action (p50, p95, p99)"]
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, action)" in latency
    assert "sum by (code) (rate(spotpool_launch_refusals_total" in by_title["Launch refusals by code"]
    assert "sum by (action, code)" in by_title["CVM API errors by action x code"]
    assert "by (zone, instance_type" in by_title["Interruptions by zone x type"]
    assert "by (namespace, environment, capacity_type, role)" in by_title["Instances by capacity type and role"]
    for counter in ("spotpool_fallback_instances_total", "spotpool_returns_to_spot_total"):
        assert f"(increase({counter}{{" in by_title["Fallbacks to on-demand and returns to spot"]
    assert "sum by (namespace, environment, reason) (rate(spotpool_disruptions_total{" in (
        by_title["Voluntary disruptions by reason"])
    assert "sum by (namespace, environment, reason)" in by_title["Launches and releases"]


def test_day2_row_groups_the_rollout_panels(board: dict[str, Any]) -> None:
    """The "Day 2" row holds the drift and disruption panels, and the release reasons the
    rollout adds are named where releases are shown."""
    rows: dict[str, list[str]] = {}
    current = ""
    for panel in board["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            rows[current] = []
        else:
            rows[current].append(panel["title"])
    assert rows["Day 2: drift, expiry and rollouts"] == ["Drifted vs up-to-date instances",
                                                         "Voluntary disruptions by reason"]
    by_title = {p["title"]: p for p in panels(board)}
    assert by_title["Voluntary disruptions by reason"]["fieldConfig"]["defaults"]["unit"] == "cps"
    for reason in ("Drifted", "Expired", "ReturnToSpot"):
        assert reason in by_title["Voluntary disruptions by reason"]["description"]
        assert reason in by_title["Launches and releases"]["description"]


def test_capacity_panels_stack_the_roles_dash_the_cap_and_name_the_spot_short_state(board: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(board)}
    mix = by_title["Instances by capacity type and role"]
    assert mix["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    cost = by_title["Hourly cost vs max hourly cost"]
    assert [t["refId"] for t in cost["targets"]] == ["A", "B"]
    assert "max_hourly_cost" in cost["targets"][1]["expr"]
    dashed = cost["fieldConfig"]["overrides"][0]
    assert dashed["matcher"] == {"id": "byFrameRefID", "options": "B"}
    assert dashed["properties"][0]["id"] == "custom.lineStyle"
    short = by_title["Spot short"]
    assert short["type"] == "state-timeline"
    mapped = short["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert (mapped["0"]["text"], mapped["1"]["text"]) == ("spot fills", "spot short")


def test_panels_fit_the_grid_without_overlap(board: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_queries_are_runnable_promql(board: dict[str, Any]) -> None:
    queries = generator.dashboard_queries(rate_interval="5m")
    assert len(queries) == len(exprs(board))
    assert {title for title, _ in queries} == {p["title"] for p in panels(board)}
    for title, expr in queries:
        assert "$" not in expr, (title, expr)
    assert ('Pending instances', 'sum by (namespace, environment) (spotpool_environment_pending_instances'
            '{namespace=~".*", environment=~".*"})') in queries
    assert any("[5m]" in expr for _, expr in queries)
