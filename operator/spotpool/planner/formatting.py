"""How times and prices are written into status, and read back.

Kept in one place so the status and the persisted bookkeeping (inflight launches, backoff) use the
same format: metav1.Time-style RFC 3339 in UTC with a `Z`, and decimal strings for money.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

COST_QUANTUM = Decimal("0.0001")
"""Status shows money to 4 decimals (docs/contract.md: hourlyCost "0.2130")."""


def as_utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC: CVM reports UTC, and mixing naive and aware would raise."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339, UTC, whole seconds (metav1.Time precision): `2025-01-01T00:00:00Z`."""
    return as_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """Inverse of `format_time` (also accepts offsets and fractions); always returns aware UTC."""
    return as_utc(datetime.fromisoformat(text))


def format_price(price: Decimal) -> str:
    """A market price: at least 4 decimals, more when the market quotes them (0.02135 stays)."""
    digits = max(4, -price.normalize().as_tuple().exponent)  # type: ignore[operator]
    return f"{price:.{digits}f}"


def format_cost(cost: Decimal) -> str:
    """A sum of prices, rounded half-up to exactly 4 decimals."""
    return str(cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP))
