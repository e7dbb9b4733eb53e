"""Fault injection: make chosen CVM actions fail, slow down, drop the connection or throttle.

Client retry, back-off and idempotency code is only trustworthy if it has been run against these
failures; a cloud produces them rarely and never on demand, so the simulator produces them on
request, per action (or `*` for all actions), reproducibly from a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

WILDCARD = "*"


class FaultSpec(BaseModel):
    """What to inject into one action. Accepts camelCase (control API) and snake_case (YAML)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )

    error_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of calls answered with an error"
    )
    error_codes: list[str] = Field(default_factory=lambda: ["InternalError"], min_length=1)
    latency_ms: float = Field(default=0.0, ge=0, le=600_000, description="added before answering")
    drop_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of calls whose connection is closed"
    )
    drop_phase: Literal["before", "after"] = Field(
        default="before",
        description="after: the action takes effect, only the answer is lost (tests idempotency)",
    )
    throttle: bool = Field(default=False, description="answer every call with RequestLimitExceeded")
    times: int | None = Field(
        default=None, ge=1, description="affect only the next N calls of the action, then expire"
    )


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one call; the server applies it in order latency, drop, throttle, error."""

    latency_seconds: float = 0.0
    drop_before: bool = False
    drop_after: bool = False
    throttle: bool = False
    error_code: str | None = None


NO_FAULT = FaultDecision()


class FaultInjector:
    """The active faults and a seeded random source for rolling them."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)
        self._faults: dict[str, FaultSpec] = {}
        self._remaining: dict[str, int] = {}

    def set(self, action: str, spec: FaultSpec) -> None:
        self._faults[action] = spec
        if spec.times is not None:
            self._remaining[action] = spec.times
        else:
            self._remaining.pop(action, None)

    def clear(self, action: str | None = None) -> None:
        if action is None:
            self._faults.clear()
            self._remaining.clear()
        else:
            self._faults.pop(action, None)
            self._remaining.pop(action, None)

    def active(self) -> dict[str, dict[str, object]]:
        """The faults as the control API shows them, with the calls left for `times` faults."""
        shown: dict[str, dict[str, object]] = {}
        for action, spec in self._faults.items():
            entry: dict[str, object] = spec.model_dump(by_alias=True)
            if action in self._remaining:
                entry["remaining"] = self._remaining[action]
            shown[action] = entry
        return shown

    def decide(self, action: str, *, wildcard: bool = True) -> FaultDecision:
        """Roll the dice for one call (cheap when no fault is set: the common case).

        `wildcard=False` ignores a `*` fault: STS calls are only faulted when named, so a test
        that breaks every CVM action does not break the operator's credentials too.
        """
        if not self._faults:
            return NO_FAULT
        key = action if action in self._faults else WILDCARD
        if key == WILDCARD and not wildcard:
            return NO_FAULT
        spec = self._faults.get(key)
        if spec is None:
            return NO_FAULT
        if key in self._remaining:
            self._remaining[key] -= 1
            if self._remaining[key] <= 0:
                self.clear(key)
        dropped = spec.drop_rate > 0 and self._rng.random() < spec.drop_rate
        error = None
        if spec.error_rate > 0 and self._rng.random() < spec.error_rate:
            error = self._rng.choice(spec.error_codes)
        return FaultDecision(
            latency_seconds=spec.latency_ms / 1000.0,
            drop_before=dropped and spec.drop_phase == "before",
            drop_after=dropped and spec.drop_phase == "after",
            throttle=spec.throttle,
            error_code=error,
        )
