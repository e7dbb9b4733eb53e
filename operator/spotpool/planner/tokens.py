"""RunInstances client tokens: deterministic, so a restarted operator replays instead of re-buying."""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.UUID("6f1c2b0e-5d0a-4c55-9a47-2f6e8a3b9d10")
"""Fixed forever: changing it would make every recorded launch look new after an upgrade."""


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
