"""What the operator benchmarks share: the control plane with the CRD, a namespace with the CVM
Secret, the SpotComputeEnvironment body, the lower bound on purchases, and readings of a process
(RSS, CPU) and of the API server (write requests from its /metrics).

Imported by `operator_bench.py` and `scale_bench.py` (run from this folder, so `import benchlib`
works); it puts the repository on `sys.path` for the e2e tests' process wrappers in tests/support.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the e2e tests' process wrappers live in tests/support

from spotpool.api.names import GROUP, VERSION  # noqa: E402
from spotpool.devcluster.controlplane import ControlPlane  # noqa: E402
from tests.support.processes import DEMO_SECRET_ID, DEMO_SECRET_KEY  # noqa: E402
from tests.support.specs import pool_spec  # noqa: E402

CRD_FILE = REPO / "crds" / "spotpool.io_spotcomputeenvironments.yaml"
PER_CALL = 100  # RunInstances InstanceCount upper bound, and DescribeInstances page size
RUN_RATE = 10.0  # documented RunInstances limit, calls per second
DESCRIBE_RATE = 40.0  # documented DescribeInstances limit, calls per second


STS_ACTIONS = ("GetCallerIdentity", "AssumeRole", "AssumeRoleWithWebIdentity")


def latency_faults(latency_ms: float) -> dict[str, dict[str, float]]:
    """The simulator's faults for `latency_ms` on every action. `*` matches CVM's actions only
    (the simulator never applies it to STS), but the real STS answers a round trip late too: the
    account look-up of a new key pair is named, or a new pool's first pass would look one round
    trip faster than it is."""
    return {"*": {"latencyMs": latency_ms}, **{action: {"latencyMs": latency_ms} for action in STS_ACTIONS}}


def lower_bound(count: int, latency: float, calls: int | None = None) -> float:
    """(RunInstances calls - 1) / 10 calls/s + one round trip; `calls` defaults to ceil(count/100)."""
    calls = math.ceil(count / PER_CALL) if calls is None else calls
    return (calls - 1) / RUN_RATE + latency


def status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def ready(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status(obj).get("conditions") or [])


def kubectl_run(kubectl: Path, plane: ControlPlane, *args: str, check: bool = True) -> None:
    subprocess.run([str(kubectl), f"--kubeconfig={plane.kubeconfig}", *args], check=check, capture_output=True)


def install_crd(kubectl: Path, plane: ControlPlane) -> None:
    kubectl_run(kubectl, plane, "apply", "--server-side", "-f", str(CRD_FILE))
    kubectl_run(kubectl, plane, "wait", "--for=condition=Established",
                "crd/spotcomputeenvironments.spotpool.io", "--timeout=60s")


def create_namespace(kubectl: Path, plane: ControlPlane, core: kubernetes.client.CoreV1Api, namespace: str) -> None:
    """The namespace and the `cvm` Secret holding the simulator's demo key pair."""
    kubectl_run(kubectl, plane, "create", "namespace", namespace)
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "cvm"},
        "stringData": {"secretId": DEMO_SECRET_ID, "secretKey": DEMO_SECRET_KEY},
    })


def delete_namespace(kubectl: Path, plane: ControlPlane, namespace: str) -> None:
    # Our finalizer pins the objects (and the namespace) once the operator is gone: don't wait.
    kubectl_run(kubectl, plane, "delete", "namespace", namespace, "--wait=false", check=False)


def environment(name: str, namespace: str, count: int, zone: str, instance_type: str, endpoint: str,
                region: str = "ap-guangzhou") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SpotComputeEnvironment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": pool_spec(expectedCount=count, region=region, zones=[zone], instanceTypes=[instance_type],
                          credentialsSecretRef={"name": "cvm"}, endpoint=endpoint),
    }


# -- readings of a process ------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak RSS) of a process, in MiB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


# -- the API server's own count of requests ------------------------------------------------------

_REQUEST = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"})


def apiserver_writes(api: kubernetes.client.ApiClient) -> Counter[tuple[str, str, str]]:
    """Write requests the API server has served so far, by (verb, resource, subresource), from
    `apiserver_request_total` on its /metrics (read with the admin kubeconfig)."""
    response = api.call_api("GET", api.configuration.host + "/metrics")
    response.read()
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in response.data.decode().splitlines():
        match = _REQUEST.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("verb") in WRITE_VERBS:
            counts[(labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))] += \
                int(float(match["value"]))
    return counts


# -- memory profiles (memray, optional: the `bench` extra) ------------------------------------------

def memray_launcher(capture: Path) -> tuple[str, ...]:
    """The argv prefix that runs `spotpool` under memray, writing aggregated high-water-mark stats
    to `capture`. Allocations are seen where the process asks the system for memory (malloc, and
    pymalloc's 1 MiB arenas): the frame that grew the heap, a fair picture in aggregate. Tracing
    every Python allocation (`--trace-python-allocators`) slowed the operator so much that 8 of 500
    pools were Ready after 370 s: no picture of the real run."""
    capture.parent.mkdir(parents=True, exist_ok=True)
    capture.unlink(missing_ok=True)
    return (sys.executable, "-m", "memray", "run", "--quiet", "--aggregate",
            "--output", str(capture), "-m", "spotpool")


_OWN_FRAMES = ("spotpool/", "kopf/", "kubernetes/", "aiohttp/", "httpx/", "prometheus_client/", "pydantic")


def memray_peak(capture: Path, limit: int = 12) -> list[str]:
    """What the process held at its high-water mark, from a memray capture: the peak, and the
    biggest holders grouped by their innermost frame in spotpool or the libraries it drives
    (`file:line function`), so a profile reads as 'these objects, made here'."""
    import memray  # the bench extra; only profiling runs need it

    reader = memray.FileReader(str(capture))
    by_site: Counter[str] = Counter()
    total = 0
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        total += record.size
        site = "(no project frame)"
        for function, filename, line in record.stack_trace(max_stacks=40):
            if any(marker in filename for marker in _OWN_FRAMES):
                short = filename.split("site-packages/")[-1].split("operator/")[-1]
                site = f"{short}:{line} {function}"
                break
        by_site[site] += record.size
    peak = reader.metadata.peak_memory
    rows = [f"peak {peak / 2**20:.0f} MiB heap ({total / 2**20:.0f} MiB in live allocations at the peak):"]
    rows += [f"  {size / 2**20:7.1f} MiB  {site}" for site, size in by_site.most_common(limit)]
    reader.close()
    return rows
