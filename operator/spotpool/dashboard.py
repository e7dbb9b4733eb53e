"""The Grafana dashboard shipped in the Helm chart, built with grafana-foundation-sdk.

The chart carries the generated JSON (charts/spotpool/dashboards/spotpool.json); regenerate it with

    python -m spotpool.dashboard charts/spotpool/dashboards/spotpool.json

A test fails when the committed file differs from what this module builds. The SDK comes with the
`dashboard` (and `test`) extra; the operator itself never imports this module.

Every query reads only series defined in `spotpool.metrics`. Panels are filtered by the `namespace`
and `environment` variables where the series carry those labels; the CVM API and reconcile-duration
series are operator-wide (no environment labels) and say so in their descriptions.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.gauge import Panel as Gauge
from grafana_foundation_sdk.builders.prometheus import Dataquery as Query
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimeline
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DynamicConfigValue,
    Panel,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

UID = "spotpool-pools"
TITLE = "spotpool: spot pools"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Selects the environments picked in the dashboard's variables.
ENV = 'namespace=~"$namespace", environment=~"$environment"'
RATE = "[$__rate_interval]"


def _query(ref: str, expr: str, legend: str, *, instant: bool = False) -> Query:
    query = Query().ref_id(ref).expr(expr).legend_format(legend)
    return query.instant() if instant else query.range()


def _legend() -> VizLegendOptions:
    return (VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.BOTTOM)
            .show_legend(True).calcs(["lastNotNull", "max"]))


def _timeseries(panel_id: int, title: str, description: str, unit: str, *queries: Query,
                width: int = 12, stacked: bool = False) -> Timeseries:
    panel = (Timeseries().id(panel_id).title(title).description(description).datasource(DATASOURCE)
             .unit(unit).min(0).height(8).span(width).legend(_legend()).fill_opacity(10)
             .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING)))
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=value, color=color) for value, color in steps])


def _fulfilment_panels() -> list[Builder[Panel]]:
    return [
        _timeseries(
            2, "Expected vs current vs running",
            "Instances each environment asks for (spec.expectedCount), has alive (pending plus "
            "running) and has running. Running below expected for long means the cloud is refusing or "
            "slow: look at the refusals and interruptions panels, and `kubectl describe sce`.",
            "short",
            _query("A", f"sum by (namespace, environment) (spotpool_environment_expected_instances{{{ENV}}})",
                   "{{namespace}}/{{environment}} expected"),
            _query("B", f"sum by (namespace, environment) (spotpool_environment_current_instances{{{ENV}}})",
                   "{{namespace}}/{{environment}} current"),
            _query("C", f"sum by (namespace, environment) (spotpool_environment_running_instances{{{ENV}}})",
                   "{{namespace}}/{{environment}} running"),
        ),
        Gauge().id(3).title("Fulfilment ratio")
        .description("Running instances divided by expected instances, now, per environment "
                     "(environments expecting zero are left out). 100% is a fulfilled pool; below 90% "
                     "is shown in red.")
        .datasource(DATASOURCE).unit("percentunit").min(0).max(1).height(8).span(6)
        .thresholds(_thresholds((None, "red"), (0.9, "orange"), (1, "green")))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(_query(
            "A",
            f"sum by (namespace, environment) (spotpool_environment_running_instances{{{ENV}}})"
            f" / sum by (namespace, environment) (spotpool_environment_expected_instances{{{ENV}}} > 0)",
            "{{namespace}}/{{environment}}", instant=True)),
        Stat().id(4).title("Degraded environments")
        .description("Environments whose purchases the cloud currently refuses (condition Degraded=True). "
                     "`kubectl get sce -A -o wide` shows the reason (InsufficientCapacity, PriceAboveMax, "
                     "QuotaExceeded, AuthFailure, ...).")
        .datasource(DATASOURCE).unit("short").height(8).span(6)
        .color_mode(BigValueColorMode.BACKGROUND).graph_mode(BigValueGraphMode.NONE)
        .thresholds(_thresholds((None, "green"), (1, "red")))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(_query("A", f"sum(spotpool_environment_degraded{{{ENV}}})", "degraded", instant=True)),
        _timeseries(
            5, "Pending instances",
            "Instances bought but not yet RUNNING. A pending count that stays up for more than a few "
            "minutes means instances are stuck launching in the cloud.",
            "short",
            _query("A", f"sum by (namespace, environment) (spotpool_environment_pending_instances{{{ENV}}})",
                   "{{namespace}}/{{environment}}"),
            width=8,
        ),
        _timeseries(
            6, "Instances per pool",
            "Alive instances per zone and instance type (pool), stacked, split into pending and running. "
            "Shows where the capacity actually comes from and which pools the allocation strategy uses.",
            "short",
            _query("A", "sum by (namespace, environment, zone, instance_type, state) "
                        f"(spotpool_pool_instances{{{ENV}}})",
                   "{{environment}} {{zone}} {{instance_type}} {{state}}"),
            width=8, stacked=True,
        ),
        _timeseries(
            7, "Time to fulfil (p95)",
            "95th percentile of the time from a shortfall appearing (scale-up, reclaim) until every "
            "expected instance runs. Gaps mean no shortfall was closed in that interval.",
            "s",
            _query("A", "histogram_quantile(0.95, sum by (le, namespace, environment) "
                        f"(rate(spotpool_time_to_fulfil_seconds_bucket{{{ENV}}}{RATE})))",
                   "{{namespace}}/{{environment}}"),
            width=8,
        ),
    ]


def _market_panels() -> list[Builder[Panel]]:
    dashed = DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})
    return [
        _timeseries(
            9, "Market price per pool vs max price",
            "Spot market price of each candidate pool (zone x instance type) against the environment's "
            "maxPrice (dashed). A pool whose price is above maxPrice is not bought from; when every "
            "pool is above it the environment is Degraded with reason PriceAboveMax.",
            "currencyUSD",
            _query("A", "max by (namespace, environment, zone, instance_type) "
                        f"(spotpool_pool_market_price_usd{{{ENV}}})",
                   "{{environment}} {{zone}} {{instance_type}}"),
            _query("B", f"max by (namespace, environment) (spotpool_environment_max_price_usd{{{ENV}}})",
                   "{{environment}} maxPrice"),
        ).decimals(4).override_by_query("B", [dashed]),
        _timeseries(
            10, "Hourly cost",
            "What the alive instances cost per hour, stacked by environment: spot instances at their "
            "pools' market price, on-demand ones at the list price. The top of the stack is the total "
            "spend rate of the selection.",
            "currencyUSD",
            _query("A", f"sum by (namespace, environment) (spotpool_environment_hourly_cost_usd{{{ENV}}})",
                   "{{namespace}}/{{environment}}"),
            stacked=True,
        ).decimals(4),
    ]


def _capacity_panels() -> list[Builder[Panel]]:
    dashed = DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})
    short = ValueMap({"0": ValueMappingResult(text="spot fills", color="green", index=0),
                      "1": ValueMappingResult(text="spot short", color="red", index=1)})
    return [
        _timeseries(
            21, "Instances by capacity type and role",
            "Alive instances by capacity type and role, stacked: spot; on-demand base "
            "(spec.onDemand.baseCount, always on-demand); on-demand fallback (bought because spot stayed "
            "short past spec.onDemand.fallback.after). Fallback instances go back to spot, replacement "
            "first, once spot can be had again.",
            "short",
            _query("A", "sum by (namespace, environment, capacity_type, role) "
                        f"(spotpool_environment_capacity_instances{{{ENV}}})",
                   "{{environment}} {{capacity_type}} ({{role}})"),
            stacked=True,
        ),
        _timeseries(
            22, "Hourly cost vs max hourly cost",
            "What each environment's alive instances cost per hour (spot at the market price, on-demand "
            "at the list price) against its spec.maxHourlyCost (dashed; absent without a cap). At the cap "
            "nothing more is bought and the environment reports MaxHourlyCostReached.",
            "currencyUSD",
            _query("A", f"sum by (namespace, environment) (spotpool_environment_hourly_cost_usd{{{ENV}}})",
                   "{{environment}} cost"),
            _query("B", f"max by (namespace, environment) (spotpool_environment_max_hourly_cost_usd{{{ENV}}})",
                   "{{environment}} maxHourlyCost"),
        ).decimals(4).override_by_query("B", [dashed]),
        _timeseries(
            23, "Fallbacks to on-demand and returns to spot",
            "On-demand instances bought as a fallback for missing spot capacity, and fallback instances "
            "released once their spot replacement ran (ReturnToSpot), as the increase over each interval. "
            "Steady fallbacks mean the spot pools chosen are often short: add zones or instance types.",
            "short",
            _query("A", "sum by (namespace, environment) "
                        f"(increase(spotpool_fallback_instances_total{{{ENV}}}{RATE}))",
                   "{{environment}} fallback to on-demand"),
            _query("B", "sum by (namespace, environment) "
                        f"(increase(spotpool_returns_to_spot_total{{{ENV}}}{RATE}))",
                   "{{environment}} returned to spot"),
        ),
        StateTimeline().id(24).title("Spot short")
        .description("Whether spot can fill each environment's deficit: red while every candidate spot pool "
                     "is sold out, out of quota or above maxPrice and instances are missing. With "
                     "spec.onDemand.fallback, on-demand instances are bought once this has lasted `after`.")
        .datasource(DATASOURCE).unit("short").min(0).max(1).height(8).span(12)
        .mappings([short]).thresholds(_thresholds((None, "green"), (1, "red")))
        .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
                .show_legend(True))
        .with_target(_query("A", f"max by (namespace, environment) (spotpool_environment_spot_short{{{ENV}}})",
                            "{{namespace}}/{{environment}}")),
    ]


def _churn_panels() -> list[Builder[Panel]]:
    return [
        _timeseries(
            12, "Launch refusals by code",
            "RunInstances calls the cloud refused, per minute, by Tencent error code (for example "
            "ResourceInsufficient.SpecifiedInstanceType for sold-out pools, or a quota or auth code). "
            "spotpool backs off per pool and tries the other candidate pools.",
            "reqpm",
            _query("A", f"sum by (code) (rate(spotpool_launch_refusals_total{{{ENV}}}{RATE})) * 60",
                   "{{code}}"),
            width=8,
        ),
        _timeseries(
            13, "Interruptions by zone x type",
            "Instances lost without spotpool releasing them, per minute, by pool: kind=lost is a spot "
            "reclaim or a release outside spotpool, kind=launch_failed an instance that never came up. "
            "Each one is replaced; a pool with steady interruptions is a poor spot pool.",
            "cpm",
            _query("A", "sum by (zone, instance_type, kind) "
                        f"(rate(spotpool_instance_interruptions_total{{{ENV}}}{RATE})) * 60",
                   "{{zone}} {{instance_type}} ({{kind}})"),
            width=8,
        ),
        _timeseries(
            14, "Launches and releases",
            "Instances bought, and instances released by spotpool by reason (ScaleIn, Delete, Cleanup, "
            "ReturnToSpot, Drifted, Expired), per minute. Launches without a matching rise in running "
            "instances mean churn; during a rollout launches and Drifted releases go together.",
            "cpm",
            _query("A", "sum by (namespace, environment) "
                        f"(rate(spotpool_instance_launches_total{{{ENV}}}{RATE})) * 60",
                   "{{environment}} launched"),
            _query("B", "sum by (namespace, environment, reason) "
                        f"(rate(spotpool_instance_releases_total{{{ENV}}}{RATE})) * 60",
                   "{{environment}} released ({{reason}})"),
            width=8,
        ),
    ]


def _day2_panels() -> list[Builder[Panel]]:
    return [
        _timeseries(
            26, "Drifted vs up-to-date instances",
            "Alive instances per environment that match the current spec (status.updatedCount, the "
            "UP-TO-DATE column of `kubectl get sce`) and that differ from it in a field "
            "spec.disruption.drift replaces (image, userData, network, ...). During a rollout drifted "
            "falls and up-to-date rises; drifted that stays up means the rollout is blocked: a budget of "
            "0 or outside its schedule, do-not-disrupt holds, or purchases refused (Progressing says which).",
            "short",
            _query("A", f"sum by (namespace, environment) (spotpool_environment_drifted_instances{{{ENV}}})",
                   "{{namespace}}/{{environment}} drifted"),
            _query("B", f"sum by (namespace, environment) (spotpool_environment_updated_instances{{{ENV}}})",
                   "{{namespace}}/{{environment}} up-to-date"),
        ),
        _timeseries(
            27, "Voluntary disruptions by reason",
            "Running instances spotpool released on purpose once their replacement ran, per second, by "
            "reason: Drifted (the spec changed), Expired (older than spec.disruption.expireAfter), "
            "ReturnToSpot (an on-demand fallback replaced by spot). Each is bounded by "
            "spec.disruption.budgets; reclaims are not counted here (see Interruptions).",
            "cps",
            _query("A", "sum by (namespace, environment, reason) "
                        f"(rate(spotpool_disruptions_total{{{ENV}}}{RATE}))",
                   "{{environment}} {{reason}}"),
        ),
    ]


def _operator_panels() -> list[Builder[Panel]]:
    api = f"rate(spotpool_cvm_api_request_duration_seconds_bucket{RATE})"
    return [
        _timeseries(
            16, "CVM API latency by action (p50, p95, p99)",
            "Latency of each HTTP attempt to the CVM API, by action, for the whole operator (this series "
            "has no environment label). A rising p99 with throttling errors means the account's API "
            "rate limit is reached.",
            "s",
            _query("A", f"histogram_quantile(0.5, sum by (le, action) ({api}))", "p50 {{action}}"),
            _query("B", f"histogram_quantile(0.95, sum by (le, action) ({api}))", "p95 {{action}}"),
            _query("C", f"histogram_quantile(0.99, sum by (le, action) ({api}))", "p99 {{action}}"),
        ),
        _timeseries(
            17, "CVM API errors by action x code",
            "CVM API errors per minute, by action and Tencent error code, for the whole operator. "
            "ClientNetworkError is a transport failure (DNS, TLS, timeout) rather than a cloud answer; "
            "AuthFailure.* means the credentials Secret is wrong.",
            "reqpm",
            _query("A", f"sum by (action, code) (rate(spotpool_cvm_api_errors_total{RATE})) * 60",
                   "{{action}} {{code}}"),
        ),
        _timeseries(
            18, "Reconcile duration (p95)",
            "95th percentile of the time one reconcile of one environment takes (observe, decide, act, "
            "report), for the whole operator. Tens of seconds means slow cloud calls or a very large pool.",
            "s",
            _query("A", "histogram_quantile(0.95, sum by (le) "
                        f"(rate(spotpool_reconcile_duration_seconds_bucket{RATE})))",
                   "p95"),
        ),
        _timeseries(
            19, "Reconcile errors",
            "Reconciles that ended in an error, per minute, by environment. Steady errors mean the "
            "operator cannot act on the environment: read its Events and the operator's logs.",
            "cpm",
            _query("A", "sum by (namespace, environment) "
                        f"(rate(spotpool_reconcile_errors_total{{{ENV}}}{RATE})) * 60",
                   "{{namespace}}/{{environment}}"),
        ),
    ]


def build() -> Dashboard:
    environment_query = 'label_values(spotpool_environment_expected_instances{namespace=~"$namespace"}, environment)'
    dashboard = (
        Dashboard(TITLE).uid(UID)
        .description("Health of spotpool's spot pools: fulfilment, market prices and cost, the spot and "
                     "on-demand capacity mix, refusals and interruptions, day-2 rollouts (drift, expiry), and "
                     "the operator's own CVM API and reconcile behaviour.")
        .tags(["spotpool", "tencentcloud", "spot"])
        .time("now-6h", "now").refresh("30s").timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        # Grafana's built-in annotations (alerts, manual notes), as in any dashboard Grafana saves.
        .annotation(AnnotationQuery().name("Annotations & Alerts").type("dashboard").built_in(1)
                    .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                    .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)"))
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
            .query("label_values(spotpool_environment_expected_instances, namespace)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))
        .with_variable(
            QueryVariable("environment").label("Environment").datasource(DATASOURCE)
            .query(environment_query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))
    )
    sections = [
        (Row("Fulfilment").id(1), _fulfilment_panels()),
        (Row("Market and cost").id(8), _market_panels()),
        (Row("Spot and on-demand").id(20), _capacity_panels()),
        (Row("Refusals, interruptions and churn").id(11), _churn_panels()),
        (Row("Day 2: drift, expiry and rollouts").id(25), _day2_panels()),
        (Row("Operator and CVM API").id(15), _operator_panels()),
    ]
    for row, panels in sections:
        dashboard = dashboard.with_row(row)
        for panel in panels:
            dashboard = dashboard.with_panel(panel)
    return dashboard


def render() -> str:
    """The dashboard as the JSON text committed in the chart (sorted keys, two-space indent)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


_USER_VARIABLE = re.compile(r"\$\{?(namespace|environment)\}?")


def dashboard_queries(rate_interval: str = "1m") -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel, runnable as is against Prometheus.

    The `namespace` and `environment` variables become the regex `.*` (every environment), and
    Grafana's `$__rate_interval` becomes `rate_interval`.
    """
    queries = []
    for panel in json.loads(render())["panels"]:
        for target in panel.get("targets", []):
            expr = _USER_VARIABLE.sub(".*", target["expr"]).replace("$__rate_interval", rate_interval)
            queries.append((panel["title"], expr))
    return queries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotpool.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="where to write the dashboard JSON ('-' for stdout)")
    args = parser.parse_args(argv)
    if str(args.output) == "-":
        sys.stdout.write(render())
    else:
        args.output.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
