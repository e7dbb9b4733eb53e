"""The async CVM API client: one method per action, typed arguments in, typed results out.

This room knows what each action means: which parameters it takes (built in `wire`), what its
answer must look like (checked in `wire`), and what a refusal means to the caller (a passed dry
run, a purchase despite DryRun, a partial tag failure). How a request travels (rate limits, the
caller's guard, signing, the bounded exchange, the envelope, retries) is the transport's
(`transport.Transport`); how one request becomes many calls (pages of a listing, batches of a
release) is the listing's (`listing.Listing`). The split follows httpx's: a client of requests
over a transport of exchanges.

A client is one account (key pair) in one region of one service (CVM, STS or the tag service),
over one HTTP connection pool to one endpoint; safe to share between many pools and tasks, since
rate limits are process-wide. The endpoint may be hostile (a pool author can name one), so every
answer is bounded and checked before a caller sees it: docs/security.md lists every hostile answer
tried and what the caller sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any

import httpx

from . import wire
from .credentials import CredentialProvider
from .errors import (
    DRY_RUN_PASSED,
    SERVER_NETWORK_ERROR,
    CloudError,
    CloudNetworkError,
    valid_request_id,
)
from .listing import (
    DEFAULT_MAX_LISTING,
    DEFAULT_MAX_LISTING_BYTES,
    PAGE_CONCURRENCY,
    Listing,
)
from .models import (  # issue 11
    CHARGE_TYPES,
    SPOTPAID,
    AccountQuota,
    CallerIdentity,
    Credentials,
    Instance,
    Offer,
    PriceQuote,
    RunInstancesRequest,
    SpotOffer,
)
from .ratelimit import RateLimiterRegistry, Sleep
from .transport import (
    API_VERSIONS,
    DEFAULT_DEADLINE,
    DEFAULT_MAX_REPLY_BYTES,
    SERVICE,
    TAG_SERVICE,
    CallGuard,
    CallObserver,
    Transport,
    warm_up,
)

__all__ = [  # what callers import from here, wherever it is defined
    "API_VERSIONS",
    "DEFAULT_DEADLINE",
    "DEFAULT_ENDPOINT",
    "DEFAULT_MAX_LISTING",
    "DEFAULT_MAX_LISTING_BYTES",
    "DEFAULT_MAX_REPLY_BYTES",
    "PAGE_CONCURRENCY",
    "CallGuard",
    "CallObserver",
    "CvmClient",
    "DryRunBought",
    "TagFailure",
    "warm_up",
]

DEFAULT_ENDPOINT = "https://cvm.tencentcloudapi.com"


class DryRunBought(CloudNetworkError):
    """`check_purchase` got instance ids back: the endpoint bought despite DryRun. A caller must
    not repeat the check on its own (each repeat may buy again)."""


class TagFailure(CloudError):
    """TagResources or UnTagResources answered, but did not change every resource: the tag
    service reports such partial failures in the answer's `FailedResources`, not as an error.

    `failed` maps each resource that was not changed to its (code, cleaned message); every other
    resource of the call was changed. `code` and `category` are those of the first failure, so a
    caller that only looks at the code still sees why.
    """

    def __init__(self, action: str, failed: Mapping[str, tuple[str, str]], request_id: str | None) -> None:
        self.failed = dict(failed)
        first_code = next(iter(self.failed.values()))[0]
        summary = "; ".join(f"{resource}: {code} {message}".rstrip() for resource, (code, message)
                            in list(self.failed.items())[:3])
        more = f" (and {len(self.failed) - 3} more)" if len(self.failed) > 3 else ""
        super().__init__(first_code, f"{len(self.failed)} resource(s) not changed: {summary}{more}",
                         action=action, request_id=request_id)


class CvmClient:
    """One account (key pair) in one region, over one HTTP connection pool to one endpoint.

    Safe to share between many pools and tasks: rate limits are process-wide, not per client.
    """

    def __init__(
        self,
        credentials: Credentials | CredentialProvider | None,
        region: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 10.0,
        rate_limits: dict[str, float] | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: CallObserver | None = None,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiterRegistry | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_listing: int = DEFAULT_MAX_LISTING,
        max_listing_bytes: int = DEFAULT_MAX_LISTING_BYTES,
        deadline: float = DEFAULT_DEADLINE,
        service: str = SERVICE,
    ) -> None:
        """`credentials`: a key pair (`Credentials`), or a `CredentialProvider` asked before each
        attempt (temporary credentials renewed as they near expiry), or None for an unsigned STS
        client (`AssumeRoleWithWebIdentity` only, which takes no signature).

        `service` is `cvm`, or `sts` for `get_caller_identity`, or `tag` for `tag_resources` and
        `untag_resources` (each its own API version and signing scope; Tencent serves each at its
        own host, see `api.names.service_endpoint`).
        `clock` gives request timestamps; `limiter`, `sleep` (backoff) and `rng` (jitter)
        exist so tests can replace time and chance. `transport` is httpx's (tests hand in a
        mock one); `observer` is told each attempt's action, seconds and error code (metrics).

        `timeout` bounds each network operation (connect, each read); `deadline` bounds a whole
        exchange, so a server that drips one byte at a time cannot hold a call forever.
        `max_reply_bytes` bounds one reply (decompressed); `max_listing` and `max_listing_bytes`
        bound the instances, and the characters they retain, of one DescribeInstances listing.
        """
        if not region:
            raise ValueError("region is required (it is the X-TC-Region header)")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if min(max_reply_bytes, max_listing, max_listing_bytes) < 1 or deadline <= 0:
            raise ValueError("reply, listing and deadline bounds must be positive")
        url = httpx.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host or url.userinfo:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        if url.path not in ("", "/") or url.query:
            raise ValueError(f"endpoint must not carry a path or query (CVM uses /): {endpoint!r}")
        if service not in API_VERSIONS:
            raise ValueError(f"service must be one of {', '.join(API_VERSIONS)}, got {service!r}")
        if credentials is None and service != "sts":
            raise ValueError("unsigned calls (credentials=None) are for STS only")
        self._region = region
        self._transport = Transport(
            credentials,
            service=service,
            region=region,
            url=url,
            timeout=timeout,
            rate_limits=rate_limits or {},
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            http_transport=transport,
            observer=observer,
            clock=clock,
            limiter=limiter,
            sleep=sleep,
            rng=rng,
            max_reply_bytes=max_reply_bytes,
            deadline=deadline,
        )
        self._listing = Listing(
            self._transport, max_listing=max_listing, max_listing_bytes=max_listing_bytes
        )

    def __repr__(self) -> str:
        secret_id = self._transport.static_secret_id
        who = f"secret_id={secret_id!r}" if secret_id is not None else f"source={self.source!r}"
        return f"CvmClient(endpoint={str(self._transport.url)!r}, region={self._region!r}, {who})"

    @property
    def source(self) -> str:
        """Where the client's credentials come from (the provider's `source`), for messages."""
        return self._transport.source

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> CvmClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ generic call

    async def call(
        self, action: str, params: Mapping[str, Any], *, guard: CallGuard | None = None
    ) -> dict[str, Any]:
        """Run one API action and return its `Response` object; raise CloudError on failure.

        With a `guard`, every attempt (retries included) is checked right before it is signed and
        bounded by the time the guard has left: a call that waited in the rate limiter past its
        caller's term is never sent. See `transport.Transport.call` for what is retried."""
        return await self._transport.call(action, params, guard=guard)

    # ------------------------------------------------------------------ typed actions

    async def run_instances(
        self, request: RunInstancesRequest, *, guard: CallGuard | None = None
    ) -> list[str]:
        """Buy `request.count` one-time spot instances at most at `max_price`, or pay-as-you-go
        ones with `charge_type=POSTPAID_BY_HOUR`; returns their ids (they start PENDING).

        `client_token` makes the call idempotent, so a replay after a crash or a lost answer
        returns the ids of the first call instead of buying twice. With `dry_run` the API only
        validates (stock included) and the result is `[]`; a failed check raises as usual.
        """
        params = wire.run_instances_params(request)
        dry_run, count = request.dry_run, request.count
        try:
            response = await self.call("RunInstances", params, guard=guard)
        except CloudError as err:
            # Tencent's documentation does not say how a passed dry run answers: success or DryRunOperation.
            if dry_run and err.code == DRY_RUN_PASSED:
                return []
            raise
        try:
            return wire.parse_instance_ids(response, count)
        except ValueError as exc:  # wire's own words, no server data in them
            raise wire.invalid_response("RunInstances", str(exc)) from None

    async def tag_resources(
        self, resources: Sequence[str], tags: Mapping[str, str], *, guard: CallGuard | None = None
    ) -> None:
        """Set `tags` on every resource (tag service TagResources; a client made with service
        `tag`). `resources` are six-segment names (`wire.instance_resource`); a key already on a
        resource takes the new value, other keys are left alone.

        At most 10 resources and 10 tags per call, keys of 1..127 and values of 1..255
        characters: ValueError beyond, before anything is sent (the caller batches, knowing which
        resources go together). Setting the same tags again changes nothing, so the call is
        retried like a read. Raises `TagFailure` when the answer lists resources it did not
        change (the others were changed). The tag service's filters of DescribeInstances may see
        the change late (its index is eventually consistent); a look-up by id shows it. A name
        that names nothing (an instance already gone) may well be answered as a success that
        changed nothing, as users report the real service does: success is no proof the
        instance exists.
        """
        params = wire.tag_resources_params(resources, tags)
        await self._tag_call("TagResources", params, guard)

    async def untag_resources(
        self, resources: Sequence[str], keys: Sequence[str], *, guard: CallGuard | None = None
    ) -> None:
        """Remove the tag `keys` from every resource (tag service UnTagResources). A key a
        resource does not carry is no error in the simulator (production does not document it).
        Bounded and checked like `tag_resources`."""
        params = wire.untag_resources_params(resources, keys)
        await self._tag_call("UnTagResources", params, guard)

    async def _tag_call(self, action: str, params: dict[str, Any], guard: CallGuard | None) -> None:
        if self._transport.service != TAG_SERVICE:
            raise ValueError(f"{action} is a tag service action: make the client with service='tag'")
        response = await self.call(action, params, guard=guard)
        request_id = valid_request_id(response.get("RequestId"))
        try:
            failed = wire.parse_failed_resources(response, params["ResourceList"])
        except ValueError as exc:  # wire's own words, no server data in them
            raise wire.invalid_response(action, str(exc)) from None
        if failed:
            clean = self._transport.clean
            raise TagFailure(
                action,
                {resource: (code, clean(message)) for resource, (code, message) in failed.items()},
                request_id,
            )

    async def get_caller_identity(self) -> CallerIdentity:
        """Who the key pair belongs to (STS `GetCallerIdentity`; a client made with service `sts`)."""
        if self._transport.service != "sts":
            raise ValueError("GetCallerIdentity is an STS action: make the client with service='sts'")
        response = await self.call("GetCallerIdentity", {})
        try:
            return wire.parse_caller_identity(response)
        except ValueError as exc:  # wire's own words, no server data in them
            raise CloudNetworkError(SERVER_NETWORK_ERROR, str(exc), action="GetCallerIdentity",
                                    request_id=valid_request_id(response.get("RequestId"))) from None

    async def describe_instances(
        self,
        *,
        instance_ids: Sequence[str] | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Instance]:
        """Every instance matching the ids or the filters (not both), all pages read.

        Filters are ANDed, values within one filter ORed (at most 10 filters, 5 values each).
        With neither argument, every instance in the region. An empty id list matches nothing.
        Pages are read by offset, so an instance created or deleted meanwhile may shift the
        pages; duplicates are dropped, a listing that does not hold together is read again (see
        `listing.Listing`), but such an instance may be missed until the next call.
        """
        return await self._listing.instances(instance_ids=instance_ids, filters=filters)

    async def describe_by_tag(self, key: str, value: str) -> list[Instance]:
        """Every instance carrying tag `key` = `value` (filter `tag:<key>`)."""
        return await self.describe_instances(filters={f"tag:{key}": [value]})

    async def terminate_instances(
        self, instance_ids: Sequence[str], *, guard: CallGuard | None = None
    ) -> None:
        """Release instances, in batches of 100; instances already gone count as released.

        TerminateInstances refuses a whole batch when one id is already terminated, terminating
        or unknown, or mixes charge types: the batch is then described again and what is still
        there terminated (see `listing.Listing.terminate`), until every id is released or proven
        gone.
        """
        await self._listing.terminate(instance_ids, guard)

    async def describe_spot_offers(
        self, *, zones: Sequence[str], instance_types: Sequence[str]
    ) -> list[SpotOffer]:
        """The spot market for every requested zone x instance type the API reports (the SPOTPAID
        items of `describe_offers`). Pools the API does not list are absent."""
        offers = await self.describe_offers(zones=zones, instance_types=instance_types, charge_types=(SPOTPAID,))
        return [offer.as_spot() for offer in offers]

    # ------------------------------------------- on-demand, stock, quota and price (issue 11)

    async def check_purchase(
        self, request: RunInstancesRequest, *, guard: CallGuard | None = None
    ) -> None:
        """RunInstances with DryRun: returns when `request` would pass now, raises the CloudError
        the purchase would get otherwise (a bad image, subnet or type, sold out, quota). Nothing
        is bought.

        The request is sent as given (the same one a purchase would send) but with `dry_run` set
        and a fresh `dryrun-<uuid>` ClientToken, so the check may be retried like any idempotent
        purchase and never collides with a real purchase's token. CVM checks stock too, so a pass
        says nothing about later. An answer that carries instance ids means the server bought
        despite DryRun: that is raised (`DryRunBought`), never ignored. `guard`: as for a purchase
        (a server that bought despite DryRun would have bought outside the caller's term).
        """
        if request.charge_type == SPOTPAID and request.max_price is None:
            raise ValueError("a spot purchase check needs max_price (its bid)")
        ids = await self.run_instances(
            dataclasses.replace(request, dry_run=True, client_token=f"dryrun-{uuid.uuid4()}"),
            guard=guard,
        )
        if ids:
            raise DryRunBought(
                SERVER_NETWORK_ERROR,
                f"RunInstances with DryRun answered {len(ids)} instance ids: "
                f"{', '.join(ids[:10])}",
                action="RunInstances",
            )

    async def describe_offers(
        self,
        *,
        zones: Sequence[str],
        instance_types: Sequence[str],
        charge_types: Sequence[str] = CHARGE_TYPES,
    ) -> list[Offer]:
        """Every requested zone x instance type x charge type the API reports, with its price,
        list price, sold-out flag and StatusCategory (DescribeZoneInstanceConfigInfos).

        Values are sent at most 5 per filter (the older, stricter SDK limit; the newer one says
        100), so many zones or types take several calls. Items of charge types
        or pools that were not asked for are dropped; pools the API does not list are absent.
        """
        for charge in charge_types:
            if charge not in CHARGE_TYPES:
                raise ValueError(
                    f"charge_types: {charge!r} is not one of {', '.join(CHARGE_TYPES)}"
                )
        wanted_charges = wire.unique(charge_types)
        offers: dict[tuple[str, str, str], Offer] = {}
        for zone_batch in wire.chunks(wire.unique(zones), wire.MAX_FILTER_VALUES):
            for type_batch in wire.chunks(wire.unique(instance_types), wire.MAX_FILTER_VALUES):
                filters = wire.filters_param(
                    {
                        "zone": zone_batch,
                        "instance-type": type_batch,
                        "instance-charge-type": wanted_charges,
                    }
                )
                response = await self.call("DescribeZoneInstanceConfigInfos", {"Filters": filters})
                try:
                    batch_offers = wire.parse_offers(response)
                except ValueError as exc:  # wire's own words, no server data in them
                    raise wire.invalid_response("DescribeZoneInstanceConfigInfos", str(exc)) from None
                for offer in batch_offers:
                    if (
                        offer.zone in zone_batch
                        and offer.instance_type in type_batch
                        and offer.charge_type in wanted_charges
                    ):
                        offers[(offer.zone, offer.instance_type, offer.charge_type)] = offer
        return list(offers.values())

    async def describe_account_quota(self, *, zones: Sequence[str] = ()) -> AccountQuota:
        """The spot and pay-as-you-go vCPU quotas of the region, by zone (DescribeAccountQuota).

        With `zones`, only those (batched 5 per call); without, every zone the API reports.
        """
        wanted = wire.unique(zones)
        batches: list[list[str]] = list(wire.chunks(wanted, wire.MAX_FILTER_VALUES)) or [[]]
        merged: AccountQuota | None = None
        for batch in batches:
            response = await self.call(
                "DescribeAccountQuota", {"Filters": wire.account_quota_filters(batch)}
            )
            try:
                quota = wire.parse_account_quota(response)
            except ValueError as exc:  # wire's own words, no server data in them
                raise wire.invalid_response("DescribeAccountQuota", str(exc)) from None
            if batch:  # a server that ignores the filter must not widen the answer
                quota = AccountQuota(
                    region=quota.region,
                    spot={z: q for z, q in quota.spot.items() if z in batch},
                    on_demand={z: q for z, q in quota.on_demand.items() if z in batch},
                    app_id=quota.app_id,
                )
            merged = quota if merged is None else AccountQuota(
                region=merged.region or quota.region,
                spot={**merged.spot, **quota.spot},
                on_demand={**merged.on_demand, **quota.on_demand},
                app_id=merged.app_id if merged.app_id is not None else quota.app_id,
            )
        assert merged is not None  # at least one batch always runs
        return merged

    async def inquiry_price(
        self,
        *,
        zone: str,
        instance_type: str,
        image_id: str,
        count: int = 1,
        charge_type: str = SPOTPAID,
        max_price: Decimal | str | None = None,
    ) -> PriceQuote:
        """The hourly price of buying `count` instances (InquiryPriceRunInstances); raises the
        refusal the purchase itself would get (sold out, bid too low, quota). For spot, the bid
        is optional: without one the API prices at the market."""
        params = wire.inquiry_price_params(
            zone=zone,
            instance_type=instance_type,
            image_id=image_id,
            count=count,
            charge_type=charge_type,
            max_price=max_price,
        )
        response = await self.call("InquiryPriceRunInstances", params)
        try:
            return wire.parse_price_quote(response, charge_type)
        except ValueError as exc:  # wire's own words, no server data in them
            raise wire.invalid_response("InquiryPriceRunInstances", str(exc)) from None
