"""Every name spotpool writes into Kubernetes or the cloud, defined once.

Tag keys and their value formats are a contract with instances that already exist: changing one
makes running instances look foreign (ownership) or unlabelled (reporting). `docs/contract.md`
lists them for users.
"""

from __future__ import annotations

PREFIX = "spotpool.io"

GROUP = PREFIX
"""The API group of the SpotComputeEnvironment resource (crds/spotpool.io_spotcomputeenvironments.yaml)."""

VERSION = "v1alpha1"
"""The served (and stored) version of the resource."""

PLURAL = "spotcomputeenvironments"
"""The resource's plural name, as in its API paths."""

CRD_NAME = f"{PLURAL}.{GROUP}"
"""The CustomResourceDefinition's name."""

OWNER_UID_TAG = f"{PREFIX}/environment-uid"
"""The owning SpotComputeEnvironment's UID: the single source of ownership."""

ENVIRONMENT_TAG = f"{PREFIX}/environment"
"""The owner's name. The same key and value format as the scale selector's label (`ENVIRONMENT_LABEL`),
so `spotpool.io/environment=render-farm` means the same thing on an instance and in a selector."""

NAMESPACE_TAG = f"{PREFIX}/namespace"
"""The owner's namespace (names are unique only within one)."""

CLUSTER_TAG = f"{PREFIX}/cluster"
"""The installation's id, so two clusters sharing an account never touch each other's instances."""

LAUNCH_TAG = f"{PREFIX}/launch"
"""The ClientToken of the RunInstances call that bought the instance. A launch record whose answer
was lost is accounted for as soon as the listing shows instances carrying its token, without a
replay (which could buy when the deficit it was made for is already covered)."""

LAUNCH_SPEC_TAG = f"{PREFIX}/launch-spec"
"""A fingerprint of the launch spec the instance was bought with, one short hash per field that can
drift (`planner.disruption.fingerprint`): drift is read from the instance, so it survives any crash,
restart or move of the object."""

DO_NOT_DISRUPT_TAG = f"{PREFIX}/do-not-disrupt"
"""Set to "true" on an instance by its workload (e.g. through the instance's CAM role) to hold it
from voluntary replacement, up to `spec.disruption.doNotDisruptMaxHold`. Never set by spotpool."""

DRAINING_TAG = f"{PREFIX}/draining"
"""Set by spotpool on an instance it is about to release voluntarily, to the time it marked it
(RFC 3339, UTC): a scheduler watching tags moves work off it during `spec.disruption.drainGrace`."""

ENVIRONMENT_LABEL = ENVIRONMENT_TAG
"""The label key of `status.selector` (the scale subresource's selector)."""

FINALIZER = f"{PREFIX}/finalizer"
"""Kept on a SpotComputeEnvironment until the cloud confirms none of its instances is left."""

SECRET_FINALIZER = f"{PREFIX}/credentials-in-use"
"""Kept on a credentials Secret while a SpotComputeEnvironment may still need it to release
instances, so deleting a namespace (Secret and pool together) cannot strand them."""

DEFAULT_ENDPOINT = "https://cvm.tencentcloudapi.com"
"""CVM's public endpoint, used when `spec.endpoint` is not set."""


def environment_tags(*, uid: str, namespace: str, name: str, cluster_id: str) -> dict[str, str]:
    """spotpool's own tags on every instance it buys for one environment."""
    return {OWNER_UID_TAG: uid, ENVIRONMENT_TAG: name, NAMESPACE_TAG: namespace, CLUSTER_TAG: cluster_id}


def service_endpoint(cvm_endpoint: str, service: str) -> str:
    """The endpoint of another Tencent service (`sts`, `tag`) that belongs with a CVM endpoint.

    Tencent's hosts are per service (`cvm.<suffix>` beside `sts.<suffix>` and `tag.<suffix>`, also
    for the internal, regional and international suffixes); any other host (a private gateway,
    the simulator, which serves every service on one port) is asked itself.
    """
    scheme, _, host = cvm_endpoint.rstrip("/").partition("://")
    if host.startswith("cvm.") and host.endswith("tencentcloudapi.com"):
        return f"{scheme}://{service}.{host.removeprefix('cvm.')}"
    return f"{scheme}://{host}"


def sts_endpoint(cvm_endpoint: str) -> str:
    """The STS endpoint that belongs with a CVM endpoint (`service_endpoint` for `sts`)."""
    return service_endpoint(cvm_endpoint, "sts")
