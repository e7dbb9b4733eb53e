"""Verification of TC3-HMAC-SHA256 signed requests, with the documented AuthFailure codes.

The simulator is only a faithful stand-in if a request production would refuse is refused here
too: a client that signs the wrong bytes, a stale timestamp or an unknown key must fail against
the simulator, not first in production.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from spotpool.cloud.signing import (
    UNSIGNED_PAYLOAD,
    expected_signature,
    parse_authorization,
    scope_date,
)
from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import Credential

SERVICE = "cvm"
_REQUIRED_SIGNED_HEADERS = frozenset({"content-type", "host"})


class Authenticator:
    """Checks one request's Authorization header against the configured key pairs."""

    def __init__(
        self, credentials: list[Credential], max_skew_seconds: float, clock: Callable[[], float]
    ) -> None:
        self._keys = {cred.secret_id: cred.secret_key for cred in credentials}
        self._max_skew = max_skew_seconds
        self._clock = clock

    def verify(self, *, method: str, query: str, headers: Mapping[str, str], body: bytes) -> str:
        """The caller's SecretId, or ApiError with the code Tencent documents for the failure.

        `headers` must look names up case-insensitively (aiohttp's CIMultiDict does); `query` is
        the raw query string as sent (GET) and `body` the raw bytes (POST).
        """
        header = headers.get("Authorization")
        if not header:
            raise ApiError(
                "AuthFailure.InvalidAuthorization", "The Authorization header is missing."
            )
        parsed = parse_authorization(header)
        if parsed is None:
            raise ApiError(
                "AuthFailure.InvalidAuthorization",
                "The Authorization header is malformed; expected 'TC3-HMAC-SHA256 Credential="
                "<SecretId>/<date>/cvm/tc3_request, SignedHeaders=content-type;host, "
                "Signature=<hex>'.",
            )
        if not _REQUIRED_SIGNED_HEADERS.issubset(parsed.signed_headers):
            raise ApiError(
                "AuthFailure.InvalidAuthorization",
                "SignedHeaders must include content-type and host.",
            )
        secret_key = self._keys.get(parsed.secret_id)
        if secret_key is None:
            raise ApiError(
                "AuthFailure.SecretIdNotFound",
                f"The SecretId {parsed.secret_id!r} is not found; check the key pair.",
            )
        raw_timestamp = headers.get("X-TC-Timestamp")
        if raw_timestamp is None:
            raise ApiError("MissingParameter", "The request is missing the header X-TC-Timestamp.")
        try:
            timestamp = int(raw_timestamp)
        except ValueError:
            raise ApiError(
                "InvalidParameter", "X-TC-Timestamp must be an integer number of Unix seconds."
            ) from None
        now = self._clock()
        if abs(now - timestamp) > self._max_skew:
            raise ApiError(
                "AuthFailure.SignatureExpire",
                f"The request timestamp {timestamp} differs from the server time {int(now)} by "
                f"more than {int(self._max_skew)} seconds; check the client clock.",
            )
        if parsed.service != SERVICE or parsed.date != scope_date(timestamp):
            raise ApiError(
                "AuthFailure.SignatureFailure",
                f"The credential scope must be {scope_date(timestamp)}/{SERVICE}/tc3_request "
                "(the UTC date of X-TC-Timestamp and the service cvm).",
            )
        signed = {name: headers[name] for name in parsed.signed_headers if name in headers}
        expected = expected_signature(
            parsed=parsed,
            secret_key=secret_key,
            method=method,
            query=query,
            headers=signed,
            payload=b"" if method == "GET" else body,
            timestamp=raw_timestamp,
            unsigned_payload=headers.get("X-TC-Content-SHA256") == UNSIGNED_PAYLOAD,
        )
        if expected is None or not hmac.compare_digest(expected, parsed.signature):
            raise ApiError(
                "AuthFailure.SignatureFailure",
                "The provided credentials could not be validated. Please check your signature "
                "is correct.",
            )
        return parsed.secret_id
