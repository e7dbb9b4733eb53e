"""Builders shared by the planner tests: a valid spec, instances, offers, launches, observations."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from spotpool.api.names import LAUNCH_TAG
from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.models import RUNNING, Instance, SpotOffer
from spotpool.planner.census import Census, take_census
from spotpool.planner.model import OWNER_UID_TAG, InflightLaunch, Observation, Plan, PoolKey
from spotpool.planner.tokens import client_token
from tests.support.specs import pool_spec

UID = "3f6d2a10-0000-4000-8000-000000000001"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
Z3, Z4 = "ap-guangzhou-3", "ap-guangzhou-4"
S5, SA2 = "S5.MEDIUM4", "SA2.MEDIUM4"


def make_spec(**overrides: Any) -> EnvironmentSpec:
    """A valid spec (camelCase keys, as the API server hands it over) with overrides."""
    return EnvironmentSpec.from_k8s(pool_spec(**{"expectedCount": 4, "maxPrice": "0.0500", **overrides}))


def make_instance(
    instance_id: str,
    *,
    zone: str = Z3,
    instance_type: str = S5,
    state: str = RUNNING,
    age_minutes: float | None = 60,
    owner: str | None = UID,
    launch: str | None = None,
) -> Instance:
    """An instance; `launch` sets the launch tag (the ClientToken of the call that bought it)."""
    tags = {OWNER_UID_TAG: owner} if owner is not None else {}
    if launch is not None:
        tags[LAUNCH_TAG] = launch
    created = NOW - timedelta(minutes=age_minutes) if age_minutes is not None else None
    return Instance(
        instance_id=instance_id,
        zone=zone,
        instance_type=instance_type,
        state=state,
        charge_type="SPOTPAID",
        created_time=created,
        tags=tags,
    )


def make_offer(zone: str, instance_type: str, price: str | None, *, sold_out: bool = False) -> SpotOffer:
    return SpotOffer(
        zone=zone,
        instance_type=instance_type,
        spot_price=Decimal(price) if price is not None else None,
        list_price=Decimal("0.1000"),
        sold_out=sold_out,
    )


def offers_of(*offers: SpotOffer) -> dict[PoolKey, SpotOffer]:
    return {(offer.zone, offer.instance_type): offer for offer in offers}


def all_offered(price: str = "0.0200") -> dict[PoolKey, SpotOffer]:
    """Every candidate pool of `make_spec()` offered at one price."""
    return offers_of(*(make_offer(z, t, price) for t in (S5, SA2) for z in (Z3, Z4)))


def make_launch(
    token: str,
    *,
    count: int,
    ids: tuple[str, ...] = (),
    zone: str = Z3,
    instance_type: str = S5,
    age_seconds: float = 5,
    seen: tuple[str, ...] = (),
) -> InflightLaunch:
    return InflightLaunch(
        client_token=token,
        zone=zone,
        instance_type=instance_type,
        count=count,
        requested_at=NOW - timedelta(seconds=age_seconds),
        instance_ids=ids,
        seen=seen,
    )


def token(sequence: int, *, zone: str = Z3, instance_type: str = S5, count: int = 1) -> str:
    """A ClientToken as the executor makes it (a UUID): `read_journal` accepts no other shape."""
    return client_token(UID, sequence, zone, instance_type, count)


def observe(*instances: Instance, confirmed: Mapping[str, Instance | None] | None = None) -> Observation:
    """An observation: `instances` listed, `confirmed` the InstanceIds lookups (None: gone)."""
    return Observation(listed=tuple(instances), confirmed=dict(confirmed or {}))


def census_of(
    instances: Iterable[Instance] = (),
    inflight: Iterable[InflightLaunch] = (),
    *,
    confirmed: Mapping[str, Instance | None] | None = None,
) -> Census:
    return take_census(instances=list(instances), inflight=list(inflight), owner_uid=UID, confirmed=confirmed)


def decided(p: Plan) -> tuple[Any, ...]:
    """Everything a plan decides, with its census in id order: the census keeps the listing's
    order, which must not change any decision."""

    def by_id(instances: Iterable[Instance]) -> list[Instance]:
        return sorted(instances, key=lambda i: i.instance_id)

    c = p.census
    fields = tuple(getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "census")
    return (*fields, by_id(c.owned), by_id(c.alive), c.foreign, by_id(c.unlisted), c.records, c.gone)
