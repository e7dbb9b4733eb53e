"""The unsigned control API under `/_sim/`: inspect the simulator and script scenarios.

Tests and demos need to see what the cloud holds and to make things happen that a real cloud does
on its own schedule (reclaims, sell-outs, price changes, outages). JSON in, JSON out, camelCase
keys; bad input gets a 400 with a message naming the problem. It answers loopback peers only
unless `api.allow_remote_control` is set, because anyone who reaches it can change the market.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from spotpool.simulator.faults import FaultSpec
from spotpool.simulator.render import iso_time, stock_category
from spotpool.simulator.state import POSTPAID_BY_HOUR, SPOTPAID, Pool, SimInstance

if TYPE_CHECKING:
    from spotpool.simulator.server import Simulator

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class ReclaimBody(_Body):
    instance_ids: list[str] | None = None
    zone: str | None = None
    instance_type: str | None = None
    count: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_form(self) -> ReclaimBody:
        by_pool = (self.zone, self.instance_type, self.count)
        if self.instance_ids is not None and any(v is not None for v in by_pool):
            raise ValueError("give either instanceIds or zone+instanceType+count, not both")
        if self.instance_ids is None and any(v is None for v in by_pool):
            raise ValueError("give instanceIds, or zone, instanceType and count")
        return self


class FailTerminationBody(_Body):
    instance_ids: list[str] = Field(min_length=1)


class PoolUpdate(_Body):
    zone: str
    instance_type: str
    stock: int | None = Field(default=None, ge=0)
    discount_percent: float | None = Field(default=None, gt=0, le=100)
    on_demand_price: float | None = Field(default=None, gt=0)
    sold_out: bool | None = None
    offered: bool | None = None
    reclaim_rate_per_hour: float | None = Field(default=None, ge=0)
    on_demand_stock: int | None = Field(default=None, ge=0)
    on_demand_sold_out: bool | None = None


class MarketBody(_Body):
    """`zoneQuotas` sets spot vCPU quotas, `onDemandZoneQuotas` pay-as-you-go ones; `images`
    the image ids that exist from now on, `subnets` the subnet ids (with their zones) that do
    (absent: unchanged; reset restores the configuration)."""

    pools: list[PoolUpdate] = Field(default_factory=list)
    account: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$")  # whose quotas to set
    zone_quotas: dict[str, int] = Field(default_factory=dict)
    on_demand_zone_quotas: dict[str, int] = Field(default_factory=dict)
    images: list[str] | None = None
    subnets: dict[str, str] | None = None


def add_control_routes(app: web.Application, sim: Simulator) -> None:
    """Register `/_sim/*` on the simulator's app."""
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/_sim/health", lambda r: _health(sim)),
        ("GET", "/_sim/instances", lambda r: _instances(sim, r)),
        ("GET", "/_sim/calls", lambda r: _calls(sim, r)),
        ("DELETE", "/_sim/calls", lambda r: _clear_calls(sim)),
        ("POST", "/_sim/reclaim", lambda r: _reclaim(sim, r)),
        ("POST", "/_sim/fail-termination", lambda r: _fail_termination(sim, r)),
        ("GET", "/_sim/market", lambda r: _market(sim, r)),
        ("POST", "/_sim/market", lambda r: _update_market(sim, r)),
        ("GET", "/_sim/faults", lambda r: _faults(sim)),
        ("POST", "/_sim/faults", lambda r: _set_faults(sim, r)),
        ("DELETE", "/_sim/faults", lambda r: _clear_faults(sim, r)),
        ("POST", "/_sim/reset", lambda r: _reset(sim)),
        ("GET", "/_sim/sessions", lambda r: _sessions(sim)),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guarded(sim, handler))
    app.router.add_route("*", "/_sim/{tail:.*}", _guarded(sim, _not_found))


class _BadRequest(Exception):
    pass


