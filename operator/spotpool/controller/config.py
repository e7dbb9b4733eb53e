"""The operator's settings, from flags and environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

DEFAULT_ORPHAN_GRACE = 120.0
"""Seconds an instance stays an orphan before the collector releases it (controller/collector.py)."""

# Where the leader-election Lease lives unless --leader-election-namespace says otherwise: one
# namespace that every installation in the cluster shares whatever namespace it runs in, so that
# two installations elect one leader between them by default. kube-system always exists (its UID is
# the default cluster id).
DEFAULT_LEASE_NAMESPACE = "kube-system"


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    # The metrics port (controller/health.py): HTTPS for bearer tokens allowed to get /metrics
    # (TokenReview + SubjectAccessReview) unless metrics_secure is off (development: plain HTTP, no
    # authentication). The certificate comes from the two files, or is self-signed at start-up.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8443
    metrics_secure: bool = True
    metrics_cert_file: str | None = None
    metrics_key_file: str | None = None
    # The health port: /healthz and /readyz over plain HTTP, for the kubelet's probes.
    health_host: str = "0.0.0.0"
    health_port: int = 8081
    observe_interval: float = 15.0  # seconds between sweeps of an account and region's instances
    heartbeat_interval: float = 300.0  # seconds between passes of a settled pool nothing woke
    progress_interval: float = 2.0  # seconds between observations while buying or releasing
    # Pools whose first pass in this process runs at once (at startup every pool's starts
    # together; docs/scaling.md: the peak they make is never given back).
    first_passes_at_once: int = 50
    cluster_id: str | None = None  # None: the kube-system namespace UID
    offers_max_age: float = 30.0  # seconds a market price read is reused
    log_level: str = "info"
    log_format: str = "plain"
    rate_limits: dict[str, float] = field(default_factory=dict)
    # Leader election (controller/leadership.py): off by default for a lone operator run by hand; the
    # chart turns it on. The Lease lives in one namespace shared by every installation (kube-system
    # unless set), and its name comes from the cluster id and the watched namespaces, so that
    # installations that could act on the same pools elect one leader between them.
    leader_elect: bool = False
    leader_election_namespace: str = DEFAULT_LEASE_NAMESPACE
    lease_duration: int = 15  # seconds followers wait, from their last sight of a renewal
    renew_deadline: float = 10.0  # seconds after its last renewal a leader stops acting
    retry_period: float = 2.0  # seconds between attempts to acquire or renew
    # The administrator's policy (controller/policy.py, docs/security.md): where pools may send
    # requests, and what they may buy. Empty allow-list: Tencent's public CVM endpoints for the
    # pool's region. Unset guards: unlimited (the CRD's own bounds).
    allowed_endpoints: tuple[str, ...] = ()
    allow_loopback_endpoints: bool = False  # development only: the simulator on 127.0.0.1
    allow_insecure_endpoints: bool = False  # development only: http to listed endpoints
    max_expected_count: int | None = None
    max_namespace_instances: int | None = None
    max_total_instances: int | None = None
    max_price: Decimal | None = None
    allowed_instance_types: tuple[str, ...] = ()  # fnmatch globs; empty: any type
    on_demand_namespaces: tuple[str, ...] = ()  # fnmatch globs of namespaces that may buy on-demand; empty: all
    # Credentials (controller/identity.py): the operator's own identity (none, pod-identity, cvm-role),
    # and which namespaces may use which source.
    operator_identity: str = "none"
    cvm_role: str | None = None
    sts_endpoint: str | None = None
    metadata_endpoint: str | None = None
    secret_credentials: bool = True
    operator_identity_namespaces: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()  # NAMESPACE_GLOB=ROLE_ARN_GLOB
    # The orphan collector (controller/collector.py): instances of this installation whose pool no
    # longer exists are reported, and released after the grace unless orphan_release is off.
    orphan_release: bool = True
    orphan_grace: float = DEFAULT_ORPHAN_GRACE

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
