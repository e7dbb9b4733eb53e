"""Every Event reason spotpool posts, defined once, with its type and what it means.

Events are the pool's activity log (`kubectl describe sce`, `kubectl get events`): users filter and
alert on reasons, so a reason names one thing only, and the words here are the ones docs/spec.md
lists. Degraded condition reasons (`planner.degraded.DegradedReason`) are posted too, as a Warning
when they first appear; they are the conditions' vocabulary and stay defined there.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Purchases
    LAUNCHED = "Launched"  # instances bought this pass: per pool count, price, capacity; the ids
    LAUNCH_REFUSED = "LaunchRefused"  # RunInstances refused a pool (stock, price, quota): it backs off
    LAUNCH_CALL_FAILED = "LaunchFailed"  # a RunInstances call failed for another reason (not about one pool)
    LAUNCH_PENDING = "LaunchPending"  # RunInstances did not answer: it may be replayed with its own token
    LAUNCH_RECORD_DROPPED = "LaunchRecordDropped"  # a launch record left the journal unaccounted, and why
    LAUNCH_CHECK = "LaunchCheck"  # a note of the DryRun launch check (a spec field the cloud questions)
    FALLBACK_TO_ON_DEMAND = "FallbackToOnDemand"  # on-demand bought because spot stayed short
    # Releases
    RELEASED = "Released"  # instances released, with the reason (ScaleIn, Delete, Cleanup, Drifted, ...)
    RETURNED_TO_SPOT = "ReturnedToSpot"  # fallback on-demand instances released once spot ones run
    RELEASE_FAILED = "ReleaseFailed"  # TerminateInstances failed: the next pass tries again
    # Losses
    INSTANCE_LOST = "InstanceLost"  # alive instances gone without spotpool: reclaimed or released outside
    INSTANCES_FAILED_TO_LAUNCH = "InstancesFailedToLaunch"  # bought instances that ended LAUNCH_FAILED
    # State
    READY = "Ready"  # every expected instance runs
    RECOVERED = "Recovered"  # the cloud no longer refuses the pool (Degraded went False)
    DELETION_WAITING = "DeletionWaiting"  # what a deletion still waits for, once each time it changes
    # Day 2
    DRIFTED = "Drifted"  # instances differ from the spec in a field that replaces (docs/day2.md)
    EXPIRED = "Expired"  # instances older than spec.disruption.expireAfter
    DRAINING = "Draining"  # instances marked spotpool.io/draining before a voluntary release
    DRAIN_MARK_FAILED = "DrainMarkFailed"  # the mark (TagResources) failed: nothing is released unmarked
    DISRUPTION_BLOCKED = "DisruptionBlocked"  # replacements remain and none goes: a budget, a hold, a guard
    # The installation (on the operator's own Pod)
    ORPHAN_INSTANCES = "OrphanInstances"  # instances of this installation whose pool no longer exists
    ORPHAN_INSTANCES_RELEASED = "OrphanInstancesReleased"  # the orphan collector released them

    @property
    def type(self) -> str:
        """Normal or Warning: a Warning asks someone to look."""
        return "Warning" if self in WARNINGS else "Normal"


WARNINGS = frozenset({
    Reason.LAUNCH_REFUSED, Reason.LAUNCH_CALL_FAILED, Reason.LAUNCH_PENDING, Reason.LAUNCH_RECORD_DROPPED,
    Reason.LAUNCH_CHECK, Reason.FALLBACK_TO_ON_DEMAND, Reason.RELEASE_FAILED, Reason.INSTANCE_LOST,
    Reason.INSTANCES_FAILED_TO_LAUNCH, Reason.DRAIN_MARK_FAILED, Reason.DISRUPTION_BLOCKED,
    Reason.ORPHAN_INSTANCES, Reason.ORPHAN_INSTANCES_RELEASED,
})
