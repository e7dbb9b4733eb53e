"""The spot market model: pools, instances, their lifecycle, quota, reclaims and idempotency.

Pure Python with an injectable clock and a seeded random source, so every rule here can be unit-
and property-tested by advancing time instead of sleeping. Nothing runs in the background: the
lifecycle is advanced lazily from the clock at the start of every operation (a heap of timed
events: boot, random reclaim, disappearance), so a market with 10,000 idle instances costs
nothing between requests and behaves identically under a fake clock.

Capacity accounting: launching takes one unit of its pool's stock and its vCPUs of the zone's
quota, both of its charge type (spot, or pay-as-you-go "on-demand", counted apart); both come back
when the instance is gone (after its TERMINATING phase) or when its launch fails. So per pool and
charge type, stock + instances holding capacity is constant except when the market is changed
through the control API. On-demand instances are never reclaimed.

Where the real cloud is less tidy than its API pages, the market can be told to be too, each off
by default: a termination that is accepted and fails later (`lifecycle.terminate_failure_rate`,
`fail_next_termination`), offset pages that shift as instances come and go between page reads
(`api.listing_skew_rate`, `skew_next_pages`), and key pairs restricted by a CAM policy to the
instances carrying some tags (`Credential.visible_tags`).

Two things change instances besides calls: a RunInstances ActionTimer (`terminate_at`) is an event
like a reclaim, so the instance goes (terminating, then gone, its capacity back) at its time on
this clock whether or not anyone calls; and the tag service's TagResources / UnTagResources
(`change_tags`) replace an instance's tags, shown at once by DescribeInstances and reaching the tag
index, which tag filters read, `api.tag_index_delay_seconds` later.

Accounts are kept apart: every instance, vCPU quota and ClientToken belongs to one account (UIN),
and a call acts in the account of the credentials that signed it. A key of account A never sees,
terminates or replays what account B bought, and B's purchases never use A's quota. The physical
market (pools, prices, stock, reclaims) is shared, as one region's capacity is. Calls that name no
account act in `config.default_account` (the first key pair's), so a one-account market behaves
as before accounts existed.
"""

from __future__ import annotations

import heapq
import random
import string
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from spotpool.cloud.models import LAUNCH_FAILED, PENDING, RUNNING
from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import SimulatorConfig
from spotpool.simulator.index import RegionIndex
from spotpool.simulator.naming import expand_names
from spotpool.simulator.state import POSTPAID_BY_HOUR, SPOTPAID, Pool, SimInstance

Clock = Callable[[], float]

_ID_ALPHABET = string.ascii_lowercase + string.digits
_BOOT, _RECLAIM, _GONE, _TERMINATION_FAILED, _TIMER, _REINDEX = 0, 1, 2, 3, 4, 5
USER, RECLAIM, TIMER = "user", "reclaim", "timer"  # who terminated an instance (`terminated_by`)
ACTION_TIMER_REFUSED = "InvalidParameterValue.InvalidTimeFormat"
MAX_TAGS_PER_INSTANCE = 50  # the tag service's "Each resource can have 50 tags at most"


@dataclass(frozen=True)
class LaunchRequest:
    """A validated RunInstances (or InquiryPriceRunInstances) request, as the market needs it.

    `fingerprint` identifies the request parameters other than ClientToken: the same token with
    another fingerprint is a client bug the market refuses rather than silently answers.
    """

    region: str
    zone: str
    instance_type: str
    image_id: str
    count: int
    fingerprint: str
    min_count: int | None = None
    max_price: str | None = None
    name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    client_token: str | None = None
    dry_run: bool = False
    project_id: int = 0
    vpc_id: str | None = None
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    key_ids: tuple[str, ...] = ()
    system_disk_type: str = "CLOUD_PREMIUM"
    system_disk_size: int = 50
    charge_type: str = SPOTPAID  # or POSTPAID_BY_HOUR
    account: str | None = None  # the buyer's account (UIN); None: the market's default account
    terminate_at: float | None = None  # ActionTimer TerminateInstances (epoch seconds)


@dataclass(frozen=True)
class _TokenRecord:
    account: str
    token: str
    fingerprint: str
    instance_ids: tuple[str, ...]
    expires_at: float


@dataclass(slots=True)
class _Account:
    """What one account (UIN) owns: its vCPU quotas and their use, its instances indexed per region,
    the ids it terminated (for InstanceStateTerminated) and its ClientTokens."""

    quotas: dict[str, dict[str, int]]
    quotas_used: dict[str, dict[str, int]]
    regions: dict[str, RegionIndex]
    gone: dict[str, str] = field(default_factory=dict)  # instance id -> region
    tokens: dict[str, _TokenRecord] = field(default_factory=dict)


