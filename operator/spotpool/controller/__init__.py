"""The kopf glue and the executor: observe the cloud, ask the planner, act, report."""

GROUP = "spotpool.io"
VERSION = "v1alpha1"
PLURAL = "spotcomputeenvironments"
