"""TC3-HMAC-SHA256: the SDK vectors byte for byte, and an independent re-implementation.

The vectors (reference section 1.6) were produced by running Tencent's official Python SDK, so a
pass here means our signer and the real API agree, not merely that client and simulator agree.
The property test re-derives every documented step with hashlib/hmac only, without importing
anything from spotpool.cloud.signing but the functions under test.
"""

from __future__ import annotations

import hashlib
import hmac
import string
import time
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotpool.cloud.signing import (
    canonical_request,
    expected_signature,
    parse_authorization,
    sha256_hex,
    sign,
    signing_key,
    string_to_sign,
)

FAKE_KEY = "EXAMPLEKEYtc3fakeSecretKey0123456"
JSON = "application/json"


@dataclass(frozen=True)
class Vector:
    name: str
    secret_id: str
    secret_key: str
    host: str
    timestamp: int
    body: bytes
    authorization: str
    method: str = "POST"
    query: str = ""
    content_type: str = JSON
    payload_sha256: str | None = None
    canonical_sha256: str | None = None
    k_signing: str | None = None


V1 = Vector(
    name="V1",
    secret_id="AKIDEXAMPLE",
    secret_key=FAKE_KEY,
    host="cvm.tencentcloudapi.com",
    timestamp=1700000000,
    body=b'{"Limit": 1}',
    payload_sha256="65d0b99ccb96b0e186fbe9801c78411017f5188af83639d6b348da161950d5aa",
    canonical_sha256="f9b9e083b1b9352ff62a0c7b79937882bc5dda0efef0cfb88f1cc7b163324957",
    k_signing="3f21a8be434a58385d574a76bd1487926e6da333ad8455def239ffa085b1dab5",
    authorization=(
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=c8114a048d85f2ddc88bc6e9af86d058cc74d1da8250f9b6f4e4f93a6923b64c"
    ),
)
V2_BODY = (
    b'{"InstanceChargeType": "SPOTPAID", "Placement": {"Zone": "ap-guangzhou-3", "ProjectId": 0},'
    b' "InstanceType": "S5.MEDIUM4", "ImageId": "img-eb30mz89", "InstanceCount": 2,'
    b' "InstanceName": "pool-a-{R:1}", "ClientToken": "8f0e7c0d-2a44-4c39-9d0a-1d2c3b4a5e6f",'
    b' "TagSpecification": [{"ResourceType": "instance", "Tags": [{"Key": "pool", "Value":'
    b' "pool-a"}]}], "InstanceMarketOptions": {"SpotOptions": {"MaxPrice": "1000",'
    b' "SpotInstanceType": "one-time"}, "MarketType": "spot"}}'
)
V2 = Vector(
    name="V2",
    secret_id="AKIDEXAMPLE",
    secret_key=FAKE_KEY,
    host="cvm.tencentcloudapi.com",
    timestamp=1735689599,
    body=V2_BODY,
    payload_sha256="b5aa0ce6b4688c6f9cbc4bccbc0c0be3cc39c468c29be0b31c8edf4666bdfc82",
    canonical_sha256="d6acdfb306ef221c751174790adc2731cff13701264289b1d11f9de6ffee5cd8",
    k_signing="970c80176446f2a170c0d07ec1ee155fbcf6733bd3f44caf84f50c906e60eb3d",
    authorization=(
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2024-12-31/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=b82dfd446df3fd1342c5cb2f51b4ddb9b6e393e83c31ddce04f410a914e46903"
    ),
)
V3 = Vector(
    name="V3",
    secret_id="AKIDTEMPEXAMPLE0001",
    secret_key="tmpSecretKeyEXAMPLE/+=abc",
    host="cvm.tencentcloudapi.com",
    timestamp=1735689600,
    body=b'{"InstanceIds": ["ins-abcd1234", "ins-0a1b2c3d"]}',
    payload_sha256="af1f3b03ef1a1c32a9b7db123a40d89f730eda62efd11011f1221f87be1b9fc6",
    canonical_sha256="01b7ea4d9e685d2c13f35bf0f7d2ef16525b8bfc355bcba653a922f023728cd7",
    k_signing="834e9c23430ec2389160e4e39194efc0fc1a38d2b47d113a52b8f47f97a88e69",
    authorization=(
        "TC3-HMAC-SHA256 Credential=AKIDTEMPEXAMPLE0001/2025-01-01/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=95cf0ade6e639347b1c36e25bf6ebef3758f32c355aada8071e12352df8441d3"
    ),
)
V4 = Vector(
    name="V4",
    secret_id="AKIDEXAMPLE",
    secret_key=FAKE_KEY,
    host="cvm.tencentcloudapi.com",
    timestamp=1700000000,
    body=b"",
    method="GET",
    query="InstanceIds.0=ins-abcd1234",
    content_type="application/x-www-form-urlencoded",
    payload_sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    authorization=(
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=27d88dfb9eb74112a271e61c30b682604408f766b82aeb99e3422cb90a5ed479"
    ),
)
V5 = Vector(
    name="V5",
    secret_id="AKIDEXAMPLE",
    secret_key=FAKE_KEY,
    host="127.0.0.1:18443",
    timestamp=1700000000,
    body=(
        b'{"Filters": [{"Name": "instance-name", "Values": ["\\u6d4b\\u8bd5"]}],'
        b' "Offset": 0, "Limit": 100}'
    ),
    payload_sha256="af31e3b6185f1752f15401ed2d2ad701efa2fa97ce67e7be45dfd192951fdcef",
    authorization=(
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/cvm/tc3_request, "
        "SignedHeaders=content-type;host, "
        "Signature=59602a9c15d745d177804ebffc5ec05f27da37aa8318d0f33e72b777514d39c1"
    ),
)
VECTORS = [V1, V2, V3, V4, V5]


