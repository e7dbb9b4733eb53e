"""spotpool.planner: the pure decisions (what to replay, buy, release, and the status).

No I/O, no kopf, no clock: every input, `now` included, is an argument, so every decision can be
replayed and tested. The executor reads the journal (`read_journal`), observes, calls `plan`
once per pass, acts, records refusals and successes with `record_refusal` / `record_success`,
and writes `build_status`.
"""

from spotpool.planner.backoff import record_refusal, record_success
from spotpool.planner.census import Census, take_census
from spotpool.planner.model import (
    INFLIGHT_VISIBILITY_GRACE,
    MAX_LAUNCH_COUNT,
    MAX_RELEASE_IDS,
    NOT_VISIBLE_HOLD,
    OWNER_UID_TAG,
    DroppedRecord,
    DropReason,
    ErrorRecord,
    InflightLaunch,
    LaunchBatch,
    Observation,
    Plan,
    PoolBackoff,
    PoolKey,
    ReleaseReason,
)
from spotpool.planner.persistence import backoff_from_status, read_journal
from spotpool.planner.plan import plan
from spotpool.planner.status import StatusReport, build_status
from spotpool.planner.tokens import client_token

__all__ = [
    "INFLIGHT_VISIBILITY_GRACE",
    "MAX_LAUNCH_COUNT",
    "MAX_RELEASE_IDS",
    "NOT_VISIBLE_HOLD",
    "OWNER_UID_TAG",
    "Census",
    "DropReason",
    "DroppedRecord",
    "ErrorRecord",
    "InflightLaunch",
    "LaunchBatch",
    "Observation",
    "Plan",
    "PoolBackoff",
    "PoolKey",
    "ReleaseReason",
    "StatusReport",
    "backoff_from_status",
    "build_status",
    "client_token",
    "plan",
    "read_journal",
    "record_refusal",
    "record_success",
    "take_census",
]
