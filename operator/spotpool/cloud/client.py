"""The async CVM API client: signed requests, process-wide rate limits, retries, typed results.

Behaviour that the operator relies on, and why:

- Bodies are `json.dumps` with Python defaults, exactly as the official SDK sends them, and are
  signed over the very bytes sent; the server hashes what it receives, so nothing re-serialises.
- Only THROTTLED and TRANSIENT failures are retried here (full-jitter exponential backoff, capped).
  Capacity, price and quota refusals go straight back to the planner, which knows about other
  pools. A RunInstances without a ClientToken is never retried: a lost answer may still have
  bought instances, and only the token makes a repeat safe.
- `AuthFailure.SignatureExpire` gets one more attempt with a fresh timestamp (the first may have
  waited long in the rate limiter); a wrong clock still fails, on the second try.
- The secret key is only ever handed to `signing.sign`: it is not logged, not in any repr, and
  an echo of it (or of the session token) in a server message is redacted before an exception
  carries it. Request headers and bodies are never logged (UserData may hold secrets too).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import Any

import httpx

from spotpool import __version__

from . import wire
from .errors import (
    CLIENT_NETWORK_ERROR,
    DRY_RUN_PASSED,
    SERVER_NETWORK_ERROR,
    SIGNATURE_EXPIRED,
    CloudError,
    CloudNetworkError,
)
from .models import TERMINATING, Credentials, Instance, SpotOffer
from .ratelimit import RateLimiterRegistry, Sleep, default_registry
from .models import CHARGE_TYPES, SPOTPAID, AccountQuota, Offer, PriceQuote  # issue 11
from .signing import sign

log = logging.getLogger(__name__)

API_VERSION = "2017-03-12"
SERVICE = "cvm"
CONTENT_TYPE = "application/json"
REQUEST_CLIENT = f"spotpool/{__version__}"
DEFAULT_ENDPOINT = "https://cvm.tencentcloudapi.com"

Observer = Callable[[str, float, str | None], None]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context (the CA bundle, loaded once) for every client of the process: httpx would
    otherwise build one per client, 20 to 40 ms of CPU each, on the event loop."""
    return httpx.create_ssl_context()


def warm_up() -> None:
    """Do at start what the first CvmClient and its first request would otherwise do on the event
    loop, on the way to an environment's first purchase: load the CA bundle, and import what httpx
    imports lazily on its first request."""
    tls_context()
    import anyio._backends._asyncio  # noqa: F401
    import h11  # noqa: F401
    import httpcore  # noqa: F401


# Instances in these states need no TerminateInstances (absent ones neither).
_GONE_STATES = frozenset({TERMINATING})
_LISTING_ATTEMPTS = 3  # reads of a listing whose set keeps changing under it
_SNIPPET = 300  # characters of an unexpected response body kept in an error message


