"""The CVM client against an endpoint that lies (tests/support/hostile.py), over real loopback HTTP.

A pool author may name the endpoint, so every answer here is one a hostile or misconfigured server
could give. Each test asserts three things: the client raises a CloudError with a category (never
another exception), the error's text is bounded, filtered and quotes nothing the server sent, and
the memory the call took (tracemalloc's peak, server included) stays within a fixed bound. The
table in docs/security.md lists these cases and what the caller sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from spotpool.cloud.client import DEFAULT_MAX_REPLY_BYTES, PAGE_CONCURRENCY, CvmClient
from spotpool.cloud.errors import CloudError, CloudNetworkError, ErrorCategory
from spotpool.cloud.models import Credentials, RunInstancesRequest
from spotpool.cloud.ratelimit import RateLimiterRegistry
from tests.support import hostile
from tests.support.hostile import MARKER, HostileServer

SECRET = "HostileTestSecretKeyNeverShown0123"
TOKEN = "HostileTestSessionTokenNeverShown"
MIB = 1024 * 1024
# What one failed call may allocate at its peak (client and server together): the reply cap, a
# bytearray's growth slack, and parsing. Unbounded code reads the whole 200 MB body instead.
CALL_BOUND = 3 * DEFAULT_MAX_REPLY_BYTES + 4 * MIB
# A listing may also hold its budget of instances and PAGE_CONCURRENCY pages being parsed.
LISTING_BUDGET = 4 * MIB
LISTING_BOUND = 2 * LISTING_BUDGET + PAGE_CONCURRENCY * DEFAULT_MAX_REPLY_BYTES
MESSAGE_BOUND = 300
MEASURED: dict[str, int] = {}  # scenario -> peak bytes, printed at the end for docs/security.md


async def _no_wait(_: float) -> None:
    return None


def make_client(url: str, **kwargs: Any) -> CvmClient:
    """A client with real HTTP and no waiting: rate limits and backoff sleep for no time."""
    kwargs.setdefault("max_attempts", 1)
    return CvmClient(
        Credentials("AKIDHOSTILE", SECRET, TOKEN), "ap-guangzhou", url,
        limiter=RateLimiterRegistry(sleep=_no_wait), sleep=_no_wait, **kwargs,
    )


@contextlib.contextmanager
def peak_memory(scenario: str) -> Any:
    """Measure the traced peak (bytes above the start) of the block into MEASURED[scenario]."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
    finally:
        MEASURED[scenario] = tracemalloc.get_traced_memory()[1] - base
        if started_here:
            tracemalloc.stop()


def assert_filtered(err: CloudError) -> None:
    """Nothing the server planted, no secret, no control character, and a bounded length."""
    for text in (str(err), repr(err), err.message, str(err.args)):
        assert MARKER not in text
        assert SECRET not in text and TOKEN not in text
        assert not re.search(r"[\x00-\x1f\x7f\u202e]", text), text
    assert len(err.message) <= MESSAGE_BOUND
    assert len(err.code) <= 128 and re.fullmatch(r"[A-Za-z]+(\.[A-Za-z0-9]+)*", err.code)
    assert isinstance(err.category, ErrorCategory)


async def failure(
    server_url: str, scenario: str, call: Callable[[CvmClient], Awaitable[Any]] | None = None,
    *, bound: int = CALL_BOUND, **kwargs: Any,
) -> CloudError:
    """Run `call` (default: DescribeZones) against the server; return the CloudError it raised,
    checked by `assert_filtered`, with the call's peak memory measured and bounded."""
    async with make_client(server_url, **kwargs) as client:
        with peak_memory(scenario), pytest.raises(CloudError) as caught:
            await (call(client) if call else client.call("DescribeZones", {}))
    assert_filtered(caught.value)
    assert MEASURED[scenario] < bound, f"{scenario}: peak {MEASURED[scenario]} bytes"
    return caught.value


@pytest.fixture(scope="module", autouse=True)
def report_memory() -> Any:
    yield
    for scenario, peak in sorted(MEASURED.items()):
        print(f"peak memory {scenario}: {peak / MIB:.2f} MiB")


@contextlib.asynccontextmanager
async def serving(behaviour: hostile.Behaviour) -> AsyncIterator[HostileServer]:
    async with hostile.serve(behaviour) as server:
        yield server


# ------------------------------------------------------------------ listings that lie


async def test_a_huge_total_count_is_refused_after_one_page() -> None:
    async with serving(hostile.listing(200_000)) as server:
        err = await failure(server.url, "TotalCount 200000",
                            lambda c: c.describe_instances())
    assert err.code == "InvalidResponse" and err.category is ErrorCategory.UNKNOWN
    assert "TotalCount exceeds 50000" in err.message
    assert server.requests == 1


