"""Shared access to the cloud for every environment the operator reconciles.

Many environments usually share one account and region. They share one CVM client (one connection
pool, and the client's process-wide rate limits), one cached market read, and one listing of the
installation's instances, so N pools cost about one DescribeInstances sweep per interval instead of N.
The account behind each key pair is asked once (`identity`), so the executor can refuse to act
when a pool's credentials move to another account.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from spotpool.api.names import DEFAULT_ENDPOINT, service_endpoint, sts_endpoint
from spotpool.cloud.client import CvmClient
from spotpool.cloud.credentials import CredentialProvider
from spotpool.cloud.errors import CloudError
from spotpool.cloud.models import (
    POSTPAID_BY_HOUR,
    SPOTPAID,
    AccountQuota,
    CallerIdentity,
    Credentials,
    Instance,
    Offer,
    SpotOffer,
)
from spotpool.controller.observer import Observer, ObserverKey, Swept
from spotpool.flight import CachedFlight, Flight

T = TypeVar("T")
K = TypeVar("K")
log = logging.getLogger(__name__)



MAX_CLIENTS = 256
"""CVM clients (one connection pool each) kept; the least recently used is closed past this."""

MAX_OFFER_READS = 1024
"""Cached market reads (per account and set of pools) kept; the least recently used goes first."""

MAX_QUOTA_READS = 1024
"""Accounts whose quota is cached; the least recently used goes first."""

MAX_IDENTITIES = 4096
"""Key pairs whose account is remembered; past this the oldest is forgotten (and asked again)."""


@dataclass(frozen=True)
class Market:
    """One read of DescribeZoneInstanceConfigInfos: the spot market and the on-demand offers."""

    spot: dict[tuple[str, str], SpotOffer]
    on_demand: dict[tuple[str, str], Offer]


@dataclass(frozen=True)
class AccountKey:
    """One account's view of one region through one endpoint. The secret is hashed, never kept."""

    endpoint: str
    region: str
    secret_id: str
    secret_digest: str

    @classmethod
    def of(cls, endpoint: str | None, region: str, credentials: Credentials | CredentialProvider) -> AccountKey:
        """A key pair by its id and a digest of its secret; a provider (temporary credentials,
        renewed under it) by its source, which stays the same across renewals."""
        if isinstance(credentials, Credentials):
            secret_id = credentials.secret_id
            material = f"{credentials.secret_key}\0{credentials.token or ''}"
        else:
            secret_id, material = credentials.source, credentials.rate_limit_key
        digest = hashlib.sha256(material.encode()).hexdigest()[:16]
        return cls((endpoint or DEFAULT_ENDPOINT).rstrip("/"), region, secret_id, digest)


