"""Benchmark of the CVM simulator: describe throughput with 10,000 instances, purchase latency.

Runs the simulator in its own process (as `spotpool simulator` would run), fills it with 10,000
instances through signed RunInstances calls of 100, then drives paginated, tag-filtered
DescribeInstances from one aiohttp client for a few seconds. Prints:

- server time of one 100-instance RunInstances (from the simulator's ledger; target < 10 ms),
- DescribeInstances calls per second, 100 instances per page (target >= 1,000/s).

The simulator's RunInstances and DescribeInstances rate limits are raised for the run.

    .venv/bin/python benchmarks/simulator_bench.py [--seconds 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from spotpool.cloud.signing import sign
from spotpool.simulator import SimulatorConfig
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY

INSTANCES = 10_000
PAGE = 100
TAG = {"Key": "spotpool.io/environment-uid", "Value": "bench-0000"}


class Signer:
    """Signs requests for one host; the signature is recomputed per request (as a client must)."""

    def __init__(self, host: str) -> None:
        self.host = host

    def headers(self, action: str, body: bytes) -> dict[str, str]:
        ts = int(time.time())
        auth = sign(
            secret_id=DEMO_SECRET_ID,
            secret_key=DEMO_SECRET_KEY,
            service="cvm",
            host=self.host,
            content_type="application/json",
            payload=body,
            timestamp=ts,
        ).authorization
        return {
            "Content-Type": "application/json",
            "Host": self.host,
            "X-TC-Action": action,
            "X-TC-Version": "2017-03-12",
            "X-TC-Region": "ap-guangzhou",
            "X-TC-Timestamp": str(ts),
            "Authorization": auth,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_simulator(port: int, config_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spotpool.simulator",
            "--port",
            str(port),
            "--config",
            str(config_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_healthy(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with session.get(f"{url}/_sim/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        await asyncio.sleep(0.1)


async def api(
    session: aiohttp.ClientSession, url: str, signer: Signer, action: str, params: dict
) -> dict:  # type: ignore[type-arg]
    body = json.dumps(params).encode()
    async with session.post(f"{url}/", data=body, headers=signer.headers(action, body)) as resp:
        response = (await resp.json())["Response"]
    if "Error" in response:
        raise RuntimeError(f"{action}: {response['Error']}")
    return response  # type: ignore[no-any-return]


async def fill(session: aiohttp.ClientSession, url: str, signer: Signer) -> list[float]:
    """Buy 10,000 instances, 100 per call, spread over zones and types; return server times."""
    zones = ["ap-guangzhou-3", "ap-guangzhou-4", "ap-guangzhou-6", "ap-guangzhou-7"]
    types = ["S5.MEDIUM4", "SA2.MEDIUM4", "S6.MEDIUM4", "S2.MEDIUM4", "S5.LARGE8"]
    pools = [(z, t) for z in zones for t in types]
    async with session.delete(f"{url}/_sim/calls"):
        pass
    for call in range(INSTANCES // 100):
        zone, instance_type = pools[call % len(pools)]
        await api(
            session,
            url,
            signer,
            "RunInstances",
            {
                "InstanceChargeType": "SPOTPAID",
                "Placement": {"Zone": zone},
                "InstanceType": instance_type,
                "ImageId": "img-pmqg1cw7",
                "InstanceCount": 100,
                "InstanceName": "bench-{R:1}",
                "ClientToken": f"bench-{call}",
                "InstanceMarketOptions": {
                    "MarketType": "spot",
                    "SpotOptions": {"MaxPrice": "1", "SpotInstanceType": "one-time"},
                },
                "TagSpecification": [{"ResourceType": "instance", "Tags": [TAG]}],
            },
        )
    async with session.get(f"{url}/_sim/calls?action=RunInstances") as resp:
        calls = (await resp.json())["calls"]
    return [c["durationMs"] for c in calls if c["errorCode"] is None]


async def describe_load(
    session: aiohttp.ClientSession,
    url: str,
    signer: Signer,
    seconds: float,
    concurrency: int,
    filters: list[dict],  # type: ignore[type-arg]
) -> tuple[int, float, list[float]]:
    """(calls, elapsed seconds, latencies ms) of paginated describes for about `seconds`."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    counter = 0

    expected = f'"TotalCount":{INSTANCES},'.encode()

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            offset = (counter % (INSTANCES // PAGE)) * PAGE
            counter += 1
            body = json.dumps({"Filters": filters, "Offset": offset, "Limit": PAGE}).encode()
            started = time.perf_counter()
            async with session.post(
                f"{url}/", data=body, headers=signer.headers("DescribeInstances", body)
            ) as resp:
                raw = await resp.read()
            latencies.append((time.perf_counter() - started) * 1000)
            # Parsing 140 KB of JSON costs this one client more than the simulator spends
            # answering, so every 50th page is parsed and checked in full, the rest by their count.
            if counter % 50 == 0:
                page = json.loads(raw)["Response"]
                if page["TotalCount"] != INSTANCES or len(page["InstanceSet"]) != PAGE:
                    raise RuntimeError(f"unexpected page: {page}"[:300])
            elif expected not in raw[:64]:
                raise RuntimeError(f"unexpected answer: {raw[:300]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - started, latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def main(seconds: float, concurrency: int) -> None:
    config = SimulatorConfig.default().with_overrides(
        {
            "seed": 1,
            "market": {"default_stock": 10_000, "spot_quota_vcpus": 1_000_000},
            "api": {"rate_limits": {"RunInstances": 1e6, "DescribeInstances": 1e6}},
        }
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "bench.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump()))
        server = start_simulator(port, config_path)
        try:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                await wait_healthy(session, url)
                signer = Signer(f"127.0.0.1:{port}")
                run_times = await fill(session, url, signer)
                print(
                    f"RunInstances x100, server time over {len(run_times)} calls: "
                    f"median {statistics.median(run_times):.2f} ms, "
                    f"p95 {pct(run_times, 95):.2f} ms, "
                    f"max {max(run_times):.2f} ms (target < 10 ms)"
                )
                await describe_load(session, url, signer, 0.5, concurrency, [])  # warm-up
                scenarios = {
                    "1 tag filter": [{"Name": f"tag:{TAG['Key']}", "Values": [TAG["Value"]]}],
                    "tag + state filters": [
                        {"Name": f"tag:{TAG['Key']}", "Values": [TAG["Value"]]},
                        {"Name": "instance-state", "Values": ["PENDING", "RUNNING"]},
                    ],
                }
                for name, filters in scenarios.items():
                    for workers in sorted({1, concurrency}):
                        calls, elapsed, lat = await describe_load(
                            session, url, signer, seconds, workers, filters
                        )
                        print(
                            f"DescribeInstances ({name}, {PAGE}/page of {INSTANCES}, "
                            f"{workers} in flight): {calls / elapsed:,.0f} calls/s, "
                            f"latency median {statistics.median(lat):.2f} ms, "
                            f"p95 {pct(lat, 95):.2f} ms (target >= 1,000/s)"
                        )
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each describe run")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.concurrency))
