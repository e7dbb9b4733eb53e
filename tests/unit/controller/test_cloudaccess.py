"""`CloudAccess` and its observers: one client per account key, one shared sweep per account and
region filtered per owner, release marks that outlive an older sweep, the account asked once, and
an `AccountKey` that never holds the secret. The CVM client is a plain fake with async methods."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import statistics
from decimal import Decimal
from typing import Any

import pytest

from spotpool.api.names import CLUSTER_TAG, DEFAULT_ENDPOINT, OWNER_UID_TAG
from spotpool.cloud.errors import CloudError, ErrorCategory
from spotpool.cloud.models import SPOTPAID, AccountQuota, CallerIdentity, Credentials, Instance, Offer, ZoneQuota
from spotpool.controller.cloudaccess import AccountKey, CloudAccess

SECRET_KEY = "UnitTestSecretKeyValue0123456789"
TOKEN = "UnitTestSessionTokenValue987654"
CREDS = Credentials("AKIDunittest000000000000000000000000", SECRET_KEY)
ENDPOINT = "http://127.0.0.1:9000"


class FakeCvm:
    """Records how it was built and how often it was asked to list."""

    def __init__(self, credentials: Credentials, region: str, endpoint: str, *, observer: Any = None,
                 rate_limits: dict[str, float] | None = None, instances: list[Instance] | None = None,
                 service: str = "cvm") -> None:
        self.service = service
        self.identity_calls = 0
        self.credentials = credentials
        self.rate_limits = rate_limits
        self.region = region
        self.endpoint = endpoint
        self.observer = observer
        self.instances = list(instances or [])
        self.listings: list[tuple[str, str]] = []
        self.offer_reads = 0
        self.quota_reads = 0
        self.quota_error: CloudError | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False

    async def describe_by_tag(self, key: str, value: str) -> list[Instance]:
        self.listings.append((key, value))
        await self.gate.wait()
        return list(self.instances)

    async def describe_offers(self, *, zones: list[str], instance_types: list[str],
                              charge_types: tuple[str, ...]) -> list[Offer]:
        self.offer_reads += 1
        return [Offer(z, t, charge, Decimal("0.02") if charge == SPOTPAID else Decimal("0.1"), Decimal("0.1"),
                      False, "EnoughStock")
                for z in zones for t in instance_types for charge in charge_types]

    async def describe_account_quota(self) -> AccountQuota:
        self.quota_reads += 1
        if self.quota_error is not None:
            raise self.quota_error
        return AccountQuota("ap-guangzhou", spot={"ap-guangzhou-3": ZoneQuota("ap-guangzhou-3", 8, 2, 6)}, on_demand={})

    async def get_caller_identity(self) -> CallerIdentity:
        self.identity_calls += 1
        await asyncio.sleep(0)
        return CallerIdentity("100000000001")

    async def close(self) -> None:
        self.closed = True


class Factory:
    def __init__(self) -> None:
        self.built: list[FakeCvm] = []

    def __call__(self, credentials: Credentials, region: str, endpoint: str, **kwargs: Any) -> FakeCvm:
        client = FakeCvm(credentials, region, endpoint, **kwargs)
        self.built.append(client)
        return client


def instance(instance_id: str, owner: str | None, **tags: str) -> Instance:
    all_tags = {CLUSTER_TAG: "cluster-a", **tags}
    if owner is not None:
        all_tags[OWNER_UID_TAG] = owner
    return Instance(instance_id, "ap-guangzhou-3", "S5.MEDIUM4", "RUNNING", "SPOTPAID", None, all_tags)


def access(factory: Factory, **kwargs: Any) -> CloudAccess:
    return CloudAccess(cluster_id="cluster-a", client_factory=factory, **kwargs)


# -- one client per account key -------------------------------------------------------------------

def test_the_same_key_pair_region_and_endpoint_reuse_one_client() -> None:
    factory = Factory()
    cloud = access(factory)
    first = cloud.client(AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS), CREDS)
    # A new but equal Credentials object (a re-read Secret) maps to the same key.
    again = Credentials(CREDS.secret_id, SECRET_KEY)
    second = cloud.client(AccountKey.of(ENDPOINT + "/", "ap-guangzhou", again), again)
    assert second is first
    assert len(factory.built) == 1
    assert (first.region, first.endpoint, first.credentials) == ("ap-guangzhou", ENDPOINT, CREDS)


def test_no_endpoint_means_the_public_endpoint() -> None:
    assert AccountKey.of(None, "ap-guangzhou", CREDS) == AccountKey.of(DEFAULT_ENDPOINT, "ap-guangzhou", CREDS)
    factory = Factory()
    access(factory).client(AccountKey.of(None, "ap-guangzhou", CREDS), CREDS)
    assert factory.built[0].endpoint == DEFAULT_ENDPOINT


@pytest.mark.parametrize("change", [
    {"secret_key": "AnotherSecretKeyValue0123456789"},
    {"token": TOKEN},
    {"secret_id": "AKIDanother00000000000000000000000000"},
    {"region": "ap-shanghai"},
    {"endpoint": "http://127.0.0.1:9001"},
])
def test_a_different_secret_token_id_region_or_endpoint_gets_its_own_client(change: dict[str, str]) -> None:
    factory = Factory()
    cloud = access(factory)
    base = cloud.client(AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS), CREDS)
    creds = Credentials(change.get("secret_id", CREDS.secret_id), change.get("secret_key", SECRET_KEY),
                        change.get("token"))
    key = AccountKey.of(change.get("endpoint", ENDPOINT), change.get("region", "ap-guangzhou"), creds)
    other = cloud.client(key, creds)
    assert other is not base
    assert other.credentials == creds
    assert len(factory.built) == 2


async def test_close_closes_every_client() -> None:
    factory = Factory()
    cloud = access(factory)
    for region in ("ap-guangzhou", "ap-shanghai"):
        cloud.client(AccountKey.of(ENDPOINT, region, CREDS), CREDS)
    await cloud.close()
    assert [c.closed for c in factory.built] == [True, True]


# -- AccountKey never holds the secret ------------------------------------------------------------

@pytest.mark.parametrize("token", [None, TOKEN])
def test_account_key_holds_neither_the_secret_key_nor_the_token(token: str | None) -> None:
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", Credentials(CREDS.secret_id, SECRET_KEY, token))
    shown = [repr(key), str(key), *map(str, dataclasses.astuple(key))]
    for text in shown:
        assert SECRET_KEY not in text
        assert TOKEN not in text
    assert {f.name for f in dataclasses.fields(key)} == {"endpoint", "region", "secret_id", "secret_digest"}
    assert key.secret_id == CREDS.secret_id  # the id is not a secret: it names the account


def test_account_key_digest_tells_secrets_apart_and_is_stable() -> None:
    one = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    assert one == AccountKey.of(ENDPOINT, "ap-guangzhou", Credentials(CREDS.secret_id, SECRET_KEY))
    assert one.secret_digest != AccountKey.of(
        ENDPOINT, "ap-guangzhou", Credentials(CREDS.secret_id, SECRET_KEY + "x")).secret_digest
    assert hash(one) == hash(AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS))


# -- one shared sweep per account and region, filtered per owner ----------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def observed(cloud: CloudAccess, region: str = "ap-guangzhou", account: str = "100") -> tuple[Any, FakeCvm]:
    key = AccountKey.of(ENDPOINT, region, CREDS)
    client = cloud.client(key, CREDS)
    return cloud.observer(key, account, client), client


async def test_a_slice_filters_one_shared_sweep_by_the_owner_tag() -> None:
    cloud = access(Factory(), observe_interval=60)
    observer, client = observed(cloud)
    client.instances = [
        instance("ins-a1", "uid-a"), instance("ins-b1", "uid-b"), instance("ins-a2", "uid-a"),
        instance("ins-none", None),
        # The environment tag alone does not make an instance ours: ownership is the uid tag.
        instance("ins-env", None, **{"spotpool.io/environment": "uid-a"}),
        instance("ins-user-tag", None, team="uid-a"),  # nor does the uid in some other tag
    ]
    owned_a = await observer.slice("uid-a")
    owned_b = await observer.slice("uid-b")
    assert [i.instance_id for i in owned_a] == ["ins-a1", "ins-a2"]
    assert [i.instance_id for i in owned_b] == ["ins-b1"]
    assert await observer.slice("uid-c") == []
    assert client.listings == [(CLUSTER_TAG, "cluster-a")]  # one sweep served all three owners


async def test_concurrent_first_passes_wait_on_one_sweep() -> None:
    cloud = access(Factory(), observe_interval=60)
    observer, client = observed(cloud)
    client.instances = [instance(f"ins-{n}", f"uid-{n % 3}") for n in range(9)]
    client.gate.clear()
    tasks = [asyncio.create_task(observer.slice(f"uid-{n}")) for n in range(3)]
    await asyncio.sleep(0)
    client.gate.set()
    assert [len(r) for r in await asyncio.gather(*tasks)] == [3, 3, 3]
    assert len(client.listings) == 1


async def test_key_pairs_and_regions_have_observers_of_their_own() -> None:
    cloud = access(Factory(), observe_interval=60)
    (gz, gz_client), (sh, sh_client) = observed(cloud, "ap-guangzhou"), observed(cloud, "ap-shanghai")
    gz_client.instances, sh_client.instances = [instance("ins-gz", "uid-a")], [instance("ins-sh", "uid-a")]
    assert [i.instance_id for i in await gz.slice("uid-a")] == ["ins-gz"]
    assert [i.instance_id for i in await sh.slice("uid-a")] == ["ins-sh"]
    other_key = AccountKey.of(ENDPOINT, "ap-guangzhou", TEAM_B)
    other_account = cloud.observer(other_key, "200", cloud.client(other_key, TEAM_B))
    assert other_account is not gz and observed(cloud, "ap-guangzhou")[0] is gz
    assert (gz.key.account_id, other_account.key.account_id) == ("100", "200")


async def test_a_stale_snapshot_is_used_while_the_next_sweep_runs() -> None:
    clock = Clock()
    cloud = access(Factory(), observe_interval=15, clock=clock)
    observer, client = observed(cloud)
    assert await observer.slice("uid-a") == []
    client.instances = [instance("ins-new", "uid-a")]
    clock.now += 15
    client.gate.clear()
    assert await observer.slice("uid-a") == []  # the previous snapshot, while the sweep waits
    await asyncio.sleep(0)
    assert len(client.listings) == 2
    client.gate.set()
    await observer.start_sweep()
    assert [i.instance_id for i in await observer.slice("uid-a")] == ["ins-new"]


async def test_a_release_stays_marked_against_a_sweep_that_began_before_it() -> None:
    clock = Clock()
    changes: list[set[str]] = []
    cloud = access(Factory(), observe_interval=15, clock=clock, on_change=changes.append)
    observer, client = observed(cloud)
    client.instances = [instance("ins-a1", "uid-a"), instance("ins-b1", "uid-b")]
    await observer.slice("uid-a")
    clock.now += 15
    client.gate.clear()
    sweep = observer.start_sweep()  # begins before the release, answers after it
    await asyncio.sleep(0)
    clock.now += 1
    observer.released(["ins-a1"])
    assert [i.state for i in await observer.slice("uid-a")] == ["TERMINATING"]
    client.gate.set()
    await sweep
    assert [i.state for i in await observer.slice("uid-a")] == ["TERMINATING"]
    assert changes == []  # nothing the pools do not know already
    clock.now += 15
    client.instances.append(instance("ins-b2", "uid-b"))
    await observer.start_sweep()  # a sweep begun after the release is the cloud's word again
    assert [i.state for i in await observer.slice("uid-a")] == ["RUNNING"]
    assert changes == [{"uid-a", "uid-b"}]  # the pools whose slice changed are woken, no others


async def test_a_drain_mark_stays_against_a_sweep_that_began_before_it() -> None:
    clock = Clock()
    cloud = access(Factory(), observe_interval=15, clock=clock)
    observer, client = observed(cloud)
    client.instances = [instance("ins-a1", "uid-a"), instance("ins-a2", "uid-a")]
    await observer.slice("uid-a")
    clock.now += 15
    client.gate.clear()
    sweep = observer.start_sweep()  # begins before TagResources, answers after it
    await asyncio.sleep(0)
    clock.now += 1
    mark = {"spotpool.io/draining": "2026-01-01T00:00:16Z"}
    observer.tagged(["ins-a1"], mark)

    async def draining() -> dict[str, str | None]:
        return {i.instance_id: i.tags.get("spotpool.io/draining") for i in await observer.slice("uid-a")}

    assert await draining() == {"ins-a1": "2026-01-01T00:00:16Z", "ins-a2": None}
    client.gate.set()
    await sweep
    assert await draining() == {"ins-a1": "2026-01-01T00:00:16Z", "ins-a2": None}, "the older sweep keeps it"
    clock.now += 15
    await observer.start_sweep()  # begun after the call: the cloud's word (here, no tag: marked again)
    assert await draining() == {"ins-a1": None, "ins-a2": None}


async def test_failing_sweeps_stop_passes_acting_on_an_old_view() -> None:
    clock = Clock()
    cloud = access(Factory(), observe_interval=15, clock=clock)
    observer, client = observed(cloud)
    await observer.slice("uid-a")

    async def broken(key: str, value: str) -> list[Instance]:
        raise RuntimeError("the cloud is down")

    client.describe_by_tag = broken  # type: ignore[method-assign]
    for _ in range(3):
        clock.now += 15
        await observer.slice("uid-a")
        await asyncio.gather(observer.start_sweep(), return_exceptions=True)
    clock.now += 15
    with pytest.raises(RuntimeError, match="the cloud is down"):
        await observer.slice("uid-a")


async def test_pools_starting_together_ask_the_account_once() -> None:
    factory = Factory()
    cloud = access(factory)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    identities = await asyncio.gather(*(cloud.identity(key, CREDS) for _ in range(20)))
    assert {i.account_id for i in identities} == {"100000000001"}
    assert sum(1 for c in factory.built if c.identity_calls) == 1
    await cloud.identity(key, CREDS)
    assert sum(c.identity_calls for c in factory.built) == 1  # remembered


async def test_offers_are_cached_per_account_and_forgotten_on_request() -> None:
    factory = Factory()
    cloud = access(factory, offers_max_age=60)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    market = await cloud.offers(key, client, ["ap-guangzhou-3"], ["S5.MEDIUM4", "SA2.MEDIUM4"])
    assert set(market.spot) == {("ap-guangzhou-3", "S5.MEDIUM4"), ("ap-guangzhou-3", "SA2.MEDIUM4")}
    assert market.spot[("ap-guangzhou-3", "S5.MEDIUM4")].spot_price == Decimal("0.02")
    assert market.on_demand[("ap-guangzhou-3", "S5.MEDIUM4")].price == Decimal("0.1")
    # The same candidate sets in another order are the same cache entry.
    await cloud.offers(key, client, ["ap-guangzhou-3"], ["SA2.MEDIUM4", "S5.MEDIUM4"])
    assert client.offer_reads == 1
    cloud.forget_offers(key)
    await cloud.offers(key, client, ["ap-guangzhou-3"], ["S5.MEDIUM4", "SA2.MEDIUM4"])
    assert client.offer_reads == 2


def test_configured_rate_limits_reach_every_client() -> None:
    factory = Factory()
    cloud = access(factory, rate_limits={"RunInstances": 5.0})
    cloud.client(AccountKey.of(None, "ap-guangzhou", Credentials("AKID1", "key-one")), Credentials("AKID1", "key-one"))
    assert factory.built[0].rate_limits == {"RunInstances": 5.0}


async def test_clients_and_market_reads_are_bounded_least_recently_used_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pool authors can name any number of key pairs and endpoints: the caches must not grow."""
    import spotpool.controller.cloudaccess as cloudaccess

    monkeypatch.setattr(cloudaccess, "MAX_CLIENTS", 2)
    monkeypatch.setattr(cloudaccess, "MAX_OFFER_READS", 2)
    factory = Factory()
    cloud = access(factory)
    keys = [AccountKey.of(f"http://127.0.0.{n}:9000", "ap-guangzhou", CREDS) for n in range(1, 4)]
    first = cloud.client(keys[0], CREDS)
    cloud.client(keys[1], CREDS)
    cloud.client(keys[0], CREDS)  # used again: the second is now the least recent
    cloud.client(keys[2], CREDS)
    await asyncio.sleep(0)
    assert [c.closed for c in factory.built] == [False, True, False]
    assert cloud.client(keys[0], CREDS) is first
    for zones in (["ap-guangzhou-3"], ["ap-guangzhou-4"], ["ap-guangzhou-6"]):
        await cloud.offers(keys[0], first, zones, ["S5.MEDIUM4"])
    await cloud.offers(keys[0], first, ["ap-guangzhou-3"], ["S5.MEDIUM4"])  # evicted: read again
    assert first.offer_reads == 4


