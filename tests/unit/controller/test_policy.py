"""controller/policy.py: the endpoint allow-list, the spend guards and their flags."""

from __future__ import annotations

from decimal import Decimal

import pytest

from spotpool.controller.cli import parse
from spotpool.controller.policy import (
    EndpointPolicy,
    Policy,
    PolicyError,
    PoolClaim,
    SpendGuards,
    is_loopback,
    pool_claim,
)

REGION = "ap-guangzhou"


@pytest.mark.parametrize("endpoint", [
    "https://cvm.tencentcloudapi.com",
    "https://cvm.tencentcloudapi.com/",
    "https://CVM.TencentCloudAPI.com",
    "https://cvm.tencentcloudapi.com:443",
    "https://cvm.ap-guangzhou.tencentcloudapi.com",
    "https://cvm.intl.tencentcloudapi.com",
])
def test_default_allows_tencent_public_endpoints(endpoint: str) -> None:
    assert EndpointPolicy().refusal(endpoint, REGION) is None


@pytest.mark.parametrize("endpoint", [
    "http://cvm.tencentcloudapi.com",  # plain http
    "https://cvm.ap-shanghai.tencentcloudapi.com",  # another region's host
    "https://cvm.tencentcloudapi.com:8443",
    "https://cvm.tencentcloudapi.com.evil.example",
    "https://evil.example#cvm.tencentcloudapi.com",
    "https://cvm.tencentcloudapi.com@evil.example",
    "https://u:p@cvm.tencentcloudapi.com",
    "https://cvm.tencentcloudapi.com/path",
    "https://cvm.tencentcloudapi.com?x=1",
    "ftp://cvm.tencentcloudapi.com",
    "http://169.254.169.254",
    "http://127.0.0.1:9000",
    "https://localhost",
    "http://[::1]:9000",
    "https://127.1",
    "not a url",
    "",
])
def test_default_refuses_everything_else(endpoint: str) -> None:
    why = EndpointPolicy().refusal(endpoint, REGION)
    assert why is not None and why.startswith("spec.endpoint") and "--allowed-endpoint" in why


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000", "http://127.3.2.1", "https://localhost:1",
                                      "http://[::1]:9000"])
def test_loopback_only_with_the_development_flag(endpoint: str) -> None:
    assert EndpointPolicy(allow_loopback=True).refusal(endpoint, REGION) is None
    assert "--allow-loopback-endpoints" in (EndpointPolicy().refusal(endpoint, REGION) or "")


def test_development_flag_allows_no_other_http_host() -> None:
    assert EndpointPolicy(allow_loopback=True).refusal("http://10.0.0.1:9000", REGION) is not None


def test_explicit_allow_list_replaces_the_default_and_knows_regions() -> None:
    policy = EndpointPolicy(("https://cvm.{region}.example.com", "https://gw.example.com:8443"))
    assert policy.refusal("https://cvm.ap-guangzhou.example.com", REGION) is None
    assert policy.refusal("https://cvm.ap-shanghai.example.com", REGION) is not None
    assert policy.refusal("https://gw.example.com:8443", REGION) is None
    assert policy.refusal("https://gw.example.com", REGION) is not None
    assert policy.refusal("https://cvm.tencentcloudapi.com", REGION) is not None


def test_insecure_flag_allows_http_to_listed_endpoints_only() -> None:
    policy = EndpointPolicy(("http://10.213.0.1:9000",), allow_insecure=True)
    assert policy.refusal("http://10.213.0.1:9000", REGION) is None
    assert policy.refusal("http://10.213.0.1:9001", REGION) is not None  # not listed
    assert policy.refusal("http://10.0.0.2:9000", REGION) is not None
    assert "--allow-loopback-endpoints" in (policy.refusal("http://127.0.0.1:9000", REGION) or "")


@pytest.mark.parametrize("entry", ["http://gw.example.com", "https://u@gw.example.com", "https://gw/x",
                                   "http://127.0.0.1:9000", "gw.example.com"])
