"""The few Kubernetes calls the executor makes itself (kopf does the watching).

The official client is synchronous; every call runs in a worker thread so the event loop that
serves every pool never blocks on the API server. `KubeApi` is the interface the executor needs;
tests run the executor against an in-memory implementation with the same semantics
(merge-patch, resourceVersion preconditions, finalizers).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import kubernetes
from kubernetes.client.exceptions import ApiException

from spotpool.api.names import GROUP, PLURAL, VERSION


class Conflict(Exception):
    """A write's resourceVersion precondition failed: someone else wrote first. The pass stops
    without acting; the next one starts from the newer object."""


class KubeApi(Protocol):
    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, base64-encoded as stored; None when it does not exist."""

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Merge-patch `status` through the status subresource (lists are replaced whole; null
        removes a field); with `resource_version`, only if the object still has it (else
        `Conflict`); with `timeout`, given up after that many seconds. Returns the object's new
        resourceVersion."""

    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The SpotComputeEnvironment as the API server holds it now (None: gone). Read only when
        a conditional status write lost its precondition, to see who wrote."""

    async def add_secret_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        """Add `finalizer` to the Secret if missing; True if it was added."""

    async def remove_secret_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        """Remove `finalizer` from the Secret if present; True if it was removed."""

    async def environments_naming_secret(self, namespace: str, secret: str) -> list[str]:
        """UIDs of the SpotComputeEnvironments of `namespace` whose credentialsSecretRef is `secret`."""

    async def namespace_uid(self, name: str) -> str | None: ...


KUBE_THREADS = 32
"""Worker threads (and HTTP connections) for Kubernetes calls. The official client is synchronous;
with asyncio's default pool (6 threads on 2 cores) the status writes of 500 pools queue behind each
other and purchases start late. The writes are small and I/O-bound: threads are cheap here."""


class ClusterKubeApi:
    """`KubeApi` over the official client, its calls on a pool of their own (`KUBE_THREADS`)."""

    def __init__(self, api_client: kubernetes.client.ApiClient | None = None) -> None:
        if api_client is None:
            kubernetes.config.load_config()  # type: ignore[no-untyped-call]
            configuration = kubernetes.client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = KUBE_THREADS
            api_client = kubernetes.client.ApiClient(configuration)
        self._pool = ThreadPoolExecutor(max_workers=KUBE_THREADS, thread_name_prefix="kube")
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._secrets: Mapping[tuple[str, str], Iterable[dict[str, str]]] | None = None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def watch_secrets(self, index: Mapping[tuple[str, str], Iterable[dict[str, str]]]) -> None:
        """Answer `read_secret` from this index (kopf's, fed by a watch) instead of the API server."""
        self._secrets = index

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        if self._secrets is not None:
            # kopf fills its indices before it starts any handler: a key pair not in the index is not
            # in the cluster (or its Secret holds no key pair, which reads the same to the caller).
            return next(iter(self._secrets.get((namespace, name), ())), None)
        try:
            secret = await self._call(self._core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(secret.data or {})

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any], *, resource_version: str | None = None,
        timeout: float | None = None,
    ) -> str:
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}  # a precondition in a patch
        try:
            call: Callable[..., Any] = self._custom.patch_namespaced_custom_object_status
            if timeout is not None:  # the client drops the request then, and the server cancels it
                call = functools.partial(call, _request_timeout=max(timeout, 0.001))
            result = await self._call(call, GROUP, VERSION, namespace, PLURAL, name, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{namespace}/{name} changed since resourceVersion {resource_version}") from None
            raise
        return str(result["metadata"]["resourceVersion"])

    async def read_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        # A list by name, not a get: the operator's role has list and watch on the objects (kopf's
        # needs), and a rare re-read is no reason for another verb.
        listing = await self._call(functools.partial(
            self._custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
            field_selector=f"metadata.name={name}"))
        items = listing.get("items") or []
        return dict(items[0]) if items else None

    async def add_secret_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        return await self._edit_finalizers(namespace, name, lambda f: [*f, finalizer] if finalizer not in f else f)

    async def remove_secret_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        return await self._edit_finalizers(namespace, name, lambda f: [x for x in f if x != finalizer])

    async def _edit_finalizers(self, namespace: str, name: str, change: Any) -> bool:
        """Read, change, and write the finalizer list with a resourceVersion test (JSON patch), so a
        concurrent edit by anyone else is never overwritten; retried on conflict."""
        for _ in range(5):
            try:
                secret = await self._call(self._core.read_namespaced_secret, name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            before = list(secret.metadata.finalizers or [])
            after = change(before)
            if after == before:
                return False
            patch = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": secret.metadata.resource_version},
                {"op": "replace" if secret.metadata.finalizers is not None else "add",
                 "path": "/metadata/finalizers", "value": after},
            ]
            try:
                await self._call(self._core.patch_namespaced_secret, name, namespace, patch)
                return True
            except ApiException as exc:
                if exc.status in (409, 422):  # the test op failed: read again
                    continue
                if exc.status == 404:
                    return False
                raise
        raise Conflict(f"Secret {namespace}/{name} kept changing while its finalizers were edited")

    async def environments_naming_secret(self, namespace: str, secret: str) -> list[str]:
        listing = await self._call(
            self._custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
        )
        return [
            item["metadata"]["uid"]
            for item in listing.get("items", [])
            if ((item.get("spec") or {}).get("credentialsSecretRef") or {}).get("name") == secret
        ]

    async def namespace_uid(self, name: str) -> str | None:
        try:
            namespace = await self._call(self._core.read_namespace, name)
        except ApiException as exc:
            if exc.status in (403, 404):
                return None
            raise
        return str(namespace.metadata.uid)