async def test_a_listing_under_the_bound_is_read_with_bounded_concurrency() -> None:
    async def latency() -> None:
        await asyncio.sleep(0.002)  # the server's own pace, so concurrent reads overlap

    async with serving(hostile.listing(10_000, latency=latency)) as server:
        async with make_client(server.url) as client:
            instances = await client.describe_instances()
    assert len({i.instance_id for i in instances}) == 10_000
    assert server.requests == 100
    assert 1 < server.max_in_flight <= PAGE_CONCURRENCY


async def test_pages_too_small_to_reach_the_total_are_refused_before_reading_them() -> None:
    async with serving(hostile.listing(40_000, page_size=1)) as server:
        err = await failure(server.url, "TotalCount 40000, 1 per page",
                            lambda c: c.describe_instances())
    assert err.code == "InvalidResponse" and "pages" in err.message
    assert server.requests == 1


async def test_a_listing_bound_is_a_constructor_argument() -> None:
    async with serving(hostile.listing(300)) as server:
        err = await failure(server.url, "TotalCount over max_listing",
                            lambda c: c.describe_instances(), max_listing=250)
    assert "TotalCount exceeds 250" in err.message


async def test_instances_with_huge_tags_exhaust_the_listing_budget() -> None:
    behaviour = hostile.listing(5_000, tags=64, tag_size=100)
    async with serving(behaviour) as server:
        err = await failure(server.url, "64 tags of 200 chars per instance",
                            lambda c: c.describe_instances(), bound=LISTING_BOUND,
                            max_listing_bytes=LISTING_BUDGET)
    assert err.code == "InvalidResponse" and "bytes" in err.message
    assert server.requests < 10


async def test_ids_query_answered_with_more_instances_than_asked_is_refused() -> None:
    async with serving(hostile.listing(150)) as server:
        err = await failure(server.url, "ids query, 150 listed",
                            lambda c: c.describe_instances(instance_ids=["ins-00000001"]))
    assert err.code == "InvalidResponse"


@pytest.mark.parametrize(
    "fields",
    [
        {"TotalCount": "many", "InstanceSet": []},
        {"TotalCount": -1, "InstanceSet": []},
        {"TotalCount": True, "InstanceSet": []},
        {"TotalCount": 1.5, "InstanceSet": []},
        {"TotalCount": 1, "InstanceSet": {"ins-1": {}}},
        {"TotalCount": 1, "InstanceSet": ["ins-00000001"]},
        {"TotalCount": 1, "InstanceSet": [{"InstanceId": f"<b>{MARKER}</b>"}]},
        {"TotalCount": 1, "InstanceSet": [{"InstanceId": "ins-1", "Tags": MARKER}]},
        {"TotalCount": 1, "InstanceSet": [{"InstanceId": "ins-1", "CPU": MARKER}]},
        {"TotalCount": 1, "InstanceSet": [{"InstanceId": "ins-1", "CPU": 10**300}]},
        {"TotalCount": 1, "InstanceSet": [{"InstanceId": "ins-1", "InstanceName": "n" * 5000}]},
        {"TotalCount": 101, "InstanceSet": [{"InstanceId": f"ins-{n}"} for n in range(101)]},
    ],
    ids=["total-text", "total-negative", "total-bool", "total-float", "set-object",
         "set-of-strings", "id-markup", "tags-text", "cpu-text", "cpu-huge", "name-5000",
         "page-over-100"],
)
async def test_malformed_listings_are_invalid_responses(fields: dict[str, Any]) -> None:
    async with serving(hostile.answer(hostile.envelope(fields))) as server:
        err = await failure(server.url, "malformed listing", lambda c: c.describe_instances())
    assert err.code == "InvalidResponse"


async def test_run_instances_answering_foreign_ids_is_refused() -> None:
    ids = [f"ins-{n}" for n in range(5)]
    async with serving(hostile.answer(hostile.envelope({"InstanceIdSet": ids}))) as server:
        err = await failure(server.url, "RunInstances 5 ids for 1", lambda c: c.run_instances(RunInstancesRequest(
            zone="ap-guangzhou-3", instance_type="S5.MEDIUM4", image_id="img-1", count=1,
            max_price="0.1", client_token="t-1", tags={})))
    assert err.code == "InvalidResponse" and err.action == "RunInstances"


async def test_malformed_offers_are_invalid_responses() -> None:
    body = hostile.envelope({"InstanceTypeQuotaSet": [{"Zone": MARKER * 10, "Cpu": "x"}]})
    async with serving(hostile.answer(body)) as server:
        err = await failure(server.url, "malformed offers", lambda c: c.describe_spot_offers(
            zones=["ap-guangzhou-3"], instance_types=["S5.MEDIUM4"]))
    assert err.code == "InvalidResponse"


