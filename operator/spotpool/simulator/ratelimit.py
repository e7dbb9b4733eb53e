"""Per-action request rate limits, as token buckets per action and principal (docs/cvm-api.md).

The principal's key is `iam.Principal.rate_key`: a key pair's SecretId (as before roles existed),
or one key per role for all its sessions, so renewing temporary credentials does not refill the
bucket and each account (through its keys and roles) is limited on its own.

A client that passes against an unlimited fake can still be throttled to a standstill in
production; the simulator enforces the published limits by default so pacing bugs show up here.
"""

from __future__ import annotations

from collections.abc import Callable

#: Epoch seconds are large floats: 0.1 s later can refill 0.99999... tokens at 10/s.
_EPSILON = 1e-6


class RateLimiter:
    """Token buckets of capacity `rate` refilled at `rate` per second; one second of burst."""

    def __init__(self, rates: dict[str, float], clock: Callable[[], float]) -> None:
        self._rates = dict(rates)
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def allow(self, action: str, secret_id: str) -> bool:  # secret_id: the principal's rate key
        """Take one token; False when the bucket is empty (answer RequestLimitExceeded)."""
        rate = self._rates.get(action)
        if rate is None:
            return True
        now = self._clock()
        capacity = max(rate, 1.0)
        tokens, last = self._buckets.get((action, secret_id), (capacity, now))
        tokens = min(capacity, tokens + max(now - last, 0.0) * rate)
        if tokens < 1.0 - _EPSILON:
            self._buckets[(action, secret_id)] = (tokens, now)
            return False
        self._buckets[(action, secret_id)] = (tokens - 1.0, now)
        return True

    def reset(self) -> None:
        self._buckets.clear()
