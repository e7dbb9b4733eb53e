"""Builders shared by the planner tests: a valid spec, instances, offers, launches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.models import RUNNING, Instance, SpotOffer
from spotpool.planner.model import OWNER_UID_TAG, InflightLaunch, PoolKey

UID = "3f6d2a10-0000-4000-8000-000000000001"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
Z3, Z4 = "ap-guangzhou-3", "ap-guangzhou-4"
S5, SA2 = "S5.MEDIUM4", "SA2.MEDIUM4"


def make_spec(**overrides: Any) -> EnvironmentSpec:
    """A valid spec (camelCase keys, as the API server hands it over) with overrides."""
    spec: dict[str, Any] = {
        "expectedCount": 4,
        "maxPrice": "0.0500",
        "region": "ap-guangzhou",
        "zones": [Z3, Z4],
        "instanceTypes": [S5, SA2],
        "imageId": "img-pmqg1cw7",
        "credentialsSecretRef": {"name": "tencentcloud-credentials"},
    }
    spec.update(overrides)
    return EnvironmentSpec.from_k8s(spec)


def make_instance(
    instance_id: str,
    *,
    zone: str = Z3,
    instance_type: str = S5,
    state: str = RUNNING,
    age_minutes: float | None = 60,
    owner: str | None = UID,
) -> Instance:
    tags = {OWNER_UID_TAG: owner} if owner is not None else {}
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
) -> InflightLaunch:
    return InflightLaunch(
        client_token=token,
        zone=zone,
        instance_type=instance_type,
        count=count,
        requested_at=NOW - timedelta(seconds=age_seconds),
        instance_ids=ids,
    )