def _guarded(sim: Simulator, handler: Handler) -> Handler:
    """Refuse remote peers unless allowed; bad input gets a 400, a simulator bug a JSON 500."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if not sim.config.api.allow_remote_control and not _is_loopback(request.remote):
            return _json(
                {
                    "error": "the control API answers loopback clients only "
                    "(set api.allow_remote_control to open it)"
                },
                status=403,
            )
        try:
            return await handler(request)
        except _BadRequest as exc:
            return _json({"error": str(exc)}, status=400)
        except Exception as exc:
            log.exception("simulator control API failure on %s", request.path)
            return _json({"error": f"simulator failure: {type(exc).__name__}: {exc}"}, status=500)

    return guarded


def _is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw or b"{}")
    except ValueError as exc:
        raise _BadRequest(f"the body is not valid JSON: {exc}") from None


def _validate(model: type[BaseModel], data: Any, where: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _BadRequest(
            "; ".join(
                f"{'.'.join(str(p) for p in (where, *e['loc']) if p != '') or 'body'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
        ) from None


async def _not_found(request: web.Request) -> web.Response:
    return _json({"error": f"no control endpoint {request.method} {request.path}"}, status=404)


async def _health(sim: Simulator) -> web.Response:
    return _json({"status": "ok", "instances": len(sim.market.instances()), "time": sim.clock()})


def _instance_view(inst: SimInstance) -> dict[str, Any]:
    return {
        "instanceId": inst.instance_id,
        "accountId": inst.account_id,
        "region": inst.region,
        "zone": inst.zone,
        "instanceType": inst.instance_type,
        "chargeType": inst.charge_type,
        "state": inst.state,
        "name": inst.name,
        "tags": inst.tags,
        "spotPrice": inst.spot_price,
        "maxPrice": inst.max_price,
        "launchTime": iso_time(inst.created_at),
        "launchRequestId": inst.launch_request_id,
        "terminatedBy": inst.terminated_by,  # user, reclaim or timer (its ActionTimer)
        "terminatedAt": None if inst.terminated_at is None else iso_time(inst.terminated_at),
        # When its RunInstances ActionTimer terminates it (None: no timer), and in epoch seconds.
        "terminateAt": None if inst.terminate_at is None else iso_time(inst.terminate_at),
        "terminateAtEpoch": inst.terminate_at,
        # Epoch seconds on the clock of the ledger's `time`, to order an instance's life against
        # the API calls (launchTime and terminatedAt above have CVM's whole-second resolution).
        "timeline": {
            "launchedAt": inst.created_at,
            "runningAt": inst.running_at,
            "terminatedAt": inst.terminated_at,
        },
        # Terminations that were accepted and then failed (the instance stayed, and billed):
        # terminatedAt above is cleared when one fails, so it only ever marks a real end.
        "failedTerminations": [
            {"at": at, "requestId": request_id} for at, request_id in inst.failed_terminations
        ],
    }


async def _instances(sim: Simulator, request: web.Request) -> web.Response:
    """All visible instances; optional filters region, zone, instanceType, chargeType, state,
    tag=key=value. `ever=true` lists every instance bought since the last reset instead, gone
    ones included (with the state they had when they went)."""
    query = request.query
    ever = query.get("ever", "false")
    if ever not in ("true", "false"):
        raise _BadRequest(f"ever must be true or false, got {ever!r}")
    tags = []
    for tag in query.getall("tag", []):
        key, sep, value = tag.partition("=")
        if not sep:
            raise _BadRequest(f"tag filter {tag!r} must look like key=value")
        tags.append((key, value))
    checks = [
        (field, query[param])
        for param, field in (
            ("region", "region"),
            ("zone", "zone"),
            ("instanceType", "instance_type"),
            ("chargeType", "charge_type"),
            ("state", "state"),
            ("account", "account_id"),
        )
        if param in query
    ]
    selected = [
        _instance_view(inst)
        for inst in (_bought(sim) if ever == "true" else sim.market.instances())
        if all(getattr(inst, field) == value for field, value in checks)
        and all(inst.tags.get(key) == value for key, value in tags)
    ]
    return _json({"count": len(selected), "instances": selected})


def _bought(sim: Simulator) -> list[SimInstance]:
    sim.market.advance()
    return sim.market.all_instances_ever()


async def _calls(sim: Simulator, request: web.Request) -> web.Response:
    entries = sim.ledger.entries(request.query.get("action"))
    return _json({"count": len(entries), "calls": [entry.to_json() for entry in entries]})


async def _clear_calls(sim: Simulator) -> web.Response:
    cleared = len(sim.ledger.entries())
    sim.ledger.clear()
    return _json({"cleared": cleared})


async def _reclaim(sim: Simulator, request: web.Request) -> web.Response:
    body: ReclaimBody = _validate(ReclaimBody, await _read_json(request))
    if body.instance_ids is not None:
        reclaimed, skipped = sim.market.reclaim(body.instance_ids)
        return _json({"reclaimed": reclaimed, "skipped": skipped})
    assert body.zone is not None and body.instance_type is not None and body.count is not None
    if sim.market.pool(body.zone, body.instance_type) is None:
        raise _BadRequest(f"no pool {body.zone} x {body.instance_type}")
    return _json(
        {
            "reclaimed": sim.market.reclaim_pool(body.zone, body.instance_type, body.count),
            "skipped": {},
        }
    )


async def _fail_termination(sim: Simulator, request: web.Request) -> web.Response:
    """Body: `{"instanceIds": [...]}`; the next TerminateInstances of each is accepted and then
    fails. Ids of no current instance are skipped (a mark on them could never be used)."""
    body: FailTerminationBody = _validate(FailTerminationBody, await _read_json(request))
    ids = list(dict.fromkeys(body.instance_ids))
    marked = [iid for iid in ids if sim.market.get(iid) is not None]
    sim.market.fail_next_termination(marked)
    skipped = {iid: "not found" for iid in ids if iid not in marked}
    return _json({"marked": marked, "skipped": skipped})


def _pool_view(sim: Simulator, pool: Pool) -> dict[str, Any]:
    thresholds = sim.config.market.stock_status
    return {
        "region": pool.region,
        "zone": pool.zone,
        "instanceType": pool.instance_type,
        "cpu": pool.cpu,
        "memoryGiB": pool.memory_gib,
        "onDemandPrice": pool.on_demand_price,
        "discountPercent": pool.discount_percent,
        "spotPrice": pool.spot_price,
        "stock": pool.stock,
        "soldOut": pool.sold_out,
        "statusCategory": stock_category(pool, SPOTPAID, thresholds),
        "onDemandStock": pool.on_demand_stock,
        "onDemandSoldOut": pool.on_demand_sold_out,
        "onDemandStatusCategory": stock_category(pool, POSTPAID_BY_HOUR, thresholds),
        "offered": pool.offered,
        "reclaimRatePerHour": pool.reclaim_rate_per_hour,
    }


def _quota_view(sim: Simulator, account: str | None = None) -> dict[str, dict[str, int]]:
    market = sim.market
    return {
        zone: {
            "quotaVcpus": market.zone_quota(zone, SPOTPAID, account),
            "usedVcpus": market.quota_used(zone, SPOTPAID, account),
            "onDemandQuotaVcpus": market.zone_quota(zone, POSTPAID_BY_HOUR, account),
            "onDemandUsedVcpus": market.quota_used(zone, POSTPAID_BY_HOUR, account),
        }
        for region in sim.config.regions
        for zone in market.zones_of(region)
    }


async def _market(sim: Simulator, request: web.Request) -> web.Response:
    """The shared market, and the quotas of `?account=` (default: the default account)."""
    account = request.query.get("account") or None
    if account is not None and not account.isdigit():
        raise _BadRequest(f"account must be a UIN (digits), got {account!r}")
    sim.market.advance()
    return _json(
        {
            "pools": [_pool_view(sim, p) for p in sim.market.pools()],
            "account": account or sim.market.default_account,
            "zoneQuotas": _quota_view(sim, account),
            "images": sim.market.images(),
            "subnets": sim.market.subnets(),
        }
    )


async def _update_market(sim: Simulator, request: web.Request) -> web.Response:
    """Body: `{"pools": [{zone, instanceType, stock?, onDemandStock?, ...}], "zoneQuotas":
    {zone: vCPUs}, "onDemandZoneQuotas": {zone: vCPUs}}`, or a single pool update at the top
    level. Everything is checked before anything changes."""
    data = await _read_json(request)
    if isinstance(data, dict) and "zone" in data:
        data = {"pools": [data]}
    body: MarketBody = _validate(MarketBody, data)
    market = sim.market
    for update in body.pools:
        if market.pool(update.zone, update.instance_type) is None:
            raise _BadRequest(f"no pool {update.zone} x {update.instance_type}")
    for zone, vcpus in (*body.zone_quotas.items(), *body.on_demand_zone_quotas.items()):
        if market.region_of_zone(zone) is None:
            raise _BadRequest(f"unknown zone {zone!r}")
        if vcpus < 0:
            raise _BadRequest(f"the quota of {zone} must not be negative")
    for subnet, zone in (body.subnets or {}).items():
        if market.region_of_zone(zone) is None:
            raise _BadRequest(f"subnet {subnet}: unknown zone {zone!r}")
    changed = [
        _pool_view(
            sim,
            market.update_pool(
                update.zone,
                update.instance_type,
                **update.model_dump(exclude={"zone", "instance_type"}, exclude_none=True),
            ),
        )
        for update in body.pools
    ]
    for zone, vcpus in body.zone_quotas.items():
        market.set_zone_quota(zone, vcpus, SPOTPAID, body.account)
    for zone, vcpus in body.on_demand_zone_quotas.items():
        market.set_zone_quota(zone, vcpus, POSTPAID_BY_HOUR, body.account)
    if body.images is not None:
        market.set_images(body.images)
    if body.subnets is not None:
        market.set_subnets(body.subnets)
    return _json({"pools": changed, "zoneQuotas": _quota_view(sim, body.account)})


async def _faults(sim: Simulator) -> web.Response:
    return _json({"faults": sim.faults.active()})


async def _set_faults(sim: Simulator, request: web.Request) -> web.Response:
    """Body: `{"RunInstances": {"errorRate": 0.5, ...}, "*": {...}}`; replaces those actions."""
    data = await _read_json(request)
    if not isinstance(data, dict) or not data:
        raise _BadRequest('the body must map actions (or "*") to fault specs')
    specs = {action: _validate(FaultSpec, spec, action) for action, spec in data.items()}
    for action, spec in specs.items():
        sim.faults.set(action, spec)
    return _json({"faults": sim.faults.active()})


async def _clear_faults(sim: Simulator, request: web.Request) -> web.Response:
    sim.faults.clear(request.query.get("action"))
    return _json({"faults": sim.faults.active()})


async def _sessions(sim: Simulator) -> web.Response:
    """The STS sessions remembered (live or recently expired), without their keys or tokens."""
    now = sim.clock()
    sessions = [
        {
            "secretId": session.secret_id,
            "accountId": session.principal.account_id,
            "roleArn": session.principal.role.arn if session.principal.role else None,
            "sessionName": session.principal.session_name,
            "principalId": session.principal.principal_id,
            "issuedAt": session.issued_at,
            "expiresAt": session.expires_at,
            "expired": session.expires_at <= now,
        }
        for session in sim.identities.sessions()
    ]
    return _json({"count": len(sessions), "sessions": sessions})


async def _reset(sim: Simulator) -> web.Response:
    sim.reset()
    return _json({"status": "reset"})
