"""spotpool.planner: the pure decisions (what to buy, where, what to release, the status).

No I/O, no kopf, no clock: every input, `now` included, is an argument, so every decision can be
replayed and tested. The executor calls `plan`, acts, records refusals and successes with
`record_refusal` / `record_success`, and writes `build_status`.
"""

from spotpool.planner.backoff import record_refusal, record_success
from spotpool.planner.model import (
    INFLIGHT_VISIBILITY_GRACE,
    MAX_LAUNCH_COUNT,
    MAX_RELEASE_IDS,
    OWNER_UID_TAG,
    ErrorRecord,
    InflightLaunch,
    LaunchBatch,
    Plan,
    PoolBackoff,
    PoolKey,
    ReleaseReason,
)
from spotpool.planner.persistence import backoff_from_status, inflight_from_status
from spotpool.planner.plan import plan
from spotpool.planner.status import build_status
from spotpool.planner.tokens import client_token

__all__ = [
    "INFLIGHT_VISIBILITY_GRACE",
    "MAX_LAUNCH_COUNT",
    "MAX_RELEASE_IDS",
    "OWNER_UID_TAG",
    "ErrorRecord",
    "InflightLaunch",
    "LaunchBatch",
    "Plan",
    "PoolBackoff",
    "PoolKey",
    "ReleaseReason",
    "backoff_from_status",
    "build_status",
    "client_token",
    "inflight_from_status",
    "plan",
    "record_refusal",
    "record_success",
]
