"""RunInstances client tokens: deterministic, so a restarted operator replays instead of re-buying."""

from __future__ import annotations

import uuid
from datetime import datetime

_NAMESPACE = uuid.UUID("6f1c2b0e-5d0a-4c55-9a47-2f6e8a3b9d10")
"""Fixed forever: changing it would make every recorded launch look new after an upgrade."""


def first_sequence(now: datetime) -> int:
    """Where a pool's launch sequence starts when its status holds none: a new pool, or one whose
    status was lost (removed by hand, restored without it) while its instances live on.

    Not 0: a sequence that starts again repeats the tokens of launches already made, and CVM answers
    a repeated token with the instances that launch bought, long gone by then, so the pool would
    count as bought what it does not have. The milliseconds since the epoch instead: a sequence this
    uid started earlier can only have reached its own start plus one per launch, and launches come at
    most 10 a second (RunInstances' limit), so it stays below a start taken later. (A clock set back
    by more than the time since that earlier start could meet it; then, at worst, a launch is
    answered with gone instances and replaced once they are known lost, never bought twice.)
    """
    return int(now.timestamp() * 1000)


def client_token(owner_uid: str, sequence: int, zone: str, instance_type: str, count: int) -> str:
    """The ClientToken for the `sequence`-th launch of an environment (36 ASCII chars, CVM: <=64).

    The executor records (token, zone, type, count) before calling RunInstances. After a crash it
    recomputes nothing: it replays the recorded token, and CVM returns the instances the first call
    bought. Every input goes into the token, so a different request can never reuse one.
    """
    if sequence < 0:
        raise ValueError(f"sequence must be >= 0, got {sequence}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return str(uuid.uuid5(_NAMESPACE, f"{owner_uid}\n{sequence}\n{zone}\n{instance_type}\n{count}"))
