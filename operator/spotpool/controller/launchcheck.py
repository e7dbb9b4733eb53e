"""A new or changed launch spec is checked with RunInstances DryRun before anything is bought.

What a purchase sends (image, zones, instance types, network, disk, login, user data, name, bid,
tags) is summed up in a short digest; `status.validatedLaunchSpec` holds the digest of the last
spec the checks passed. While they differ, and the pass may buy (not deleting, not paused,
expectedCount > 0, no spend guard), each zone is checked once (with the first instance type) and
each other instance type once (in the first zone): len(zones) + len(instanceTypes) - 1 DryRun
calls, each the very request a purchase there would send (built by `Purchasing.request`), for one
instance. DryRun never buys.

The answers:

- the configuration is wrong (`ErrorCategory.INVALID_REQUEST`, `NOT_FOUND`, or a request the
  client refuses to build): the pass buys nothing and reports `Degraded`/`InvalidConfig`, naming
  the spec field and the Tencent code. The digest is not recorded, so the check runs again on the
  next pass (a fixed spec has a new digest and is checked at once).
- a market answer (sold out, price, quota): the spec is fine as far as the cloud says; checked.
- no answer about the spec (throttled, transient, auth, an unknown code): not checked; the pass
  goes on as usual and the next pass asks again.

Many pools of one account usually launch the same shape (same image, subnets, types, user tags):
a check that passed, keyed by the account and the request without spotpool's own per-pool tags
and token, is reused by every pool for `PASSED_FOR` seconds, and concurrent identical checks are
sent once. A refusal is kept `REFUSED_FOR` seconds, so a misconfigured pool asks again about once
a minute, not every pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from spotpool.api.spec import RESERVED_TAG_PREFIX, EnvironmentSpec
from spotpool.cloud.client import DryRunBought
from spotpool.cloud.errors import CloudError, ErrorCategory
from spotpool.cloud.models import SPOTPAID, RunInstancesRequest
from spotpool.controller.context import PassContext, Preflight
from spotpool.planner import InflightLaunch
from spotpool.planner.persistence import VALIDATED_LAUNCH_SPEC

log = logging.getLogger(__name__)

STATUS_FIELD = VALIDATED_LAUNCH_SPEC
LAUNCH_FIELDS = ("imageId", "zones", "instanceTypes", "network", "systemDisk", "loginSettings", "userData",
                 "instanceNamePrefix", "maxPrice", "tags")
"""The spec fields a RunInstances request is made of (camelCase, as in the CRD)."""

CHECKS_IN_FLIGHT = 5
"""DryRun calls one pass has on the wire at once (20 zones and 20 types are 39 checks)."""

PASSED_FOR = 600.0
REFUSED_FOR = 60.0
MAX_REMEMBERED = 4096
MAX_REFUSALS_SHOWN = 3
_MAX_VALUE = 120

CONFIG_ERRORS = frozenset({ErrorCategory.INVALID_REQUEST, ErrorCategory.NOT_FOUND})
MARKET_ANSWERS = frozenset({ErrorCategory.CAPACITY, ErrorCategory.PRICE, ErrorCategory.QUOTA})

BuildRequest = Callable[[Preflight, InflightLaunch], RunInstancesRequest]


def launch_digest(spec: EnvironmentSpec, account_id: str | None) -> str:
    """32 hex digits of sha256 over a canonical JSON of the launch fields, the region and the
    account (an image or subnet exists in one account): equal specs give equal digests."""
    fields = spec.model_dump(mode="json", by_alias=True)
    launch = {name: fields.get(name) for name in LAUNCH_FIELDS}
    launch["region"] = spec.region
    launch["account"] = account_id
    text = json.dumps(launch, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def check_targets(zones: Sequence[str], instance_types: Sequence[str]) -> list[tuple[str, str]]:
    """(zone, type) pairs to check: every zone with the first type, every other type in the first
    zone. Each spec value appears in at least one request."""
    return [(zone, instance_types[0]) for zone in zones] + [(zones[0], kind) for kind in instance_types[1:]]


@dataclass(frozen=True)
class Refusal:
    """A DryRun answer that says the configuration is wrong."""

    code: str
    message: str


@dataclass(frozen=True)
class Answer:
    """One check's outcome: `refusal` when the configuration is wrong, `checked` when the cloud
    judged the request (passed, or refused it for market reasons), `note` for anything odd."""

    checked: bool
    refusal: Refusal | None = None
    note: str | None = None


@dataclass(frozen=True)
class LaunchCheck:
    """What the checks of one pass found. `record`: the digest to write to status (the spec is
    checked); `refused`: the InvalidConfig message (nothing may be bought)."""

    digest: str
    record: str | None = None
    refused: str | None = None
    notes: tuple[str, ...] = ()


def classify(exc: Exception) -> Answer:
    """A check's failure as config error, market answer, or no answer about the spec."""
    if isinstance(exc, DryRunBought):
        # The endpoint ignored DryRun: asking again could buy again. What it bought carries this
        # environment's tags and is counted (and released if unwanted) like any instance it owns.
        return Answer(checked=True, note=f"the endpoint bought despite DryRun ({exc.message})")
    if isinstance(exc, ValueError):  # the client refused to build the request from this spec
        return Answer(checked=False, refusal=Refusal("ClientParamsError", str(exc)[:300]))
    if isinstance(exc, CloudError):
        if exc.category in CONFIG_ERRORS:
            return Answer(checked=False, refusal=Refusal(exc.code, exc.message))
        return Answer(checked=exc.category in MARKET_ANSWERS)
    raise exc


