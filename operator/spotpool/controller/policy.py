"""What the operator's administrator allows, whatever a pool's author writes (docs/security.md).

A pool author may create SpotComputeEnvironments and Secrets in their namespace; the administrator
who installs the operator decides where it may send credentials and how much it may buy:

- `EndpointPolicy`: the CVM endpoints a pool may name. Default: Tencent's public endpoints for the
  pool's region (`https://cvm.tencentcloudapi.com`, `https://cvm.<region>.tencentcloudapi.com`,
  `https://cvm.intl.tencentcloudapi.com`), https only. Loopback hosts (127.0.0.0/8, ::1, localhost),
  over http or https and on any port, only with the development flag `--allow-loopback-endpoints`
  (the demo, the simulator tests); plain http to an endpoint the administrator lists only with the
  development flag `--allow-insecure-endpoints` (a simulator on a test cluster's network, never a
  real cloud). Anything else is refused before a request is sent (the operator
  would hand it a signed request, and quote its errors back to the pool's author).
- `SpendGuards`: maximum `expectedCount` of a pool, maximum `maxPrice` (which bounds the list
  price of on-demand purchases too), allowed instance types (globs), the namespaces that may buy
  on-demand at all (globs), maximum expected instances per namespace and per installation. A pool over a guard buys
  nothing; it still releases (scale-in, cleanup, deletion): guards stop spending, never stop
  stopping it. That is decided by the planner (`plan(purchases_refused=...)`), not by a `Blocked`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase, translate
from typing import Any, Protocol

import httpx

from spotpool.api.names import DEFAULT_ENDPOINT
from spotpool.controller.identity import CredentialPolicy
from spotpool.planner.persistence import current_count

DEFAULT_ALLOWED_ENDPOINTS = (
    DEFAULT_ENDPOINT,
    "https://cvm.{region}.tencentcloudapi.com",
    "https://cvm.intl.tencentcloudapi.com",
)
"""Tencent's public CVM endpoints (docs/cvm-api.md); `{region}` is the pool's `spec.region`."""

ENDPOINT_FLAG = "--allowed-endpoint"
LOOPBACK_FLAG = "--allow-loopback-endpoints"
INSECURE_FLAG = "--allow-insecure-endpoints"


class PolicyError(ValueError):
    """An allow-list entry or guard the administrator gave is unusable (a startup error)."""


@dataclass(frozen=True)
class _Endpoint:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def _parse(url: str) -> _Endpoint:
    """scheme://host[:port][/], nothing else; ValueError otherwise."""
    if not isinstance(url, str) or any(c.isspace() for c in url):
        raise ValueError("not a URL")
    try:
        parsed = httpx.URL(url)
    except Exception as exc:  # httpx.InvalidURL and friends
        raise ValueError(f"not a URL ({type(exc).__name__})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("the scheme must be https (http only for loopback hosts)")
    if parsed.userinfo or parsed.query or parsed.fragment or parsed.path not in ("", "/") or "@" in url:
        raise ValueError("an endpoint is scheme://host[:port], without user info, path, query or fragment")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return _Endpoint(parsed.scheme, parsed.host.lower(), port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class EndpointPolicy:
    """Which `spec.endpoint` values a pool may use. `allowed` entries may contain `{region}`."""

    allowed: tuple[str, ...] = DEFAULT_ALLOWED_ENDPOINTS
    allow_loopback: bool = False
    allow_insecure: bool = False  # development only: http to endpoints the allow-list names

    def __post_init__(self) -> None:
        for entry in self.allowed:
            try:
                target = _parse(entry.replace("{region}", "ap-guangzhou"))
            except ValueError as exc:
                raise PolicyError(f"{ENDPOINT_FLAG} {entry!r}: {exc}") from None
            if is_loopback(target.host) and not self.allow_loopback:
                raise PolicyError(f"{ENDPOINT_FLAG} {entry!r}: a loopback host needs {LOOPBACK_FLAG}")
            if target.scheme != "https" and not is_loopback(target.host) and not self.allow_insecure:
                raise PolicyError(f"{ENDPOINT_FLAG} {entry!r}: https is required (http only for loopback, "
                                  f"or with {INSECURE_FLAG})")

    @classmethod
    def permissive_loopback(cls) -> EndpointPolicy:
        """The development policy: Tencent's endpoints plus any loopback endpoint (tests, demo)."""
        return cls(allow_loopback=True)

    def refusal(self, endpoint: str, region: str) -> str | None:
        """None when `endpoint` may be used for a pool in `region`; else why not, for the user."""
        shown = endpoint[:200]
        allowed = (f"the operator's administrator allows {', '.join(self.allowed_for(region))} for region "
                   f"{region!r} ({ENDPOINT_FLAG}, chart value endpoints.allowed); remove spec.endpoint to use "
                   f"{DEFAULT_ENDPOINT}")
        try:
            target = _parse(endpoint)
        except ValueError as exc:
            return f"spec.endpoint {shown!r} is refused: {exc}; {allowed}"
        if is_loopback(target.host):
            if self.allow_loopback:
                return None
            return (f"spec.endpoint {shown!r} is refused: loopback endpoints are for development only and the "
                    f"operator runs without {LOOPBACK_FLAG}; {allowed}")
        if (target.scheme == "https" or self.allow_insecure) and target in self._allowed_for(region):
            return None
        return f"spec.endpoint {shown!r} is refused: not an allowed endpoint; {allowed}"

    def allowed_for(self, region: str) -> list[str]:
        return [entry.replace("{region}", region) for entry in self.allowed]

    def _allowed_for(self, region: str) -> set[_Endpoint]:
        allowed = set()
        for entry in self.allowed_for(region):
            try:
                allowed.add(_parse(entry))
            except ValueError:  # a region that makes no host: matches nothing
                continue
        return allowed


@dataclass(frozen=True)
class PoolClaim:
    """What one pool counts toward a namespace's or the installation's total."""

    namespace: str
    uid: str
    expected: int  # 0 while being deleted
    current: int  # instances alive as its status last said
    created: str = ""  # metadata.creationTimestamp (RFC 3339, UTC: it sorts as text)

    @property
    def claim(self) -> int:
        return max(self.expected, self.current)

    @property
    def seniority(self) -> tuple[str, str]:
        """Older pools first; the uid breaks ties of one second."""
        return (self.created, self.uid)


def pool_claim(body: Mapping[str, Any]) -> PoolClaim:
    """A pool's claim from its object (the kopf index's value; malformed fields count as 0)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    expected = spec.get("expectedCount") if isinstance(spec, Mapping) else 0
    created = meta.get("creationTimestamp")
    return PoolClaim(
        namespace=str(meta.get("namespace") or ""),
        uid=str(meta.get("uid") or ""),
        expected=0 if meta.get("deletionTimestamp") else _count(expected),
        current=current_count(status) if isinstance(status, Mapping) else 0,
        created=created if isinstance(created, str) else "",
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class PoolView(Protocol):
    """Every pool the operator watches; None while not known yet (before kopf's index is handed)."""

    def claims(self) -> Iterable[PoolClaim] | None: ...


class IndexedPools:
    """`PoolView` over kopf's index of SpotComputeEnvironments (controller/handlers.py
    `spot_pools`: namespace -> claims), handed over once kopf has filled it."""

    def __init__(self) -> None:
        self.index: Mapping[Any, Iterable[PoolClaim]] | None = None

    def claims(self) -> Iterable[PoolClaim] | None:
        if self.index is None:
            return None
        return [claim for store in list(self.index.values()) for claim in list(store)]


@dataclass(frozen=True)
class SpendGuards:
    """Limits on what pools may buy; None (or no patterns) means unlimited."""

    max_expected_count: int | None = None
    max_namespace_instances: int | None = None
    max_total_instances: int | None = None
    max_price: Decimal | None = None
    instance_types: tuple[str, ...] = ()  # fnmatch globs, case-insensitive
    on_demand_namespaces: tuple[str, ...] = ()  # fnmatch globs of namespaces that may buy on-demand; empty: all
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_expected_count", "max_namespace_instances", "max_total_instances"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise PolicyError(f"{name.replace('_', '-')}: must be a whole number >= 0, got {value!r}")
        if self.max_price is not None and not (isinstance(self.max_price, Decimal) and self.max_price >= 0):
            raise PolicyError(f"max-price: must be a price >= 0, got {self.max_price!r}")
        for pattern in self.instance_types:
            if not pattern or any(c.isspace() for c in pattern):
                raise PolicyError(f"allowed-instance-type: {pattern!r} is not a glob of instance types")
        object.__setattr__(self, "_patterns",
                           tuple(re.compile(translate(p), re.IGNORECASE) for p in self.instance_types))
        for pattern in self.on_demand_namespaces:
            if not pattern or any(c.isspace() for c in pattern):
                raise PolicyError(f"on-demand-namespace: {pattern!r} is not a glob of namespace names")

    def on_demand_refusal(self, namespace: str) -> str | None:
        """Why pools of `namespace` may not buy on-demand (pay-as-you-go) at all, or None. Spot is
        bounded by the bid; on-demand bills the list price whatever the market does, so an
        administrator may keep it to the namespaces that have a budget for it."""
        if not self.on_demand_namespaces or any(fnmatchcase(namespace, p) for p in self.on_demand_namespaces):
            return None
        return (f"namespace {namespace} may not buy on-demand: the administrator allows it only in "
                f"{', '.join(self.on_demand_namespaces)} (--on-demand-namespace)")

    @property
    def aggregate(self) -> bool:
        return self.max_namespace_instances is not None or self.max_total_instances is not None

    def refusal(self, *, namespace: str, uid: str, expected_count: int, max_price: Decimal,
                instance_types: Iterable[str], pools: PoolView | None, created: str = "") -> str | None:
        """Why this pool may buy nothing (guard, value and limit, every guard it breaks), or None.
        `created`: the pool's creationTimestamp, its place in line for the totals (`_totals`)."""
        problems = []
        if self.max_expected_count is not None and expected_count > self.max_expected_count:
            problems.append(f"spec.expectedCount {expected_count} is over the limit of {self.max_expected_count} "
                            f"per pool (--max-expected-count)")
        if self.max_price is not None and max_price > self.max_price:
            problems.append(f"spec.maxPrice {max_price} is over the limit of {self.max_price} USD/h "
                            f"(--max-price)")
        if self._patterns:
            refused = [t for t in instance_types if not any(p.fullmatch(t) for p in self._patterns)]
            if refused:
                problems.append(f"spec.instanceTypes {', '.join(refused)} match none of the allowed patterns "
                                f"{', '.join(self.instance_types)} (--allowed-instance-type)")
        if self.aggregate:
            problems += self._totals(namespace, (created, uid), expected_count, pools)
        if not problems:
            return None
        return "buying nothing (releasing still works): " + "; ".join(problems)

    def _totals(self, namespace: str, seniority: tuple[str, str], expected_count: int,
                pools: PoolView | None) -> list[str]:
        """This pool's expectedCount plus every other pool's claim in the namespace and in the
        installation, against the limits.

        Pools wait in line by age. An older pool counts with its whole claim (the larger of its
        expectedCount and what it holds), a younger one with only what it holds: a young pool the
        guard refuses can never freeze an older one (its claim would otherwise count while it buys
        nothing, and an older pool could not even replace a reclaimed instance), and an old pool
        can never buy what younger ones already hold. The total stays bounded: the youngest pool
        allowed to buy counted every older pool whole and every younger one as it is. Pools that
        would each be refused against the other's claim cannot both be allowed on the next pass,
        since only the older one counts the younger as it is.
        """
        scopes = self._scopes(namespace, seniority, pools)
        if scopes is None:
            return ["the operator does not know the other pools yet (a total limit is set); retrying"]
        problems = []
        for scope, limit, others, flag in scopes:
            total = expected_count + sum(others)
            if total > limit:
                problems.append(f"{scope} would expect {total} instances (this pool {expected_count}, "
                                f"{len(others)} others {total - expected_count}: older pools as they expect, "
                                f"younger ones as they hold), over the limit of {limit} ({flag})")
        return problems

    def _scopes(self, namespace: str, seniority: tuple[str, str],
                pools: PoolView | None) -> list[tuple[str, int, list[int], str]] | None:
        """(scope, limit, what every other pool counts for, flag) of each total limit set; None
        while the other pools are not known."""
        claims = pools.claims() if pools is not None else None
        if claims is None:
            return None
        others = [c for c in claims if c.uid != seniority[1]]
        scopes = []
        for scope, limit, mine, flag in (
            (f"namespace {namespace}", self.max_namespace_instances,
             [c for c in others if c.namespace == namespace], "--max-namespace-instances"),
            ("the installation", self.max_total_instances, others, "--max-total-instances"),
        ):
            if limit is not None:
                scopes.append((scope, limit, [c.claim if c.seniority < seniority else c.current for c in mine], flag))
        return scopes

    def ceiling(self, *, namespace: str, uid: str, pools: PoolView | None, created: str = "") -> int | None:
        """The most instances this pool may hold at once, alive and in flight together, under the
        guards (None: no guard bounds it). A pool the guards let buy its expectedCount is held to
        this whatever else it buys: the surge of a return to spot (up to `maxInFlight` beyond
        expectedCount) stays within what the limits leave, counted as `_totals` counts."""
        bounds = [] if self.max_expected_count is None else [self.max_expected_count]
        if self.aggregate:
            scopes = self._scopes(namespace, (created, uid), pools)
            if scopes is None:
                return 0
            bounds += [limit - sum(others) for _, limit, others, _ in scopes]
        return max(0, min(bounds)) if bounds else None


@dataclass(frozen=True)
class Policy:
    """The administrator's choices handed to the reconciler. The default is the safe one:
    Tencent's endpoints only, no loopback, no spending limits beyond the CRD's."""

    endpoints: EndpointPolicy = field(default_factory=EndpointPolicy)
    guards: SpendGuards = field(default_factory=SpendGuards)
    credentials: CredentialPolicy = field(default_factory=CredentialPolicy)

    @classmethod
    def development(cls, guards: SpendGuards | None = None, credentials: CredentialPolicy | None = None) -> Policy:
        """Loopback endpoints allowed (the simulator on 127.0.0.1): tests, the demo, benchmarks."""
        return cls(EndpointPolicy.permissive_loopback(), guards or SpendGuards(), credentials or CredentialPolicy())

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        return cls(
            EndpointPolicy(tuple(config.allowed_endpoints) or DEFAULT_ALLOWED_ENDPOINTS,
                           config.allow_loopback_endpoints, config.allow_insecure_endpoints),
            SpendGuards(
                max_expected_count=config.max_expected_count,
                max_namespace_instances=config.max_namespace_instances,
                max_total_instances=config.max_total_instances,
                max_price=config.max_price,
                instance_types=tuple(config.allowed_instance_types),
                on_demand_namespaces=tuple(config.on_demand_namespaces),
            ),
            CredentialPolicy(
                secrets=config.secret_credentials,
                operator_identity=tuple(config.operator_identity_namespaces),
                roles=CredentialPolicy.parse_roles(config.allowed_roles),
            ),
        )


def parse_price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise PolicyError(f"--max-price {text!r}: not a decimal number") from None
    if not value.is_finite() or value < 0:
        raise PolicyError(f"--max-price {text!r}: must be a price >= 0")
    return value
