"""The operator's settings, from flags and environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8080
    observe_interval: float = 15.0  # seconds between observations of a settled pool
    progress_interval: float = 2.0  # seconds between observations while buying or releasing
    cluster_id: str | None = None  # None: the kube-system namespace UID
    offers_max_age: float = 30.0  # seconds a market price read is reused
    log_level: str = "info"
    log_format: str = "plain"
    rate_limits: dict[str, float] = field(default_factory=dict)
    # Leader election (controller/leadership.py): off by default for a lone operator run by hand; the
    # chart turns it on. Every installation that could act on the same pools must use the same
    # namespace (the Lease's name comes from the cluster id).
    leader_elect: bool = False
    leader_election_namespace: str | None = None  # None: the namespace the operator runs in
    lease_duration: int = 15  # seconds followers wait, from their last sight of a renewal
    renew_deadline: float = 10.0  # seconds after its last renewal a leader stops acting
    retry_period: float = 2.0  # seconds between attempts to acquire or renew

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