# ------------------------------------------------------------------ bodies that never end


async def test_a_huge_body_is_abandoned_at_the_cap() -> None:
    async with serving(lambda s, r: s.stream(r, total=300 * MIB)) as server:
        err = await failure(server.url, "300 MB body")
        await asyncio.wait_for(server.client_gone.wait(), 10)
    assert err.code == "InvalidResponse" and str(DEFAULT_MAX_REPLY_BYTES) in err.message
    assert server.bytes_written < 300 * MIB


async def test_a_200_mb_error_message_is_never_held() -> None:
    async with serving(hostile.huge_message(200 * MIB)) as server:
        err = await failure(server.url, "200 MB error message")
        await asyncio.wait_for(server.client_gone.wait(), 10)
    assert err.code == "InvalidResponse"
    assert server.bytes_written < 200 * MIB


async def test_a_long_error_message_within_the_cap_is_clipped() -> None:
    message = "\x1b[31m" + MARKER[:3] + "x" * (2 * MIB)
    async with serving(hostile.error_code("InternalError", message)) as server:
        err = await failure(server.url, "2 MiB error message")
    assert err.code == "InternalError" and err.category is ErrorCategory.TRANSIENT
    assert err.message.endswith("...") and len(err.message) == MESSAGE_BOUND


async def test_a_declared_content_length_over_the_cap_is_refused_unread() -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n{")
    async with hostile.serve_raw(head) as server:
        err = await failure(server.url, "Content-Length 10 GB")
    assert err.code == "InvalidResponse"


async def test_a_gzip_bomb_is_inflated_only_up_to_the_cap() -> None:
    behaviour = hostile.gzip_bomb(256 * MIB)
    async with serving(behaviour) as server:
        err = await failure(server.url, "gzip bomb 256 MiB")
    assert err.code == "InvalidResponse"


async def test_an_unsupported_content_encoding_is_not_a_cvm_reply() -> None:
    behaviour = hostile.answer(b"\x00" * 64 + MARKER.encode(), headers={"Content-Encoding": "br"})
    async with serving(behaviour) as server:
        err = await failure(server.url, "Content-Encoding br")
    assert isinstance(err, CloudNetworkError) and err.code == "ServerNetworkError"


async def test_a_slow_drip_is_cut_by_the_deadline() -> None:
    async with serving(hostile.drip(0.05)) as server:
        started = time.monotonic()
        err = await failure(server.url, "slow drip", deadline=1.0)
        elapsed = time.monotonic() - started
    assert err.code == "ClientNetworkError" and err.category is ErrorCategory.TRANSIENT
    assert err.message == "no complete reply within 1 s"
    assert elapsed < 5


# ------------------------------------------------------------------ replies that are not CVM's


@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [
        (502, "text/html", "HTTP 502 with Content-Type text/html (not a CVM reply)"),
        (500, "application/json", "HTTP 500 with Content-Type application/json (not a CVM reply)"),
        (200, "text/html", "HTTP 200 with Content-Type text/html (not a CVM reply)"),
        (200, "application/xml", "HTTP 200 with Content-Type application/xml (not a CVM reply)"),
        (200, "x/" + "y" * 100, "HTTP 200 with Content-Type (malformed) (not a CVM reply)"),
        (200, "application/json",
         "HTTP 200 with Content-Type application/json, but not a CVM reply "
         "(no JSON Response object)"),
    ],
    ids=["502-html", "500-json", "200-html", "200-xml", "200-odd-type", "200-json-not-json"],
)
async def test_non_cvm_replies_name_status_and_type_never_the_body(
    status: int, content_type: str, expected: str
) -> None:
    body = f"<html><body>{MARKER} {SECRET}</body></html>"
    behaviour = hostile.answer(body, status=status, content_type=content_type)
    async with serving(behaviour) as server:
        err = await failure(server.url, f"{status} {content_type[:20]}")
    assert isinstance(err, CloudNetworkError) and err.http_status == status
    assert err.code == "ServerNetworkError" and err.message == expected


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000,
        b'{"Response": {"TotalCount": 1' + b"0" * 5000 + b"}}",
        b"\xff\xfe" + MARKER.encode() * 10,
        json.dumps({"Response": MARKER}).encode(),
        json.dumps({"Response": {"Error": MARKER, "RequestId": "r"}}).encode(),
        json.dumps({"Response": {"Error": {"Message": MARKER}, "RequestId": "r"}}).encode(),
    ],
    ids=["nested-200k", "int-5000-digits", "not-utf8", "response-string", "error-string",
         "error-no-code"],
)
async def test_garbled_json_is_a_fixed_server_network_error(body: bytes) -> None:
    async with serving(hostile.answer(body)) as server:
        err = await failure(server.url, "garbled JSON")
    assert err.code == "ServerNetworkError"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(status: int) -> None:
    async with serving(hostile.answer("target")) as target:
        behaviour = hostile.answer(f"<a href='{target.url}'>{MARKER}</a>", status=status,
                                   content_type="text/html", headers={"Location": target.url})
        async with serving(behaviour) as server:
            err = await failure(server.url, f"redirect {status}")
    assert err.message == f"HTTP {status} with Content-Type text/html (redirect, not followed)"
    assert target.requests == 0