# (pattern over the code, field) in order: the first match names the field a refusal is about.
_FIELDS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), name) for pattern, name in (
    (r"Image", "imageId"),
    (r"Subnet", "subnetIds"),
    (r"Vpc", "vpcId"),
    (r"SecurityGroup|SgId|USG", "securityGroupIds"),
    (r"InstanceType", "instanceTypes"),
    (r"Zone|Region", "zones"),
    (r"Disk", "systemDisk"),
    (r"Tag", "tags"),
    (r"InstanceName|HostName", "instanceNamePrefix"),
    (r"UserData", "userData"),
    (r"Password|KeyId|KeyPair|LoginSettings", "loginSettings"),
    (r"Price", "maxPrice"),
))


def blame(code: str, request: RunInstancesRequest) -> tuple[str, str]:
    """(spec field, the value the request gave it) a refusal's code points at."""
    name = next((name for pattern, name in _FIELDS if pattern.search(code)), None)
    values: dict[str, tuple[str, Any]] = {
        "imageId": ("spec.imageId", request.image_id),
        "subnetIds": (f"spec.network.subnetIds[{request.zone}]", request.subnet_id),
        "vpcId": ("spec.network.vpcId", request.vpc_id),
        "securityGroupIds": ("spec.network.securityGroupIds", ", ".join(request.security_group_ids)),
        "instanceTypes": ("spec.instanceTypes", request.instance_type),
        "zones": ("spec.zones", request.zone),
        "systemDisk": ("spec.systemDisk", f"{request.system_disk_type} {request.system_disk_size_gib} GiB"),
        "tags": ("spec.tags", ", ".join(k for k in request.tags if not k.startswith(RESERVED_TAG_PREFIX))),
        "instanceNamePrefix": ("spec.instanceNamePrefix", request.instance_name),
        "userData": ("spec.userData", f"{len((request.user_data or '').encode())} bytes"),
        "loginSettings": ("spec.loginSettings", ", ".join(request.key_ids)),
        "maxPrice": ("spec.maxPrice", request.max_price),
    }
    field, value = values[name] if name is not None else ("spec", f"{request.instance_type} in {request.zone}")
    return field, str(value)[:_MAX_VALUE]


def describe_refusals(refused: Sequence[tuple[RunInstancesRequest, Refusal]]) -> str:
    """`spec.imageId: RunInstances DryRun refused img-xxxx: InvalidImageId.NotFound: ...`, one per
    distinct problem, at most MAX_REFUSALS_SHOWN of them."""
    lines: dict[tuple[str, str, str], str] = {}
    for request, refusal in refused:
        field, value = blame(refusal.code, request)
        where = f" ({request.instance_type} in {request.zone})" if field == "spec" else ""
        lines.setdefault((field, value, refusal.code),
                         f"{field}: RunInstances DryRun refused {value}{where}: {refusal.code}: {refusal.message}")
    shown = list(lines.values())
    text = "; ".join(shown[:MAX_REFUSALS_SHOWN])
    if len(shown) > MAX_REFUSALS_SHOWN:
        text += f"; and {len(shown) - MAX_REFUSALS_SHOWN} more"
    return text


def _shared_key(ctx: Preflight, request: RunInstancesRequest) -> str:
    """The check as every pool of the account would send it: no token, none of spotpool's tags."""
    tags = {k: v for k, v in sorted(request.tags.items()) if not k.startswith(RESERVED_TAG_PREFIX)}
    same = replace(request, client_token="", tags=tags, dry_run=True)
    return json.dumps([repr(ctx.key), repr(same)])


