"""The kopf glue and the executor: observe the cloud, ask the planner, act, report."""

from spotpool.api.names import GROUP, PLURAL, VERSION

__all__ = ["GROUP", "PLURAL", "VERSION"]