async def test_the_quota_is_shared_and_a_failed_read_means_unknown_for_a_while() -> None:
    now = [0.0]
    factory = Factory()
    cloud = access(factory, clock=lambda: now[0])
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    quota = await cloud.quota(key, client)
    assert quota is not None and quota.remaining("ap-guangzhou-3", SPOTPAID) == 6
    await cloud.quota(key, client)
    assert client.quota_reads == 1  # shared by every pass of the account within the minute
    # A pass bought 4 vCPUs there: the kept answer is amended, not asked again (hundreds of passes
    # a second of a busy account would otherwise queue behind DescribeAccountQuota's 20/s).
    cloud.spend_quota(key, {("ap-guangzhou-3", SPOTPAID): 4, ("ap-guangzhou-9", SPOTPAID): 2})
    quota = await cloud.quota(key, client)
    assert quota is not None and quota.remaining("ap-guangzhou-3", SPOTPAID) == 2
    assert quota.spot["ap-guangzhou-3"].used == 6 and client.quota_reads == 1
    cloud.spend_quota(key, {("ap-guangzhou-3", SPOTPAID): 4})
    assert (await cloud.quota(key, client)).remaining("ap-guangzhou-3", SPOTPAID) == 0  # type: ignore[union-attr]
    now[0] += 31  # read afresh once as old as a market read
    quota = await cloud.quota(key, client)
    assert client.quota_reads == 2 and quota is not None and quota.remaining("ap-guangzhou-3", SPOTPAID) == 6

    denied = AccountKey.of(ENDPOINT, "ap-guangzhou", Credentials("AKIDOTHER", "other-key"))
    other = cloud.client(denied, Credentials("AKIDOTHER", "other-key"))
    other.quota_error = CloudError("UnauthorizedOperation", "no CAM permission", action="DescribeAccountQuota",
                                   category=ErrorCategory.AUTH)
    assert await cloud.quota(denied, other) is None
    assert await cloud.quota(denied, other) is None
    assert other.quota_reads == 1  # not asked again every pass
    now[0] += 61
    assert await cloud.quota(denied, other) is None and other.quota_reads == 2