class CvmClient:
    """One account (key pair) in one region, over one HTTP connection pool to one endpoint.

    Safe to share between many pools and tasks: rate limits are process-wide, not per client.
    """

    def __init__(
        self,
        credentials: Credentials,
        region: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = 10.0,
        rate_limits: dict[str, float] | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        limiter: RateLimiterRegistry | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`clock` gives request timestamps; `limiter`, `sleep` (backoff) and `rng` (jitter)
        exist so tests can replace time and chance."""
        if not region:
            raise ValueError("region is required (it is the X-TC-Region header)")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        url = httpx.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host or url.userinfo:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        if url.path not in ("", "/") or url.query:
            raise ValueError(f"endpoint must not carry a path or query (CVM uses /): {endpoint!r}")
        self._credentials = credentials
        self._region = region
        # Signed verbatim: host plus the port when it is not the scheme's default.
        self._host = url.netloc.decode("ascii")
        self._url = url.copy_with(path="/")
        self._rate_limits = dict(rate_limits or {})
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._observer = observer
        self._clock = clock
        self._limiter = limiter if limiter is not None else default_registry()
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout, verify=tls_context())

    def __repr__(self) -> str:
        return (
            f"CvmClient(endpoint={str(self._url)!r}, region={self._region!r}, "
            f"secret_id={self._credentials.secret_id!r})"
        )

    async def close(self) -> None:
        await self._http.aclose()

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

    async def call(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run one API action and return its `Response` object; raise CloudError on failure."""
        # The SDK's serialisation: default ", " / ": " separators, non-ASCII as \uXXXX escapes.
        body = json.dumps(params).encode("ascii")
        may_retry = action != "RunInstances" or bool(params.get("ClientToken"))
        fresh_timestamp_tried = False
        attempt = 0
        while True:
            attempt += 1
            await self._limiter.acquire(
                self._host, self._credentials.secret_id, action, self._rate_limits
            )
            try:
                return await self._attempt(action, body)
            except CloudError as err:
                if attempt >= self._max_attempts:
                    raise
                if err.code == SIGNATURE_EXPIRED and not fresh_timestamp_tried:
                    fresh_timestamp_tried = True
                    log.debug("CVM %s: signature expired, retrying with a fresh timestamp", action)
                    continue
                if not (err.retryable and may_retry):
                    raise
                delay = self._backoff(attempt)
                log.debug("CVM %s attempt %d failed with %s; retrying in %.2fs",
                          action, attempt, err.code, delay)
                await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform over [0, min(cap, base * 2**(attempt-1))]."""
        ceiling = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0.0, ceiling)

    async def _attempt(self, action: str, body: bytes) -> dict[str, Any]:
        headers = self._headers(action, body, int(self._clock()))
        started = time.monotonic()
        try:
            try:
                response = await self._http.post(self._url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise CloudNetworkError(
                    CLIENT_NETWORK_ERROR,
                    self._redact(f"{type(exc).__name__}: {exc}"),
                    action=action,
                ) from None  # the httpx exception holds the request, headers and token included
            result = self._parse(action, response)
        except CloudError as err:
            self._observe(action, time.monotonic() - started, err.code)
            raise
        self._observe(action, time.monotonic() - started, None)
        return result

    def _headers(self, action: str, body: bytes, timestamp: int) -> dict[str, str]:
        """Headers in the order the official SDK emits them; only content-type;host are signed."""
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Host": self._host,
            "X-TC-Action": action,
            "X-TC-RequestClient": REQUEST_CLIENT,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Version": API_VERSION,
            "X-TC-Region": self._region,
        }
        if self._credentials.token:
            headers["X-TC-Token"] = self._credentials.token
        headers["Authorization"] = sign(
            secret_id=self._credentials.secret_id,
            secret_key=self._credentials.secret_key,
            service=SERVICE,
            host=self._host,
            content_type=CONTENT_TYPE,
            payload=body,
            timestamp=timestamp,
        ).authorization
        return headers

    def _parse(self, action: str, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR,
                self._redact(f"HTTP {response.status_code}: {response.text[:_SNIPPET]}"),
                action=action,
                http_status=response.status_code,
            )
        try:
            payload = response.json()
        except ValueError:
            payload = None
        envelope = payload.get("Response") if isinstance(payload, dict) else None
        if not isinstance(envelope, dict):
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR,
                self._redact(f"not a CVM response: {response.text[:_SNIPPET]}"),
                action=action,
                http_status=200,
            )
        request_id = envelope.get("RequestId")
        error = envelope.get("Error")
        if error is None:
            return envelope
        if not isinstance(error, dict) or not error.get("Code"):
            raise CloudNetworkError(
                SERVER_NETWORK_ERROR,
                self._redact(f"malformed Error object: {str(error)[:_SNIPPET]}"),
                action=action,
                request_id=request_id,
                http_status=200,
            )
        raise CloudError(
            str(error["Code"]),
            self._redact(str(error.get("Message") or "")),
            action=action,
            request_id=request_id,
        )

    def _redact(self, text: str) -> str:
        for secret in (self._credentials.secret_key, self._credentials.token):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _observe(self, action: str, seconds: float, error_code: str | None) -> None:
        log.debug("CVM %s -> %s in %.3fs", action, error_code or "OK", seconds)
        if self._observer is None:
            return
        try:
            self._observer(action, seconds, error_code)
        except Exception:  # a metrics bug must not fail a cloud call
            log.exception("CVM client observer failed")

    # ------------------------------------------------------------------ typed actions

    async def run_instances(
        self,
        *,
        zone: str,
        instance_type: str,
        image_id: str,
        count: int,
        max_price: Decimal | str | None = None,
        client_token: str,
        tags: dict[str, str],
        instance_name: str | None = None,
        vpc_id: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: Sequence[str] | None = None,
        system_disk_type: str | None = None,
        system_disk_size_gib: int | None = None,
        key_ids: Sequence[str] | None = None,
        user_data: str | None = None,
        dry_run: bool = False,
        charge_type: str = SPOTPAID,
    ) -> list[str]:
        """Buy `count` one-time spot instances at most at `max_price`, or pay-as-you-go ones
        with `charge_type=POSTPAID_BY_HOUR` (no `max_price` then); returns their ids (they start
        PENDING). Without `charge_type` the request is byte for byte the spot purchase it was.

        `client_token` makes the call idempotent, so a replay after a crash or a lost answer
        returns the ids of the first call instead of buying twice. With `dry_run` the API only
        validates (stock included) and the result is `[]`; a failed check raises as usual.
        """
        params = wire.run_instances_params(
            zone=zone,
            instance_type=instance_type,
            image_id=image_id,
            count=count,
            max_price=max_price,
            client_token=client_token,
            tags=tags,
            instance_name=instance_name,
            vpc_id=vpc_id,
            subnet_id=subnet_id,
            security_group_ids=security_group_ids,
            system_disk_type=system_disk_type,
            system_disk_size_gib=system_disk_size_gib,
            key_ids=key_ids,
            user_data=user_data,
            dry_run=dry_run,
            charge_type=charge_type,
        )
        try:
            response = await self.call("RunInstances", params)
        except CloudError as err:
            # The reference cannot say how a passed dry run answers: success or DryRunOperation.
            if dry_run and err.code == DRY_RUN_PASSED:
                return []
            raise
        return [str(instance_id) for instance_id in response.get("InstanceIdSet") or []]

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
        pages; duplicates are dropped, but such an instance may be missed until the next call.
        """
        if instance_ids is not None and filters is not None:
            raise ValueError("instance_ids and filters are mutually exclusive in DescribeInstances")
        if instance_ids is not None:
            found: list[Instance] = []
            for batch in wire.chunks(wire.unique(instance_ids), wire.MAX_IDS_PER_CALL):
                found += await self._describe_pages({"InstanceIds": batch})
            return found
        base: dict[str, Any] = {}
        if filters:
            base["Filters"] = wire.filters_param(filters)
        return await self._describe_pages(base)

    async def describe_by_tag(self, key: str, value: str) -> list[Instance]:
        """Every instance carrying tag `key` = `value` (filter `tag:<key>`)."""
        return await self.describe_instances(filters={f"tag:{key}": [value]})

    async def _describe_pages(self, base: dict[str, Any]) -> list[Instance]:
        """Every page of a listing, read again when the set changed while it was being read.

        Paging is by offset: an instance that disappears between two page reads shifts a later one
        onto a page already read, and the listing misses it. A caller that counts instances would
        then buy a replacement for one that still runs. Pages that disagree on TotalCount reveal
        the change; a fresh read is then the better view (the freshest is kept if the set never
        holds still).
        """
        for _ in range(_LISTING_ATTEMPTS):
            found, totals = await self._read_listing(base)
            if len(totals) == 1:
                break
        return found

    async def _read_listing(self, base: dict[str, Any]) -> tuple[list[Instance], set[int]]:
        """The first page alone (it gives TotalCount and the page size), then the rest concurrently
        (the rate limiter spaces them), then on one by one if the set grew meanwhile. Returns the
        instances and every TotalCount the pages reported."""
        found: dict[str, Instance] = {}
        totals: set[int] = set()

        async def read(offset: int) -> tuple[int, int]:
            response = await self.call(
                "DescribeInstances", {**base, "Offset": offset, "Limit": wire.PAGE_LIMIT}
            )
            page = response.get("InstanceSet") or []
            for raw in page:
                instance = wire.parse_instance(raw)
                found[instance.instance_id] = instance
            total = int(response.get("TotalCount") or 0)
            totals.add(total)
            return len(page), total

        size, total = await read(0)
        # TotalCount, not a short page, ends the listing: a server may cap pages below Limit.
        if not size or size >= total:
            return list(found.values()), totals
        offsets = range(size, total, size)
        pages = await asyncio.gather(*(read(offset) for offset in offsets))
        offset = offsets[-1] + pages[-1][0]
        total = max(t for _, t in pages)
        while offset < total:
            size, total = await read(offset)
            if not size:
                break
            offset += size
        return list(found.values()), totals

    async def terminate_instances(self, instance_ids: Sequence[str]) -> None:
        """Release instances, in batches of 100; instances already gone count as released.

        TerminateInstances refuses a whole batch when one id is already terminated, terminating
        or unknown. Such a refusal is not taken as "the batch is done": the batch's ids are
        described again and those still there are terminated, until every id is released or
        proven gone. Each round strictly shrinks the set (down to one id per call, where the
        refusal itself proves the id gone), so this always ends.
        """
        for batch in wire.chunks(wire.unique(instance_ids), wire.MAX_IDS_PER_CALL):
            await self._terminate_batch(batch)

    async def _terminate_batch(self, ids: list[str]) -> None:
        try:
            await self.call("TerminateInstances", {"InstanceIds": ids})
            return
        except CloudError as err:
            if not err.already_gone:
                raise
            if len(ids) == 1:
                return
            log.debug("TerminateInstances refused a batch of %d (%s); re-describing it",
                      len(ids), err.code)
        survivors = [
            instance.instance_id
            for instance in await self.describe_instances(instance_ids=ids)
            if instance.state not in _GONE_STATES
        ]
        if len(survivors) < len(ids):
            if survivors:
                await self._terminate_batch(survivors)
            return
        # DescribeInstances still shows every id alive: find the gone one(s) one id at a time.
        for instance_id in ids:
            await self._terminate_batch([instance_id])

    async def describe_spot_offers(
        self, *, zones: Sequence[str], instance_types: Sequence[str]
    ) -> list[SpotOffer]:
        """The spot market for every requested zone x instance type the API reports.

        Values are sent at most 5 per filter (the older, stricter SDK limit; the newer one says
        100), so many zones or types take several calls. Pools the API does not list are absent.
        """
        wanted_zones, wanted_types = wire.unique(zones), wire.unique(instance_types)
        offers: dict[tuple[str, str], SpotOffer] = {}
        for zone_batch in wire.chunks(wanted_zones, wire.MAX_FILTER_VALUES):
            for type_batch in wire.chunks(wanted_types, wire.MAX_FILTER_VALUES):
                filters = wire.filters_param({
                    "zone": zone_batch,
                    "instance-type": type_batch,
                    "instance-charge-type": [wire.SPOTPAID],
                })
                response = await self.call("DescribeZoneInstanceConfigInfos", {"Filters": filters})
                for raw in response.get("InstanceTypeQuotaSet") or []:
                    if raw.get("InstanceChargeType", wire.SPOTPAID) != wire.SPOTPAID:
                        continue
                    offer = wire.parse_offer(raw)
                    if offer.zone in zone_batch and offer.instance_type in type_batch:
                        offers[(offer.zone, offer.instance_type)] = offer
        return list(offers.values())

    # ------------------------------------------- on-demand, stock, quota and price (issue 11)

    async def check_purchase(
        self,
        *,
        zone: str,
        instance_type: str,
        image_id: str,
        count: int = 1,
        charge_type: str = SPOTPAID,
        max_price: Decimal | str | None = None,
        tags: dict[str, str] | None = None,
        vpc_id: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: Sequence[str] | None = None,
        system_disk_type: str | None = None,
        system_disk_size_gib: int | None = None,
        key_ids: Sequence[str] | None = None,
    ) -> None:
        """RunInstances with DryRun: returns when the purchase would pass now, raises the
        CloudError the purchase would get otherwise (a bad image, subnet or type, sold out,
        quota). Nothing is bought.

        A fresh ClientToken is sent so the check may be retried like any idempotent purchase;
        CVM checks stock too, so a pass says nothing about later. An answer that carries instance
        ids means the server bought despite DryRun: that is raised, never ignored.
        """
        if charge_type == SPOTPAID and max_price is None:
            raise ValueError("a spot purchase check needs max_price (its bid)")
        ids = await self.run_instances(
            zone=zone,
            instance_type=instance_type,
            image_id=image_id,
            count=count,
            max_price=max_price,
            client_token=f"dryrun-{uuid.uuid4()}",
            tags=dict(tags or {}),
            vpc_id=vpc_id,
            subnet_id=subnet_id,
            security_group_ids=security_group_ids,
            system_disk_type=system_disk_type,
            system_disk_size_gib=system_disk_size_gib,
            key_ids=key_ids,
            dry_run=True,
            charge_type=charge_type,
        )
        if ids:
            raise CloudNetworkError(
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

        Batched like describe_spot_offers (at most 5 values per filter). Items of charge types
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
                items = response.get("InstanceTypeQuotaSet") or []
                if not isinstance(items, list):
                    raise self._malformed(
                        "DescribeZoneInstanceConfigInfos", "InstanceTypeQuotaSet is not a list"
                    )
                for raw in items:
                    try:
                        offer = wire.parse_config_item(raw)
                    except ValueError as exc:  # wire's own words, no server data in them
                        raise self._malformed("DescribeZoneInstanceConfigInfos", str(exc)) from None
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
                raise self._malformed("DescribeAccountQuota", str(exc)) from None
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
            raise self._malformed("InquiryPriceRunInstances", str(exc)) from None

    @staticmethod
    def _malformed(action: str, message: str) -> CloudNetworkError:
        """A 200 answer that breaks the documented shape: a server fault, like a non-JSON body."""
        return CloudNetworkError(
            SERVER_NETWORK_ERROR, f"malformed {action} answer: {message}", action=action
        )
