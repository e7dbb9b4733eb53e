"""Client-side rate limits, shared by every CVM caller in the process.

Tencent counts requests per Action + access region (the API host) + sub-account, in one-second
windows, and answers excess with `RequestLimitExceeded`. Many pools (and many CvmClient objects)
may use the same key pair, so the buckets live in a process-wide registry keyed exactly like
Tencent's counter, not inside a client: two clients that would hit the same server-side counter
wait on the same bucket.

Each bucket is a GCRA ("virtual scheduling") token bucket: a caller reserves the next free slot
synchronously, then sleeps exactly until that slot. Reservation needs no lock (nothing awaits
between reading and advancing the schedule), holds no asyncio object, so a bucket works across
event loops, and callers are served strictly in arrival order without polling.

With the default burst of 1 the slots are evenly spaced 1/rate apart, so no one-second window
ever sees more than `rate` requests leave this process, which is what Tencent's window counts.

Buckets are keyed by SecretId AND a digest of the SecretKey (`account_key`), not by SecretId
alone: SecretIds are not secret, and a tenant who names another team's SecretId with a wrong key
must not drain that team's budget (its requests are refused by Tencent anyway). Two valid keys of
one sub-account (a rotation) briefly get two buckets; that errs on Tencent's side for a moment,
and `RequestLimitExceeded` is retried. Since anyone may mint new keys, the registry drops idle
buckets once it holds many: an idle GCRA bucket is indistinguishable from a fresh one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from threading import Lock

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Requests per second per (action, API host, sub-account), as Tencent publishes them (docs/cvm-api.md).
DEFAULT_RATE_LIMITS: Mapping[str, float] = {
    "RunInstances": 10.0,
    "TerminateInstances": 10.0,
    "InquiryPriceRunInstances": 10.0,
    "DescribeInstancesOperationLimit": 10.0,
    "DescribeInstances": 40.0,
    "DescribeInstancesStatus": 40.0,
    "DescribeZoneInstanceConfigInfos": 40.0,
    "DescribeZones": 20.0,
    "DescribeRegions": 20.0,
    # Tag service (its own host, so its own buckets): "A maximum of 20 requests per second".
    "TagResources": 20.0,
    "UnTagResources": 20.0,
}
DEFAULT_RATE = 20.0
_EPSILON = 1e-9  # seconds
PRUNE_ABOVE = 1024  # buckets; past this, idle ones are dropped on the next new key
# A per-process salt: the digest in a bucket key says nothing about the key outside this process.
_DIGEST_SALT = os.urandom(16)


def account_key(secret_id: str, secret_key: str) -> str:
    """The rate-limit identity of a key pair: the SecretId plus a salted digest of the key."""
    digest = hmac.new(_DIGEST_SALT, secret_key.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{secret_id}#{digest[:16]}"


def rate_for(action: str, overrides: Mapping[str, float] | None = None) -> float:
    """The per-second limit for an action: an override, else the documented one, else 20/s."""
    if overrides and action in overrides:
        return overrides[action]
    return DEFAULT_RATE_LIMITS.get(action, DEFAULT_RATE)


class TokenBucket:
    """An async token bucket of `rate` tokens per second holding at most `burst` tokens."""

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self._clock = clock
        self._sleep = sleep
        self._burst = burst
        self._interval = 1.0 / rate
        self._next_slot = float("-inf")  # GCRA "theoretical arrival time" of the next request
        self._lock = Lock()  # the registry is process-wide: loops in other threads may share it

    @property
    def rate(self) -> float:
        return 1.0 / self._interval

    def idle(self) -> bool:
        """No slot is reserved beyond now: the bucket behaves exactly like a fresh one."""
        with self._lock:
            return self._next_slot <= self._clock()

    def tighten(self, rate: float) -> None:
        """Lower the rate (never raise it): a bucket shared by clients honours the strictest."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self._interval = max(self._interval, 1.0 / rate)

    def _take(self) -> tuple[float, float]:
        """Reserve the next slot: (seconds to wait for it, the schedule's end after it)."""
        with self._lock:
            now = self._clock()
            slot = max(self._next_slot, now)
            self._next_slot = slot + self._interval
            wait = slot - (self._burst - 1) * self._interval - now
            # Float residue of the burst arithmetic is not a wait.
            return (wait if wait > _EPSILON else 0.0), self._next_slot

    async def acquire(self) -> None:
        """Wait for a token; callers are served in the order they called."""
        wait, reserved_until = self._take()
        if wait <= 0:
            return
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            # Give the slot back if nobody reserved after us; otherwise later callers already
            # queued behind it, and leaving the gap only errs on the slow side.
            with self._lock:
                if self._next_slot == reserved_until:
                    self._next_slot -= self._interval
            raise


BucketKey = tuple[str, str, str]  # (API host, account, action); account: see `account_key`


@dataclass
class RateLimiterRegistry:
    """Buckets by (API host, account, action); one process-wide instance serves all clients.

    `account` is whatever identifies a server-side counter to the caller; CvmClient passes
    `account_key(secret_id, secret_key)`.

    Tests build their own registry with a fake clock; production code uses `default_registry()`.
    """

    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    burst: int = 1
    _buckets: dict[BucketKey, TokenBucket] = field(default_factory=dict)
    _lock: Lock = field(default_factory=Lock)

    def bucket(self, host: str, secret_id: str, action: str, rate: float) -> TokenBucket:
        """The shared bucket for a key, created at `rate` or tightened to it."""
        key = (host, secret_id, action)
        with self._lock:  # clients may be built from several threads (one loop each)
            existing = self._buckets.get(key)
            if existing is None:
                if len(self._buckets) >= PRUNE_ABOVE:
                    self._prune()
                existing = self._buckets[key] = TokenBucket(
                    rate, burst=self.burst, clock=self.clock, sleep=self.sleep
                )
            elif rate < existing.rate:
                existing.tighten(rate)
            return existing

    def _prune(self) -> None:
        """Drop idle buckets (the lock is held). A bucket some caller still holds keeps working;
        a later caller of the same key starts a fresh one, which is what the idle one was."""
        for key in [key for key, bucket in self._buckets.items() if bucket.idle()]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

    async def acquire(
        self,
        host: str,
        secret_id: str,
        action: str,
        overrides: Mapping[str, float] | None = None,
    ) -> None:
        await self.bucket(host, secret_id, action, rate_for(action, overrides)).acquire()


_DEFAULT_REGISTRY = RateLimiterRegistry()


def default_registry() -> RateLimiterRegistry:
    """The process-wide registry every CvmClient uses unless given another."""
    return _DEFAULT_REGISTRY
