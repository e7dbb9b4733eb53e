"""TC3-HMAC-SHA256 request signing, shared by the CVM client (to sign) and the simulator (to verify).

One implementation on both sides would let a symmetric mistake go unnoticed, so the tests pin this
module to the byte-exact vectors produced with Tencent's official SDK and to an independent
re-implementation of the documented steps; the official SDK is also run against the simulator.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

ALGORITHM = "TC3-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def scope_date(timestamp: int) -> str:
    """The credential-scope date: the UTC calendar date of the request timestamp."""
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")


def canonical_request(
    *,
    method: str,
    query: str,
    headers: dict[str, str],
    signed_headers: list[str],
    payload_hash: str,
) -> str:
    """The six-line canonical request; `headers` maps lower-case names to values as sent."""
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in signed_headers)
    return "\n".join(
        [method.upper(), "/", query, canonical_headers, ";".join(signed_headers), payload_hash]
    )


def string_to_sign(*, timestamp: str, scope: str, canonical: str) -> str:
    return "\n".join([ALGORITHM, timestamp, scope, sha256_hex(canonical.encode("utf-8"))])


def signing_key(secret_key: str, date: str, service: str) -> bytes:
    k_date = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    k_service = _hmac(k_date, service)
    return _hmac(k_service, "tc3_request")


def signature(secret_key: str, date: str, service: str, to_sign: str) -> str:
    return hmac.new(
        signing_key(secret_key, date, service), to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()


@dataclass(frozen=True)
class SignedRequest:
    """What a signer adds to a request: the Authorization header and the timestamp it covers."""

    authorization: str
    timestamp: int


def sign(
    *,
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    content_type: str,
    payload: bytes,
    timestamp: int,
    method: str = "POST",
    query: str = "",
    unsigned_payload: bool = False,
) -> SignedRequest:
    """Sign a request exactly as the official SDKs do: signed headers `content-type;host`."""
    payload_hash = UNSIGNED_PAYLOAD if unsigned_payload else sha256_hex(
        b"" if method.upper() == "GET" else payload
    )
    headers = {"content-type": content_type, "host": host}
    signed = ["content-type", "host"]
    canonical = canonical_request(
        method=method, query=query, headers=headers, signed_headers=signed, payload_hash=payload_hash
    )
    date = scope_date(timestamp)
    scope = f"{date}/{service}/tc3_request"
    sig = signature(secret_key, date, service, string_to_sign(
        timestamp=str(timestamp), scope=scope, canonical=canonical
    ))
    return SignedRequest(
        authorization=(
            f"{ALGORITHM} Credential={secret_id}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={sig}"
        ),
        timestamp=timestamp,
    )


@dataclass(frozen=True)
class ParsedAuthorization:
    secret_id: str
    date: str
    service: str
    signed_headers: list[str]
    signature: str


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """Parse `TC3-HMAC-SHA256 Credential=ID/DATE/SERVICE/tc3_request, SignedHeaders=..., Signature=...`.

    Returns None for anything malformed; the verifier maps that to AuthFailure.InvalidAuthorization.
    """
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM or not rest:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            return None
        fields[key] = val
    try:
        credential = fields["Credential"].split("/")
        signed_headers = [h for h in fields["SignedHeaders"].split(";") if h]
        sig = fields["Signature"]
    except KeyError:
        return None
    if len(credential) != 4 or credential[3] != "tc3_request" or not signed_headers or not sig:
        return None
    return ParsedAuthorization(
        secret_id=credential[0],
        date=credential[1],
        service=credential[2],
        signed_headers=[h.lower() for h in signed_headers],
        signature=sig,
    )


def expected_signature(
    *,
    parsed: ParsedAuthorization,
    secret_key: str,
    method: str,
    query: str,
    headers: dict[str, str],
    payload: bytes,
    timestamp: str,
    unsigned_payload: bool = False,
) -> str | None:
    """Recompute the signature a server expects from the bytes it received.

    `headers` maps lower-case header names to the received values. Returns None when a header the
    client claims to have signed is absent (the caller answers SignatureFailure).
    """
    if any(name not in headers for name in parsed.signed_headers):
        return None
    payload_hash = UNSIGNED_PAYLOAD if unsigned_payload else sha256_hex(payload)
    canonical = canonical_request(
        method=method,
        query=query,
        headers=headers,
        signed_headers=parsed.signed_headers,
        payload_hash=payload_hash,
    )
    scope = f"{parsed.date}/{parsed.service}/tc3_request"
    return signature(
        secret_key,
        parsed.date,
        parsed.service,
        string_to_sign(timestamp=timestamp, scope=scope, canonical=canonical),
    )
