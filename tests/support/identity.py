"""Test identities: an OIDC issuer that signs JWTs with its own keys, and simulator configurations
with accounts, roles and a provider, shared by the unit and integration tests of issue 19."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from spotpool.simulator.config import DEMO_SECRET_ID, DEMO_SECRET_KEY, SimulatorConfig

ACCOUNT = "100000000001"  # the demo key pair's account
TEAM_ACCOUNT = "200000000002"
TEAM_KEY = ("AKIDTEAMACCOUNTKEY00000000000000000000", "teamAccountSecretKey00000000000000")
PROVIDER_ID = "tke-cls-test"
ISSUER = "https://oidc.test.example"
AUDIENCE = "sts.cloud.tencent.com"
SUBJECT = "system:serviceaccount:spotpool:spotpool-operator"
OPERATOR_ROLE = "spotpool-operator"
OPERATOR_ROLE_ARN = f"qcs::cam::uin/{ACCOUNT}:roleName/{OPERATOR_ROLE}"
TEAM_ROLE = "team-render"
TEAM_ROLE_ARN = f"qcs::cam::uin/{TEAM_ACCOUNT}:roleName/{TEAM_ROLE}"
EXTERNAL_ID = "spotpool-team-render"
CVM_ROLE = "node-role"


class Issuer:
    """An OIDC issuer: an RSA (RS256) or EC (ES256) key pair, its JWKS, and tokens it signs."""

    def __init__(self, issuer: str = ISSUER, algorithm: str = "RS256", kid: str | None = None) -> None:
        self.issuer = issuer
        self.algorithm = algorithm
        self.kid = kid or uuid.uuid4().hex[:12]
        if algorithm.startswith("ES"):
            self.key: Any = ec.generate_private_key(ec.SECP256R1())
            public = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.public_jwk = {**public, "kid": self.kid, "use": "sig", "alg": algorithm}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def token(
        self,
        subject: str = SUBJECT,
        *,
        audience: str | list[str] = AUDIENCE,
        issuer: str | None = None,
        lifetime: float = 3600,
        now: float | None = None,
        kid: str | None = None,
        extra: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        issued = time.time() if now is None else now
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": int(issued),
            "nbf": int(issued),
            "exp": int(issued + lifetime),
            **(extra or {}),
        }
        for name in drop:
            claims.pop(name, None)
        return jwt.encode(claims, self.key, algorithm=self.algorithm,
                          headers={"kid": kid or self.kid})


def identity_config(
    base: SimulatorConfig,
    issuer: Issuer | None = None,
    *,
    issuer_url: str | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_url: str | None = None,
    provider: dict[str, Any] | None = None,
    sts: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    subjects: list[str] | None = None,
    team_visible_tags: dict[str, str] | None = None,
) -> SimulatorConfig:
    """`base` with two accounts (the demo key's, and a team's with a key of its own), an OIDC
    provider in the demo account trusting `issuer` (inline JWKS, or `jwks_url`), the operator's
    role (web identity of SUBJECT), a team role in the team account (AssumeRole by the operator's
    role, with EXTERNAL_ID), and a CVM role (bound to the metadata service). A real issuer (a
    kube-apiserver) is given by `issuer_url` and its `jwks` or `jwks_url` instead of `issuer`."""
    url = issuer_url or (issuer.issuer if issuer else ISSUER)
    oidc: dict[str, Any] = {"provider_id": PROVIDER_ID, "account_id": ACCOUNT, "issuer": url,
                            "audiences": [AUDIENCE]}
    if jwks_url is not None:
        oidc["jwks_url"] = jwks_url
    elif jwks is not None:
        oidc["jwks"] = jwks
    else:
        assert issuer is not None
        oidc["jwks"] = issuer.jwks()
    oidc.update(provider or {})
    return base.with_overrides({
        "credentials": [
            {"secret_id": DEMO_SECRET_ID, "secret_key": DEMO_SECRET_KEY},
            {"secret_id": TEAM_KEY[0], "secret_key": TEAM_KEY[1], "account_id": TEAM_ACCOUNT},
        ],
        "oidc_providers": [oidc],
        "roles": [
            {"name": OPERATOR_ROLE, "account_id": ACCOUNT,
             "trust": {"web_identity": [{"provider_id": PROVIDER_ID,
                                         "subjects": subjects or [SUBJECT]}]}},
            {"name": TEAM_ROLE, "account_id": TEAM_ACCOUNT, "visible_tags": team_visible_tags,
             "trust": {"principals": [f"qcs::cam::uin/{ACCOUNT}:roleName/{OPERATOR_ROLE}"],
                       "external_id": EXTERNAL_ID}},
            {"name": CVM_ROLE, "account_id": ACCOUNT,
             "trust": {"principals": [f"qcs::cam::uin/{ACCOUNT}:root"]}},
        ],
        "sts": sts or {},
        "metadata": {"role": CVM_ROLE, **(metadata or {})},
    })


def trusting_apiserver(base: SimulatorConfig, kubectl: Any, token: str, subject: str,
                       **source: Any) -> SimulatorConfig:
    """`identity_config` whose OIDC issuer is a real kube-apiserver: the `iss` its ServiceAccount
    tokens carry (read from `token`), its JWKS read from /openid/v1/jwks unless `source` says
    otherwise (`jwks_url=...`), and `subject` (system:serviceaccount:NS:NAME) the one trusted."""
    issuer = jwt.decode(token, options={"verify_signature": False})["iss"]
    if not source:
        source = {"jwks": json.loads(kubectl.run("get", "--raw", "/openid/v1/jwks").stdout)}
    return identity_config(base, issuer_url=issuer, subjects=[subject], **source)


class FakeClock:
    """Unix seconds that move only when told (the simulator and the client share it)."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Rig:
    """A simulator in process (no socket), its clock, and clients of it.

    `client(credentials)` is a CvmClient (or an STS one) that reaches the simulator through
    `SimulatorTransport`; `web_identity()`, `assume_role()` and `cvm_role()` are providers wired
    the same way. Every client and provider shares the rig's fake clock.
    """

    def __init__(self, config: SimulatorConfig, issuer: Issuer, clock: FakeClock | None = None) -> None:
        from spotpool.cloud.ratelimit import RateLimiterRegistry
        from spotpool.simulator.server import Simulator
        from tests.support.simtransport import SimulatorTransport

        self.clock = clock or FakeClock()
        self.issuer = issuer
        self.simulator = Simulator(config, self.clock)
        self.transport = SimulatorTransport(self.simulator)
        self.limiter = RateLimiterRegistry(sleep=_no_wait)
        self.sleeps: list[float] = []
        self.closers: list[Any] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def token(self, subject: str = SUBJECT, **kwargs: Any) -> str:
        kwargs.setdefault("now", self.clock.now)
        return self.issuer.token(subject, **kwargs)

    def client(self, credentials: Any, *, service: str = "cvm", region: str = "ap-guangzhou",
               **kwargs: Any) -> Any:
        from spotpool.cloud.client import CvmClient

        client = CvmClient(credentials, region, "http://simulator", service=service,
                           transport=self.transport, clock=self.clock, limiter=self.limiter,
                           sleep=self.sleep, **kwargs)
        self.closers.append(client.close)
        return client

    def _renewal(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        import random

        return {"clock": self.clock, "sleep": self.sleep, "rng": random.Random(3), **kwargs}

    def web_identity(self, token_file: Any, **kwargs: Any) -> Any:
        from spotpool.cloud.providers import WebIdentityProvider

        args = {"role_arn": OPERATOR_ROLE_ARN, "provider_id": PROVIDER_ID,
                "region": "ap-guangzhou", "endpoint": "http://simulator",
                "transport": self.transport, "limiter": self.limiter}
        provider = WebIdentityProvider(token_file=token_file, **self._renewal({**args, **kwargs}))
        self.closers.append(provider.aclose)
        return provider

    def assume_role(self, base: Any, **kwargs: Any) -> Any:
        from spotpool.cloud.providers import AssumeRoleProvider

        args = {"role_arn": TEAM_ROLE_ARN, "external_id": EXTERNAL_ID,
                "endpoint": "http://simulator", "transport": self.transport,
                "limiter": self.limiter}
        provider = AssumeRoleProvider(base, **self._renewal({**args, **kwargs}))
        self.closers.append(provider.aclose)
        return provider

    def cvm_role(self, role_name: str | None = None, **kwargs: Any) -> Any:
        from spotpool.cloud.providers import CvmRoleProvider

        args = {"endpoint": "http://metadata", "transport": self.transport}
        provider = CvmRoleProvider(role_name, **self._renewal({**args, **kwargs}))
        self.closers.append(provider.aclose)
        return provider

    def calls(self, action: str | None = None) -> list[Any]:
        return self.simulator.ledger.entries(action)

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()


async def _no_wait(_: float) -> None:
    return None
