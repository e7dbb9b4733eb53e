"""Who may use which credential source, and the temporary secrets kept out of every log record."""

from __future__ import annotations

import pytest

from spotpool.api.spec import EnvironmentSpec
from spotpool.cloud.models import Credentials
from spotpool.controller.identity import CredentialPolicy, CredentialPolicyError, Identities
from spotpool.controller.redaction import MASK, REDACTOR
from tests.support.specs import pool_spec

SPEC = pool_spec(credentialsSecretRef=None)  # each test names its credentials
ROLE = "qcs::cam::uin/200000000002:roleName/team-render"


def spec(**changes: object) -> EnvironmentSpec:
    return EnvironmentSpec.from_k8s({**SPEC, **changes})


def test_a_role_is_usable_only_where_a_pair_allows_it() -> None:
    policy = CredentialPolicy(roles=CredentialPolicy.parse_roles(["team-*=qcs::cam::uin/*:roleName/team-*"]))
    role = spec(credentials={"source": "Role", "roleArn": ROLE})
    assert policy.refusal("team-render", role) is None
    why = policy.refusal("finance", role)
    assert why is not None and why.startswith("spec.credentials.roleArn") and "--allow-role" in why
    other = spec(credentials={"source": "Role", "roleArn": "qcs::cam::uin/1:roleName/finance"})
    assert policy.refusal("team-render", other) is not None


def test_secrets_and_the_operators_identity_by_policy() -> None:
    keyed = spec(credentialsSecretRef={"name": "creds"})
    assert CredentialPolicy().refusal("team", keyed) is None
    assert "--no-secret-credentials" in (CredentialPolicy(secrets=False).refusal("team", keyed) or "")
    own = spec(credentials={"source": "OperatorIdentity"})
    assert CredentialPolicy().refusal("team", own) is not None
    assert CredentialPolicy(operator_identity=("platform-*",)).refusal("platform-a", own) is None


@pytest.mark.parametrize("entry", ["team", "=qcs::cam::uin/1:roleName/x", "team="])
def test_malformed_role_entries_are_startup_errors(entry: str) -> None:
    with pytest.raises(CredentialPolicyError):
        CredentialPolicy.parse_roles([entry])


class Session:
    source = "test session"
    rate_limit_key = "test"

    def __init__(self) -> None:
        self.issued = 0

    async def current(self) -> Credentials:
        self.issued += 1
        n = self.issued
        return Credentials(f"AKIDTMP{n:04d}", f"tmpSecretKey{n:04d}xyz", f"sessionToken{n:04d}")


async def test_temporary_keys_and_tokens_are_masked_as_soon_as_they_are_handed_out() -> None:
    identities = Identities(Session())
    provider = identities.operator()
    assert provider is not None
    first = await provider.current()
    line = f"signed with {first.secret_key} and {first.token}"
    assert REDACTOR.scrub(line) == f"signed with {MASK} and {MASK}"
    second = await provider.current()  # renewed: the new ones are masked, the old ones a while longer
    assert REDACTOR.scrub(second.secret_key) == MASK and REDACTOR.scrub(first.token or "") == MASK
    await identities.aclose()
