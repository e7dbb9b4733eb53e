"""`ClusterKubeApi` against a real kube-apiserver: the conditional status write the money rules rest
on (a resourceVersion precondition in a merge patch), and the re-read after a conflict."""

from __future__ import annotations

import json

import kubernetes
import pytest

from spotpool.controller.kube import ClusterKubeApi, Conflict
from tests.conftest import Cluster
from tests.support.specs import pool_spec

pytestmark = pytest.mark.cluster


def environment(namespace: str) -> str:
    return json.dumps({
        "apiVersion": "spotpool.io/v1alpha1", "kind": "SpotComputeEnvironment",
        "metadata": {"name": "pool", "namespace": namespace},
        "spec": pool_spec(),
    })


async def test_a_status_write_lands_only_over_the_version_it_names(cluster: Cluster, crd: str, namespace: str) -> None:
    cluster.kubectl.apply(environment(namespace))
    api = ClusterKubeApi(kubernetes.config.new_client_from_config(str(cluster.kubeconfig)))
    current = await api.read_object(namespace, "pool")
    assert current is not None
    version = current["metadata"]["resourceVersion"]
    written = await api.patch_status(namespace, "pool", {"launchSequence": 1}, resource_version=version)
    assert written != version
    with pytest.raises(Conflict):  # a write over the version before: someone (we) wrote since
        await api.patch_status(namespace, "pool", {"launchSequence": 0}, resource_version=version)
    again = await api.read_object(namespace, "pool")
    assert again is not None
    assert again["status"]["launchSequence"] == 1 and again["metadata"]["resourceVersion"] == written
    assert await api.read_object(namespace, "absent") is None
