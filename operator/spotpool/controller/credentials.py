"""CAM credentials from the Secret a SpotComputeEnvironment names.

A missing Secret or key is a configuration problem the user fixes in Kubernetes, not a crash: it
becomes Degraded/InvalidConfig naming the Secret and key, and the pool recovers by itself on the
next observation once the Secret is right.
"""

from __future__ import annotations

import base64
import binascii

from spotpool.cloud.models import Credentials
from spotpool.controller.kube import KubeApi
from spotpool.controller.redaction import REDACTOR


class CredentialsError(Exception):
    """The Secret is missing or incomplete; the message names it and never holds a secret value."""


async def load_credentials(kube: KubeApi, namespace: str, secret_name: str) -> Credentials:
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
    # From here on, the values are scrubbed from every log record this process writes.
    REDACTOR.add(values["secretKey"])
    if values.get("token"):
        REDACTOR.add(values["token"])
    return Credentials(values["secretId"], values["secretKey"], values.get("token") or None)