# -- observers per key pair, for live pools and the leader only (issue 17) --------------------------

TEAM_B = Credentials("AKIDteamb0000000000000000000000000000", "TeamBSecretKeyValue0123456789ab")


async def test_key_pairs_of_one_account_sweep_apart() -> None:
    """CAM may let a team's key see only its own instances: a sweep made with team B's key is no
    picture of team A's pools, so each key pair sweeps for the pools that use it."""
    cloud = access(Factory(), observe_interval=60)
    key_a, key_b = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS), AccountKey.of(ENDPOINT, "ap-guangzhou", TEAM_B)
    client_a, client_b = cloud.client(key_a, CREDS), cloud.client(key_b, TEAM_B)
    client_a.instances = [instance("ins-a1", "uid-a"), instance("ins-b1", "uid-b")]
    client_b.instances = [instance("ins-b1", "uid-b")]  # B's key sees only B's instances
    observer_b = cloud.observer(key_b, "100", client_b, "uid-b")
    observer_a = cloud.observer(key_a, "100", client_a, "uid-a")  # asked last, same account
    assert observer_a is not observer_b
    assert [i.instance_id for i in await observer_a.slice("uid-a")] == ["ins-a1"]
    assert [i.instance_id for i in await observer_b.slice("uid-b")] == ["ins-b1"]


