"""CAM credentials from the Secret a SpotComputeEnvironment names, and keeping that Secret alive.

A missing Secret or key is a configuration problem the user fixes in Kubernetes, not a crash: it
becomes Degraded/InvalidConfig naming the Secret and key, and the pool recovers by itself on the
next observation once the Secret is right.

Key pairs come from a watch (a kopf index of the Secrets that hold one, `credentials_entry`), not
from a read per pass: 500 pools would otherwise read 33 Secrets a second from the API server.

Deleting a namespace deletes the pool and its Secret together, and releasing the pool's instances
needs the Secret. So the Secret carries a finalizer (`SecretGuard`) from before the first purchase
until no environment of the namespace that names it still exists: Kubernetes then keeps it
readable (with a deletion timestamp) for as long as a release may need it, across any number of
operator restarts. Chosen over a copy of the key pair in the operator's namespace because the key
pair stays in exactly one place, owned by its team, and rotates as the team rotates it.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from typing import Any

from spotpool.api.names import SECRET_FINALIZER
from spotpool.cloud.models import Credentials
from spotpool.controller.kube import KubeApi
from spotpool.controller.redaction import REDACTOR


def credentials_entry(
    namespace: str, name: str, body: Mapping[str, Any]
) -> dict[tuple[str, str], dict[str, str]] | None:
    """What the operator keeps of a Secret it watches: the data of Secrets that hold a key pair,
    nothing of any other (a cluster's other Secrets are never held in memory)."""
    data = body.get("data") or {}
    if not isinstance(data, Mapping) or "secretId" not in data or "secretKey" not in data:
        return None
    return {(namespace, name): {key: str(data[key]) for key in ("secretId", "secretKey", "token") if key in data}}


class CredentialsError(Exception):
    """The Secret is missing or incomplete; the message names it and never holds a secret value."""


async def load_credentials(kube: KubeApi, namespace: str, secret_name: str) -> Credentials:
    """The key pair of Secret `namespace/secret_name`. Its values are scrubbed from every log record
    this process writes from here on; values the Secret held before (rotated), or all of them when it
    is gone or incomplete, are let go (`Redactor.hold`: masked a while longer, then forgotten)."""
    try:
        values = await _read_credentials(kube, namespace, secret_name)
    except CredentialsError:
        REDACTOR.hold((namespace, secret_name), ())
        raise
    REDACTOR.hold((namespace, secret_name), (values["secretKey"], values.get("token") or ""))
    return Credentials(values["secretId"], values["secretKey"], values.get("token") or None)


async def _read_credentials(kube: KubeApi, namespace: str, secret_name: str) -> dict[str, str]:
    data = await kube.read_secret(namespace, secret_name)
    if data is None:
        raise CredentialsError(
            f"Secret {namespace}/{secret_name} (spec.credentialsSecretRef) does not exist; create it with "
            f"keys secretId and secretKey"
        )
    values: dict[str, str] = {}
    for key in ("secretId", "secretKey", "token"):
        raw = data.get(key)
        if raw is None:
            continue
        try:
            values[key] = base64.b64decode(raw, validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"Secret {namespace}/{secret_name} key {key} is not valid UTF-8 text") from None
    for key in ("secretId", "secretKey"):
        if not values.get(key):
            raise CredentialsError(f"Secret {namespace}/{secret_name} has no key {key} (or it is empty)")
    return values


log = logging.getLogger(__name__)


class SecretGuard:
    """Adds and removes `SECRET_FINALIZER` on credentials Secrets (see the module docstring).

    Remembers which Secrets it has protected, so a settled pool costs no API call for this.
    """

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube
        self._protected: set[tuple[str, str]] = set()

    async def protect(self, namespace: str, name: str) -> None:
        if (namespace, name) in self._protected:
            return
        if await self._kube.add_secret_finalizer(namespace, name, SECRET_FINALIZER):
            log.info("Secret %s/%s: added finalizer %s", namespace, name, SECRET_FINALIZER)
        self._protected.add((namespace, name))

    async def release(self, namespace: str, name: str, *, leaving_uid: str) -> None:
        """The environment `leaving_uid` no longer needs Secret `name`: drop the finalizer unless
        another environment of the namespace still names it."""
        users = await self._kube.environments_naming_secret(namespace, name)
        if any(uid != leaving_uid for uid in users):
            return
        self._protected.discard((namespace, name))
        REDACTOR.hold((namespace, name), ())  # no pool uses its values any more: retired, then forgotten
        if await self._kube.remove_secret_finalizer(namespace, name, SECRET_FINALIZER):
            log.info("Secret %s/%s: removed finalizer %s", namespace, name, SECRET_FINALIZER)
