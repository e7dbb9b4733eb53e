"""The planner's bookkeeping as it is written into status, and read back after a restart.

Launch records (the journal) MUST survive a crash (they carry the client tokens that make a replay
safe), so the executor writes them to status before calling RunInstances and reads them back on
every pass; each is validated on the way in (`read_journal`). The
backoff survives too, so a restart does not hammer pools that were just refused; entries that
cannot be read back are skipped (the worst outcome is one early retry of that pool).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotpool.cloud.errors import ErrorCategory
from spotpool.cloud.models import CHARGE_TYPES, SPOTPAID
from spotpool.planner.formatting import format_time, parse_time
from spotpool.planner.model import (
    MAX_JOURNAL_RECORDS,
    MAX_LAUNCH_COUNT,
    DroppedRecord,
    DropReason,
    InflightLaunch,
    PoolBackoff,
    PoolKey,
)


def inflight_to_status(launch: InflightLaunch) -> dict[str, Any]:
    record = {
        "clientToken": launch.client_token,
        "zone": launch.zone,
        "instanceType": launch.instance_type,
        "count": launch.count,
        "requestedAt": format_time(launch.requested_at),
        "instanceIds": list(launch.instance_ids),
    }
    if launch.charge_type != SPOTPAID:  # spot records stay as every earlier version wrote them
        record["chargeType"] = launch.charge_type
    if launch.seen:
        record["seenIds"] = list(launch.seen)
    return record


_TOKEN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_INSTANCE_ID = re.compile(r"^ins-[a-z0-9]{8}$")
_ZONE = re.compile(r"^[a-z]{2,3}-[a-z]+(-[a-z]+)?-[0-9]+$")
_INSTANCE_TYPE = re.compile(r"^[A-Z][A-Z0-9]*\.[A-Z0-9]+$")


def read_journal(status: Mapping[str, Any]) -> tuple[list[InflightLaunch], list[DroppedRecord]]:
    """The launch records of a status, each checked to be one this operator could have written.

    Status is writable by anyone allowed to patch the status subresource, and an older or broken
    operator may have written it: a record is kept only if its token has the shape `client_token`
    makes, its pool names are well formed, its count is a RunInstances count and its ids are
    CVM instance ids, no more than the count. Anything else is dropped (for a Warning event), never
    replayed: a replay spends money. Whether its pool is still a candidate is the planner's call.
    """
    items = status.get("inflightLaunches") or []
    if not isinstance(items, list):
        return [], [DroppedRecord("", DropReason.MALFORMED, "status.inflightLaunches is not a list")]
    launches: list[InflightLaunch] = []
    dropped: list[DroppedRecord] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"status.inflightLaunches[{index}]"
        if index >= MAX_JOURNAL_RECORDS:
            dropped.append(DroppedRecord("", DropReason.MALFORMED, f"{where}: more than {MAX_JOURNAL_RECORDS} records"))
            continue
        try:
            launch = _record(item)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            token = item.get("clientToken") if isinstance(item, Mapping) else None
            shown = str(token)[:64] if isinstance(token, str) else ""
            dropped.append(DroppedRecord(shown, DropReason.MALFORMED, f"{where}: {exc}"[:300]))
            continue
        if launch.client_token in seen:
            dropped.append(DroppedRecord(launch.client_token, DropReason.MALFORMED, f"{where}: repeats a token"))
            continue
        seen.add(launch.client_token)
        launches.append(launch)
    return launches, dropped


def _record(item: Mapping[str, Any]) -> InflightLaunch:
    token, zone, instance_type = item["clientToken"], item["zone"], item["instanceType"]
    count, ids = item["count"], item.get("instanceIds") or []
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError("clientToken is not a token spotpool makes")
    if not isinstance(zone, str) or not _ZONE.fullmatch(zone):
        raise ValueError("zone is not a zone name")
    if not isinstance(instance_type, str) or not _INSTANCE_TYPE.fullmatch(instance_type):
        raise ValueError("instanceType is not an instance type")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_LAUNCH_COUNT:
        raise ValueError(f"count is not 1..{MAX_LAUNCH_COUNT}")
    if not isinstance(ids, list) or len(ids) > count:
        raise ValueError("instanceIds is not a list of at most count ids")
    if not all(isinstance(i, str) and _INSTANCE_ID.fullmatch(i) for i in ids):
        raise ValueError("instanceIds holds something that is not an instance id")
    charge_type = item.get("chargeType", SPOTPAID)
    if charge_type not in CHARGE_TYPES:
        raise ValueError(f"chargeType is not one of {', '.join(CHARGE_TYPES)}")
    # Of its own ids only; anything else reads as nothing seen, the safe side (a look-up's "not
    # found" then holds an id for NOT_VISIBLE_HOLD instead of proving it gone).
    shown = item.get("seenIds")
    shown_ids = {i for i in shown if isinstance(i, str)} if isinstance(shown, list) else set()
    seen = [i for i in ids if i in shown_ids]
    return InflightLaunch(
        client_token=token,
        zone=zone,
        instance_type=instance_type,
        count=count,
        requested_at=parse_time(str(item["requestedAt"])),
        instance_ids=tuple(ids),
        charge_type=charge_type,
        seen=tuple(seen),
    )


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


@dataclass(frozen=True)
class KnownInstance:
    """An instance as the status last listed it: enough to look it up, and to tell a loss."""

    instance_id: str
    zone: str
    instance_type: str
    state: str


@dataclass(frozen=True)
class PersistedStatus:
    """The status a pass plans from, read once and checked, so no pass reads raw status fields.

    Everything a decision needs from what earlier passes (of this process, of a crashed one, of a
    past leader) persisted: the journal, the launch sequence, the backoff, the account the pool
    buys in, the fallback timer, the instances last listed, the launch spec that passed its check.
    """

    journal: tuple[InflightLaunch, ...] = ()
    malformed: tuple[DroppedRecord, ...] = ()
    sequence: int | None = None  # None: none recorded (a new pool, or its status was lost)
    backoff: Mapping[PoolKey, PoolBackoff] = field(default_factory=dict)
    account: Mapping[str, str] | None = None
    conditions: tuple[Mapping[str, Any], ...] = ()
    spot_short_since: datetime | None = None
    instances: tuple[KnownInstance, ...] = ()
    current_count: int = 0
    validated_launch_spec: str | None = None
    credentials_secret: str | None = None  # status.credentials.secret: the Secret the last pass signed with
    held_since: Mapping[str, datetime] = field(default_factory=dict)  # status.disruption.held
    rolling_out: bool = False  # status.disruption.remaining > 0: drifted or expired instances are replaced

    @property
    def known_ids(self) -> frozenset[str]:
        """Every instance id the status says this pool holds or bought: listed ones and the ids
        launch records returned. An id here that a sweep does not show is looked up by id before
        anything is decided on its absence."""
        return frozenset(i.instance_id for i in self.instances) | frozenset(
            i for launch in self.journal for i in launch.instance_ids)

    @property
    def may_own_instances(self) -> bool:
        """Whether instances bought under the recorded account may still exist, as far as status
        says. The account is recorded with the journal before the first purchase, so a purchase
        that crashed before any listing still shows as a record here."""
        return bool(self.current_count or self.journal or self.malformed or self.instances)

    def condition(self, kind: str) -> Mapping[str, Any]:
        return next((c for c in self.conditions if c.get("type") == kind), {})

    @property
    def deleted_already(self) -> bool:
        """A deletion that already released everything and let its Secret go (a restart between
        the Secret's finalizer and the object's): the status it wrote says so, and nothing is left."""
        return (self.condition("Progressing").get("reason") == "Deleted" and not self.journal
                and not self.malformed and not self.current_count)


def read_status(status: Mapping[str, Any]) -> PersistedStatus:
    """The typed, validated view of a status (anyone with patch on the status subresource may
    have written it: every field is checked, and what cannot be read is left out as if unset)."""
    journal, malformed = read_journal(status)
    account = status.get("account")
    conditions = status.get("conditions")
    validated = status.get(VALIDATED_LAUNCH_SPEC)
    return PersistedStatus(
        journal=tuple(journal),
        malformed=tuple(malformed),
        sequence=_sequence(status.get("launchSequence")),
        backoff=backoff_from_status(status),
        account={str(k): str(v) for k, v in account.items()} if isinstance(account, Mapping) else None,
        conditions=tuple(c for c in conditions if isinstance(c, Mapping)) if isinstance(conditions, list) else (),
        spot_short_since=_spot_short_since(status.get("capacity")),
        instances=tuple(_known_instances(status.get("instances"))),
        current_count=current_count(status),
        validated_launch_spec=validated if isinstance(validated, str) else None,
        credentials_secret=_secret_name(status.get("credentials")),
        held_since=_held_since(status.get("disruption")),
        rolling_out=_rolling_out(status.get("disruption")),
    )


def _rolling_out(disruption: Any) -> bool:
    remaining = disruption.get("remaining") if isinstance(disruption, Mapping) else None
    return isinstance(remaining, int) and not isinstance(remaining, bool) and remaining > 0


def _held_since(disruption: Any) -> dict[str, datetime]:
    """`status.disruption.held` ([{id, since}]): when each do-not-disrupt hold began (its maximum
    counts from it). A list, not a map, so a merge-patch replaces it whole. Unreadable entries are
    left out: such a hold starts again, which only holds longer."""
    held = disruption.get("held") if isinstance(disruption, Mapping) else None
    if not isinstance(held, list):
        return {}
    read = {}
    for entry in held[:MAX_HELD_READ]:
        if not isinstance(entry, Mapping):
            continue
        instance_id, since = entry.get("id"), entry.get("since")
        if isinstance(instance_id, str) and _INSTANCE_ID.fullmatch(instance_id) and isinstance(since, str):
            try:
                read[instance_id] = parse_time(since)
            except ValueError:
                continue
    return read


MAX_HELD_READ = 1000
"""Hold starts read back at most (the planner records no more, `disruption.MAX_HELD_RECORDED`)."""


def current_count(status: Mapping[str, Any]) -> int:
    """`status.currentCount`, 0 when unset or not a count (the spend guards read it from every
    pool's object on each watch event: this alone, not the whole status)."""
    current = status.get("currentCount")
    return current if isinstance(current, int) and not isinstance(current, bool) and current > 0 else 0


VALIDATED_LAUNCH_SPEC = "validatedLaunchSpec"
"""The status field naming the launch spec digest that passed its DryRun check."""


_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _secret_name(credentials: Any) -> str | None:
    name = credentials.get("secret") if isinstance(credentials, Mapping) else None
    return name if isinstance(name, str) and len(name) <= 253 and _SECRET_NAME.fullmatch(name) else None


def _sequence(value: Any) -> int | None:
    """None when the status holds no usable sequence: the executor starts a fresh one
    (`tokens.first_sequence`), never 0 again."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _spot_short_since(capacity: Any) -> datetime | None:
    """When spot became short, as the last pass wrote it (the fallback's wait counts from it).
    Unreadable means not recorded: the wait starts again, which only delays a fallback."""
    since = capacity.get("spotShortSince") if isinstance(capacity, Mapping) else None
    if not isinstance(since, str):
        return None
    try:
        return parse_time(since)
    except ValueError:
        return None


def _known_instances(items: Any) -> list[KnownInstance]:
    if not isinstance(items, list):
        return []
    known = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        instance_id = item.get("id")
        if isinstance(instance_id, str) and _INSTANCE_ID.fullmatch(instance_id):
            # Zone and type name pools whose prices are read: only what the shapes allow.
            zone, kind = item.get("zone"), item.get("instanceType")
            known.append(KnownInstance(
                instance_id, zone if isinstance(zone, str) and _ZONE.fullmatch(zone) else "",
                kind if isinstance(kind, str) and _INSTANCE_TYPE.fullmatch(kind) else "",
                str(item.get("state") or "")[:32]))
    return known
