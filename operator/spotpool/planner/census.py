"""Counting: which observed instances are ours, which are alive, what in-flight launches add.

Both the plan and the status are built on this one count, so they can never disagree about how
many instances an environment has.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from spotpool.cloud.models import ALIVE_STATES, PENDING, RUNNING, TERMINATING, Instance
from spotpool.planner.formatting import as_utc
from spotpool.planner.model import INFLIGHT_VISIBILITY_GRACE, OWNER_UID_TAG, InflightLaunch, PoolKey


@dataclass(frozen=True)
class Census:
    """The environment as observed, with in-flight launches accounted for.

    - `owned`: observed instances carrying our ownership tag, each id once (any state).
    - `alive`: the owned instances that are PENDING or RUNNING.
    - `foreign`: how many observed instances were dropped because the tag is not ours.
    - `unseen_by_pool`: instances launched but not observed yet, per pool; they will be alive.
    - `resolved_inflight`: tokens of launches whose instances are all observed, or that stayed
      invisible past `INFLIGHT_VISIBILITY_GRACE`; they count for nothing any more.
    """

    owned: tuple[Instance, ...]
    alive: tuple[Instance, ...]
    foreign: int
    unseen_by_pool: dict[PoolKey, int]
    resolved_inflight: tuple[str, ...]

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
    def inflight_unseen(self) -> int:
        return sum(self.unseen_by_pool.values())

    @property
    def remaining(self) -> int:
        """Owned instances not yet terminating: what a deletion still has to release."""
        return sum(1 for instance in self.owned if instance.state != TERMINATING)

    def deficit(self, expected: int) -> int:
        """Instances to buy: in-flight launches count, they will be alive (see `planner.plan`)."""
        return max(0, expected - self.alive_count - self.inflight_unseen)

    def surplus(self, expected: int) -> int:
        """Instances to release: in-flight launches do not count (see `planner.plan`)."""
        return max(0, self.alive_count - expected)

    def alive_by_pool(self, state: str | None = None) -> Counter[PoolKey]:
        """Alive instances per pool, optionally only those in `state`."""
        return Counter(
            (instance.zone, instance.instance_type)
            for instance in self.alive
            if state is None or instance.state == state
        )


def take_census(
    *, instances: list[Instance], inflight: list[InflightLaunch], owner_uid: str, now: datetime
) -> Census:
    """Count what the environment has and what is on its way.

    Instances without our ownership tag are ignored even if the caller passed them: the planner
    must never count, let alone release, an instance it does not own. Duplicate ids (offset
    pagination can return an instance twice while the set changes) are kept once, first wins.
    """
    owned: dict[str, Instance] = {}
    foreign = 0
    for instance in instances:
        if instance.tags.get(OWNER_UID_TAG) != owner_uid:
            foreign += 1
        elif instance.instance_id not in owned:
            owned[instance.instance_id] = instance
    alive = tuple(instance for instance in owned.values() if instance.state in ALIVE_STATES)

    unseen_by_pool: Counter[PoolKey] = Counter()
    resolved: list[str] = []
    now = as_utc(now)
    for launch in inflight:
        unseen = _unseen(launch, owned)
        expired = as_utc(launch.requested_at) + INFLIGHT_VISIBILITY_GRACE <= now
        if unseen == 0 or expired:
            resolved.append(launch.client_token)
        else:
            unseen_by_pool[launch.pool] += unseen
    return Census(
        owned=tuple(owned.values()),
        alive=alive,
        foreign=foreign,
        unseen_by_pool=dict(unseen_by_pool),
        resolved_inflight=tuple(resolved),
    )


def _unseen(launch: InflightLaunch, owned: dict[str, Instance]) -> int:
    """Instances of a launch not observed yet, in any state.

    Before RunInstances returned we do not know the ids: count the whole request (it may have
    bought all of it). Afterwards count only ids we have not seen; an id seen in any state (even
    LAUNCH_FAILED) is accounted for by observation, and fewer ids than requested (partial delivery)
    means the rest was never bought.
    """
    if not launch.instance_ids:
        return launch.count
    return sum(1 for instance_id in set(launch.instance_ids) if instance_id not in owned)
