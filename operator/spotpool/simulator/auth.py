"""Verification of TC3-HMAC-SHA256 signed requests, with the documented AuthFailure codes.

The simulator is only a faithful stand-in if a request production would refuse is refused here
too: a client that signs the wrong bytes, a stale timestamp, an unknown key or a wrong, missing or
expired session token must fail against the simulator, not first in production. The checks run in
order: Authorization shape, SecretId (a key pair or an STS session), timestamp, scope, signature,
then `X-TC-Token` (`iam.check_session_token`), so only a caller holding the key learns whether
its token is expired.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping

from spotpool.cloud.signing import (
    UNSIGNED_PAYLOAD,
    expected_signature,
    parse_authorization,
    scope_date,
)
from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.iam import Identities, Principal, check_session_token

SERVICE = "cvm"
_REQUIRED_SIGNED_HEADERS = frozenset({"content-type", "host"})
# A signature is lower-case hex SHA-256; anything else cannot match, and comparing it (non-ASCII
# text makes hmac.compare_digest raise) must not turn a forged header into an InternalError.
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # Unix seconds as plain ASCII digits (int() takes more)
_SIGNATURE_FAILURE = (
    "The provided credentials could not be validated. Please check your signature is correct."
)


class Authenticator:
    """Checks one request's Authorization header against the key pairs and STS sessions."""

    def __init__(
        self, identities: Identities, max_skew_seconds: float, clock: Callable[[], float]
    ) -> None:
        self._identities = identities
        self._max_skew = max_skew_seconds
        self._clock = clock

    def verify(
        self, *, method: str, query: str, headers: Mapping[str, str], body: bytes, service: str = SERVICE
    ) -> Principal:
        """Who signed (the key pair's or session's principal), or ApiError with the code Tencent
        documents for the failure.

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
        entry = self._identities.lookup(parsed.secret_id)
        if entry is None:
            raise ApiError(
                "AuthFailure.SecretIdNotFound",
                f"The SecretId {parsed.secret_id!r} is not found; check the key pair.",
            )
        raw_timestamp = headers.get("X-TC-Timestamp")
        if raw_timestamp is None:
            raise ApiError("MissingParameter", "The request is missing the header X-TC-Timestamp.")
        if not _TIMESTAMP.fullmatch(raw_timestamp):
            # int() alone would take " 17e2", "1_700" or non-ASCII digits, and sign them as sent.
            raise ApiError(
                "InvalidParameter", "X-TC-Timestamp must be an integer number of Unix seconds."
            )
        timestamp = int(raw_timestamp)
        now = self._clock()
        if abs(now - timestamp) > self._max_skew:
            raise ApiError(
                "AuthFailure.SignatureExpire",
                f"The request timestamp {timestamp} differs from the server time {int(now)} by "
                f"more than {int(self._max_skew)} seconds; check the client clock.",
            )
        if parsed.service != service or parsed.date != scope_date(timestamp):
            raise ApiError(
                "AuthFailure.SignatureFailure",
                f"The credential scope must be {scope_date(timestamp)}/{service}/tc3_request "
                f"(the UTC date of X-TC-Timestamp and the service {service}).",
            )
        if not _SIGNATURE.fullmatch(parsed.signature):
            raise ApiError("AuthFailure.SignatureFailure", _SIGNATURE_FAILURE)
        signed = {name: headers[name] for name in parsed.signed_headers if name in headers}
        try:
            expected = expected_signature(
                parsed=parsed,
                secret_key=entry.secret_key,
                method=method,
                query=query,
                headers=signed,
                payload=b"" if method == "GET" else body,
                timestamp=raw_timestamp,
                unsigned_payload=headers.get("X-TC-Content-SHA256") == UNSIGNED_PAYLOAD,
            )
        except UnicodeEncodeError:
            # A signed header that is not valid UTF-8 (aiohttp keeps such bytes as surrogates)
            # cannot have been signed by any client: a signature failure, not a server fault.
            raise ApiError("AuthFailure.SignatureFailure", _SIGNATURE_FAILURE) from None
        if expected is None or not hmac.compare_digest(expected, parsed.signature):
            raise ApiError("AuthFailure.SignatureFailure", _SIGNATURE_FAILURE)
        check_session_token(entry, headers.get("X-TC-Token"), now)
        return entry.principal