async def test_a_non_http_service_is_a_protocol_failure_that_quotes_nothing() -> None:
    reply = f"-ERR unknown command 'POST', {MARKER}\r\n".encode()
    async with hostile.serve_raw(reply) as server:
        err = await failure(server.url, "non-HTTP reply")
    assert err.code == "ClientNetworkError"
    assert err.message == "RemoteProtocolError: the server broke the HTTP protocol"


async def test_endless_response_headers_are_bounded() -> None:
    async with hostile.serve_raw(endless_header=True) as server:
        err = await failure(server.url, "endless headers")
    assert err.code == "ClientNetworkError"


# ------------------------------------------------------------------ error codes that lie


@pytest.mark.parametrize(
    "code",
    [
        "Auth\x1b[31mFailure",
        "A" * 129,
        f"<script>{MARKER}</script>",
        "内部错误",
        "Internal Error",
        "InternalError.",
        ".InternalError",
        "InternalError\n",
        "Internal..Error",
        42,
        ["InternalError"],
        {"Code": "InternalError"},
    ],
    ids=["ansi", "129-chars", "markup", "non-ascii", "space", "trailing-dot", "leading-dot",
         "newline", "double-dot", "number", "list", "object"],
)
async def test_codes_off_the_documented_shape_become_invalid_response(code: Any) -> None:
    async with serving(hostile.error_code(code, MARKER)) as server:
        err = await failure(server.url, "odd code", max_attempts=3)
    assert err.code == "InvalidResponse" and err.category is ErrorCategory.UNKNOWN
    assert server.requests == 1  # not retried: a lying endpoint gets no second chance


async def test_a_well_shaped_unknown_code_is_kept_verbatim_and_unknown() -> None:
    observed: list[str | None] = []
    async with serving(hostile.error_code("Brand.NewCode2", "new")) as server:
        err = await failure(server.url, "unknown code",
                            observer=lambda action, seconds, code: observed.append(code))
    assert err.code == "Brand.NewCode2" and err.category is ErrorCategory.UNKNOWN
    assert observed == ["Other"]  # metrics get a bounded label, never the invented code


async def test_messages_lose_control_characters_and_secrets_and_request_ids_are_checked() -> None:
    message = f"\x1b[2J\u202eevil\nforged log line\x00 {SECRET[:10]}\x07{SECRET[10:]} {TOKEN}"
    async with serving(hostile.error_code("InvalidParameter", message, f"r\n{MARKER}")) as server:
        err = await failure(server.url, "control characters")
    assert err.message == "[2Jevil forged log line *** ***"
    assert err.request_id is None


async def test_no_scenario_ever_raised_anything_but_cloud_error() -> None:
    """Every scenario above ended in a CloudError (`failure` insists on it); this one checks a
    plain success still works against the same machinery, so the bounds cost nothing normal."""
    async with serving(hostile.answer(hostile.envelope({"ZoneSet": []}))) as server:
        async with make_client(server.url) as client:
            assert (await client.call("DescribeZones", {}))["ZoneSet"] == []


@pytest.mark.parametrize("account", ["\u00b2\u00b3", "1" * 21, 12345, "", None])
async def test_caller_identity_needs_a_plain_account_id(account: Any) -> None:
    body = hostile.envelope({"AccountId": account}, request_id=f"r\n{MARKER}")
    async with serving(hostile.answer(body)) as server:
        err = await failure(server.url, "GetCallerIdentity odd AccountId",
                            lambda c: c.get_caller_identity(), service="sts")
    assert err.code == "ServerNetworkError" and err.request_id is None


async def test_caller_identity_fields_are_plain_or_empty() -> None:
    body = hostile.envelope({"AccountId": "100012345678", "Arn": f"qcs::cam::\x1b[31m{MARKER}",
                             "UserId": "u" * 300, "PrincipalId": "p-1", "Type": "CAMUser"})
    async with serving(hostile.answer(body)) as server:
        async with make_client(server.url, service="sts") as client:
            identity = await client.get_caller_identity()
    assert (identity.account_id, identity.arn, identity.user_id) == ("100012345678", "", "")
    assert (identity.principal_id, identity.type) == ("p-1", "CAMUser")