def _sign(v: Vector) -> str:
    return sign(
        secret_id=v.secret_id,
        secret_key=v.secret_key,
        service="cvm",
        host=v.host,
        content_type=v.content_type,
        payload=v.body,
        timestamp=v.timestamp,
        method=v.method,
        query=v.query,
    ).authorization


def _canonical(v: Vector) -> str:
    return canonical_request(
        method=v.method,
        query=v.query,
        headers={"content-type": v.content_type, "host": v.host},
        signed_headers=["content-type", "host"],
        payload_hash=v.payload_sha256 or sha256_hex(v.body),
    )


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.name)
def test_authorization_matches_sdk_vector(v: Vector) -> None:
    assert _sign(v) == v.authorization


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.name)
def test_payload_hash_matches_sdk_vector(v: Vector) -> None:
    hashed = b"" if v.method == "GET" else v.body
    assert sha256_hex(hashed) == v.payload_sha256


@pytest.mark.parametrize("v", [v for v in VECTORS if v.canonical_sha256], ids=lambda v: v.name)
def test_canonical_request_hash_matches_sdk_vector(v: Vector) -> None:
    assert sha256_hex(_canonical(v).encode()) == v.canonical_sha256


@pytest.mark.parametrize("v", [v for v in VECTORS if v.k_signing], ids=lambda v: v.name)
def test_signing_key_matches_sdk_vector(v: Vector) -> None:
    date = time.strftime("%Y-%m-%d", time.gmtime(v.timestamp))
    assert signing_key(v.secret_key, date, "cvm").hex() == v.k_signing


