"""Day 2: which running instances are to be replaced (drift, expiry), and how many may go at once.

Pure, like the rest of the planner. An instance is a *candidate* for voluntary replacement when it
has drifted from the spec in a way `spec.disruption.drift` replaces, or is older than
`spec.disruption.expireAfter`. A candidate is replaced surge-first (`planner.plan`): its
replacement is bought while it still runs, and it is released only once running instances
without it still number expectedCount. So a voluntary reason never takes running below
expectedCount; a reclaim or a failure still can, as before.

Drift is read from the instance itself, never from memory: every instance bought carries
`spotpool.io/launch-spec`, a fingerprint of what it was bought with (one short hash per field
that can drift). The pool compares each hash with the same hash of the spec as it now stands: a
field whose hash differs has drifted, and status says which. An instance without the tag (bought
before drift detection existed), or with a hash it cannot read, has not drifted in that field:
no drift without a visible change. Zone, instance type and charge type need no tag: the instance
reports them.

How many candidates are replaced at once is the most restrictive *active* budget that applies to
their reasons (`spec.disruption.budgets`): a count or a percentage of expectedCount, optionally
for some reasons only, optionally only while a cron schedule's window is open. A budget of 0
stops voluntary replacement; no active budget that applies means no limit but the spend guards.
The return to spot is a voluntary disruption too: its `maxInFlight` is its own budget, and
budgets that name `ReturnToSpot` (or no reason) bound it further (`return_budget`).

Work on an instance can hold it: `spotpool.io/do-not-disrupt: "true"`, set on the instance by the
workload, keeps a candidate from being replaced for up to `doNotDisruptMaxHold` (forever when not
set), counted from the first pass that saw it held (`status.disruption.held`). Scale-in
takes such instances last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from croniter import croniter

from spotpool.api.names import DO_NOT_DISRUPT_TAG, DRAINING_TAG, LAUNCH_SPEC_TAG
from spotpool.api.spec import Budget, DisruptionReason, DriftReason, EnvironmentSpec
from spotpool.cloud.models import POSTPAID_BY_HOUR, RUNNING, Instance
from spotpool.planner.formatting import as_utc, format_time

FINGERPRINT_VERSION = "v1"

_FIELDS: tuple[tuple[str, DriftReason], ...] = (
    ("i", DriftReason.IMAGE),
    ("u", DriftReason.USER_DATA),
    ("n", DriftReason.NETWORK),
    ("d", DriftReason.SYSTEM_DISK),
    ("l", DriftReason.LOGIN),
    ("p", DriftReason.NAME),
)
"""Tag segment letter per field. Appending a field is compatible (old instances lack it: no
drift in it); changing a field's meaning needs a new FINGERPRINT_VERSION."""

_ORDER = list(DriftReason)

EXPIRY_TIMER_GRACE = timedelta(hours=2)
"""How long after `expireAfter` CVM's ActionTimer terminates an instance the operator has not
replaced: time for a surge-first replacement under its budget, after which the cloud ends the
instance whatever the operator does, or whether it still runs. The timer is the hard bound on an
instance's life, and on any leak."""

MAX_HELD_RECORDED = 1000
"""Held instances whose hold start the status at most (`status.disruption.held`)."""


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _field_values(spec: EnvironmentSpec, zone: str) -> dict[DriftReason, object]:
    network = spec.network
    disk = spec.system_disk
    return {
        DriftReason.IMAGE: spec.image_id,
        DriftReason.USER_DATA: spec.user_data,
        DriftReason.NETWORK: None if network is None else {
            "vpc": network.vpc_id, "subnet": network.subnet_ids.get(zone),
            "securityGroups": sorted(network.security_group_ids),
        },
        DriftReason.SYSTEM_DISK: None if disk is None else {"type": disk.type.value, "size": disk.size_gib},
        DriftReason.LOGIN: None if spec.login_settings is None else sorted(spec.login_settings.key_ids),
        DriftReason.NAME: spec.instance_name_prefix,
    }


def _digests(spec: EnvironmentSpec, zone: str) -> dict[DriftReason, str]:
    values = _field_values(spec, zone)
    return {reason: _digest(values[reason]) for _, reason in _FIELDS}


def fingerprint(spec: EnvironmentSpec, zone: str) -> str:
    """The `spotpool.io/launch-spec` tag of an instance bought now in `zone`: 8 hex digits of
    sha256 per field (about 60 characters; CVM tag values take 255)."""
    digests = _digests(spec, zone)
    return ".".join([FINGERPRINT_VERSION, *(f"{letter}{digests[reason]}" for letter, reason in _FIELDS)])


