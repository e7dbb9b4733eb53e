"""Checking a web identity token (an OIDC JWT) against a configured identity provider.

What STS checks before AssumeRoleWithWebIdentity hands out anything, so that a test can prove a
forged, stale or misdirected token is refused: the signature (with a key of the provider's JWKS,
under an algorithm the provider allows: never `none`, never a shared-secret HS256), the issuer
(exactly), the audience, the subject's presence, and the times (`exp` passed, `nbf` or `iat` in
the future), all at the simulator's own clock, so a fake clock drives expiry too. The signature is
verified by PyJWT; the claims are checked here, each with its own message.

The JWKS is given inline or fetched from `jwks_url` (a Kubernetes apiserver serves its service-
account issuer's keys at /openid/v1/jwks) and cached `jwks_cache_seconds`; a token signed by a key
id the cache lacks makes it fetch again, at most once every few seconds, so a stream of tokens
with invented key ids cannot make the simulator hammer the provider.

Every refusal is `InvalidParameter.WebIdentityTokenError`, the code STS documents for a bad
WebIdentityToken; the message says which check failed and never quotes the token. A provider that
cannot be reached is `InternalError.SystemError` (STS's "internal error, such as a network
error"): the client may retry.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from jwt.exceptions import InvalidSignatureError, PyJWKError, PyJWKSetError, PyJWTError

from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.config import OidcProviderSpec

TOKEN_ERROR = "InvalidParameter.WebIdentityTokenError"
PROVIDER_UNREACHABLE = "InternalError.SystemError"
MAX_TOKEN_LENGTH = 16 * 1024  # a Kubernetes token is about 1 KiB
MAX_JWKS_BYTES = 1024 * 1024
JWKS_TIMEOUT_SECONDS = 5.0
MIN_REFETCH_SECONDS = 5.0  # between two fetches made for a key id the cache lacks


def _refuse(reason: str) -> ApiError:
    return ApiError(TOKEN_ERROR, f"The WebIdentityToken is refused: {reason}.")


class OidcVerifier:
    """One provider's token check, with its JWKS cache."""

    def __init__(self, spec: OidcProviderSpec, clock: Callable[[], float]) -> None:
        self.spec = spec
        self._clock = clock
        self._keys: list[jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._forced_at = float("-inf")  # the last fetch made for a key id the cache lacked
        self._lock = asyncio.Lock()
        if spec.jwks is not None:
            self._keys = _parse_jwks(spec.jwks, spec.provider_id)

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims when every check passes; ApiError naming the failed check."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise _refuse(f"it is not a JWT of at most {MAX_TOKEN_LENGTH} ASCII characters")
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise _refuse("it is not a well-formed JWT (header.payload.signature)") from None
        algorithm = header.get("alg")
        if algorithm not in self.spec.algorithms:
            shown = algorithm if isinstance(algorithm, str) and len(algorithm) <= 16 else "?"
            raise _refuse(
                f"its algorithm {shown!r} is not one the provider allows "
                f"({', '.join(self.spec.algorithms)})"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("its key id (kid) is not a string")
        claims = await self._verify_signature(token, algorithm, kid)
        self._check_claims(claims)
        return claims

    async def _verify_signature(self, token: str, algorithm: str, kid: str | None) -> dict[str, Any]:
        keys = await self._candidates(kid, algorithm)
        if not keys:
            raise _refuse(
                "no key of the provider's JWKS has its key id"
                if kid is not None
                else "the provider's JWKS has no key for it"
            )
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[algorithm],
                    options={
                        "verify_signature": True,
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                        "verify_sub": False,
                        "verify_jti": False,
                    },
                )
                return claims
            except InvalidSignatureError:
                continue
            except PyJWTError:
                raise _refuse(
                    "its signature cannot be checked with the provider's key (wrong key type, or "
                    "a malformed payload)"
                ) from None
        raise _refuse("its signature does not verify with the provider's JWKS")

    def _check_claims(self, claims: dict[str, Any]) -> None:
        spec = self.spec
        issuer = claims.get("iss")
        if issuer != spec.issuer:
            raise _refuse(f"its issuer (iss) is not the provider's issuer {spec.issuer}")
        audiences = claims.get("aud")
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or not set(spec.audiences).intersection(
            a for a in audiences if isinstance(a, str)
        ):
            raise _refuse(f"its audience (aud) holds none of {', '.join(spec.audiences)}")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise _refuse("it has no subject (sub)")
        now = self._clock()
        leeway = spec.leeway_seconds
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise _refuse("it has no expiry (exp)")
        if expires <= now - leeway:
            raise _refuse(f"it expired at {int(expires)} (server time {int(now)})")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if not _number(value):
                raise _refuse(f"its {name} is not a number")
            if value > now + leeway:
                raise _refuse(f"it is not valid before {int(value)} ({name}; server time {int(now)})")

    async def _candidates(self, kid: str | None, algorithm: str) -> list[jwt.PyJWK]:
        """The keys that may have signed a token with this key id (every key, without one) and
        algorithm (RSA keys for RS*/PS*, EC keys for ES*)."""
        key_type = "EC" if algorithm.startswith("ES") else "RSA"

        def matching(keys: list[jwt.PyJWK]) -> list[jwt.PyJWK]:
            return [
                key for key in keys
                if (kid is None or key.key_id == kid) and key.key_type == key_type
            ]

        found = matching(await self._jwks(force=False))
        if not found and kid is not None and self.spec.jwks_url is not None:
            found = matching(await self._jwks(force=True))  # a key rotation: fetch, throttled
        return found

    async def _jwks(self, *, force: bool) -> list[jwt.PyJWK]:
        if self.spec.jwks_url is None:
            return self._keys or []
        async with self._lock:
            now = self._clock()
            if self._keys is not None:
                if not force and now - self._fetched_at < self.spec.jwks_cache_seconds:
                    return self._keys
                if force and now - self._forced_at < MIN_REFETCH_SECONDS:
                    return self._keys  # an unknown key id again so soon: not worth a fetch
            if force:
                self._forced_at = now
            try:
                self._keys = await self._fetch()
            except ApiError:
                if self._keys is None:
                    raise
                # A provider down for a moment: keep answering from the keys it served before.
            self._fetched_at = self._clock()
            return self._keys

    async def _fetch(self) -> list[jwt.PyJWK]:
        spec = self.spec
        assert spec.jwks_url is not None
        # The apiserver answers 406 to Accept: application/json alone (its type is jwk-set+json).
        headers = {"Accept": "application/jwk-set+json, application/json"}
        if spec.jwks_bearer_token_file:
            try:
                bearer = Path(spec.jwks_bearer_token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise _unreachable(
                    spec, f"cannot read jwks_bearer_token_file ({exc.strerror})"
                ) from None
            headers["Authorization"] = f"Bearer {bearer}"
        verify: ssl.SSLContext | bool = True
        if spec.jwks_ca_file:
            verify = ssl.create_default_context(cafile=spec.jwks_ca_file)
        try:
            async with httpx.AsyncClient(
                verify=verify, timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False
            ) as client, client.stream("GET", spec.jwks_url, headers=headers) as response:
                if response.status_code != 200:
                    raise _unreachable(spec, f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise _unreachable(spec, f"the JWKS exceeds {MAX_JWKS_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise _unreachable(spec, type(exc).__name__) from None
        try:
            document = json.loads(bytes(body))
        except ValueError:
            raise _unreachable(spec, "the JWKS is not JSON") from None
        if not isinstance(document, dict):
            raise _unreachable(spec, "the JWKS is not a JSON object")
        return _parse_jwks(document, spec.provider_id)


def _parse_jwks(document: dict[str, Any], provider_id: str) -> list[jwt.PyJWK]:
    """The signing keys of a JWK Set; keys PyJWT cannot use (another `use`, an unknown type) are
    skipped, as a JWKS may carry keys for other purposes."""
    raw = document.get("keys")
    if not isinstance(raw, list):
        raise _unreachable_id(provider_id, "the JWKS has no keys list")
    keys: list[jwt.PyJWK] = []
    for item in raw:
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        try:
            keys.append(jwt.PyJWK(item))
        except (PyJWKError, PyJWKSetError, ValueError, TypeError):
            continue
    return keys


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unreachable(spec: OidcProviderSpec, reason: str) -> ApiError:
    return _unreachable_id(spec.provider_id, reason)


def _unreachable_id(provider_id: str, reason: str) -> ApiError:
    return ApiError(
        PROVIDER_UNREACHABLE,
        f"The keys of identity provider {provider_id} could not be had ({reason}); retry later.",
    )
