"""The few Kubernetes calls the executor makes itself (kopf does the watching).

The official client is synchronous; every call runs in a worker thread so the event loop that
serves every pool never blocks on the API server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from spotpool.controller import GROUP, PLURAL, VERSION


class KubeApi:
    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        if api_client is None:
            kubernetes.config.load_config()
            api_client = kubernetes.client.ApiClient()
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, base64-encoded as stored; None when it does not exist."""
        try:
            secret = await asyncio.to_thread(self._core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(secret.data or {})

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch `status` through the status subresource (lists are replaced whole)."""
        await asyncio.to_thread(
            self._custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, PLURAL, name, {"status": status},
        )

    async def namespace_uid(self, name: str) -> str | None:
        try:
            namespace = await asyncio.to_thread(self._core.read_namespace, name)
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        return namespace.metadata.uid
