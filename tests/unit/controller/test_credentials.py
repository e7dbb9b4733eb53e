"""`load_credentials` against a fake KubeApi: every way a Secret can be wrong is a
`CredentialsError` that names the Secret and the key and never carries a value; a good Secret
yields Credentials and registers its secrets with the process-wide redactor."""

from __future__ import annotations

import base64
import uuid

import pytest

from spotpool.cloud.models import Credentials
from spotpool.controller.credentials import CredentialsError, load_credentials
from spotpool.controller.redaction import MASK, REDACTOR

SECRET_ID = "AKIDcredtest0000000000000000000000000"


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def fresh_secret() -> str:
    """A value no other test registered with the process-wide redactor."""
    return f"secretKey-{uuid.uuid4().hex}"


class FakeKube:
    """Stands in for KubeApi.read_secret: Secret data as the API returns it (base64 values)."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]]) -> None:
        self.secrets = secrets
        self.reads: list[tuple[str, str]] = []

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append((namespace, name))
        return self.secrets.get((namespace, name))


async def load(data: dict[str, str] | None) -> Credentials:
    secrets = {} if data is None else {("batch", "cvm-creds"): data}
    return await load_credentials(FakeKube(secrets), "batch", "cvm-creds")  # type: ignore[arg-type]


def assert_names_and_hides(exc: CredentialsError, key: str | None, *values: str) -> None:
    message = str(exc)
    assert "batch/cvm-creds" in message
    if key is not None:
        assert f"key {key}" in message
    for value in values:
        assert value not in message
        assert value not in repr(exc)


async def test_missing_secret() -> None:
    with pytest.raises(CredentialsError) as caught:
        await load(None)
    assert_names_and_hides(caught.value, None)
    assert "does not exist" in str(caught.value)
    assert "secretId" in str(caught.value) and "secretKey" in str(caught.value)


async def test_the_secret_is_read_from_the_objects_namespace_by_name() -> None:
    kube = FakeKube({("batch", "cvm-creds"): {"secretId": b64(SECRET_ID), "secretKey": b64(fresh_secret())}})
    await load_credentials(kube, "batch", "cvm-creds")  # type: ignore[arg-type]
    assert kube.reads == [("batch", "cvm-creds")]
    with pytest.raises(CredentialsError):
        await load_credentials(kube, "other", "cvm-creds")  # type: ignore[arg-type]


@pytest.mark.parametrize("missing", ["secretId", "secretKey"])
async def test_missing_key(missing: str) -> None:
    secret = fresh_secret()
    data = {"secretId": b64(SECRET_ID), "secretKey": b64(secret)}
    del data[missing]
    with pytest.raises(CredentialsError) as caught:
        await load(data)
    assert_names_and_hides(caught.value, missing, secret, b64(secret))
    assert REDACTOR.scrub(secret) == secret  # nothing registered on failure


@pytest.mark.parametrize("empty", ["", "   ", "\n"])
@pytest.mark.parametrize("key", ["secretId", "secretKey"])
async def test_empty_key(key: str, empty: str) -> None:
    secret = fresh_secret()
    data = {"secretId": b64(SECRET_ID), "secretKey": b64(secret), key: b64(empty)}
    with pytest.raises(CredentialsError) as caught:
        await load(data)
    assert_names_and_hides(caught.value, key, secret, b64(secret))


@pytest.mark.parametrize("key", ["secretId", "secretKey", "token"])
async def test_non_utf8_value(key: str) -> None:
    secret = fresh_secret()
    raw = b"\xff\xfe" + secret.encode() + b"\x80"
    data = {"secretId": b64(SECRET_ID), "secretKey": b64(secret), key: b64(raw)}
    with pytest.raises(CredentialsError) as caught:
        await load(data)
    assert_names_and_hides(caught.value, key, secret, b64(secret), b64(raw))
    assert "UTF-8" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_value_that_is_not_strict_base64() -> None:
    """The API server always sends strict base64; anything else is refused, not decoded leniently
    (a lenient decoder drops the stray character and would accept this value)."""
    secret = fresh_secret()
    encoded = b64(secret)
    garbled = encoded[:4] + "!" + encoded[4:]
    with pytest.raises(CredentialsError) as caught:
        await load({"secretId": b64(SECRET_ID), "secretKey": garbled})
    assert_names_and_hides(caught.value, "secretKey", secret, garbled)


async def test_success_returns_trimmed_values_and_registers_the_secret_key() -> None:
    secret = fresh_secret()
    assert REDACTOR.scrub(f"x {secret} y") == f"x {secret} y"
    creds = await load({"secretId": b64(SECRET_ID + "\n"), "secretKey": b64(secret + "\n")})
    assert creds == Credentials(SECRET_ID, secret, None)
    assert REDACTOR.scrub(f"x {secret} y") == f"x {MASK} y"


async def test_success_with_a_token_registers_the_token_too() -> None:
    secret, token = fresh_secret(), f"token-{uuid.uuid4().hex}"
    creds = await load({"secretId": b64(SECRET_ID), "secretKey": b64(secret), "token": b64(token)})
    assert creds == Credentials(SECRET_ID, secret, token)
    assert REDACTOR.scrub(token) == MASK
    assert REDACTOR.scrub(secret) == MASK


async def test_an_empty_token_means_no_token() -> None:
    creds = await load({"secretId": b64(SECRET_ID), "secretKey": b64(fresh_secret()), "token": b64("")})
    assert creds.token is None