def test_v1_intermediate_values() -> None:
    canonical = _canonical(V1)
    assert canonical == (
        "POST\n/\n\ncontent-type:application/json\nhost:cvm.tencentcloudapi.com\n\n"
        "content-type;host\n" + V1.payload_sha256
    )
    assert string_to_sign(
        timestamp="1700000000", scope="2023-11-14/cvm/tc3_request", canonical=canonical
    ) == "TC3-HMAC-SHA256\n1700000000\n2023-11-14/cvm/tc3_request\n" + V1.canonical_sha256
    k_date = hmac.new(("TC3" + FAKE_KEY).encode(), b"2023-11-14", hashlib.sha256).digest()
    k_service = hmac.new(k_date, b"cvm", hashlib.sha256).digest()
    assert k_date.hex() == "7f719514e95942728fd3b7c297e01515252a4051579c1a0589aa082f9bc5d9e7"
    assert k_service.hex() == "8e6a7368e1506816bdab436e1849f0dfab48b6366ece8e91d7dc00f25ea4e69b"


def test_v2_string_to_sign_uses_the_utc_date_one_second_before_midnight() -> None:
    assert string_to_sign(
        timestamp="1735689599", scope="2024-12-31/cvm/tc3_request", canonical=_canonical(V2)
    ) == "TC3-HMAC-SHA256\n1735689599\n2024-12-31/cvm/tc3_request\n" + V2.canonical_sha256


