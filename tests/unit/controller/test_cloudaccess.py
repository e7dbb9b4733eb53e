"""`CloudAccess`: one client per account key, one shared listing filtered per owner, and an
`AccountKey` that never holds the secret. The CVM client is a plain fake with async methods."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from typing import Any

import pytest

from spotpool.cloud.models import Credentials, Instance, SpotOffer
from spotpool.controller.cloudaccess import (
    CLUSTER_TAG,
    DEFAULT_ENDPOINT,
    OWNER_UID_TAG,
    AccountKey,
    CloudAccess,
)

SECRET_KEY = "UnitTestSecretKeyValue0123456789"
TOKEN = "UnitTestSessionTokenValue987654"
CREDS = Credentials("AKIDunittest000000000000000000000000", SECRET_KEY)
ENDPOINT = "http://127.0.0.1:9000"


class FakeCvm:
    """Records how it was built and how often it was asked to list."""

    def __init__(self, credentials: Credentials, region: str, endpoint: str, *, observer: Any = None,
                 rate_limits: dict[str, float] | None = None, instances: list[Instance] | None = None) -> None:
        self.credentials = credentials
        self.rate_limits = rate_limits
        self.region = region
        self.endpoint = endpoint
        self.observer = observer
        self.instances = list(instances or [])
        self.listings: list[tuple[str, str]] = []
        self.offer_reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False

    async def describe_by_tag(self, key: str, value: str) -> list[Instance]:
        self.listings.append((key, value))
        await self.gate.wait()
        return list(self.instances)

    async def describe_spot_offers(self, *, zones: list[str], instance_types: list[str]) -> list[SpotOffer]:
        self.offer_reads += 1
        return [SpotOffer(z, t, Decimal("0.02"), Decimal("0.1"), False) for z in zones for t in instance_types]

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


# -- one shared listing, filtered per owner -------------------------------------------------------

async def test_owned_instances_filters_one_shared_listing_by_the_owner_tag() -> None:
    factory = Factory()
    cloud = access(factory, listing_max_age=60)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    client.instances = [
        instance("ins-a1", "uid-a"), instance("ins-b1", "uid-b"), instance("ins-a2", "uid-a"),
        instance("ins-none", None),
        # The environment tag alone does not make an instance ours: ownership is the uid tag.
        instance("ins-env", None, **{"spotpool.io/environment": "ns/uid-a"}),
        instance("ins-user-tag", None, team="uid-a"),  # nor does the uid in some other tag
    ]
    owned_a = await cloud.owned_instances(key, client, "uid-a")
    owned_b = await cloud.owned_instances(key, client, "uid-b")
    owned_c = await cloud.owned_instances(key, client, "uid-c")
    assert [i.instance_id for i in owned_a] == ["ins-a1", "ins-a2"]
    assert [i.instance_id for i in owned_b] == ["ins-b1"]
    assert owned_c == []
    # One listing of the installation's instances served all three owners.
    assert client.listings == [(CLUSTER_TAG, "cluster-a")]


async def test_concurrent_owners_wait_on_one_listing() -> None:
    factory = Factory()
    cloud = access(factory, listing_max_age=60)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    client.instances = [instance(f"ins-{n}", f"uid-{n % 3}") for n in range(9)]
    client.gate.clear()
    tasks = [asyncio.create_task(cloud.owned_instances(key, client, f"uid-{n}")) for n in range(3)]
    await asyncio.sleep(0)
    client.gate.set()
    results = await asyncio.gather(*tasks)
    assert [len(r) for r in results] == [3, 3, 3]
    assert len(client.listings) == 1


async def test_accounts_do_not_share_listings() -> None:
    factory = Factory()
    cloud = access(factory, listing_max_age=60)
    keys = [AccountKey.of(ENDPOINT, region, CREDS) for region in ("ap-guangzhou", "ap-shanghai")]
    clients = [cloud.client(k, CREDS) for k in keys]
    clients[0].instances = [instance("ins-gz", "uid-a")]
    clients[1].instances = [instance("ins-sh", "uid-a")]
    assert [i.instance_id for i in await cloud.owned_instances(keys[0], clients[0], "uid-a")] == ["ins-gz"]
    assert [i.instance_id for i in await cloud.owned_instances(keys[1], clients[1], "uid-a")] == ["ins-sh"]
    assert len(clients[0].listings) == len(clients[1].listings) == 1


async def test_changed_makes_the_next_listing_fresh() -> None:
    factory = Factory()
    cloud = access(factory, listing_max_age=60)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    assert await cloud.owned_instances(key, client, "uid-a") == []
    client.instances = [instance("ins-new", "uid-a")]
    assert await cloud.owned_instances(key, client, "uid-a") == []  # still the cached listing
    cloud.changed(key)
    assert [i.instance_id for i in await cloud.owned_instances(key, client, "uid-a")] == ["ins-new"]
    assert len(client.listings) == 2
    cloud.changed(AccountKey.of(ENDPOINT, "ap-shanghai", CREDS))  # an account never listed: no-op


async def test_offers_are_cached_per_account_and_forgotten_on_request() -> None:
    factory = Factory()
    cloud = access(factory, offers_max_age=60)
    key = AccountKey.of(ENDPOINT, "ap-guangzhou", CREDS)
    client = cloud.client(key, CREDS)
    offers = await cloud.offers(key, client, ["ap-guangzhou-3"], ["S5.MEDIUM4", "SA2.MEDIUM4"])
    assert set(offers) == {("ap-guangzhou-3", "S5.MEDIUM4"), ("ap-guangzhou-3", "SA2.MEDIUM4")}
    assert offers[("ap-guangzhou-3", "S5.MEDIUM4")].spot_price == Decimal("0.02")
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
