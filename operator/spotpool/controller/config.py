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

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