class Market:
    """The state of the simulated cloud: one shared physical market, instances per account."""

    def __init__(self, config: SimulatorConfig, clock: Clock = time.time) -> None:
        self.config = config
        self._clock = clock
        self._zone_region = config.zones()
        self._visible_tags = {
            c.secret_id: dict(c.visible_tags) for c in config.credentials if c.visible_tags
        }
        self.reset()

    # ----------------------------------------------------------------------------- set-up

    def reset(self) -> None:
        """Back to the configured market: no instances, full stock, forgotten client tokens."""
        config = self.config
        self._rng = random.Random(config.seed)
        self._pools: dict[tuple[str, str], Pool] = {}
        for region, zones in config.regions.items():
            for zone in zones:
                for name, spec in config.instance_types.items():
                    self._pools[(zone, name)] = Pool(
                        region=region,
                        zone=zone,
                        instance_type=name,
                        cpu=spec.cpu,
                        memory_gib=spec.memory_gib,
                        on_demand_price=spec.on_demand_price,
                        discount_percent=config.market.spot_discount_percent,
                        stock=config.market.default_stock,
                        sold_out=False,
                        offered=True,
                        reclaim_rate_per_hour=config.market.reclaim_rate_per_hour,
                        on_demand_stock=config.market.default_on_demand_stock,
                    )
        for override in config.market.pools:
            pool = self._pools[(override.zone, override.instance_type)]
            pool.sold_out = override.sold_out
            pool.offered = override.offered
            if override.stock is not None:
                pool.stock = override.stock
            if override.discount_percent is not None:
                pool.discount_percent = override.discount_percent
            if override.on_demand_price is not None:
                pool.on_demand_price = override.on_demand_price
            if override.reclaim_rate_per_hour is not None:
                pool.reclaim_rate_per_hour = override.reclaim_rate_per_hour
            if override.on_demand_stock is not None:
                pool.on_demand_stock = override.on_demand_stock
            pool.on_demand_sold_out = override.on_demand_sold_out
        market = config.market
        self._default_account = config.default_account
        self._accounts: dict[str, _Account] = {}
        self._images = None if market.images is None else set(market.images)
        self._subnet_zones = None if market.subnets is None else dict(market.subnets)
        # Every account's instances, for the lifecycle (its events name ids) and the control API.
        self._instances: dict[str, SimInstance] = {}
        # Every instance ever bought, gone ones included: what was paid for, for tests and demos.
        self._bought: list[SimInstance] = []
        self._issued_ids: set[str] = set()
        self._events: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        self._failing_terminations: set[str] = set()  # ids whose next termination fails
        self._skewed_pages = 0  # listing pages with Offset > 0 still to skew
        self._token_order: deque[_TokenRecord] = deque()
        self._network = {
            region: (self._resource_id("vpc"), self._resource_id("sg")) for region in config.regions
        }
        self._subnets = {zone: self._resource_id("subnet") for zone in self._zone_region}
        self._ip_counter = dict.fromkeys(self._zone_region, 0)
        self._zone_octet = {zone: n % 256 for n, zone in enumerate(self._zone_region)}

    def now(self) -> float:
        return self._clock()

    @property
    def default_account(self) -> str:
        """The account calls that name none act in (the first configured key pair's)."""
        return self._default_account

    def _account(self, account: str | None) -> _Account:
        """An account's book, opened with the configured quotas the first time it is used."""
        uin = account or self._default_account
        book = self._accounts.get(uin)
        if book is None:
            market = self.config.market
            book = _Account(
                quotas={
                    SPOTPAID: {
                        zone: market.zone_quota_vcpus.get(zone, market.spot_quota_vcpus)
                        for zone in self._zone_region
                    },
                    POSTPAID_BY_HOUR: {
                        zone: market.zone_on_demand_quota_vcpus.get(
                            zone, market.on_demand_quota_vcpus
                        )
                        for zone in self._zone_region
                    },
                },
                quotas_used={
                    charge: dict.fromkeys(self._zone_region, 0)
                    for charge in (SPOTPAID, POSTPAID_BY_HOUR)
                },
                regions={region: RegionIndex() for region in self.config.regions},
            )
            self._accounts[uin] = book
        return book

    def accounts(self) -> list[str]:
        """The accounts that have bought or been asked about something since the last reset."""
        return list(self._accounts)

    # ------------------------------------------------------------------------- catalogue

    def has_region(self, region: str) -> bool:
        return region in self.config.regions

    def region_of_zone(self, zone: str) -> str | None:
        return self._zone_region.get(zone)

    def zones_of(self, region: str) -> list[str]:
        return list(self.config.regions.get(region, ()))

    def pool(self, zone: str, instance_type: str) -> Pool | None:
        return self._pools.get((zone, instance_type))

    def pools(self, region: str | None = None) -> list[Pool]:
        return [p for p in self._pools.values() if region is None or p.region == region]

    def zone_quota(self, zone: str, charge_type: str = SPOTPAID, account: str | None = None) -> int:
        """An account's vCPU quota in the zone for a charge type (SpotPaidQuota / PostPaidQuota
        TotalQuota)."""
        return self._account(account).quotas[charge_type][zone]

    def quota_used(self, zone: str, charge_type: str = SPOTPAID, account: str | None = None) -> int:
        """vCPUs of that charge type the account holds in the zone (instances not yet gone)."""
        return self._account(account).quotas_used[charge_type][zone]

    def resolve_pool(self, region: str, zone: str, instance_type: str) -> Pool:
        """The pool a purchase targets, or the error the API gives for a bad zone or type."""
        zone_region = self._zone_region.get(zone)
        if zone_region is None:
            raise ApiError(
                "InvalidParameterValue.ZoneNotSupported",
                f"The zone {zone!r} is not supported. Zones of {region}: "
                f"{', '.join(self.zones_of(region))}.",
            )
        if zone_region != region:
            raise ApiError(
                "InvalidZone.MismatchRegion",
                f"The zone {zone!r} belongs to region {zone_region}, not to {region}.",
            )
        if instance_type not in self.config.instance_types:
            raise ApiError(
                "InvalidParameterValue.InstanceTypeNotFound",
                f"The instance type {instance_type!r} does not exist.",
            )
        pool = self._pools[(zone, instance_type)]
        if not pool.offered:
            raise ApiError(
                "ResourceUnavailable.InstanceType",
                f"The instance type {instance_type} is not sold in {zone}.",
            )
        return pool

    # ------------------------------------------------------------------------ lifecycle

    def advance(self) -> float:
        """Apply every lifecycle event due by now, in time order; return now."""
        now = self._clock()
        events = self._events
        while events and events[0][0] <= now:
            at, _, kind, iid, epoch = heapq.heappop(events)
            inst = self._instances.get(iid)
            if inst is None:
                continue
            if kind == _BOOT:
                if inst.state == PENDING:
                    self._boot(inst, at)
            elif kind == _RECLAIM:
                if inst.state == RUNNING and epoch == inst.reclaim_epoch:
                    self._begin_termination(inst, at, RECLAIM, inst.latest_operation_request_id)
            elif kind == _TERMINATION_FAILED:
                self._fail_termination(inst, at)
            elif kind == _TIMER:
                self._fire_timer(inst, at)
            elif kind == _REINDEX:
                self._reindex(inst, at)
            else:
                self._remove(inst, at)
        return now

    def _push(self, at: float, kind: int, inst: SimInstance, epoch: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, inst.instance_id, epoch))

    def _set_state(self, inst: SimInstance, state: str, operation_state: str) -> None:
        old = inst.state
        inst.set_state(state, operation_state)
        self._account(inst.account_id).regions[inst.region].restate(inst, old)

    def _boot(self, inst: SimInstance, at: float) -> None:
        if inst.will_fail:
            # What failed is the launch, even after a failed termination was the latest news.
            inst.latest_operation = "RunInstances"
            inst.latest_operation_request_id = inst.launch_request_id
            self._set_state(inst, LAUNCH_FAILED, "FAILED")
            self._release_capacity(inst)
            return
        inst.running_at = at
        # A boot completes the launch; after a failed termination that termination stays the
        # latest operation, still FAILED (SUCCESS would read as a termination that worked).
        done = "SUCCESS" if inst.latest_operation == "RunInstances" else inst.latest_operation_state
        self._set_state(inst, RUNNING, done)
        if inst.spot:
            self._schedule_reclaim(inst, at)

    def _schedule_reclaim(self, inst: SimInstance, start: float) -> None:
        """Random supply reclaim: an exponential lifetime at the pool's rate (memoryless)."""
        rate = self._pools[(inst.zone, inst.instance_type)].reclaim_rate_per_hour
        inst.reclaim_epoch += 1
        if rate > 0:
            at = start + self._rng.expovariate(rate / 3600.0)
            self._push(at, _RECLAIM, inst, inst.reclaim_epoch)

    def _begin_termination(
        self, inst: SimInstance, at: float, reason: str, request_id: str, *, fails: bool = False
    ) -> None:
        """Show the terminating state; after the terminate delay the instance is gone or, when
        the termination `fails`, back to the state it had (it looks the same until then)."""
        inst.returns_to = inst.state if fails else None
        inst.terminated_by = reason
        inst.terminated_at = at
        inst.latest_operation = "TerminateInstances"
        inst.latest_operation_request_id = request_id
        self._set_state(inst, self.config.lifecycle.terminating_state, "OPERATING")
        end = at + self.config.lifecycle.terminate_delay_seconds
        self._push(end, _TERMINATION_FAILED if fails else _GONE, inst)

    def _fail_termination(self, inst: SimInstance, at: float) -> None:
        """The termination failed: the instance is back as it was, holding its capacity (and
        billed: `terminated_at` is cleared), with LatestOperationState FAILED.

        A spot instance back to RUNNING gets a new reclaim draw (its reclaim event was dropped
        while it was terminating; the lifetime is memoryless). One that was PENDING keeps booting:
        its boot event, if it came while terminating, was dropped too, so it boots now.
        """
        restored = inst.returns_to or RUNNING
        inst.returns_to = None
        inst.terminated_by = None
        inst.terminated_at = None
        inst.failed_terminations.append((at, inst.latest_operation_request_id))
        self._set_state(inst, restored, "FAILED")
        if restored == PENDING:
            if inst.created_at + self.config.lifecycle.boot_delay_seconds <= at:
                self._push(at, _BOOT, inst)
        elif inst.spot:
            self._schedule_reclaim(inst, at)
        if inst.terminate_at is not None and inst.terminate_at <= at:
            # Its ActionTimer came while it was terminating (and found nothing to do): the
            # cloud's timer still wants it gone.
            self._push(at, _TIMER, inst)

    def _fire_timer(self, inst: SimInstance, at: float) -> None:
        """The RunInstances ActionTimer's TerminateInstances, on CVM's side: the instance goes as
        a TerminateInstances would take it (the terminating state, then gone, its capacity back),
        whether or not anyone calls. One already going is left to that; a launch that failed is
        removed at once, as TerminateInstances removes it."""
        if inst.terminated_by is not None:
            return
        if inst.state == LAUNCH_FAILED:
            self._remove(inst, at)
            return
        self._begin_termination(inst, at, TIMER, "")

    def _release_capacity(self, inst: SimInstance) -> None:
        if inst.holds_capacity:
            inst.holds_capacity = False
            pool = self._pools[(inst.zone, inst.instance_type)]
            if inst.spot:
                pool.stock += 1
            else:
                pool.on_demand_stock += 1
            self._account(inst.account_id).quotas_used[inst.charge_type][inst.zone] -= inst.cpu

    def _remove(self, inst: SimInstance, at: float) -> None:
        self._release_capacity(inst)
        self._failing_terminations.discard(inst.instance_id)
        del self._instances[inst.instance_id]
        book = self._account(inst.account_id)
        book.regions[inst.region].remove(inst)
        book.gone[inst.instance_id] = inst.region

    # ------------------------------------------------------------------------ purchases

    def quote(self, req: LaunchRequest) -> Pool:
        """The pool a purchase would buy from, or the refusal it would get (InquiryPrice)."""
        self.advance()
        return self._check_offer(req)[0]

    def _check_offer(self, req: LaunchRequest) -> tuple[Pool, int]:
        """The pool and how many instances a purchase would get, or the refusal it would get.

        The checks run in one order for both charge types: sold out, price (spot only), quota,
        stock. Spot and on-demand differ in their codes: a spot quota refusal is the documented
        LimitExceeded.UserSpotQuota, a pay-as-you-go one LimitExceeded.InstanceQuota ("the quota
        cannot produce that many instances"); a short spot stock answers the configured
        insufficient_stock_code (the intl API has a spot-only InsufficientOffering), a short
        on-demand stock ResourceInsufficient.SpecifiedInstanceType.
        """
        pool = self.resolve_pool(req.region, req.zone, req.instance_type)
        charge = req.charge_type
        spot = charge == SPOTPAID
        kind = "spot" if spot else "pay-as-you-go"
        if pool.sold_out_for(charge):
            raise ApiError(
                "ResourcesSoldOut.SpecifiedInstanceType",
                f"The {kind} instance type {pool.instance_type} is sold out in {pool.zone}.",
            )
        if (
            spot
            and req.max_price is not None
            and Decimal(req.max_price) < Decimal(repr(pool.spot_price))
        ):
            raise ApiError(
                "InvalidParameterValue.InsufficientPrice",
                f"The bid {req.max_price} is lower than the market price {pool.spot_price} "
                f"of {pool.instance_type} in {pool.zone}.",
            )
        book = self._account(req.account)
        quota = book.quotas[charge][pool.zone]
        quota_left = max(quota - book.quotas_used[charge][pool.zone], 0)
        fits_quota = quota_left // pool.cpu
        wanted = req.count if req.min_count is None else req.min_count
        if fits_quota < wanted:
            raise ApiError(
                "LimitExceeded.UserSpotQuota" if spot else "LimitExceeded.InstanceQuota",
                f"The {kind} quota of {pool.zone} is {quota} vCPUs, {quota_left} left; "
                f"{wanted} x {pool.instance_type} needs {wanted * pool.cpu}.",
            )
        stock = pool.stock_of(charge)
        if stock < wanted:
            if req.min_count is not None:
                code = "ResourceInsufficient.InsufficientOfferingMinimum"
            elif spot:
                code = self.config.api.insufficient_stock_code
            else:
                code = "ResourceInsufficient.SpecifiedInstanceType"
            raise ApiError(
                code,
                f"Insufficient resources of {pool.instance_type} in {pool.zone}: "
                f"{stock} available, {wanted} requested.",
            )
        return pool, min(req.count, stock, fits_quota)

    def run_instances(self, req: LaunchRequest, request_id: str) -> list[str]:
        """Buy instances; answers a replayed ClientToken with the ids it bought the first time.

        The token is looked up before the market is consulted: a replay must return the original
        ids even if the pool has sold out since, and must never buy again. A dry run neither
        consults nor records the token: it checks whether this purchase would pass now, and
        returns [] when it would.
        """
        now = self.advance()
        if req.dry_run:
            self._check_timer(req, now)
            self._check_offer(req)
            return []
        if req.client_token is not None:
            replay = self._replay(req, now)
            if replay is not None:
                return replay
        self._check_timer(req, now)
        pool, count = self._check_offer(req)
        names = expand_names(req.name, count)
        ids = [self._launch(pool, req, names[i], now, request_id) for i in range(count)]
        if req.client_token is not None:
            record = _TokenRecord(
                req.account or self._default_account,
                req.client_token,
                req.fingerprint,
                tuple(ids),
                now + self.config.api.client_token_validity_seconds,
            )
            self._account(req.account).tokens[req.client_token] = record
            self._token_order.append(record)
        return ids

    def _check_timer(self, req: LaunchRequest, now: float) -> None:
        """Refuse an ActionTime in the past or nearer than the minimum lead on this clock, before
        anything is bought or the ClientToken recorded. A replay of a recorded token is answered
        before this check: its timer was accepted when it bought, and a repeat must not turn into
        a refusal because time passed (the documents do not say which CVM checks first)."""
        if req.terminate_at is None:
            return
        lead = self.config.api.action_timer_min_lead_seconds
        if req.terminate_at < now + lead:
            when = "is in the past" if req.terminate_at <= now else f"is {req.terminate_at - now:.0f} s away"
            raise ApiError(
                ACTION_TIMER_REFUSED,
                f"ActionTimer.ActionTime {when}; it must be at least {lead:.0f} s later than the "
                "current time.",
            )

    def _replay(self, req: LaunchRequest, now: float) -> list[str] | None:
        while self._token_order and self._token_order[0].expires_at <= now:
            expired = self._token_order.popleft()
            tokens = self._account(expired.account).tokens
            if tokens.get(expired.token) is expired:
                del tokens[expired.token]
        record = self._account(req.account).tokens.get(req.client_token or "")
        if record is None:
            return None
        if record.fingerprint != req.fingerprint:
            raise ApiError(
                "InvalidParameterValue",
                f"The ClientToken {req.client_token!r} was already used with different request "
                "parameters; use a new ClientToken for a different request.",
            )
        return list(record.instance_ids)

    def _launch(
        self, pool: Pool, req: LaunchRequest, name: str, now: float, request_id: str
    ) -> str:
        vpc_id, sg_id = self._network[pool.region]
        self._seq += 1
        inst = SimInstance(
            instance_id=self._new_instance_id(),
            uuid=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            seq=self._seq,
            region=pool.region,
            zone=pool.zone,
            instance_type=pool.instance_type,
            cpu=pool.cpu,
            memory_gib=pool.memory_gib,
            image_id=req.image_id,
            name=name,
            tags=dict(req.tags),
            created_at=now,
            spot_price=pool.price_of(req.charge_type),
            max_price=req.max_price,
            private_ip=self._next_ip(pool.zone),
            project_id=req.project_id,
            vpc_id=req.vpc_id or vpc_id,
            subnet_id=req.subnet_id or self._subnets[pool.zone],
            security_group_ids=req.security_group_ids or (sg_id,),
            key_ids=req.key_ids,
            system_disk_type=req.system_disk_type,
            system_disk_size=req.system_disk_size,
            launch_request_id=request_id,
            account_id=req.account or self._default_account,
            will_fail=self._rng.random() < self.config.lifecycle.launch_failure_rate,
            latest_operation_request_id=request_id,
            charge_type=req.charge_type,
            terminate_at=req.terminate_at,
        )
        if inst.spot:
            pool.stock -= 1
        else:
            pool.on_demand_stock -= 1
        book = self._account(inst.account_id)
        book.quotas_used[req.charge_type][pool.zone] += pool.cpu
        self._instances[inst.instance_id] = inst
        self._bought.append(inst)
        book.regions[pool.region].add(inst)
        self._push(now + self.config.lifecycle.boot_delay_seconds, _BOOT, inst)
        if req.terminate_at is not None:
            self._push(req.terminate_at, _TIMER, inst)
        return inst.instance_id

    def _new_instance_id(self) -> str:
        while True:
            iid = "ins-" + "".join(self._rng.choices(_ID_ALPHABET, k=8))
            if iid not in self._issued_ids:
                self._issued_ids.add(iid)
                return iid

    def _resource_id(self, prefix: str) -> str:
        return f"{prefix}-" + "".join(self._rng.choices(_ID_ALPHABET, k=8))

    def _next_ip(self, zone: str) -> str:
        self._ip_counter[zone] += 1
        n = self._ip_counter[zone]
        return f"10.{self._zone_octet[zone]}.{(n >> 8) & 255}.{n & 255}"

    # ---------------------------------------------------------------------- termination

    def terminate_instances(
        self,
        region: str,
        instance_ids: list[str],
        request_id: str,
        *,
        visible_tags: Mapping[str, str] | None = None,
        account: str | None = None,
    ) -> None:
        """Terminate all or none: every id is checked before any instance is touched.

        One batch takes one charge type ("批量操作时，所有实例的付费类型必须一致", the SDK's
        TerminateInstances doc): spot and pay-as-you-go ids together are refused whole with
        UnsupportedOperation.InstanceMixedPricingModel. A caller restricted to `visible_tags`
        (see `visible_tags()`) naming an instance without them is refused first, as CAM
        authorizes a request before the action runs. Accepted terminations may fail later
        (`fail_next_termination`, `lifecycle.terminate_failure_rate`).
        """
        now = self.advance()
        uin = account or self._default_account
        book = self._account(uin)
        self._authorize(region, instance_ids, visible_tags, uin)
        targets: list[SimInstance] = []
        for iid in dict.fromkeys(instance_ids):
            inst = self._instances.get(iid)
            if inst is None or inst.region != region or inst.account_id != uin:
                if book.gone.get(iid) == region:
                    raise ApiError(
                        "UnsupportedOperation.InstanceStateTerminated",
                        f"The instance {iid} has already been terminated.",
                    )
                raise ApiError("InvalidInstanceId.NotFound", f"The instance {iid} does not exist.")
            if inst.terminated_by is not None:
                raise ApiError(
                    "UnsupportedOperation.InstanceStateTerminating",
                    f"The instance {iid} is being terminated.",
                )
            if inst.state == PENDING and self.config.lifecycle.refuse_terminate_pending:
                raise ApiError(
                    "UnsupportedOperation.InstanceStatePending",
                    f"The instance {iid} is still being created; retry when it is RUNNING.",
                )
            targets.append(inst)
        charge_types = sorted({inst.charge_type for inst in targets})
        if len(charge_types) > 1:
            raise ApiError(
                "UnsupportedOperation.InstanceMixedPricingModel",
                "A batch must hold instances of one charge type, not "
                f"{' and '.join(charge_types)}.",
            )
        for inst in targets:
            if inst.state == LAUNCH_FAILED:
                self._remove(inst, now)
            else:
                fails = self._termination_fails(inst)
                self._begin_termination(inst, now, USER, request_id, fails=fails)

    def _authorize(
        self,
        region: str,
        instance_ids: list[str],
        visible_tags: Mapping[str, str] | None,
        account: str,
    ) -> None:
        """Refuse the whole call when it names an instance of the caller's account that the
        caller may not see (another account's instances do not exist for it)."""
        if not visible_tags:
            return
        hidden = [
            iid
            for iid in dict.fromkeys(instance_ids)
            if (inst := self._instances.get(iid)) is not None
            and inst.region == region
            and inst.account_id == account
            and not _carries(inst, visible_tags)
        ]
        if hidden:
            wanted = ", ".join(f"{key}={value}" for key, value in visible_tags.items())
            raise ApiError(
                "UnauthorizedOperation",
                f"You are not authorized to operate on these instances (CAM): {', '.join(hidden)};"
                f" this key pair may only operate on instances tagged {wanted}.",
            )

    def _termination_fails(self, inst: SimInstance) -> bool:
        """Whether this termination will fail: a scripted failure, else a draw at the rate (the
        random source is only used when the rate is set, so seeded markets stay as they were)."""
        if inst.instance_id in self._failing_terminations:
            self._failing_terminations.discard(inst.instance_id)
            return True
        rate = self.config.lifecycle.terminate_failure_rate
        return rate > 0 and self._rng.random() < rate

    # ------------------------------------------------------------------------- queries

    def describe_instances(
        self,
        region: str,
        *,
        instance_ids: list[str] | None = None,
        filters: list[tuple[str, list[str]]] | None = None,
        offset: int = 0,
        limit: int = 20,
        visible_tags: Mapping[str, str] | None = None,
        account: str | None = None,
    ) -> tuple[int, list[SimInstance]]:
        """(total matches, one page) of the account's instances in the region, in launch order.

        `visible_tags` restricts the answer, TotalCount included, to the instances carrying all
        those tags (a key pair's CAM policy). A listing page (no `instance_ids`) with an offset
        may start one position late, as if the listing churned since the previous page
        (`skew_next_pages`, `api.listing_skew_rate`).
        """
        self.advance()
        index = self._account(account).regions[region]
        if instance_ids is not None:
            found = [index.all[i] for i in dict.fromkeys(instance_ids) if i in index.all]
            if visible_tags:
                found = [inst for inst in found if _carries(inst, visible_tags)]
            return len(found), found[offset : offset + limit]
        asked = filters or []
        scoped = asked + [(f"tag:{key}", [value]) for key, value in (visible_tags or {}).items()]
        start = self._page_start(offset)
        lag = self.config.api.tag_index_delay_seconds
        if lag and any(name.startswith("tag") for name, _ in asked):
            # The tag service indexes new instances late: tag filters miss them meanwhile,
            # lookups by id do not. (The caller's filters decide this, not its CAM scope.)
            _, everything = index.query(scoped, 0, len(index.all) + 1)
            now = self.now()
            indexed = [inst for inst in everything if inst.created_at + lag <= now]
            return len(indexed), indexed[start : start + limit]
        return index.query(scoped, start, limit)

    def _page_start(self, offset: int) -> int:
        """Where a listing page starts: `offset`, or one later when churn between page reads is
        simulated (an instance before the offset went away, another arrived at the end, so
        TotalCount is the same and everything after the gap moved up by one)."""
        if offset <= 0:
            return offset
        if self._skewed_pages > 0:
            self._skewed_pages -= 1
            return offset + 1
        rate = self.config.api.listing_skew_rate
        if rate > 0 and self._rng.random() < rate:
            return offset + 1
        return offset

    def visible_tags(self, secret_id: str | None) -> dict[str, str] | None:
        """The tags a key pair is restricted to (`Credential.visible_tags`); None: everything."""
        return None if secret_id is None else self._visible_tags.get(secret_id)

    def instances(self, account: str | None = None) -> list[SimInstance]:
        """Every visible instance of every region, in launch order: of every account, or of one."""
        self.advance()
        if account is None:
            return list(self._instances.values())
        return [inst for inst in self._instances.values() if inst.account_id == account]

    def all_instances_ever(self) -> list[SimInstance]:
        """Every instance bought since the last reset, gone ones included (the money spent)."""
        return list(self._bought)

    def get(self, instance_id: str) -> SimInstance | None:
        self.advance()
        return self._instances.get(instance_id)

    # ------------------------------------------------------------------------- tags

    def change_tags(
        self,
        region: str,
        instance_ids: list[str],
        *,
        set_tags: Mapping[str, str] | None = None,
        remove_keys: list[str] | tuple[str, ...] = (),
        account: str | None = None,
        visible_tags: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Set `set_tags` on and remove `remove_keys` from the account's instances of the region
        (the tag service's TagResources / UnTagResources); return the ids that name none of them.

        All or nothing for the instances found: a caller restricted to `visible_tags` naming one
        it may not see, or a change leaving one with more than 50 tags, changes nothing. Another
        account's instance is just not found. DescribeInstances shows the new tags at once; tag
        filters see them `api.tag_index_delay_seconds` later (`_retag`).
        """
        now = self.advance()
        uin = account or self._default_account
        found: list[SimInstance] = []
        unknown: list[str] = []
        for iid in dict.fromkeys(instance_ids):
            inst = self._instances.get(iid)
            if inst is None or inst.region != region or inst.account_id != uin:
                unknown.append(iid)
            else:
                found.append(inst)
        if visible_tags:
            hidden = [inst.instance_id for inst in found if not _carries(inst, visible_tags)]
            if hidden:
                raise ApiError(
                    "AuthFailure.UnauthorizedOperation",
                    f"You are not authorized to change the tags of {', '.join(hidden)} (CAM).",
                )
        changes: list[tuple[SimInstance, dict[str, str]]] = []
        for inst in found:
            tags = {**inst.tags, **(set_tags or {})}
            for key in remove_keys:
                tags.pop(key, None)
            if len(tags) > MAX_TAGS_PER_INSTANCE:
                raise ApiError(
                    "LimitExceeded.ResourceAttachedTags",
                    f"The instance {inst.instance_id} would carry {len(tags)} tags; a resource "
                    f"carries at most {MAX_TAGS_PER_INSTANCE}.",
                )
            changes.append((inst, tags))
        for inst, tags in changes:
            self._retag(inst, tags, now)
        return unknown

    def _retag(self, inst: SimInstance, tags: dict[str, str], now: float) -> None:
        """Give an instance new tags: at once in its description, in the tag index at once or,
        with an index delay, `tag_index_delay_seconds` later (tag filters meanwhile see the tags
        it had; several changes reach the index in order, each at its own time)."""
        if tags == inst.tags:
            return
        indexed = inst.indexed_tags
        inst.tags = tags
        inst.rendered = None
        lag = self.config.api.tag_index_delay_seconds
        if not lag:
            self._account(inst.account_id).regions[inst.region].retag(inst, indexed, tags)
            return
        inst.index_tags = indexed
        inst.tag_updates.append((now + lag, tags))
        self._push(now + lag, _REINDEX, inst)

    def _reindex(self, inst: SimInstance, at: float) -> None:
        """Bring the tag index up to the latest tag change due by `at`."""
        latest: dict[str, str] | None = None
        while inst.tag_updates and inst.tag_updates[0][0] <= at:
            latest = inst.tag_updates.pop(0)[1]
        if latest is None:
            return
        self._account(inst.account_id).regions[inst.region].retag(inst, inst.indexed_tags, latest)
        inst.index_tags = latest if inst.tag_updates else None

    # ------------------------------------------------------------------ market control

    def fail_next_termination(self, instance_ids: list[str]) -> None:
        """Make the next TerminateInstances of each of these instances fail asynchronously.

        The call is accepted as usual; the failure shows once the terminate delay has passed
        (see `_fail_termination`). A mark is used by the first termination that goes ahead
        (a refused call leaves it), and forgotten when the instance is gone or on reset.
        """
        self._failing_terminations.update(instance_ids)

    def skew_next_pages(self, count: int) -> None:
        """Skew the next `count` listing pages asked with Offset > 0 (see `_page_start`);
        0 cancels what is left."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        self._skewed_pages = count

    def reclaim(self, instance_ids: list[str]) -> tuple[list[str], dict[str, str]]:
        """Scripted reclaim of chosen instances: (reclaimed ids, {skipped id: why}).

        Only spot instances can be reclaimed; a pay-as-you-go one is skipped, as Tencent never
        interrupts those."""
        now = self.advance()
        reclaimed: list[str] = []
        skipped: dict[str, str] = {}
        for iid in dict.fromkeys(instance_ids):
            inst = self._instances.get(iid)
            if inst is None:
                skipped[iid] = "not found"
            elif not inst.alive:
                skipped[iid] = f"not alive ({inst.state})"
            elif not inst.spot:
                skipped[iid] = f"not a spot instance ({inst.charge_type})"
            else:
                self._begin_termination(inst, now, RECLAIM, "")
                reclaimed.append(iid)
        return reclaimed, skipped

    def reclaim_pool(self, zone: str, instance_type: str, count: int) -> list[str]:
        """Reclaim up to `count` alive spot instances of one pool, chosen at random (as Tencent
        does)."""
        self.advance()
        alive = [
            i.instance_id
            for i in self._instances.values()
            if i.zone == zone and i.instance_type == instance_type and i.alive and i.spot
        ]
        chosen = self._rng.sample(alive, min(count, len(alive)))
        return self.reclaim(chosen)[0]

    def update_pool(
        self,
        zone: str,
        instance_type: str,
        *,
        stock: int | None = None,
        discount_percent: float | None = None,
        on_demand_price: float | None = None,
        sold_out: bool | None = None,
        offered: bool | None = None,
        reclaim_rate_per_hour: float | None = None,
        on_demand_stock: int | None = None,
        on_demand_sold_out: bool | None = None,
    ) -> Pool:
        """Change one pool's market; a new reclaim rate applies to its running spot instances
        now."""
        now = self.advance()
        pool = self._pools[(zone, instance_type)]
        if stock is not None:
            pool.stock = stock
        if discount_percent is not None:
            pool.discount_percent = discount_percent
        if on_demand_price is not None:
            pool.on_demand_price = on_demand_price
        if sold_out is not None:
            pool.sold_out = sold_out
        if offered is not None:
            pool.offered = offered
        if on_demand_stock is not None:
            pool.on_demand_stock = on_demand_stock
        if on_demand_sold_out is not None:
            pool.on_demand_sold_out = on_demand_sold_out
        if reclaim_rate_per_hour is not None:
            pool.reclaim_rate_per_hour = reclaim_rate_per_hour
            for inst in self._instances.values():
                if (
                    inst.zone == zone
                    and inst.instance_type == instance_type
                    and inst.state == RUNNING
                    and inst.spot
                ):
                    self._schedule_reclaim(inst, now)
        return pool

    def image_exists(self, image_id: str) -> bool:
        """Whether RunInstances may use the image (every well-formed id, unless images are set)."""
        return self._images is None or image_id in self._images

    def images(self) -> list[str] | None:
        """The image ids that exist, sorted; None when every well-formed id does."""
        return None if self._images is None else sorted(self._images)

    def set_images(self, images: list[str] | None) -> None:
        """From now on only these images exist (None: every well-formed id), so a test can make a
        pool's image disappear and see a DryRun turn it into InvalidImageId.NotFound."""
        self._images = None if images is None else set(images)

    def check_subnet(self, subnet_id: str, zone: str) -> None:
        """Refuse a subnet that does not exist (when subnets are set) or lies in another zone, as
        RunInstances does: InvalidParameterValue.SubnetNotExist / SubnetIdZoneIdNotMatch."""
        if self._subnet_zones is None:
            return
        subnet_zone = self._subnet_zones.get(subnet_id)
        if subnet_zone is None:
            raise ApiError(
                "InvalidParameterValue.SubnetNotExist", f"The subnet {subnet_id} does not exist."
            )
        if subnet_zone != zone:
            raise ApiError(
                "InvalidParameterValue.SubnetIdZoneIdNotMatch",
                f"The subnet {subnet_id} is in {subnet_zone}, not in {zone}.",
            )

    def subnets(self) -> dict[str, str] | None:
        """The subnet ids that exist with their zones; None when every well-formed id does."""
        return None if self._subnet_zones is None else dict(sorted(self._subnet_zones.items()))

    def set_subnets(self, subnets: dict[str, str] | None) -> None:
        """From now on only these subnets (id -> zone) exist; None: every well-formed id, anywhere."""
        self._subnet_zones = None if subnets is None else dict(subnets)

    def set_zone_quota(
        self, zone: str, vcpus: int, charge_type: str = SPOTPAID, account: str | None = None
    ) -> None:
        """Set an account's vCPU quota in a zone for a charge type (None: the default account);
        instances over it keep running, as a lowered quota only refuses new purchases."""
        self._account(account).quotas[charge_type][zone] = vcpus


def _carries(inst: SimInstance, tags: Mapping[str, str]) -> bool:
    """Whether the instance has every one of these tag key=value pairs."""
    return all(inst.tags.get(key) == value for key, value in tags.items())
