"""Counting: which observed instances are ours, which are alive, what launch records add.

The plan and the status are both built on this one count, so they can never disagree about how
many instances an environment has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from spotpool.api.names import LAUNCH_TAG
from spotpool.cloud.models import ALIVE_STATES, PENDING, RUNNING, TERMINATING, Instance
from spotpool.planner.formatting import as_utc
from spotpool.planner.model import NOT_VISIBLE_HOLD, OWNER_UID_TAG, InflightLaunch, PoolKey


@dataclass(frozen=True)
class RecordCount:
    """One launch record against what was observed.

    - `unseen`: instances of the launch not observed at all; they may be alive, so they count
      toward the deficit. Before RunInstances answered, the whole count (it may have bought it).
    - `unlisted`: ids the listing lacked but an `InstanceIds` lookup found, tagged as ours.
    - `accounted`: every returned id is listed, or proven gone (or not ours) by a lookup: the
      record has done its job.
    """

    launch: InflightLaunch
    unseen: int
    unlisted: int
    accounted: bool


@dataclass(frozen=True)
class Census:
    """The environment as observed, with launch records accounted for.

    - `owned`: observed instances carrying our ownership tag, each id once (any state).
    - `alive`: the owned instances that are PENDING or RUNNING.
    - `foreign`: observed instances dropped because the tag is not ours.
    - `unlisted`: owned instances known only from an `InstanceIds` lookup.
    - `records`: each launch record's count against the observation.
    - `gone`: ids a look-up did not find (or found not ours): proven gone.
    - `hidden`: ids RunInstances returned that no listing or look-up has ever shown and a look-up
      does not find, younger than `NOT_VISIBLE_HOLD`, of a pool of which nothing shows at all:
      not proven gone (the key may not be allowed to see them), so their records count them as
      unseen, bought.
    """

    owned: tuple[Instance, ...]
    alive: tuple[Instance, ...]
    foreign: int
    unlisted: tuple[Instance, ...]
    records: tuple[RecordCount, ...]
    gone: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()

    @property
    def alive_count(self) -> int:
        return len(self.alive)

    @property
    def running(self) -> int:
        return sum(1 for instance in self.alive if instance.state == RUNNING)

    @property
    def pending(self) -> int:
        return sum(1 for instance in self.alive if instance.state == PENDING)

    @property
    def unseen_by_pool(self) -> Counter[PoolKey]:
        counts: Counter[PoolKey] = Counter()
        for record in self.records:
            counts[record.launch.pool] += record.unseen
        return +counts

    @property
    def inflight_unseen(self) -> int:
        return sum(record.unseen for record in self.records)

    @property
    def remaining(self) -> int:
        """Owned instances not yet terminating: what a deletion still has to release."""
        return sum(1 for instance in self.owned if instance.state != TERMINATING)

    def deficit(self, expected: int) -> int:
        """Instances to buy: unseen launches count, they may be alive (see `planner.plan`)."""
        return max(0, expected - self.alive_count - self.inflight_unseen)

    def surplus(self, expected: int) -> int:
        """Instances to release: unseen launches do not count (see `planner.plan`)."""
        return max(0, self.alive_count - expected)

    def alive_by_pool(self, state: str | None = None) -> Counter[PoolKey]:
        """Alive instances per pool, optionally only those in `state`."""
        return Counter(
            (instance.zone, instance.instance_type)
            for instance in self.alive
            if state is None or instance.state == state
        )

    def keeping(self, launches: Iterable[InflightLaunch]) -> Census:
        """This census counting only `launches` (the records the plan keeps), each as given.

        A record the plan changed (a replay) is recounted from the same observation.
        """
        by_token = {r.launch.client_token: r for r in self.records}
        owned = {i.instance_id: i for i in self.owned}
        unlisted = frozenset(i.instance_id for i in self.unlisted)
        kept = []
        for launch in launches:
            counted = by_token.get(launch.client_token)
            if counted is None or counted.launch != launch:
                counted = _count(launch, owned, unlisted, self.gone)
            kept.append(counted)
        return replace(self, records=tuple(kept))

    def after(
        self,
        *,
        journal: Iterable[InflightLaunch],
        bought: Iterable[InflightLaunch],
        released: Iterable[str],
        owner_uid: str,
    ) -> Census:
        """The census once this pass's actions took effect, from the API's own answers: ids that
        RunInstances just returned count as PENDING at once (they are bought and billed), released
        instances as TERMINATING. For the status only: decisions wait for an observation.
        """
        gone_now = set(released)
        owned = {
            i.instance_id: (replace(i, state=TERMINATING) if i.instance_id in gone_now else i)
            for i in self.owned
        }
        for launch in bought:
            for instance_id in launch.instance_ids:
                owned.setdefault(instance_id, Instance(
                    instance_id, launch.zone, launch.instance_type, PENDING, launch.charge_type, None,
                    {OWNER_UID_TAG: owner_uid},
                ))
        unlisted = frozenset(i.instance_id for i in self.unlisted)
        return replace(
            self,
            owned=tuple(owned.values()),
            alive=tuple(i for i in owned.values() if i.state in ALIVE_STATES),
            records=tuple(_count(launch, owned, unlisted, self.gone) for launch in journal),
        )


def take_census(
    *,
    instances: Iterable[Instance],
    inflight: Iterable[InflightLaunch],
    owner_uid: str,
    confirmed: Mapping[str, Instance | None] | None = None,
    now: datetime | None = None,
    released: frozenset[str] = frozenset(),
) -> Census:
    """Count what the environment has and what is on its way.

    Instances without our ownership tag are ignored, listed or looked up: the planner must never
    count, let alone release, an instance it does not own. Duplicate ids (offset pagination can
    return an instance twice while the set changes) are kept once, the listing first.

    A look-up's "not found" proves an id gone only if something showed it before (the record's
    `seen`, kept in status), this process released it (`released`), its record is older than
    `NOT_VISIBLE_HOLD`, or this observation or a record shows any instance of the pool (the key
    sees the pool's tags); otherwise the id is `hidden`, still counted (`now`: None judges nothing
    hidden, for callers that only count).
    """
    confirmed = confirmed or {}
    owned: dict[str, Instance] = {}
    foreign = 0
    for instance in instances:
        if instance.tags.get(OWNER_UID_TAG) != owner_uid:
            foreign += 1
        elif instance.instance_id not in owned:
            owned[instance.instance_id] = instance
    unlisted_ids: set[str] = set()
    for instance_id, looked_up in confirmed.items():
        if looked_up is None:
            continue
        if instance_id in owned:  # listed too: the look-up came after the listing, so it is fresher
            if looked_up.tags.get(OWNER_UID_TAG) == owner_uid:
                owned[instance_id] = looked_up
            continue
        instance = looked_up
        if instance.tags.get(OWNER_UID_TAG) != owner_uid:
            foreign += 1  # not a purchase of ours (an id forged into status): it accounts for nothing
            continue
        owned[instance_id] = instance
        unlisted_ids.add(instance_id)
    gone = frozenset(
        instance_id for instance_id, instance in confirmed.items()
        if instance is None or instance.tags.get(OWNER_UID_TAG) != owner_uid
    )
    inflight = tuple(inflight)
    # A CAM policy hides by tags, and every instance of a pool carries the same ones: once anything
    # showed one of this pool's instances, its key sees them, and "not found" is the truth.
    shows_pool = bool(owned) or any(launch.seen for launch in inflight)
    hidden = frozenset() if now is None or shows_pool else frozenset(
        instance_id for launch in inflight if as_utc(launch.requested_at) + NOT_VISIBLE_HOLD > as_utc(now)
        for instance_id in launch.instance_ids
        if instance_id in gone and confirmed.get(instance_id) is None
        and instance_id not in launch.seen and instance_id not in released
    )
    gone -= hidden
    records = tuple(_count(launch, owned, unlisted_ids, gone) for launch in inflight)
    return Census(
        owned=tuple(owned.values()),
        alive=tuple(instance for instance in owned.values() if instance.state in ALIVE_STATES),
        foreign=foreign,
        unlisted=tuple(owned[i] for i in sorted(unlisted_ids)),
        records=records,
        gone=gone,
        hidden=hidden,
    )


def _count(
    launch: InflightLaunch,
    owned: Mapping[str, Instance],
    unlisted: set[str] | frozenset[str],
    gone: frozenset[str],
) -> RecordCount:
    """A launch record against the observation.

    An id seen in any state (even LAUNCH_FAILED) is accounted for by observation; fewer ids than
    requested (partial delivery) means the rest was never bought. A record whose call never
    answered is known by the instances carrying its token (`LAUNCH_TAG`), if any are seen.
    """
    ids = set(launch.instance_ids) or {
        i.instance_id for i in owned.values() if i.tags.get(LAUNCH_TAG) == launch.client_token
    }
    if not ids:  # the call never answered and nothing it bought is seen: it may have bought it all
        return RecordCount(launch, unseen=launch.count, unlisted=0, accounted=False)
    unseen = sum(1 for i in ids if i not in owned and i not in gone)
    in_lookup_only = sum(1 for i in ids if i in unlisted)
    return RecordCount(
        launch, unseen=unseen, unlisted=in_lookup_only, accounted=unseen == 0 and in_lookup_only == 0
    )
