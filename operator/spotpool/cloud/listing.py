"""Where one request of the client becomes many calls: DescribeInstances across pages and id
batches, and TerminateInstances across batches that the server may refuse whole.

Both are about how calls are grouped, not about what an action means, and both must hold up
against a set that changes while it is read (instances come and go between two pages, a batch
names an instance that terminated meanwhile). Kept apart from the client's actions so the paging
rules, the listing budgets and the re-reads are in one place, each call going through the
transport like any other.

A listing is bounded whatever the server claims: at most `max_listing` instances holding at most
`max_listing_bytes` characters, read in at most `max_listing / PAGE_LIMIT` + 10 pages, at most
PAGE_CONCURRENCY of them at once (the rate limiter spaces them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from . import wire
from .errors import CloudError
from .models import TERMINATING, Instance
from .transport import CallGuard, Transport

log = logging.getLogger(__name__)

DEFAULT_MAX_LISTING = 50_000  # instances in one listing
DEFAULT_MAX_LISTING_BYTES = 64 * 1024 * 1024  # characters one listing may retain, all instances
PAGE_CONCURRENCY = 4  # DescribeInstances pages read at once, whatever TotalCount says
_LISTING_ATTEMPTS = 3  # reads of a listing whose set keeps changing under it
_EXTRA_PAGES = 10  # page reads allowed beyond what max_listing needs at full pages
_INSTANCE_OVERHEAD = 512  # bytes charged per instance against the listing budget

# Instances in these states need no TerminateInstances (absent ones neither).
_GONE_STATES = frozenset({TERMINATING})
# TerminateInstances' refusals of a batch mixing charge types (spot and pay-as-you-go): the batch is
# split by charge type and sent again.
_MIXED_CHARGE_CODES = frozenset(
    {"UnsupportedOperation.InstanceMixedPricingModel",
     "InvalidParameterValue.InstanceNotSupportedMixPricingModel"}
)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (possibly nested) group, for callers that expect CloudError."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class Listing:
    """DescribeInstances listings within their budgets, and the batched releases that re-read
    them."""

    def __init__(self, transport: Transport, *, max_listing: int, max_listing_bytes: int) -> None:
        self._transport = transport
        self._max_listing = max_listing
        self._max_listing_bytes = max_listing_bytes

    # ------------------------------------------------------------------ DescribeInstances

    async def instances(
        self,
        *,
        instance_ids: Sequence[str] | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Instance]:
        """`CvmClient.describe_instances`: every instance matching the ids (read 100 at a time)
        or the filters (not both), all pages read."""
        if instance_ids is not None and filters is not None:
            raise ValueError("instance_ids and filters are mutually exclusive in DescribeInstances")
        if instance_ids is not None:
            found: list[Instance] = []
            for batch in wire.chunks(wire.unique(instance_ids), wire.MAX_IDS_PER_CALL):
                # Asked for these ids, a server that lists more is lying.
                found += await self._describe_pages({"InstanceIds": batch}, len(batch))
            return found
        base: dict[str, Any] = {}
        if filters:
            base["Filters"] = wire.filters_param(filters)
        return await self._describe_pages(base)

    async def _describe_pages(
        self, base: dict[str, Any], max_instances: int | None = None
    ) -> list[Instance]:
        """Every page of a listing, read again when it does not hold together.

        Paging is by offset: an instance that disappears between two page reads shifts a later one
        onto a page already read, and the listing misses it. A caller that counts instances would
        then buy a replacement for one that still runs. A listing is distrusted, and read again,
        when its pages disagree on TotalCount, when one instance shows on two pages, or when it
        holds fewer instances than TotalCount says (the freshest read is kept if the set never
        holds still). Callers still never act on an absence alone: they look up by id what they
        knew and the listing lacks.
        """
        limit = self._max_listing
        if max_instances is not None:
            limit = min(max_instances, limit)
        for _ in range(_LISTING_ATTEMPTS):
            found, totals, repeated = await self._read_listing(base, limit)
            if len(totals) == 1 and not repeated and len(found) >= min(totals):
                break
        return found

    async def _read_listing(
        self, base: dict[str, Any], max_instances: int
    ) -> tuple[list[Instance], set[int], bool]:
        """The first page alone (it gives TotalCount and the page size), then the rest by
        PAGE_CONCURRENCY readers (the rate limiter spaces them), then on one by one if the set grew
        meanwhile. Returns the instances, every TotalCount the pages reported, and whether an
        instance showed on more than one page.

        Whatever the server claims, a listing holds at most `max_instances` instances and
        `max_listing_bytes` characters, and takes at most `max_instances / PAGE_LIMIT` + 10 page
        reads: a TotalCount beyond that, or pages too small to reach it in that many reads, is
        refused before they are read.
        """
        found: dict[str, Instance] = {}
        totals: set[int] = set()
        max_pages = -(-max_instances // wire.PAGE_LIMIT) + _EXTRA_PAGES
        pages_read = 0
        retained = 0
        repeated = False

        async def read(offset: int) -> tuple[int, int]:
            nonlocal pages_read, retained, repeated
            pages_read += 1
            if pages_read > max_pages:
                raise wire.invalid_response("DescribeInstances",
                                            f"the listing needs more than {max_pages} pages")
            response = await self._transport.call(
                "DescribeInstances", {**base, "Offset": offset, "Limit": wire.PAGE_LIMIT}
            )
            try:
                page, total = wire.parse_listing_page(response, max_instances)
            except ValueError as exc:  # messages of wire's own making: they quote no server data
                raise wire.invalid_response("DescribeInstances", str(exc)) from None
            for instance in page:
                if instance.instance_id not in found:
                    retained += _INSTANCE_OVERHEAD + wire.retained_size(instance)
                else:
                    repeated = True
                found[instance.instance_id] = instance
            if len(found) > max_instances or retained > self._max_listing_bytes:
                raise wire.invalid_response("DescribeInstances",
                                            f"the listing exceeds {max_instances} instances or "
                                            f"{self._max_listing_bytes} bytes")
            totals.add(total)
            return len(page), total

        size, total = await read(0)
        # TotalCount, not a short page, ends the listing: a server may cap pages below Limit.
        if not size or size >= total:
            return list(found.values()), totals, repeated
        offsets = range(size, total, size)
        if len(offsets) + pages_read > max_pages:
            raise wire.invalid_response("DescribeInstances",
                                        f"the listing needs more than {max_pages} pages")
        pages: dict[int, tuple[int, int]] = {}
        pending = iter(offsets)

        async def reader() -> None:
            for offset in pending:  # the readers share one iterator: each offset is read once
                pages[offset] = await read(offset)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(PAGE_CONCURRENCY, len(offsets))):
                    group.create_task(reader())
        except BaseExceptionGroup as failed:  # the first failure, as a plain CloudError
            raise _first_leaf(failed) from None
        offset = offsets[-1] + pages[offsets[-1]][0]
        total = max(t for _, t in pages.values())
        while offset < total:
            size, total = await read(offset)
            if not size:
                break
            offset += size
        return list(found.values()), totals, repeated

    # ------------------------------------------------------------------ TerminateInstances

    async def terminate(self, instance_ids: Sequence[str], guard: CallGuard | None = None) -> None:
        """`CvmClient.terminate_instances`: release instances, in batches of 100; instances
        already gone count as released.

        TerminateInstances refuses a whole batch when one id is already terminated, terminating
        or unknown. Such a refusal is not taken as "the batch is done": the batch's ids are
        described again and those still there are terminated, until every id is released or
        proven gone. Each round strictly shrinks the set (down to one id per call, where the
        refusal itself proves the id gone), so this always ends.
        """
        for batch in wire.chunks(wire.unique(instance_ids), wire.MAX_IDS_PER_CALL):
            await self._terminate_batch(batch, guard)

    async def _terminate_batch(self, ids: list[str], guard: CallGuard | None = None) -> None:
        try:
            await self._transport.call("TerminateInstances", {"InstanceIds": ids}, guard=guard)
            return
        except CloudError as err:
            if err.code in _MIXED_CHARGE_CODES and len(ids) > 1:
                await self._terminate_by_charge_type(ids, guard)
                return
            if not err.already_gone:
                raise
            if len(ids) == 1:
                return
            log.debug("TerminateInstances refused a batch of %d (%s); re-describing it",
                      len(ids), err.code)
        survivors = [
            instance.instance_id
            for instance in await self.instances(instance_ids=ids)
            if instance.state not in _GONE_STATES
        ]
        if len(survivors) < len(ids):
            if survivors:
                await self._terminate_batch(survivors, guard)
            return
        # DescribeInstances still shows every id alive: find the gone one(s) one id at a time.
        for instance_id in ids:
            await self._terminate_batch([instance_id], guard)

    async def _terminate_by_charge_type(self, ids: list[str], guard: CallGuard | None = None) -> None:
        """TerminateInstances takes one charge type per batch, so a pool holding spot and
        pay-as-you-go instances has its batch split by the charge types DescribeInstances gives.

        Ids not described (gone) or already going are done. Each group is smaller than the batch,
        so this ends; should the server describe them all as one charge type and still refuse,
        they are terminated one id at a time, which no mix can refuse.
        """
        groups: dict[str, list[str]] = {}
        for instance in await self.instances(instance_ids=ids):
            if instance.instance_id in ids and instance.state not in _GONE_STATES:
                groups.setdefault(instance.charge_type, []).append(instance.instance_id)
        log.debug("TerminateInstances refused a batch mixing charge types; splitting it in %d",
                  len(groups))
        if len(groups) == 1:
            for instance_id in next(iter(groups.values())):
                await self._terminate_batch([instance_id], guard)
            return
        for group in groups.values():
            await self._terminate_batch(group, guard)
