"""The simulator's OIDC provider with `jwks_url`: the keys fetched over HTTP, a rotated key fetched
again, a bearer token sent, and an unreachable provider answered as a retryable STS error.

A loopback aiohttp server stands in for the issuer; spotpool's own WebIdentityProvider and
CvmClient are the clients, over real TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spotpool.cloud import CredentialError, CvmClient, WebIdentityProvider
from spotpool.simulator import SimulatorConfig, run_simulator
from tests.support.identity import OPERATOR_ROLE_ARN, PROVIDER_ID, Issuer, identity_config


class JwksServer:
    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.authorizations: list[str | None] = []
        self.status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.authorizations.append(request.headers.get("Authorization"))
        if self.status != 200:
            return web.Response(status=self.status, text="down")
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/openid/v1/jwks", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/openid/v1/jwks"
    yield server
    await runner.cleanup()


def provider_of(sim_url: str, token_file: Path) -> WebIdentityProvider:
    return WebIdentityProvider(token_file=token_file, role_arn=OPERATOR_ROLE_ARN,
                               provider_id=PROVIDER_ID, region="ap-guangzhou", endpoint=sim_url,
                               max_attempts=1)


async def test_keys_are_fetched_cached_and_fetched_again_for_a_rotated_key(
    jwks_server: JwksServer, tmp_path: Path
) -> None:
    old, new = Issuer(kid="old"), Issuer(kid="new")
    jwks_server.keys = [old.public_jwk]
    bearer = tmp_path / "bearer"
    bearer.write_text("reader-token\n")
    config = identity_config(SimulatorConfig.default(), old, jwks_url=jwks_server.url,
                             provider={"jwks_bearer_token_file": str(bearer)})
    token_file = tmp_path / "token"
    async with run_simulator(config) as sim:
        for _ in range(3):
            token_file.write_text(old.token())
            provider = provider_of(sim.url, token_file)
            assert (await provider.current()).token
            await provider.aclose()
        assert jwks_server.fetches == 1  # cached
        assert jwks_server.authorizations == ["Bearer reader-token"]
        jwks_server.keys = [new.public_jwk]  # the issuer rotated its key
        token_file.write_text(new.token())
        provider = provider_of(sim.url, token_file)
        async with CvmClient(provider, "ap-guangzhou", sim.url) as client:
            assert await client.describe_instances() == []
        await provider.aclose()
        assert jwks_server.fetches == 2
        # Invented key ids right after that fetch: no more fetches (one per 5 s at most).
        for kid in ("made-up-1", "made-up-2", "made-up-3"):
            token_file.write_text(new.token(kid=kid))
            provider = provider_of(sim.url, token_file)
            with pytest.raises(CredentialError) as caught:
                await provider.current()
            await provider.aclose()
            assert caught.value.code == "InvalidParameter.WebIdentityTokenError"
        assert jwks_server.fetches == 2


async def test_an_unreachable_provider_is_a_retryable_error(
    jwks_server: JwksServer, tmp_path: Path
) -> None:
    issuer = Issuer()
    jwks_server.status = 503
    config = identity_config(SimulatorConfig.default(), issuer, jwks_url=jwks_server.url)
    token_file = tmp_path / "token"
    token_file.write_text(issuer.token())
    async with run_simulator(config) as sim:
        provider = provider_of(sim.url, token_file)
        with pytest.raises(CredentialError) as caught:
            await provider.current()
        await provider.aclose()
    assert caught.value.code == "InternalError.SystemError" and caught.value.transient
    assert "HTTP 503" in caught.value.message
