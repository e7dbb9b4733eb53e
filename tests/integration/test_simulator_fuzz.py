"""Fuzzing the simulator's request envelope: whatever the headers, body, method or content type,
the answer is a well-formed CVM envelope with a documented code, never `InternalError`.

Requests start from a correctly signed one and hypothesis mutates the envelope around it: each
common header kept, dropped or replaced (with text that may be non-ASCII or not UTF-8 at all), the
Authorization header rebuilt from fuzzed parts, the body replaced by arbitrary bytes or JSON, the
method and Content-Type varied, and optionally the whole thing signed again after the mutation so
the checks past authentication are reached too. They go over real loopback HTTP with httpx, so
only requests that are valid HTTP are sent: malformed HTTP is aiohttp's parser's business (a 400),
not the API's.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotpool.cloud.signing import sign
from spotpool.simulator import SimulatorConfig
from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY

ACTIONS = ["DescribeInstances", "RunInstances", "TerminateInstances", "DescribeZones",
           "DescribeZoneInstanceConfigInfos", "InquiryPriceRunInstances"]
CODE_SHAPE = re.compile(r"[A-Za-z]+(\.[A-Za-z0-9]+)*")
HEADERS = ["Authorization", "X-TC-Timestamp", "X-TC-Action", "X-TC-Version", "X-TC-Region",
           "Content-Type", "X-TC-Token", "X-TC-Content-SHA256", "X-TC-Language"]

# Header values valid in HTTP (RFC 9110 field-value: visible ASCII, blanks inside, obs-text bytes
# 0x80-0xFF), so they may be non-ASCII or invalid UTF-8 (aiohttp keeps such bytes as surrogates).
# Control characters are left out: aiohttp's parser refuses them with a 400 before the app runs.
_ALLOWED = frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100)) | {0x09}
_HEADER_BYTES = st.binary(max_size=80).map(
    lambda raw: bytes(b for b in raw if b in _ALLOWED).strip(b" \t")
)

def _sendable(text: str) -> str:
    """`text` without the characters a header value may not hold, and without outer blanks."""
    return "".join(ch for ch in text if ch == "\t" or ch.isprintable()).strip(" \t")


_HEADER_TEXT = st.text(max_size=40).map(lambda text: _sendable(text).encode("utf-8"))
_HEADER_VALUE = (
    _HEADER_BYTES | _HEADER_TEXT
    | st.sampled_from([b"", b"2017-03-12", b"ap-guangzhou", b"application/json", b"1700000000",
                       b"UNSIGNED-PAYLOAD", "caf\u00e9".encode(), b"\xff\xfe", b"1_700_000_000",
                       "\u0661\u0667\u0660\u0660".encode(), b"99999999999999999999"])
)
_PART = st.text(max_size=20) | st.sampled_from(
    [DEMO_SECRET_ID, "2024-01-01", "cvm", "tc3_request", "content-type;host", "0" * 64,
     "\u00e9" * 64]
)
_CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "text/plain", "application/json; charset=\"", ";;;",
    "application/json; a=b; a=c", "\u00e9/\u00e9",
]) | st.text(max_size=30)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
_BODY = (
    st.binary(max_size=200)
    | _JSON.map(lambda value: json.dumps(value).encode())
    | st.sampled_from([b"[" * 5000, b'{"Limit": 1' + b"0" * 5000 + b"}", b"\xff\xfe\x00{",
                       b"Filters.\xc2\xb2.Name=zone", b"Limit=%ff%fe", b"InstanceIds.0=a&&=&"])
)
_QUERY = st.sampled_from(["", "Limit=1", "Filters.%C2%B2.Name=zone", "a=%ff", "Offset=-1",
                          "InstanceIds.0=ins-1&InstanceIds.2=x", "Limit=1&Limit=2", "=", "&&"])


def _wire(headers: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
    """Headers as httpx sends raw bytes (values may be non-ASCII or not UTF-8)."""
    return [(name.encode(), value) for name, value in headers.items()]


def _authorization(parts: list[str]) -> bytes:
    parts = [_sendable(part) for part in parts]
    credential = "/".join(parts[:4])
    return (f"TC3-HMAC-SHA256 Credential={credential}, SignedHeaders={parts[4]}, "
            f"Signature={parts[5]}").encode("utf-8", "surrogatepass")


@st.composite
def envelopes(draw: st.DrawFn, host: str) -> dict[str, Any]:
    """A request: method, headers (name -> bytes), body and query, mutated from a signed one."""
    action = _sendable(draw(st.sampled_from(ACTIONS) | st.text(max_size=12)))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH",
                                   "OPTIONS", "PROPFIND"]))
    content_type = _sendable(draw(st.sampled_from(["application/json"]) | _CONTENT_TYPES))
    body = draw(st.sampled_from([b"{}", b'{"Limit": 1}']) | _BODY)
    query = draw(_QUERY) if method == "GET" else ""
    timestamp = int(time.time())
    headers: dict[str, bytes] = {
        "Content-Type": content_type.encode("utf-8", "surrogatepass"),
        "X-TC-Action": action.encode("utf-8", "surrogatepass"),
        "X-TC-Version": b"2017-03-12",
        "X-TC-Region": b"ap-guangzhou",
        "X-TC-Timestamp": str(timestamp).encode(),
    }
    if draw(st.booleans()):  # sign over what is sent (content type and body may be odd)
        headers["Authorization"] = sign(
            secret_id=DEMO_SECRET_ID, secret_key=DEMO_SECRET_KEY, service="cvm", host=host,
            content_type=content_type, payload=body, timestamp=timestamp, method=method,
            query=query,
        ).authorization.encode("utf-8", "surrogatepass")
    else:
        headers["Authorization"] = _authorization(draw(st.lists(_PART, min_size=6, max_size=6)))
    for name in draw(st.lists(st.sampled_from(HEADERS), max_size=4, unique=True)):
        if draw(st.booleans()):
            headers.pop(name, None)
        else:
            headers[name] = draw(_HEADER_VALUE)
    if draw(st.integers(0, 9)) == 0:
        headers["Host"] = draw(_HEADER_VALUE) or b"x"
    return {"method": method, "headers": headers, "body": body, "query": query}


def test_no_request_envelope_gets_an_internal_error(
    fast_config: Callable[..., SimulatorConfig], serve_in_thread: Callable[..., Any]
) -> None:
    config = fast_config(api={"rate_limits": dict.fromkeys(ACTIONS, 1e9)})
    with serve_in_thread(config) as sim, httpx.Client(timeout=10) as client:
        host = sim.url.removeprefix("http://")

        @settings(max_examples=600, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(request=envelopes(host))
        def check(request: dict[str, Any]) -> None:
            url = f"{sim.url}/" + (f"?{request['query']}" if request["query"] else "")
            resp = client.request(
                request["method"], httpx.URL(url), headers=_wire(request["headers"]),
                content=request["body"],
            )
            assert resp.status_code == 200, resp.text
            assert resp.headers["content-type"] == "application/json"
            response = resp.json()["Response"]
            assert isinstance(response.get("RequestId"), str) and response["RequestId"]
            error = response.get("Error")
            if error is not None:
                assert set(error) == {"Code", "Message"}
                assert CODE_SHAPE.fullmatch(error["Code"]), error
                assert isinstance(error["Message"], str) and error["Message"]
                assert error["Code"] != "InternalError", (request, error)

        check()


def test_non_ascii_signatures_are_signature_failures(
    fast_config: Callable[..., SimulatorConfig], serve_in_thread: Callable[..., Any]
) -> None:
    """The case issue 10 found: a non-ASCII Signature made hmac.compare_digest raise."""
    with serve_in_thread(fast_config()) as sim, httpx.Client(timeout=10) as client:
        host = sim.url.removeprefix("http://")
        timestamp = int(time.time())
        good = sign(secret_id=DEMO_SECRET_ID, secret_key=DEMO_SECRET_KEY, service="cvm",
                    host=host, content_type="application/json", payload=b"{}",
                    timestamp=timestamp).authorization
        for forged in (good[:-1] + "\u00e9", good[:-64] + "\u00e9" * 64,
                       good[:-64] + "Z" * 64, good + "\udcff"):
            headers = {"Content-Type": b"application/json", "X-TC-Action": b"DescribeZones",
                       "X-TC-Version": b"2017-03-12", "X-TC-Region": b"ap-guangzhou",
                       "X-TC-Timestamp": str(timestamp).encode(),
                       "Authorization": forged.encode("utf-8", "surrogateescape")}
            resp = client.post(f"{sim.url}/", headers=_wire(headers), content=b"{}")
            assert resp.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"
        # A signed header that is not UTF-8 cannot carry a valid signature either.
        headers["Authorization"] = good.encode()
        headers["Content-Type"] = b"application/\xffjson"
        resp = client.post(f"{sim.url}/", headers=_wire(headers), content=b"{}")
        assert resp.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"


_NAME_PART = st.sampled_from(["Filters", "InstanceIds", "Name", "Values", "Limit", "Offset",
                              "Placement", "Zone", "0", "1", "2", "00", "\u00b2", "\u0663",
                              "0" * 5000, ""]) | st.text(max_size=6)
_FORM_PAIRS = st.lists(
    st.tuples(st.lists(_NAME_PART, min_size=1, max_size=4).map(".".join), st.text(max_size=12)),
    max_size=6,
)


def test_no_signed_form_or_query_gets_an_internal_error(
    fast_config: Callable[..., SimulatorConfig], serve_in_thread: Callable[..., Any]
) -> None:
    """Correctly signed GET queries and POST form bodies with arbitrary dotted names and values:
    past authentication, the flat-to-nested parameter parser sees every odd name."""
    config = fast_config(api={"rate_limits": dict.fromkeys(ACTIONS, 1e9)})
    form = "application/x-www-form-urlencoded"
    with serve_in_thread(config) as sim, httpx.Client(timeout=10) as client:
        host = sim.url.removeprefix("http://")

        @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(action=st.sampled_from(ACTIONS), pairs=_FORM_PAIRS, use_get=st.booleans())
        def check(action: str, pairs: list[tuple[str, str]], use_get: bool) -> None:
            encoded = urlencode(pairs)
            use_get = use_get and len(encoded) < 4000  # aiohttp refuses longer request lines
            if use_get:
                method, query, body = "GET", encoded, b""
            else:
                method, query, body = "POST", "", encoded.encode()
            timestamp = int(time.time())
            authorization = sign(
                secret_id=DEMO_SECRET_ID, secret_key=DEMO_SECRET_KEY, service="cvm", host=host,
                content_type=form, payload=body, timestamp=timestamp, method=method, query=query,
            ).authorization
            headers = {"Content-Type": form, "X-TC-Action": action, "X-TC-Version": "2017-03-12",
                       "X-TC-Region": "ap-guangzhou", "X-TC-Timestamp": str(timestamp),
                       "Authorization": authorization}
            url = httpx.URL(f"{sim.url}/" + (f"?{query}" if query else ""))
            response = client.request(method, url, headers=headers, content=body).json()["Response"]
            error = response.get("Error") or {}
            assert error.get("Code") != "InternalError", (pairs, error)
            assert not error or CODE_SHAPE.fullmatch(error["Code"])

        check()