def test_bad_allow_list_entries_are_startup_errors(entry: str) -> None:
    with pytest.raises(PolicyError):
        EndpointPolicy((entry,))


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.255.0.9", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "localhost.evil", "0.0.0.0", "::", "example.com"))


def _refusal(guards: SpendGuards, *, expected: int = 5, price: str = "1.0", types: tuple[str, ...] = ("S5.MEDIUM4",),
             claims: list[PoolClaim] | None = None, created: str = "2026-06-01T00:00:00Z") -> str | None:
    class View:
        def claims(self) -> list[PoolClaim] | None:
            return claims

    return guards.refusal(namespace="team", uid="me", expected_count=expected, max_price=Decimal(price),
                          instance_types=types, pools=View(), created=created)


def test_no_guards_refuse_nothing() -> None:
    assert _refusal(SpendGuards(), expected=10_000, price="999999", types=("GN10X.2XLARGE40",)) is None


def test_each_guard_names_the_value_and_the_limit() -> None:
    assert "spec.expectedCount 5 is over the limit of 4" in (_refusal(SpendGuards(max_expected_count=4)) or "")
    assert _refusal(SpendGuards(max_expected_count=5)) is None
    assert "spec.maxPrice 1.0 is over the limit of 0.5" in (_refusal(SpendGuards(max_price=Decimal("0.5"))) or "")
    assert _refusal(SpendGuards(max_price=Decimal("1"))) is None
    why = _refusal(SpendGuards(instance_types=("S5.*", "SA?.MEDIUM4")), types=("s5.small1", "SA2.MEDIUM4", "GN7.X"))
    assert why is not None and "spec.instanceTypes GN7.X match none" in why and "s5.small1" not in why


def test_totals_count_others_claims_larger_of_expected_and_held() -> None:
    claims = [PoolClaim("team", "me", 5, 0), PoolClaim("team", "a", 2, 4, OLD), PoolClaim("other", "b", 10, 0, OLD)]
    guards = SpendGuards(max_namespace_instances=9)
    assert _refusal(guards, claims=claims) is None  # 5 + max(2, 4)
    why = _refusal(SpendGuards(max_namespace_instances=8), claims=claims)
    assert why is not None and "namespace team would expect 9 instances" in why and "limit of 8" in why
    why = _refusal(SpendGuards(max_total_instances=18), claims=claims)
    assert why is not None and "installation would expect 19 instances" in why
    assert _refusal(SpendGuards(max_total_instances=19), claims=claims) is None


OLD, NEW = "2026-01-01T00:00:00Z", "2026-12-01T00:00:00Z"


def test_a_younger_pool_counts_as_it_holds_so_a_refused_one_freezes_no_older_pool() -> None:
    """Team B's second pool is refused (its claim would break the limit) and holds nothing: it must
    not keep team A's older pool from replacing a reclaimed instance (issue 18)."""
    guards = SpendGuards(max_total_instances=30)
    b1, b2 = PoolClaim("b", "b1", 20, 20, NEW), PoolClaim("b", "b2", 20, 0, NEW)
    assert _refusal(guards, expected=10, claims=[b1, b2], created=OLD) is None  # 10 + 20 held + 0 held
    # b2 itself, younger than both: the older pools count whole, so it stays refused
    mine = PoolClaim("a", "a", 10, 7, OLD)
    why = SpendGuards(max_total_instances=30).refusal(
        namespace="b", uid="b2", expected_count=20, max_price=Decimal("1"), instance_types=("S5.MEDIUM4",),
        pools=type("View", (), {"claims": lambda self: [mine, b1]})(), created="2026-12-01T00:00:01Z")
    assert why is not None and "would expect 50 instances" in why


def test_two_pools_each_refused_against_the_other_are_never_both_allowed() -> None:
    """Whatever order their passes fall in, of two pools that do not fit together only the older
    one may buy: the younger counts the older whole, the older counts the younger as it holds."""
    guards = SpendGuards(max_total_instances=30)
    older, younger = PoolClaim("t", "p", 20, 0, OLD), PoolClaim("t", "q", 20, 0, NEW)
    assert _refusal(guards, expected=20, claims=[younger], created=OLD) is None
    assert _refusal(guards, expected=20, claims=[older], created=NEW) is not None


