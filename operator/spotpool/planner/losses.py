"""Which instances were lost since the last pass: alive before, not alive now, not released by us.

Pure: the executor keeps what was alive (its memory, or the status after a restart) and what it
released; this decides what counts as a loss (reclaimed, or released outside spotpool) and what
failed to launch. The reporting room turns the answer into Events and metrics; nothing decides
money from it (the census already counts what is alive).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from spotpool.cloud.models import LAUNCH_FAILED, PENDING, RUNNING, Instance
from spotpool.planner.census import Census


@dataclass(frozen=True)
class Losses:
    """`lost`: gone or no longer alive (reclaimed, released outside spotpool); `failed`: ended
    LAUNCH_FAILED. Each as it was last seen alive (its zone and type name the pool)."""

    lost: tuple[Instance, ...] = ()
    failed: tuple[Instance, ...] = ()


def find_losses(before: Mapping[str, Instance], census: Census, released: Container[str]) -> Losses:
    """Instances alive `before` that this census shows neither PENDING nor RUNNING, other than
    those the operator released itself (`released`)."""
    current = {i.instance_id: i for i in census.owned}
    lost: list[Instance] = []
    failed: list[Instance] = []
    for instance_id, was in before.items():
        if instance_id in released:
            continue
        now = current.get(instance_id)
        if now is not None and now.state in (PENDING, RUNNING):
            continue
        (failed if now is not None and now.state == LAUNCH_FAILED else lost).append(was)
    return Losses(tuple(lost), tuple(failed))