async def test_an_observer_and_its_client_go_with_the_last_pool_of_their_key_pair() -> None:
    factory = Factory()
    cloud = access(factory, observe_interval=60)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    first = cloud.observer(key, "100", client, "uid-a")
    assert cloud.observer(key, "100", client, "uid-b") is first
    cloud.forget_pool("uid-a")
    assert cloud.observers() == [first] and not client.closed  # uid-b still uses the key pair
    cloud.forget_pool("uid-b")
    await asyncio.sleep(0)  # closing runs in the background
    await asyncio.gather(*cloud._closing)
    assert cloud.observers() == [] and client.closed
    # A later pool of the same key pair gets a new client: nothing signs with a dropped one.
    assert cloud.client(key, CREDS) is not client


async def test_a_pool_that_moves_to_another_key_pair_leaves_the_old_observer() -> None:
    cloud = access(Factory(), observe_interval=60)
    key_a, key_b = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS), AccountKey.of(ENDPOINT, "ap-guangzhou", TEAM_B)
    old = cloud.observer(key_a, "100", cloud.client(key_a, CREDS), "uid-a")
    new = cloud.observer(key_b, "100", cloud.client(key_b, TEAM_B), "uid-a")  # the Secret was rotated
    assert cloud.observers() == [new] and new is not old


