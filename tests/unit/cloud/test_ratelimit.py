"""Token buckets: rates under concurrency, fairness, sharing by key, independence across keys.

Most tests run on virtual time: `VirtualTime.sleep` moves the clock to the sleeper's deadline, so
concurrent sleepers observe the time at which a real clock would wake them, without waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import httpx
import pytest

from spotpool.cloud.client import CvmClient
from spotpool.cloud.models import Credentials
from spotpool.cloud.ratelimit import (
    DEFAULT_RATE,
    RateLimiterRegistry,
    TokenBucket,
    default_registry,
    rate_for,
)


class VirtualTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        deadline = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, deadline)


async def _grant_times(bucket: TokenBucket, vt: VirtualTime, callers: int) -> list[float]:
    grants: list[tuple[int, float]] = []

    async def caller(index: int) -> None:
        await bucket.acquire()
        grants.append((index, vt.now))

    await asyncio.gather(*(caller(i) for i in range(callers)))
    return [t for _, t in sorted(grants)]


def _max_in_any_window(times: list[float], window: float = 1.0) -> int:
    return max(sum(1 for t in times if start <= t < start + window - 1e-9) for start in times)


@pytest.mark.parametrize("rate", [10.0, 40.0, 3.0])
async def test_concurrent_callers_never_exceed_the_rate_in_any_second(rate: float) -> None:
    vt = VirtualTime()
    bucket = TokenBucket(rate, clock=vt.clock, sleep=vt.sleep)
    times = await _grant_times(bucket, vt, callers=int(rate * 3) + 1)
    assert _max_in_any_window(times) <= rate
    # ... and does not dawdle: evenly spaced, the last one 3 s after the first.
    assert times[-1] - times[0] == pytest.approx(3.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1 / rate] * len(gaps))


async def test_callers_are_served_in_arrival_order() -> None:
    vt = VirtualTime()
    bucket = TokenBucket(10.0, clock=vt.clock, sleep=vt.sleep)
    times = await _grant_times(bucket, vt, callers=20)  # indexed by call order
    assert times == sorted(times)
    assert len(set(times)) == 20


async def test_burst_lets_the_first_tokens_through_then_paces() -> None:
    vt = VirtualTime()
    bucket = TokenBucket(10.0, burst=5, clock=vt.clock, sleep=vt.sleep)
    times = await _grant_times(bucket, vt, callers=15)
    assert times[:5] == [1000.0] * 5
    assert times[5:] == pytest.approx([1000.0 + 0.1 * k for k in range(1, 11)])


async def test_idle_time_does_not_bank_more_than_the_burst() -> None:
    vt = VirtualTime()
    bucket = TokenBucket(10.0, clock=vt.clock, sleep=vt.sleep)
    await bucket.acquire()
    vt.now += 60.0
    times = await _grant_times(bucket, vt, callers=3)
    assert times == pytest.approx([1060.0, 1060.1, 1060.2])


async def test_no_sleep_when_a_token_is_available() -> None:
    vt = VirtualTime()
    bucket = TokenBucket(10.0, clock=vt.clock, sleep=vt.sleep)
    await bucket.acquire()
    vt.now += 0.5
    await bucket.acquire()
    assert vt.sleeps == []


async def test_cancelled_waiter_gives_its_slot_back() -> None:
    vt = VirtualTime()
    blocked = asyncio.Event()

    async def hang(seconds: float) -> None:
        vt.sleeps.append(seconds)
        blocked.set()
        await asyncio.Event().wait()

    bucket = TokenBucket(10.0, clock=vt.clock, sleep=hang)
    await bucket.acquire()  # slot at t, no wait
    waiter = asyncio.create_task(bucket.acquire())  # slot at t+0.1: hangs
    await blocked.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    vt.now += 0.1
    await bucket.acquire()  # gets the returned slot immediately
    assert vt.sleeps == [pytest.approx(0.1)]


async def test_real_clock_paces_concurrent_callers() -> None:
    """The same guarantee on the real clock, with generous bounds for a loaded machine."""
    bucket = TokenBucket(40.0)
    started = time.monotonic()
    await asyncio.gather(*(bucket.acquire() for _ in range(21)))
    elapsed = time.monotonic() - started
    assert 0.5 - 0.02 <= elapsed < 3.0


def test_rates_default_to_the_documented_limits() -> None:
    assert rate_for("RunInstances") == 10
    assert rate_for("TerminateInstances") == 10
    assert rate_for("DescribeInstances") == 40
    assert rate_for("DescribeZoneInstanceConfigInfos") == 40
    assert rate_for("SomeOtherAction") == DEFAULT_RATE == 20
    assert rate_for("RunInstances", {"RunInstances": 2.5}) == 2.5
    assert rate_for("DescribeInstances", {"RunInstances": 2.5}) == 40


def test_registry_shares_a_bucket_per_key_and_honours_the_strictest_rate() -> None:
    registry = RateLimiterRegistry()
    a = registry.bucket("cvm.tencentcloudapi.com", "AKID1", "RunInstances", 10.0)
    assert registry.bucket("cvm.tencentcloudapi.com", "AKID1", "RunInstances", 10.0) is a
    assert registry.bucket("cvm.tencentcloudapi.com", "AKID1", "RunInstances", 5.0) is a
    assert a.rate == pytest.approx(5.0)
    registry.bucket("cvm.tencentcloudapi.com", "AKID1", "RunInstances", 50.0)
    assert a.rate == pytest.approx(5.0)
    others = [
        registry.bucket("cvm.ap-shanghai.tencentcloudapi.com", "AKID1", "RunInstances", 10.0),
        registry.bucket("cvm.tencentcloudapi.com", "AKID2", "RunInstances", 10.0),
        registry.bucket("cvm.tencentcloudapi.com", "AKID1", "TerminateInstances", 10.0),
    ]
    assert all(b is not a for b in others) and len({id(b) for b in others}) == 3


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"Response": {"RequestId": "r"}},
                          headers={"Content-Type": "application/json"})


def _client(vt_registry: RateLimiterRegistry | None, secret_id: str, endpoint: str,
            **kwargs: object) -> CvmClient:
    return CvmClient(
        Credentials(secret_id, "k" * 32), "ap-guangzhou", endpoint,
        transport=httpx.MockTransport(_ok), limiter=vt_registry, **kwargs,  # type: ignore[arg-type]
    )


async def _five_calls_each(first: CvmClient, second: CvmClient) -> None:
    async with first, second:
        await asyncio.gather(
            *(c.call("DescribeZones", {}) for c in (first, second) for _ in range(5))
        )


async def test_clients_with_the_same_key_share_one_bucket() -> None:
    vt = VirtualTime()
    registry = RateLimiterRegistry(clock=vt.clock, sleep=vt.sleep)
    a = _client(registry, "AKIDSAME", "https://cvm.tencentcloudapi.com")
    b = _client(registry, "AKIDSAME", "https://cvm.tencentcloudapi.com")
    await _five_calls_each(a, b)
    # 10 calls at 20/s on one schedule: waits 0.05 .. 0.45 s (the first call waits not at all).
    assert sorted(vt.sleeps) == pytest.approx([0.05 * k for k in range(1, 10)])


@pytest.mark.parametrize(
    ("id_b", "endpoint_b"),
    [("AKIDOTHER", "https://cvm.tencentcloudapi.com"),
     ("AKIDSAME", "https://cvm.ap-shanghai.tencentcloudapi.com")],
    ids=["other-sub-account", "other-access-region"],
)
async def test_clients_with_different_keys_are_independent(id_b: str, endpoint_b: str) -> None:
    vt = VirtualTime()
    registry = RateLimiterRegistry(clock=vt.clock, sleep=vt.sleep)
    a = _client(registry, "AKIDSAME", "https://cvm.tencentcloudapi.com")
    b = _client(registry, id_b, endpoint_b)
    await _five_calls_each(a, b)
    # Two schedules of 5 calls each: waits 0.05 .. 0.2 s, twice.
    assert sorted(vt.sleeps) == pytest.approx(sorted([0.05 * k for k in range(1, 5)] * 2))


async def test_actions_have_independent_buckets() -> None:
    vt = VirtualTime()
    registry = RateLimiterRegistry(clock=vt.clock, sleep=vt.sleep)
    async with _client(registry, "AKIDSAME", "https://cvm.tencentcloudapi.com") as client:
        await asyncio.gather(client.call("RunInstances", {"ClientToken": "t"}),
                             client.call("TerminateInstances", {}),
                             client.call("DescribeInstances", {}))
    assert vt.sleeps == []


async def test_client_rate_overrides_apply() -> None:
    vt = VirtualTime()
    registry = RateLimiterRegistry(clock=vt.clock, sleep=vt.sleep)
    async with _client(registry, "AKIDSAME", "https://cvm.tencentcloudapi.com",
                       rate_limits={"DescribeInstances": 4.0}) as client:
        await asyncio.gather(*(client.call("DescribeInstances", {}) for _ in range(3)))
    assert vt.sleeps == pytest.approx([0.25, 0.5])


async def test_clients_share_the_process_wide_registry_by_default() -> None:
    """Two clients built independently, no registry passed: the second call waits for the first.

    Real time, 2 requests/s: the shared schedule makes the later caller wait 0.5 s; separate
    buckets would let both through at once. A fresh secret id keeps other tests' buckets out.
    """
    secret_id = f"AKID{uuid.uuid4().hex}"
    limits = {"DescribeZones": 2.0}
    a = _client(None, secret_id, "http://127.0.0.1:9", rate_limits=limits)
    b = _client(None, secret_id, "http://127.0.0.1:9", rate_limits=limits)
    async with a, b:
        await a.call("DescribeZones", {})
        started = time.monotonic()
        await b.call("DescribeZones", {})
        assert time.monotonic() - started >= 0.4
    assert default_registry().bucket("127.0.0.1:9", secret_id, "DescribeZones", 2.0).rate == 2.0
