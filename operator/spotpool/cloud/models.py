"""Plain data the CVM client returns and takes; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

# Instance states as DescribeInstances reports them.
PENDING = "PENDING"
RUNNING = "RUNNING"
LAUNCH_FAILED = "LAUNCH_FAILED"
SHUTDOWN = "SHUTDOWN"
TERMINATING = "TERMINATING"
STOPPED = "STOPPED"
ALIVE_STATES = frozenset({PENDING, RUNNING})


@dataclass(frozen=True)
class Credentials:
    """A CAM API key pair. The secret key is kept out of repr and str so it never reaches a log."""

    secret_id: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"Credentials(secret_id={self.secret_id!r})"


@dataclass(frozen=True)
class Instance:
    """One CVM instance as DescribeInstances reports it (the fields a pool needs)."""

    instance_id: str
    zone: str
    instance_type: str
    state: str
    charge_type: str
    created_time: datetime | None
    tags: dict[str, str]
    name: str = ""
    cpu: int = 0
    memory_gib: int = 0

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES


@dataclass(frozen=True)
class SpotOffer:
    """The spot market for one zone x instance type (DescribeZoneInstanceConfigInfos, SPOTPAID)."""

    zone: str
    instance_type: str
    spot_price: Decimal | None  # USD per instance-hour; None when the API gave no price
    list_price: Decimal | None
    sold_out: bool
    cpu: int = 0
    memory_gib: int = 0