class Acting:
    """The timers' `acting`: whether this replica leads, and how often a timer asked (each tick)."""

    def __init__(self, leading: bool = True) -> None:
        self.leading = leading
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.leading

    async def ticks(self, count: int) -> None:
        """Until the timers have ticked `count` times."""
        while self.asked < count:
            await asyncio.sleep(0.01)


async def test_a_standby_sweeps_nothing_on_its_timer() -> None:
    """Only the leader's timers call the cloud: a replica that stepped down keeps its observers
    (it may lead again) but their timers skip every tick while it does not lead."""
    acting = Acting(leading=False)
    cloud = access(Factory(), observe_interval=0.01, sweep_on_timer=True, acting=acting)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    cloud.observer(key, "100", client, "uid-a")
    await acting.ticks(3)
    assert client.listings == []
    acting.leading = True
    while not client.listings:
        await asyncio.sleep(0.01)
    await cloud.close()


async def test_the_timer_keeps_the_interval_from_sweep_start_to_sweep_start() -> None:
    """A sweep of many pages takes a good part of the interval: the timer counts the interval from
    one sweep's start to the next, so the period stays the interval (sleeping a whole interval after
    each sweep ended would stretch it by the sweep's length, and a reclaim would be seen that late)."""
    interval, sweep_takes = 0.5, 0.3
    cloud = access(Factory(), observe_interval=interval, sweep_on_timer=True)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def slow_sweep(tag: str, value: str) -> list[Instance]:
        starts.append(loop.time())
        await asyncio.sleep(sweep_takes)
        return []

    client.describe_by_tag = slow_sweep  # type: ignore[method-assign]
    cloud.observer(key, "100", client, "uid-a")
    while len(starts) < 5:
        await asyncio.sleep(0.01)
    await cloud.close()
    periods = [b - a for a, b in itertools.pairwise(starts[1:])]
    # Sleeping a whole interval after each sweep would give at least interval + sweep_takes = 0.8 s.
    assert statistics.median(periods) < interval + sweep_takes / 2, periods
    assert min(periods) > interval - 0.05, periods  # and never sooner than the interval