class CloudAccess:
    """Clients, market prices and instance listings, shared across environments per account."""

    def __init__(
        self,
        *,
        cluster_id: str,
        observer: Callable[[str, float, str | None], None] | None = None,
        offers_max_age: float = 30.0,
        rate_limits: dict[str, float] | None = None,
        client_factory: Callable[..., CvmClient] = CvmClient,
        clock: Callable[[], float] = time.monotonic,
        observe_interval: float = 15.0,
        on_change: Callable[[set[str]], None] | None = None,
        wait_for_fresh: bool = False,
        sweep_on_timer: bool = False,
        acting: Callable[[], bool] = lambda: True,
        on_sweep: Swept | None = None,
        on_closed: Callable[[ObserverKey], None] | None = None,
    ) -> None:
        """`observe_interval`: how often each account and region is swept; `on_change(uids)` is
        told which pools' slices a sweep changed; `wait_for_fresh` (tests): see `Observer`;
        `sweep_on_timer` (the operator): each observer sweeps every interval by itself, so a
        reclaim is seen one interval after it at worst, whenever the pools' passes fall; `acting`:
        whether this replica leads (timers sweep only then); `on_sweep`: told of every sweep (the
        orphan collector); `on_closed`: told when an observer is closed (no pool uses its key)."""
        self.cluster_id = cluster_id
        self._observe_interval = observe_interval
        self._on_change = on_change
        self._wait_for_fresh = wait_for_fresh
        self._sweep_on_timer = sweep_on_timer
        self._acting = acting
        self._on_sweep = on_sweep
        self._on_closed = on_closed
        self._observers: dict[AccountKey, Observer] = {}  # one per key pair (see `observer.py`)
        self._users: dict[str, AccountKey] = {}  # pool uid -> the key pair whose observer it uses
        self._clock = clock
        self._identities: dict[AccountKey, CallerIdentity] = {}
        self._identity_flights: dict[AccountKey, Flight[CallerIdentity]] = {}
        self._refused: OrderedDict[AccountKey, None] = OrderedDict()  # key pairs whose look-up failed
        self._observer = observer
        self._offers_max_age = offers_max_age
        self._client_factory = client_factory
        self._rate_limits = dict(rate_limits or {})
        # Bounded, least recently used first out: pool authors can name any number of key pairs,
        # endpoints and pool sets, and none of these may grow with them.
        self._clients: OrderedDict[AccountKey, CvmClient] = OrderedDict()
        self._taggers: OrderedDict[AccountKey, CvmClient] = OrderedDict()
        self._offers: OrderedDict[tuple[AccountKey, frozenset[str], frozenset[str]],
                                  CachedFlight[list[Offer]]] = OrderedDict()
        self._quotas: OrderedDict[AccountKey, CachedFlight[AccountQuota | None]] = OrderedDict()
        self._closing: set[asyncio.Task[object]] = set()  # `_background` work, until it ends

    def client(self, key: AccountKey, credentials: Credentials | CredentialProvider) -> CvmClient:
        client = self._clients.get(key)
        if client is None:
            client = self._client_factory(
                credentials, key.region, key.endpoint, observer=self._observer,
                rate_limits=self._rate_limits or None,
            )
            self._clients[key] = client
            while len(self._clients) > MAX_CLIENTS:
                _, evicted = self._clients.popitem(last=False)
                self._background(evicted.close())
        self._clients.move_to_end(key)
        return client

    def tagger(self, key: AccountKey, credentials: Credentials | CredentialProvider) -> CvmClient:
        """A client of the Tag service for the account (marking instances it is about to release
        voluntarily: `spotpool.io/draining`). Made on first use only: most pools never drain."""
        client = self._taggers.get(key)
        if client is None:
            client = self._client_factory(
                credentials, key.region, service_endpoint(key.endpoint, "tag"), observer=self._observer,
                rate_limits=self._rate_limits or None, service="tag",
            )
            self._taggers[key] = client
            while len(self._taggers) > MAX_CLIENTS:
                _, evicted = self._taggers.popitem(last=False)
                self._background(evicted.close())
        self._taggers.move_to_end(key)
        return client

    async def identity(self, key: AccountKey, credentials: Credentials | CredentialProvider) -> CallerIdentity:
        """The account a key pair belongs to (STS GetCallerIdentity), asked once per key pair.

        A key pair never changes account, so the answer is kept for the process (at most
        `MAX_IDENTITIES` key pairs; a rotated key pair is a new `AccountKey` and is asked again).
        Pools starting together share one call (single-flight), as they share one sweep.
        """
        known = self._identities.get(key)
        if known is not None:
            return known
        flight = self._identity_flights.setdefault(key, Flight())
        try:
            identity = await flight.join(lambda: self._ask_identity(key, credentials))
        except Exception:
            self._refused[key] = None
            while len(self._refused) > MAX_IDENTITIES:
                self._refused.popitem(last=False)
            raise
        finally:
            if not flight.running:
                self._identity_flights.pop(key, None)
        self._refused.pop(key, None)
        if len(self._identities) >= MAX_IDENTITIES:
            self._identities.pop(next(iter(self._identities)))
        self._identities[key] = identity
        observer = self._observers.get(key)
        if observer is not None:  # its first sweep may have started beside this look-up
            observer.identify(identity.account_id)
        return identity

    async def _ask_identity(self, key: AccountKey, credentials: Credentials | CredentialProvider) -> CallerIdentity:
        sts = self._client_factory(
            credentials, key.region, sts_endpoint(key.endpoint), observer=self._observer,
            rate_limits=self._rate_limits or None, service="sts",
        )
        try:
            return await sts.get_caller_identity()
        finally:
            await sts.close()

    async def offers(
        self, key: AccountKey, client: CvmClient, zones: Sequence[str], instance_types: Sequence[str]
    ) -> Market:
        """Spot and on-demand offers of the pools, in one read shared by every pool asking for
        the same zones and types through the same account."""
        flight = self._flight(self._offers, (key, frozenset(zones), frozenset(instance_types)), MAX_OFFER_READS)
        offers = await flight.get(
            lambda: client.describe_offers(zones=list(zones), instance_types=list(instance_types),
                                           charge_types=(SPOTPAID, POSTPAID_BY_HOUR))
        )
        return Market(
            spot={(o.zone, o.instance_type): o.as_spot() for o in offers if o.charge_type == SPOTPAID},
            on_demand={(o.zone, o.instance_type): o for o in offers if o.charge_type == POSTPAID_BY_HOUR},
        )

    async def quota(self, key: AccountKey, client: CvmClient) -> AccountQuota | None:
        """The account's spot and on-demand vCPU quota left per zone of the region, shared by
        its pools for as long as a market read (a pass that bought takes its purchases off it, so
        the next plan starts from what is left); None when it cannot be read (the plan then learns
        quota from refusals, as the cloud still enforces it). Every zone in one read, so pools of
        any zones share it."""
        flight = self._flight(self._quotas, key, MAX_QUOTA_READS)

        async def read() -> AccountQuota | None:
            try:
                return await client.describe_account_quota()
            except CloudError as exc:  # kept as "unknown" as long as an answer: not asked each pass
                log.debug("DescribeAccountQuota in %s failed (%s): planning without quota", key.region, exc.code)
                return None

        return await flight.get(read)

    def _flight(self, cache: OrderedDict[K, CachedFlight[T]], key: K, limit: int) -> CachedFlight[T]:
        """The cached read under `key`, made on first use; the least recently used go past `limit`."""
        flight = cache.get(key)
        if flight is None:
            flight = cache[key] = CachedFlight(self._offers_max_age, self._clock)
            while len(cache) > limit:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return flight

    def spend_quota(self, key: AccountKey, spent: Mapping[tuple[str, str], int]) -> None:
        """Take what this pass bought, vCPUs by (zone, charge type), off the kept quota.

        Asking the cloud again after every purchase would put a DescribeAccountQuota in front of
        every pass of every pool of a busy account (hundreds a second, against 20/s): the answer is
        amended instead, and read afresh once it is `--market-max-age` old.
        """
        flight = self._quotas.get(key)
        if flight is not None and spent:
            flight.amend(lambda quota: None if quota is None else quota.minus(spent))

    def forget_offers(self, key: AccountKey) -> None:
        """Drop cached prices, e.g. after a price refusal: the market moved under us."""
        for cache_key, flight in self._offers.items():
            if cache_key[0] == key:
                flight.invalidate()

    def new_key_pair(self, key: AccountKey) -> bool:
        """Whether the key pair was never asked about: its look-up takes a round trip, which a
        pass may fill with its first reads (`context.resolve`'s `early`). One whose look-up failed
        is not new: its pools are blocked until it answers, and sweep nothing meanwhile."""
        return key not in self._identities and key not in self._refused

    def observer(self, key: AccountKey, account_id: str, client: CvmClient, uid: str | None = None) -> Observer:
        """The one observer of this key pair in this region (see `observer.Observer`), made on
        first use. `uid`: the pool asking; an observer whose pools all moved to another key pair,
        or were deleted (`forget_pool`), is closed with its client."""
        observer = self._observer_of(key, client, uid)
        observer.identify(account_id)
        return observer

    def start_first_reads(self, key: AccountKey, client: CvmClient, uid: str,
                          zones: Sequence[str], instance_types: Sequence[str]) -> None:
        """Start a pass's reads now, before the key pair's account is known: the first sweep, the
        market of `zones` x `instance_types` and the quota. A new key pair's first pass then waits
        one round trip for the look-up and these together, not one after the other, and joins
        them (each is a shared flight). No sweep is started once one has answered (the pass reads
        that). `uid`: the pool asking, a user of the observer as in `observer` (it goes with the pool).
        """
        observer = self._observer_of(key, client, uid)
        if not observer.swept_once:
            observer.start_sweep()
        self._background(self.offers(key, client, zones, instance_types))
        self._background(self.quota(key, client))

    def _observer_of(self, key: AccountKey, client: CvmClient, uid: str | None) -> Observer:
        observer = self._observers.get(key)
        if observer is None:
            where = ObserverKey(key.endpoint, key.region, self._known_account(key), key.secret_id, key.secret_digest)
            observer = self._observers[key] = Observer(
                where, cluster_id=self.cluster_id, interval=self._observe_interval, clock=self._clock,
                on_change=self._on_change, wait_for_fresh=self._wait_for_fresh, acting=self._acting,
                on_sweep=self._on_sweep,
            )
            if self._sweep_on_timer:
                observer.start_timer()
        observer.use(client)
        if uid is not None:
            before = self._users.get(uid)
            self._users[uid] = key
            observer.users.add(uid)
            if before is not None and before != key:
                self._leave(uid, before)
        return observer

    def _known_account(self, key: AccountKey) -> str:
        identity = self._identities.get(key)
        return identity.account_id if identity is not None else ""

    def forget_pool(self, uid: str) -> None:
        """The pool is gone: its key pair's observer and client go too once no pool uses them, so
        nothing sweeps (or signs) with a key pair whose Secret may be deleted."""
        where = self._users.pop(uid, None)
        if where is not None:
            self._leave(uid, where)

    def _leave(self, uid: str, key: AccountKey) -> None:
        observer = self._observers.get(key)
        if observer is None:
            return
        observer.users.discard(uid)
        if observer.users:
            return
        del self._observers[key]
        self._background(observer.close())
        if self._on_closed is not None and observer.key.account_id:  # else never reported to anyone
            self._on_closed(observer.key)
        if key in self._clients and not any(k.secret_digest == key.secret_digest for k in self._observers):
            self._background(self._clients.pop(key).close())

    def _background(self, work: Awaitable[object]) -> None:
        """Run `work` with nobody awaiting it (a client closing, a read whose answer lands in a
        shared flight): kept until it ends, its failure retrieved (the pass that joins the
        flight sees it, or asks again)."""
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._closing.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: asyncio would warn of a failure nobody awaited

    def observers(self) -> list[Observer]:
        return list(self._observers.values())

    async def look_up(self, client: CvmClient, instance_ids: Sequence[str]) -> dict[str, Instance | None]:
        """Instances by id (DescribeInstances `InstanceIds`, 100 per call): None for an id the
        cloud does not know. Confirms purchases the shared listing does not show yet."""
        if not instance_ids:
            return {}
        found = {i.instance_id: i for i in await client.describe_instances(instance_ids=instance_ids)}
        return {instance_id: found.get(instance_id) for instance_id in instance_ids}

    async def close(self) -> None:
        observers, self._observers = list(self._observers.values()), {}
        await asyncio.gather(*(o.close() for o in observers), return_exceptions=True)
        clients = [*self._clients.values(), *self._taggers.values()]
        self._clients.clear()
        self._taggers.clear()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
