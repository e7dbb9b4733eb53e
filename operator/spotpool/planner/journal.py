"""The launch journal's money rules: which records to keep, replay, or drop, decided purely.

A record is written before its RunInstances call and names the call's ClientToken; CVM answers a
repeat of the token with what the first call bought instead of buying again. A record is:

- accounted (dropped silently) once every id it returned is listed, or proven gone by a lookup
  (an id nothing ever showed is not proven gone by a lookup alone: see `NOT_VISIBLE_HOLD`; each
  kept record notes in `seen` which of its ids an observation has shown, so that this survives
  a restart);
- kept while any returned id is unseen or only found by an `InstanceIds` lookup: those
  instances are bought, so they count, and are released like any other when not wanted;
- replayed, when RunInstances never answered with ids (outcome unknown), only if all of these hold:
  the record is younger than `INFLIGHT_VISIBILITY_GRACE` (CVM does not document how long it
  remembers a token: past that a replay might buy anew instead of answering), the environment is
  not being deleted (a replay may buy what the first call never did), it is not paused, the
  record's pool is still a candidate, and the deficit left after what is alive and every earlier
  record still covers the record's whole count (a replay must repeat the original parameters
  exactly, so it cannot be trimmed). A replay that answers restarts the record's clock;
- resolved as bought-nothing (dropped) when an authoritative listing proves it: once a record is
  `UNANSWERED_SETTLED` old, the executor lists its zone and instance type without a tag filter
  (the tag index may lag by minutes or hours; that listing does not go through it), and nothing
  there carries its token (`Observation.unbought`). Anything it bought would be there: any call
  of a past term was sent before that term ended and has landed by then. So a deletion, or a pool
  whose deficit shrank, learns within a minute what an unanswered call bought, buying nothing;
- otherwise held, still counted (it may have bought), until the grace has passed since it was
  made; it is then dropped (what it may have bought carries the installation's tags: the orphan
  collector releases it if its pool is gone).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from spotpool.api.spec import EnvironmentSpec
from spotpool.planner.census import Census
from spotpool.planner.formatting import as_utc
from spotpool.planner.model import (
    INFLIGHT_VISIBILITY_GRACE,
    DroppedRecord,
    DropReason,
    InflightLaunch,
)


@dataclass(frozen=True)
class JournalDecision:
    keep: tuple[InflightLaunch, ...]  # in order; replays included
    replay: tuple[InflightLaunch, ...]
    dropped: tuple[DroppedRecord, ...]
    unlisted_overdue: int  # instances found only by lookup, past the grace: a Degraded reason


def decide_journal(
    *, spec: EnvironmentSpec, census: Census, now: datetime, deleting: bool, purchases_refused: str | None = None,
    unbought: frozenset[str] = frozenset(),
) -> JournalDecision:
    """Apply the rules above to every record of `census`, oldest first. `purchases_refused` (why
    purchases are refused: a spend guard, a failed launch check) holds every replay, as a deletion
    or a pause does: a replay may buy."""
    now = as_utc(now)
    candidates = {(zone, kind) for zone in spec.zones for kind in spec.instance_types}
    known = [r for r in census.records if r.launch.instance_ids]
    budget = (0 if deleting else spec.expected_count) - census.alive_count - sum(r.unseen for r in known)
    keep: list[InflightLaunch] = []
    replay: list[InflightLaunch] = []
    dropped: list[DroppedRecord] = []
    unlisted_overdue = 0
    shown = {instance.instance_id for instance in census.owned}
    for counted in sorted(census.records, key=lambda r: (as_utc(r.launch.requested_at), r.launch.client_token)):
        launch = counted.launch
        if counted.accounted:
            continue  # listed or gone, ids returned or found by the record's launch tag
        overdue = as_utc(launch.requested_at) + INFLIGHT_VISIBILITY_GRACE <= now
        if launch.instance_ids or counted.unlisted:
            keep.append(_noting_seen(launch, shown))
            if overdue:
                unlisted_overdue += counted.unlisted
            continue
        if launch.client_token in unbought:
            dropped.append(DroppedRecord(
                launch.client_token, DropReason.NOT_BOUGHT,
                f"RunInstances for {launch.count} {launch.instance_type} in {launch.zone} never answered, and a "
                f"listing of {launch.zone} and {launch.instance_type} (not through the tag index) shows nothing "
                f"carrying its ClientToken: it bought nothing",
            ))
            continue
        why_not = _why_not_replay(launch, spec=spec, deleting=deleting, budget=budget, candidates=candidates,
                                  purchases_refused=purchases_refused, overdue=overdue)
        budget -= launch.count  # replayed or held, it may be alive: later records see less room
        if why_not is None:
            keep.append(launch)
            replay.append(launch)
        elif overdue:
            dropped.append(DroppedRecord(
                launch.client_token, DropReason.EXPIRED,
                f"RunInstances for {launch.count} {launch.instance_type} in {launch.zone} never answered and "
                f"was not replayed ({why_not}); nothing it could have bought appeared within "
                f"{int(INFLIGHT_VISIBILITY_GRACE.total_seconds())} s (should anything appear later, it carries "
                f"the pool's tags: the pool or the orphan collector releases it)",
            ))
        else:
            keep.append(launch)
    return JournalDecision(tuple(keep), tuple(replay), tuple(dropped), unlisted_overdue)


def _noting_seen(launch: InflightLaunch, shown: set[str]) -> InflightLaunch:
    """The record with every id of it this observation shows added to `seen`."""
    seen = tuple(i for i in launch.instance_ids if i in launch.seen or i in shown)
    return launch if seen == launch.seen else replace(launch, seen=seen)


def _why_not_replay(
    launch: InflightLaunch,
    *,
    spec: EnvironmentSpec,
    deleting: bool,
    budget: int,
    candidates: set[tuple[str, str]],
    purchases_refused: str | None = None,
    overdue: bool = False,
) -> str | None:
    if overdue:
        grace = int(INFLIGHT_VISIBILITY_GRACE.total_seconds())
        return f"it is older than {grace} s, and CVM may have forgotten its token"
    if deleting:
        return "the environment is being deleted"
    if purchases_refused:
        return "purchases are refused (a spend guard, or a launch check that failed)"
    if spec.paused:
        return "spec.paused is true"
    if launch.pool not in candidates:
        return f"{launch.zone}/{launch.instance_type} is no longer a candidate pool"
    if launch.count > budget:
        return f"only {max(budget, 0)} instances are still missing"
    return None