def _read_fingerprint(tag: str | None) -> dict[DriftReason, str]:
    if not tag:
        return {}
    parts = tag.split(".")
    if parts[0] != FINGERPRINT_VERSION:
        return {}
    by_letter = dict(_FIELDS)
    read = {}
    for part in parts[1:]:
        reason = by_letter.get(part[:1])
        if reason is not None and len(part) == 9:
            read[reason] = part[1:]
    return read


def drift_of(instance: Instance, spec: EnvironmentSpec,
             by_zone: dict[str, dict[DriftReason, str]] | None = None) -> tuple[DriftReason, ...]:
    """Every way `instance` differs from what the spec buys now (replaced or ignored), in
    DriftReason order. `by_zone`: the spec's digests per zone, filled as zones come (a pass
    computes them once per zone, not once per instance: pools hold up to 10,000)."""
    found: list[DriftReason] = []
    recorded = _read_fingerprint(instance.tags.get(LAUNCH_SPEC_TAG))
    if recorded:
        cache = by_zone if by_zone is not None else {}
        current = cache.get(instance.zone)
        if current is None:
            current = cache[instance.zone] = _digests(spec, instance.zone)
        found += [reason for _, reason in _FIELDS if reason in recorded and recorded[reason] != current[reason]]
    if instance.zone not in spec.zones:
        found.append(DriftReason.ZONE)
    if instance.instance_type not in spec.instance_types:
        found.append(DriftReason.INSTANCE_TYPE)
    if instance.charge_type == POSTPAID_BY_HOUR and spec.on_demand is None:
        found.append(DriftReason.CHARGE_TYPE)
    return tuple(sorted(found, key=_ORDER.index))


def expires_at(instance: Instance, spec: EnvironmentSpec) -> datetime | None:
    after = spec.disruption.expire_after_seconds
    if after is None or instance.created_time is None:
        return None
    return as_utc(instance.created_time) + timedelta(seconds=after)


def terminate_at(spec: EnvironmentSpec, requested_at: datetime) -> datetime | None:
    """The ActionTimer of a purchase recorded at `requested_at` (a replay repeats it exactly)."""
    after = spec.disruption.expire_after_seconds
    if after is None:
        return None
    return as_utc(requested_at) + timedelta(seconds=after) + EXPIRY_TIMER_GRACE


def held(instance: Instance) -> bool:
    return instance.tags.get(DO_NOT_DISRUPT_TAG, "").strip().lower() == "true"


def draining_since(instance: Instance) -> datetime | None:
    """When the operator marked the instance for release (`spotpool.io/draining`), if it did."""
    value = instance.tags.get(DRAINING_TAG)
    if not value:
        return None
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def budget_open(budget: Budget, now: datetime) -> bool:
    """A budget without a schedule always applies; one with a schedule while its window is open:
    the schedule (UTC) last fired at most `duration` ago."""
    if budget.schedule is None or budget.duration_seconds is None:
        return True
    now = as_utc(now)
    # croniter's get_prev is strictly before its start: start a second later to include `now`.
    fired = croniter(budget.schedule, now + timedelta(seconds=1)).get_prev(datetime)
    return as_utc(fired) + timedelta(seconds=budget.duration_seconds) > now


@dataclass(frozen=True)
class Limit:
    """The most restrictive active budget for some reasons: `allowed` replacements at a time
    (None: no active budget applies), and the budget's words for status and Events."""

    allowed: int | None
    which: str | None = None


def limit(budgets: Iterable[Budget], reasons: Iterable[DisruptionReason], expected: int, now: datetime) -> Limit:
    wanted = set(reasons)
    best = Limit(None)
    for index, budget in enumerate(budgets):
        if not any(budget.applies_to(r) for r in wanted) or not budget_open(budget, now):
            continue
        allowed = budget.allowed(expected)
        if best.allowed is None or allowed < best.allowed:
            best = Limit(allowed, f"spec.disruption.budgets[{index}] ({_budget_words(budget)})")
    return best


def _budget_words(budget: Budget) -> str:
    words = f"{budget.instances} at a time"
    if budget.reasons:
        words += " for " + ", ".join(r.value for r in budget.reasons)
    if budget.schedule:
        words += f" while '{budget.schedule}' + {budget.duration_seconds}s is open"
    return words


def return_budget(spec: EnvironmentSpec, now: datetime) -> tuple[int, str]:
    """Replacements the return to spot may have in flight: its `maxInFlight`, or less when an
    active budget for ReturnToSpot says so (the most restrictive wins)."""
    assert spec.on_demand is not None
    own = spec.on_demand.return_to_spot.budget(spec.expected_count)
    bound = limit(spec.disruption.budgets, [DisruptionReason.RETURN_TO_SPOT], spec.expected_count, now)
    if bound.allowed is not None and bound.allowed < own:
        return bound.allowed, bound.which or ""
    return own, "spec.onDemand.returnToSpot.maxInFlight"


