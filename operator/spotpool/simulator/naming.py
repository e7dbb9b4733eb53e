"""InstanceName expansion for multi-instance purchases (`{R:x}` and `{R:x,F:y}` patterns).

Operators name instances per pool and rely on the documented expansion to tell them apart, so
the simulator applies the same rules as RunInstances.
"""

from __future__ import annotations

import functools
import re

DEFAULT_NAME = "Unnamed"
_PATTERN = re.compile(r"\{R:(\d+)(?:,F:([0-8]))?\}")


def expand_names(template: str | None, count: int) -> list[str]:
    """The names of `count` instances bought with one InstanceName.

    `{R:x}` numbers from x; `{R:x,F:y}` zero-pads to y digits; several patterns may appear. Without
    a pattern, several instances get the suffixes 1..n and a single instance keeps the name.
    """
    if template is None:
        return [DEFAULT_NAME] * count
    if _PATTERN.search(template):
        return [
            _PATTERN.sub(functools.partial(_numbered, offset=i), template)
            for i in range(count)
        ]
    if count == 1:
        return [template]
    return [f"{template}{i + 1}" for i in range(count)]


def _numbered(match: re.Match[str], *, offset: int) -> str:
    """One `{R:start[,width]}` placeholder for the `offset`-th instance of a launch."""
    return str(int(match.group(1)) + offset).zfill(int(match.group(2) or 0))