async def test_a_sweep_keeps_the_previous_object_of_an_unchanged_instance() -> None:
    """Nothing made from a sweep's pages outlives it for an instance that did not change: the
    snapshot keeps the previous sweep's object, so the new pages' memory is freed whole instead of
    being pinned by one small copy per instance (fragmentation the process never gives back)."""
    factory = Factory()
    cloud = access(factory, observe_interval=15.0)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    client.instances = [instance("ins-a", "uid-a"), instance("ins-b", "uid-a")]
    observer = cloud.observer(key, "100", client, "uid-a")
    first = {i.instance_id: i for i in await observer.slice("uid-a")}
    client.instances = [instance("ins-a", "uid-a"), dataclasses.replace(instance("ins-b", "uid-a"), state="STOPPED")]
    await observer.start_sweep()
    second = {i.instance_id: i for i in await observer.slice("uid-a")}
    assert second["ins-a"] is first["ins-a"]  # equal: the old object kept
    assert second["ins-b"] is not first["ins-b"] and second["ins-b"].state == "STOPPED"  # changed: the new one
    await cloud.close()


async def test_first_reads_started_before_the_account_is_known_are_joined_and_reported_once_it_is() -> None:
    swept: list[str] = []
    cloud = access(Factory(), observe_interval=60, on_sweep=lambda key, *_: swept.append(key.account_id))
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    client.instances = [instance("ins-a1", "uid-a")]
    cloud.start_first_reads(key, client, "uid-a", ["ap-guangzhou-3"], ["S5.MEDIUM4"])  # beside the look-up
    cloud.start_first_reads(key, client, "uid-b", ["ap-guangzhou-3"], ["S5.MEDIUM4"])  # another pool's: the same
    await cloud.observers()[0].start_sweep()  # the one in flight, until it has answered
    assert client.listings == [(CLUSTER_TAG, "cluster-a")]
    assert swept == [], "a sweep of an unknown account is not reported (the collector names it)"
    assert cloud.new_key_pair(key) is True
    await cloud.identity(key, CREDS)
    assert cloud.new_key_pair(key) is False
    observer = cloud.observer(key, "100000000001", client, "uid-a")
    assert [i.instance_id for i in await observer.slice("uid-a")] == ["ins-a1"]
    assert client.listings == [(CLUSTER_TAG, "cluster-a")], "the pass read the early sweep, no second one"
    await cloud.offers(key, client, ["ap-guangzhou-3"], ["S5.MEDIUM4"])
    await cloud.quota(key, client)
    assert (client.offer_reads, client.quota_reads) == (1, 1), "the market and the quota: read once, early"
    await observer.start_sweep()
    assert swept == ["100000000001"]