def test_v4_canonical_request_text() -> None:
    assert _canonical(V4) == (
        "GET\n/\nInstanceIds.0=ins-abcd1234\n"
        "content-type:application/x-www-form-urlencoded\nhost:cvm.tencentcloudapi.com\n\n"
        "content-type;host\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_v5_canonical_headers_keep_the_port() -> None:
    assert "content-type:application/json\nhost:127.0.0.1:18443\n\n" in _canonical(V5)


# ---------------------------------------------------------------- independent re-implementation

def _h(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def documented_authorization(
    *,
    secret_id: str,
    secret_key: str,
    host: str,
    content_type: str,
    method: str,
    query: str,
    body: bytes,
    timestamp: int,
) -> str:
    """Reference section 1.3, steps 1 to 11, written out from the prose."""
    date = time.strftime("%Y-%m-%d", time.gmtime(timestamp))
    payload_hash = hashlib.sha256(b"" if method == "GET" else body).hexdigest()
    canonical = (
        f"{method}\n/\n{query}\n"
        f"content-type:{content_type}\nhost:{host}\n\n"
        f"content-type;host\n{payload_hash}"
    )
    scope = f"{date}/cvm/tc3_request"
    to_sign = (
        f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n"
        f"{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"
    )
    k_signing = _h(_h(_h(("TC3" + secret_key).encode("utf-8"), date), "cvm"), "tc3_request")
    sig = hmac.new(k_signing, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return (
        f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, "
        f"SignedHeaders=content-type;host, Signature={sig}"
    )


_ID_CHARS = string.ascii_letters + string.digits
secret_ids = st.text(alphabet=_ID_CHARS, min_size=1, max_size=40)
secret_keys = st.text(min_size=1, max_size=64)  # any unicode: the key is UTF-8 encoded
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.builds(
    lambda parts, port: ".".join(parts) + (f":{port}" if port else ""),
    st.lists(labels, min_size=1, max_size=4),
    st.none() | st.integers(1, 65535),
)
timestamps = st.integers(min_value=0, max_value=4_102_444_800)  # up to 2100-01-01
queries = st.from_regex(r"([A-Za-z0-9.]+=[A-Za-z0-9%+._-]*(&[A-Za-z0-9.]+=[A-Za-z0-9%+._-]*)*)?",
                        fullmatch=True)


@given(
    secret_id=secret_ids,
    secret_key=secret_keys,
    host=hosts,
    body=st.binary(max_size=512),
    timestamp=timestamps,
    method=st.sampled_from(["GET", "POST"]),
    query=queries,
)
def test_sign_agrees_with_documented_steps(
    secret_id: str, secret_key: str, host: str, body: bytes, timestamp: int, method: str,
    query: str,
) -> None:
    content_type = JSON if method == "POST" else "application/x-www-form-urlencoded"
    query = query if method == "GET" else ""
    ours = sign(
        secret_id=secret_id, secret_key=secret_key, service="cvm", host=host,
        content_type=content_type, payload=body, timestamp=timestamp, method=method, query=query,
    )
    assert ours.timestamp == timestamp
    assert ours.authorization == documented_authorization(
        secret_id=secret_id, secret_key=secret_key, host=host, content_type=content_type,
        method=method, query=query, body=body, timestamp=timestamp,
    )


@given(
    secret_id=secret_ids,
    secret_key=secret_keys,
    host=hosts,
    body=st.binary(max_size=256),
    timestamp=timestamps,
)
def test_parse_authorization_round_trips_and_verifies(
    secret_id: str, secret_key: str, host: str, body: bytes, timestamp: int
) -> None:
    header = sign(
        secret_id=secret_id, secret_key=secret_key, service="cvm", host=host,
        content_type=JSON, payload=body, timestamp=timestamp,
    ).authorization
    parsed = parse_authorization(header)
    assert parsed is not None
    assert parsed.secret_id == secret_id
    assert parsed.date == time.strftime("%Y-%m-%d", time.gmtime(timestamp))
    assert parsed.service == "cvm"
    assert parsed.signed_headers == ["content-type", "host"]
    assert header.endswith(f"Signature={parsed.signature}")
    received = {"content-type": JSON, "host": host}
    assert expected_signature(
        parsed=parsed, secret_key=secret_key, method="POST", query="", headers=received,
        payload=body, timestamp=str(timestamp),
    ) == parsed.signature
    # One flipped byte, or a different key, must not verify.
    assert expected_signature(
        parsed=parsed, secret_key=secret_key, method="POST", query="", headers=received,
        payload=body + b"x", timestamp=str(timestamp),
    ) != parsed.signature
    assert expected_signature(
        parsed=parsed, secret_key=secret_key + "x", method="POST", query="", headers=received,
        payload=body, timestamp=str(timestamp),
    ) != parsed.signature


def test_expected_signature_needs_every_signed_header() -> None:
    parsed = parse_authorization(V1.authorization)
    assert parsed is not None
    assert expected_signature(
        parsed=parsed, secret_key=FAKE_KEY, method="POST", query="",
        headers={"content-type": JSON}, payload=V1.body, timestamp="1700000000",
    ) is None


def test_expected_signature_reproduces_a_vector() -> None:
    parsed = parse_authorization(V5.authorization)
    assert parsed is not None
    assert expected_signature(
        parsed=parsed, secret_key=FAKE_KEY, method="POST", query="",
        headers={"content-type": JSON, "host": "127.0.0.1:18443"}, payload=V5.body,
        timestamp="1700000000",
    ) == "59602a9c15d745d177804ebffc5ec05f27da37aa8318d0f33e72b777514d39c1"


GOOD = V1.authorization


@pytest.mark.parametrize(
    "header",
    [
        "",
        "TC3-HMAC-SHA256",
        GOOD.replace("TC3-HMAC-SHA256", "HMAC-SHA1", 1),
        GOOD.replace("Credential=", "Cred=", 1),
        GOOD.replace("SignedHeaders=", "Headers=", 1),
        GOOD.replace("Signature=", "Sig=", 1),
        GOOD.replace("/tc3_request", "/tc4_request", 1),
        GOOD.replace("AKIDEXAMPLE/2023-11-14/cvm", "AKIDEXAMPLE/2023-11-14", 1),
        GOOD.replace("SignedHeaders=content-type;host", "SignedHeaders=", 1),
        GOOD.split(", Signature=")[0] + ", Signature=",
        GOOD.replace(", SignedHeaders", " SignedHeaders", 1),
        "Bearer abc",
    ],
)
def test_parse_authorization_rejects_malformed(header: str) -> None:
    assert parse_authorization(header) is None


def test_parse_authorization_lower_cases_signed_header_names() -> None:
    parsed = parse_authorization(GOOD.replace("content-type;host", "Content-Type;Host"))
    assert parsed is not None and parsed.signed_headers == ["content-type", "host"]