def test_totals_refuse_while_the_other_pools_are_unknown() -> None:
    assert "does not know the other pools" in (_refusal(SpendGuards(max_total_instances=100), claims=None) or "")


def test_pool_claim_from_an_object() -> None:
    body = {"metadata": {"namespace": "team", "uid": "u"}, "spec": {"expectedCount": 3},
            "status": {"currentCount": 5}}
    assert pool_claim(body) == PoolClaim("team", "u", 3, 5)
    body["metadata"]["creationTimestamp"] = OLD
    assert pool_claim(body).seniority == (OLD, "u")
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pool_claim(body).claim == 5
    assert pool_claim({"metadata": {}, "spec": {"expectedCount": "9"}, "status": None}).claim == 0


def test_flags_make_the_policy() -> None:
    config = parse(["--allowed-endpoint", "https://cvm.{region}.example.com", "--allow-loopback-endpoints",
                    "--max-expected-count", "10", "--max-namespace-instances", "50", "--max-total-instances",
                    "200", "--max-price", "0.25", "--allowed-instance-type", "S5.*",
                    "--allowed-instance-type", "SA2.*"])
    policy = Policy.from_config(config)
    assert policy.endpoints.allow_loopback and policy.endpoints.allowed == ("https://cvm.{region}.example.com",)
    assert policy.guards == SpendGuards(10, 50, 200, Decimal("0.25"), ("S5.*", "SA2.*"))
    default = Policy.from_config(parse([]))
    assert default == Policy() and not default.endpoints.allow_loopback


@pytest.mark.parametrize("argv", [["--allowed-endpoint", "http://gw.example.com"], ["--max-price", "cheap"],
                                  ["--max-expected-count", "-1"], ["--allowed-endpoint", "http://127.0.0.1:1"]])
def test_bad_flags_are_refused_at_startup(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)


def test_the_ceiling_is_what_the_tightest_guard_leaves_this_pool() -> None:
    """The most a pool may hold at once (a return to spot's surge included), counted as the totals
    count: older pools whole, younger ones as they hold."""
    class View:
        def __init__(self, claims: list[PoolClaim] | None) -> None:
            self._claims = claims

        def claims(self) -> list[PoolClaim] | None:
            return self._claims

    claims = [PoolClaim("team", "a", 2, 4, OLD), PoolClaim("other", "b", 10, 3, NEW)]
    ceiling = SpendGuards(max_total_instances=30).ceiling
    assert ceiling(namespace="team", uid="me", pools=View(claims), created="2026-06-01T00:00:00Z") == 30 - 4 - 3
    both = SpendGuards(max_expected_count=12, max_namespace_instances=14)
    assert both.ceiling(namespace="team", uid="me", pools=View(claims), created="2026-06-01T00:00:00Z") == 10
    assert SpendGuards(max_expected_count=12).ceiling(namespace="team", uid="me", pools=None) == 12
    assert SpendGuards().ceiling(namespace="team", uid="me", pools=View(claims)) is None
    assert SpendGuards(max_total_instances=5).ceiling(namespace="team", uid="me", pools=View(None)) == 0


def test_on_demand_is_refused_outside_the_allowed_namespaces() -> None:
    guards = SpendGuards(on_demand_namespaces=("platform-*", "infra"))
    assert guards.on_demand_refusal("platform-gpu") is None and guards.on_demand_refusal("infra") is None
    why = guards.on_demand_refusal("team-a")
    assert why is not None and "namespace team-a may not buy on-demand" in why and "(--on-demand-namespace)" in why
    assert SpendGuards().on_demand_refusal("team-a") is None
    with pytest.raises(PolicyError):
        SpendGuards(on_demand_namespaces=(" team",))
