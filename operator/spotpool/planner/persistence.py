"""The planner's bookkeeping as it is written into status, and read back after a restart.

In-flight launches MUST survive a crash (they carry the client tokens that make a replay safe), so
the executor writes them to status before calling RunInstances and reads them back on start. The
backoff survives too, so a restart does not hammer pools that were just refused; entries that
cannot be read back are skipped (the worst outcome is one early retry of that pool).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spotpool.cloud.errors import ErrorCategory
from spotpool.planner.formatting import format_time, parse_time
from spotpool.planner.model import InflightLaunch, PoolBackoff, PoolKey


def inflight_to_status(launch: InflightLaunch) -> dict[str, Any]:
    return {
        "clientToken": launch.client_token,
        "zone": launch.zone,
        "instanceType": launch.instance_type,
        "count": launch.count,
        "requestedAt": format_time(launch.requested_at),
        "instanceIds": list(launch.instance_ids),
    }


def inflight_from_status(status: Mapping[str, Any]) -> list[InflightLaunch]:
    """The `inflightLaunches` of a status. A malformed entry raises: dropping one silently could
    forget a purchase and buy it twice."""
    launches = []
    for index, item in enumerate(status.get("inflightLaunches") or []):
        try:
            launches.append(
                InflightLaunch(
                    client_token=str(item["clientToken"]),
                    zone=str(item["zone"]),
                    instance_type=str(item["instanceType"]),
                    count=int(item["count"]),
                    requested_at=parse_time(item["requestedAt"]),
                    instance_ids=tuple(str(i) for i in item.get("instanceIds") or ()),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"status.inflightLaunches[{index}] is malformed: {exc!r}") from exc
    return launches


def backoff_to_status(entry: PoolBackoff) -> dict[str, Any]:
    """The backoff fields of a `status.pools[]` entry (`lastError`, `retryAfter`, `failures`)."""
    fields: dict[str, Any] = {"failures": entry.failures}
    if entry.last_code is not None:
        last_error: dict[str, Any] = {"code": entry.last_code, "message": entry.last_message or ""}
        if entry.last_time is not None:
            last_error["time"] = format_time(entry.last_time)
        if entry.category is not None:
            last_error["category"] = entry.category.value
        fields["lastError"] = last_error
    if entry.retry_after is not None:
        fields["retryAfter"] = format_time(entry.retry_after)
    return fields


def backoff_from_status(status: Mapping[str, Any]) -> dict[PoolKey, PoolBackoff]:
    """Rebuild the backoff map from `status.pools[]`; pools without a refusal have no entry."""
    backoff = {}
    for item in status.get("pools") or []:
        try:
            last_error = item.get("lastError")
            if not last_error:
                continue
            category = last_error.get("category")
            retry_after = item.get("retryAfter")
            last_time = last_error.get("time")
            backoff[(str(item["zone"]), str(item["instanceType"]))] = PoolBackoff(
                failures=int(item.get("failures", 1)),
                retry_after=parse_time(retry_after) if retry_after else None,
                last_code=str(last_error["code"]),
                last_message=str(last_error.get("message", "")),
                last_time=parse_time(last_time) if last_time else None,
                category=ErrorCategory(category) if category else None,
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return backoff