class LaunchChecker:
    """One per operator process, shared by every pool: the checks and what they answered lately."""

    def __init__(self, build: BuildRequest) -> None:
        """`build`: the one place that turns spec and launch into a RunInstancesRequest."""
        self._build = build
        self._answers: OrderedDict[str, tuple[float, Answer]] = OrderedDict()
        self._running: dict[str, asyncio.Task[Answer]] = {}

    async def check(self, ctx: PassContext) -> LaunchCheck | None:
        """None when no check is due: the spec was checked, or this pass cannot buy anyway."""
        digest = launch_digest(ctx.spec, ctx.account.get("id"))
        if not _due(ctx, digest):
            return None
        requests = self._requests(ctx)
        turns = asyncio.Semaphore(CHECKS_IN_FLIGHT)

        async def in_turn(request: RunInstancesRequest) -> Answer:
            async with turns:
                return await self._answer(ctx, request)

        answers = await asyncio.gather(*(in_turn(request) for request in requests))
        refused = [(request, a.refusal) for request, a in zip(requests, answers, strict=True) if a.refusal]
        notes = tuple(dict.fromkeys(a.note for a in answers if a.note))
        if refused:
            return LaunchCheck(digest, refused=describe_refusals(refused), notes=notes)
        checked = all(a.checked for a in answers)
        log.info("%s: launch spec %s %s by %d RunInstances DryRun checks", ctx.ref, digest,
                 "checked" if checked else "not yet checked (no answer)", len(requests))
        return LaunchCheck(digest, record=digest if checked else None, notes=notes)

    def start(self, early: Preflight) -> None:
        """Send the pass's first checks now, before its account is known (`resolve`'s look-up of a
        new key pair): `check` then finds them on the wire or answered. Whether they are due is
        judged with the account the status records (a new pool records none, and is due); the
        account only names the digest, which `check` computes once it is known. A status that
        records a passed check but no account cannot be judged before the look-up: nothing is
        started then. At most `CHECKS_IN_FLIGHT` are started; `check` sends any others."""
        recorded = early.persisted.account
        if recorded is None and early.persisted.validated_launch_spec is not None:
            return
        if not _due(early, launch_digest(early.spec, (recorded or {}).get("id"))):
            return
        for request in self._requests(early)[:CHECKS_IN_FLIGHT]:
            self._running_answer(early, request)

    def _requests(self, ctx: Preflight) -> list[RunInstancesRequest]:
        return [self.request(ctx, zone, kind) for zone, kind in check_targets(ctx.spec.zones, ctx.spec.instance_types)]

    def request(self, ctx: Preflight, zone: str, instance_type: str) -> RunInstancesRequest:
        """What a purchase of one instance of `instance_type` in `zone` would send, as a spot bid."""
        launch = InflightLaunch("dryrun", zone, instance_type, 1, ctx.now)
        return replace(self._build(ctx, launch), charge_type=SPOTPAID, max_price=ctx.spec.max_price)

    async def _answer(self, ctx: Preflight, request: RunInstancesRequest) -> Answer:
        answer = self._running_answer(ctx, request)
        if isinstance(answer, Answer):
            return answer
        # Shielded: a pass that is cancelled must not cancel the check other pools wait on.
        return await asyncio.shield(answer)

    def _running_answer(self, ctx: Preflight, request: RunInstancesRequest) -> Answer | asyncio.Task[Answer]:
        """The answer kept for this check, or the check on the wire (started if none is)."""
        key = _shared_key(ctx, request)
        now = ctx.now.timestamp()
        kept = self._answers.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        running = self._running.get(key)
        if running is None:
            running = asyncio.get_running_loop().create_task(self._ask(ctx, request))
            self._running[key] = running
            running.add_done_callback(lambda task: self._done(key, task, now))
        return running

    async def _ask(self, ctx: Preflight, request: RunInstancesRequest) -> Answer:
        ctx.fence()
        try:
            # Checked again right before each attempt is signed, after any wait in the rate limiter.
            await ctx.client.check_purchase(request, guard=ctx.fence)
        except (CloudError, ValueError) as exc:
            return classify(exc)
        return Answer(checked=True)

    def _done(self, key: str, task: asyncio.Task[Answer], now: float) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if task.cancelled() or task.exception() is not None:
            return
        answer = task.result()
        if answer.checked or answer.refusal is not None:
            self._answers[key] = (now + (PASSED_FOR if answer.refusal is None else REFUSED_FOR), answer)
            self._answers.move_to_end(key)
            while len(self._answers) > MAX_REMEMBERED:
                self._answers.popitem(last=False)


def _due(ctx: Preflight, digest: str) -> bool:
    """Whether the pass checks its launch spec: it may buy (not deleting, not paused, some count
    expected, no spend guard) and the status records no passed check of this digest."""
    spec = ctx.spec
    if ctx.deleting or spec.paused or spec.expected_count <= 0 or ctx.purchases_refused is not None:
        return False
    return ctx.persisted.validated_launch_spec != digest