async def test_an_observer_started_early_goes_with_its_pool_even_if_the_look_up_never_answered() -> None:
    closed: list[Any] = []
    cloud = access(Factory(), observe_interval=60, on_closed=closed.append)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    cloud.start_first_reads(key, client, "uid-a", [], [])  # e.g. a key pair STS refuses: no pass gets further
    assert len(cloud.observers()) == 1
    cloud.forget_pool("uid-a")
    await asyncio.sleep(0)
    await asyncio.gather(*cloud._closing)
    assert cloud.observers() == [] and client.closed, "nothing sweeps on with the key pair of a deleted pool"
    assert closed == [], "no account was ever named for it: the collector has nothing to forget (no metric series)"


async def test_a_key_pair_whose_look_up_failed_is_not_swept_early_nor_on_the_timer() -> None:
    """Bad keys block their pool at the look-up every pass: nothing else is asked with them, not
    the first pass's early reads once the look-up has failed, not the timer's sweeps."""
    acting = Acting()
    cloud = access(Factory(), observe_interval=0.01, sweep_on_timer=True, acting=acting)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    client.gate.clear()  # the early sweep waits on the wire while the look-up fails
    cloud.start_first_reads(key, client, "uid-a", [], [])

    async def refused(*_: Any) -> CallerIdentity:
        raise CloudError("AuthFailure.SecretIdNotFound", "no such key", action="GetCallerIdentity",
                         category=ErrorCategory.AUTH)

    cloud._ask_identity = refused  # type: ignore[method-assign]
    with pytest.raises(CloudError):
        await cloud.identity(key, CREDS)
    assert cloud.new_key_pair(key) is False, "the next pass looks up first, and reads nothing early"
    client.gate.set()
    await acting.ticks(3)
    assert len(client.listings) == 1, "the timer sweeps no key pair whose account was never confirmed"
    await cloud.close()