@dataclass(frozen=True)
class Candidate:
    instance: Instance
    reason: DisruptionReason
    detail: str  # "Image, UserData" or "expired at ..."


@dataclass(frozen=True)
class InstanceDisruption:
    """What status says about one instance's disruption."""

    drifted: tuple[DriftReason, ...] = ()  # replaced
    ignored: tuple[DriftReason, ...] = ()  # differs, but spec.disruption.drift ignores it
    expires_at: datetime | None = None
    held: bool = False
    draining_since: datetime | None = None


@dataclass(frozen=True)
class Assessment:
    """The pool's disruption picture this pass.

    - `candidates`: running instances to replace, in the order they go (draining first, then
      expired, then drifted; oldest first within each), holds removed.
    - `waiting`: candidates a do-not-disrupt tag holds (with their hold start).
    - `held_since`: the hold starts to persist (`status.disruption.held`).
    - `per_instance`: status words per instance id (only instances with something to say).
    - `outdated`: alive instances drifted in a replaced field (status.updatedCount is alive minus these).
    """

    candidates: tuple[Candidate, ...] = ()
    waiting: tuple[Candidate, ...] = ()
    held_since: Mapping[str, datetime] = field(default_factory=dict)
    per_instance: Mapping[str, InstanceDisruption] = field(default_factory=dict)
    outdated: int = 0
    expired: int = 0

    def reasons(self) -> set[DisruptionReason]:
        return {c.reason for c in self.candidates}


def assess(
    spec: EnvironmentSpec, alive: Iterable[Instance], now: datetime, held_since: Mapping[str, datetime],
) -> Assessment:
    """Which alive instances are to be replaced, which are held, and what status says of each."""
    now = as_utc(now)
    disruption = spec.disruption
    max_hold = disruption.do_not_disrupt_max_hold_seconds
    candidates: list[tuple[tuple[object, ...], Candidate]] = []
    waiting: list[Candidate] = []
    holds: dict[str, datetime] = {}
    per_instance: dict[str, InstanceDisruption] = {}
    outdated = expired_count = 0
    by_zone: dict[str, dict[DriftReason, str]] = {}
    for instance in alive:
        differs = drift_of(instance, spec, by_zone)
        drifted = tuple(r for r in differs if disruption.replaces(r))
        ignored = tuple(r for r in differs if not disruption.replaces(r))
        expiry = expires_at(instance, spec)
        is_held = held(instance)
        draining = draining_since(instance)
        if drifted or ignored or expiry or is_held or draining:
            per_instance[instance.instance_id] = InstanceDisruption(drifted, ignored, expiry, is_held, draining)
        outdated += bool(drifted)
        is_expired = expiry is not None and expiry <= now
        expired_count += is_expired
        if instance.state != RUNNING or not (drifted or is_expired or draining):
            continue
        if is_expired and expiry is not None:
            candidate = Candidate(instance, DisruptionReason.EXPIRED, f"expired at {format_time(expiry)}")
        else:
            candidate = Candidate(instance, DisruptionReason.DRIFTED,
                                  ", ".join(r.value for r in drifted) if drifted else "draining")
        if is_held and draining is None:
            # The start is kept past the hold too: forgotten, the next pass would hold it anew.
            since = as_utc(held_since.get(instance.instance_id, now))
            if len(holds) < MAX_HELD_RECORDED:
                holds[instance.instance_id] = since
            if max_hold is None or since + timedelta(seconds=max_hold) > now:
                waiting.append(candidate)
                continue
        created = as_utc(instance.created_time).timestamp() if instance.created_time else 0.0
        rank = (draining is None, candidate.reason is not DisruptionReason.EXPIRED, created, instance.instance_id)
        candidates.append((rank, candidate))
    candidates.sort(key=lambda item: item[0])
    return Assessment(
        candidates=tuple(c for _, c in candidates), waiting=tuple(waiting), held_since=holds,
        per_instance=per_instance, outdated=outdated, expired=expired_count,
    )


def releasable_after_drain(
    instances: Iterable[Instance], grace_seconds: int | None, now: datetime,
) -> tuple[list[Instance], list[Instance]]:
    """(to release now, to mark now) of instances chosen for a voluntary release: with a drain
    grace, an unmarked instance is marked first and released once the grace has passed since."""
    if not grace_seconds:
        return list(instances), []
    release, mark = [], []
    for instance in instances:
        since = draining_since(instance)
        if since is None:
            mark.append(instance)
        elif since + timedelta(seconds=grace_seconds) <= as_utc(now):
            release.append(instance)
    return release, mark
