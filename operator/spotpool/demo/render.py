"""The demo's live view, as pure functions of what the demo reads each second.

`render_frame(obj, events, market)` turns the SpotComputeEnvironment (a dict as the API returns it),
its Kubernetes Events and the simulator's market (`GET /_sim/market`) into the text of one frame;
nothing here does I/O or reads the clock (the caller passes `now` for the fallback's countdown), so
every frame can be unit-tested. `summary_line` and `event_line` are the one-line forms the demo
prints when its output is not a terminal.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

CONDITIONS = ("Ready", "Progressing", "Degraded")
MAX_EVENTS = 6
BAR_WIDTH = 30

# ANSI styles, used only when the caller asks for colour (a terminal).
_STYLES = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}


def style(text: str, name: str | None, color: bool) -> str:
    if not color or not name or not text:
        return text
    return f"\x1b[{_STYLES[name]}m{text}\x1b[0m"


def clip(line: str, width: int | None) -> str:
    """Cut a line to `width` characters, marking the cut with an ellipsis."""
    if width is None or len(line) <= width:
        return line
    return line[: max(width - 1, 0)] + "…"


# -- reading the object --------------------------------------------------------------------------------

def status_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("status") or {}


def spec_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("spec") or {}


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in status_of(obj).get("conditions") or [] if c.get("type") == kind), {})


def counts(obj: dict[str, Any] | None) -> dict[str, int]:
    status = status_of(obj)
    return {
        "expected": int(spec_of(obj).get("expectedCount") or 0),
        "current": int(status.get("currentCount") or 0),
        "running": int(status.get("runningCount") or 0),
        "pending": int(status.get("pendingCount") or 0),
    }


def capacity(obj: dict[str, Any] | None) -> dict[str, int]:
    """Alive instances by capacity type (status.capacity): spot, on-demand base, on-demand fallback,
    and the spot replacements on their way for fallback instances (`returning`)."""
    body = status_of(obj).get("capacity") or {}
    return {key: int(body.get(key) or 0) for key in ("spot", "onDemandBase", "onDemandFallback", "returning")}


def spot_short(obj: dict[str, Any] | None) -> tuple[str, list[str]] | None:
    """(since, reasons) while the operator reports spot unable to fill the deficit, else None."""
    body = status_of(obj).get("capacity") or {}
    since = body.get("spotShortSince")
    return (str(since), [str(r) for r in body.get("spotShortReasons") or []]) if since else None


def _seconds(duration: str) -> int | None:
    """A fallback's `after` ("20s", "5m", "1h30m") in seconds; None when it is not one."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration or "")
    if not duration or match is None:
        return None
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def fallback_after(obj: dict[str, Any] | None) -> int | None:
    """spec.onDemand.fallback.after in seconds; None without a fallback."""
    fallback = (spec_of(obj).get("onDemand") or {}).get("fallback") or {}
    return _seconds(str(fallback.get("after") or ""))


def is_all_spot(obj: dict[str, Any] | None) -> bool:
    """Ready with every expected instance spot: no on-demand left and no replacement in flight."""
    mix = capacity(obj)
    return (is_ready(obj) and mix["spot"] == counts(obj)["expected"]
            and mix["onDemandBase"] == mix["onDemandFallback"] == mix["returning"] == 0)


def is_ready(obj: dict[str, Any] | None) -> bool:
    """Ready as the operator reports it, for the spec as it is now (not a stale generation)."""
    if obj is None:
        return False
    status = status_of(obj)
    numbers = counts(obj)
    return (
        condition(obj, "Ready").get("status") == "True"
        and int(status.get("observedGeneration") or 0) >= int(obj["metadata"].get("generation") or 0)
        and numbers["running"] == numbers["expected"] == numbers["current"]
    )


def instance_ids(obj: dict[str, Any] | None) -> set[str]:
    return {item["id"] for item in status_of(obj).get("instances") or [] if "id" in item}


def lost_ids(events: Iterable[dict[str, Any]]) -> set[str]:
    """Instance ids named by InstanceLost events (one event per pass names every id it lost)."""
    found: set[str] = set()
    for event in events:
        if event.get("reason") == "InstanceLost":
            found.update(re.findall(r"\bins-[0-9a-z]{8}\b", event.get("message") or ""))
    return found


def healed(obj: dict[str, Any] | None, events: Iterable[dict[str, Any]], reclaimed: Iterable[str]) -> bool:
    """The operator reported every reclaimed instance lost, and is Ready again without them."""
    reclaimed = set(reclaimed)
    return (
        reclaimed <= lost_ids(events)
        and is_ready(obj)
        and not reclaimed & instance_ids(obj)
    )


def pick_victims(instances: Iterable[dict[str, Any]], count: int = 2) -> list[dict[str, Any]]:
    """Running spot instances to reclaim, from different zone x type pools when there are several,
    so the demo shows the operator refilling more than one pool. Deterministic for a given list."""
    running = sorted(
        (i for i in instances if i.get("state") == "RUNNING" and i.get("chargeType", "SPOTPAID") == "SPOTPAID"),
        key=lambda i: (i.get("zone", ""), i.get("instanceType", ""), i.get("instanceId", "")),
    )
    chosen: list[dict[str, Any]] = []
    seen_pools: set[tuple[str, str]] = set()
    for inst in running:  # one per pool first
        pool = (inst.get("zone", ""), inst.get("instanceType", ""))
        if pool not in seen_pools and len(chosen) < count:
            chosen.append(inst)
            seen_pools.add(pool)
    for inst in running:  # then fill up from any pool
        if len(chosen) >= count:
            break
        if inst not in chosen:
            chosen.append(inst)
    return chosen


# -- events ------------------------------------------------------------------------------------------------

def _event_time(event: dict[str, Any]) -> str:
    return (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def _resource_version(event: dict[str, Any]) -> int:
    try:
        return int((event.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def sorted_events(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first; events in the same second keep the order the API server stored them in."""
    return sorted(events, key=lambda e: (_event_time(e), _resource_version(e)))


def event_key(event: dict[str, Any]) -> tuple[str, int]:
    """What makes an event new to the viewer: its identity, and its repeat count."""
    meta = event.get("metadata") or {}
    return (meta.get("uid") or meta.get("name") or repr(event), int(event.get("count") or 1))


def event_line(event: dict[str, Any]) -> str:
    clock = _event_time(event)[11:19] or "--:--:--"
    repeat = int(event.get("count") or 1)
    times = f" (x{repeat})" if repeat > 1 else ""
    return f"{clock}  {event.get('type', ''):<7}  {event.get('reason', ''):<13}  {event.get('message', '')}{times}"


# -- the frame ---------------------------------------------------------------------------------------------

def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def market_pools(market: dict[str, Any] | None) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["zone"], p["instanceType"]): p for p in (market or {}).get("pools") or []}


def _pool_rows(obj: dict[str, Any] | None, market: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per candidate zone x type: the status's pools, or the spec's before any status."""
    listed = status_of(obj).get("pools")
    if not listed:
        spec = spec_of(obj)
        listed = [{"zone": z, "instanceType": t, "running": 0, "pending": 0}
                  for z in spec.get("zones") or [] for t in spec.get("instanceTypes") or []]
    sim = market_pools(market)
    rows = []
    for pool in listed:
        offer = sim.get((pool["zone"], pool["instanceType"]), {})
        price = _decimal(pool.get("marketPrice")) or _decimal(offer.get("spotPrice"))
        notes = []
        if pool.get("available") is False:
            notes.append("not buyable")
        if offer.get("soldOut"):
            notes.append("sold out")
        error = pool.get("lastError") or {}
        if error.get("code") and pool.get("retryAfter"):
            notes.append(f"{error['code']}, retry {str(pool['retryAfter'])[11:19]}")
        rows.append({
            "zone": pool["zone"],
            "instanceType": pool["instanceType"],
            "running": int(pool.get("running") or 0),
            "pending": int(pool.get("pending") or 0),
            "price": price,
            "onDemand": _decimal(offer.get("onDemandPrice")),
            "stock": offer.get("stock"),
            "note": ", ".join(notes),
        })
    return rows


def _bar(running: int, pending: int, expected: int) -> str:
    """[######++....]: running, pending, missing; scaled down for big pools."""
    total = max(expected, running + pending, 1)
    scale = min(1.0, BAR_WIDTH / total)
    run_cells = round(running * scale)
    pend_cells = round(pending * scale)
    empty = max(round(total * scale) - run_cells - pend_cells, 0)
    return "[" + "#" * run_cells + "+" * pend_cells + "." * empty + "]"


def _cost_line(obj: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    cost = _decimal(status_of(obj).get("hourlyCost"))
    if cost is None:
        return "hourly cost  -"
    line = f"hourly cost  {cost} USD"
    on_demand = sum(
        ((row["onDemand"] or Decimal(0)) * (row["running"] + row["pending"]) for row in rows), Decimal(0)
    )
    if on_demand > 0 and all(row["onDemand"] is not None for row in rows if row["running"] + row["pending"]):
        saved = (1 - cost / on_demand) * 100
        line += f"   (on demand: {on_demand:.4f} USD, {saved:.0f}% saved)"
    cap = spec_of(obj).get("maxHourlyCost")
    if cap:
        line += f"   cap {cap} USD/h"
    return line


def _capacity_line(obj: dict[str, Any] | None) -> str:
    mix = capacity(obj)
    line = (f"capacity     spot {mix['spot']}   on-demand base {mix['onDemandBase']}   "
            f"on-demand fallback {mix['onDemandFallback']}")
    if mix["returning"]:
        line += f"   returning to spot {mix['returning']} (replacements first)"
    return line


def _short_line(obj: dict[str, Any] | None, now: datetime | None) -> str | None:
    """While spot is short: since when, why, and when the fallback buys on-demand."""
    short = spot_short(obj)
    if short is None:
        return None
    since, reasons = short
    line = f"spot short   since {since[11:19] or since} ({', '.join(reasons) or '?'})"
    after = fallback_after(obj)
    if after is None:
        return line + ": no spec.onDemand.fallback, the pool waits for spot"
    line += f": on-demand fallback after {after} s"
    started = parse_time(since)
    if now is not None and started is not None:
        left = after - (now - started).total_seconds()
        line += f", in {math.ceil(left)} s" if left > 0 else ", due now"
    return line


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time of the status (`2026-01-01T10:00:00Z`); None when it is not one."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _condition_style(kind: str, status: str) -> str | None:
    if status not in ("True", "False"):
        return None
    good = {"Ready": "True", "Progressing": "False", "Degraded": "False"}[kind] == status
    if good:
        return "green"
    return "red" if kind == "Degraded" else "yellow"


def render_frame(
    obj: dict[str, Any] | None,
    events: Iterable[dict[str, Any]],
    market: dict[str, Any] | None,
    *,
    width: int | None = None,
    color: bool = False,
    max_events: int = MAX_EVENTS,
    now: datetime | None = None,
) -> str:
    """One frame of the live view (no trailing newline); `now` (aware) counts down the fallback."""
    lines: list[str] = []

    def add(text: str = "", name: str | None = None) -> None:
        lines.append(style(clip(text, width), name, color))

    if obj is None:
        add("waiting for the SpotComputeEnvironment to appear ...", "dim")
        return "\n".join(lines)

    meta, spec = obj.get("metadata") or {}, spec_of(obj)
    deleting = " (deleting)" if meta.get("deletionTimestamp") else ""
    add(f"SpotComputeEnvironment {meta.get('namespace', '')}/{meta.get('name', '')}{deleting}   "
        f"{spec.get('allocationStrategy', 'LowestPrice')}, maxPrice {spec.get('maxPrice', '?')} USD/h, "
        f"{spec.get('region', '')}", "bold")
    numbers = counts(obj)
    add(f"expected {numbers['expected']}   current {numbers['current']}   running {numbers['running']}   "
        f"pending {numbers['pending']}   {_bar(numbers['running'], numbers['pending'], numbers['expected'])}")
    rows = _pool_rows(obj, market)
    add(_cost_line(obj, rows))
    if status_of(obj).get("capacity"):
        add(_capacity_line(obj))
    short = _short_line(obj, now)
    if short:
        add(short, "yellow")
    add()

    zone_w = max([len("ZONE"), *(len(r["zone"]) for r in rows)])
    type_w = max([len("TYPE"), *(len(r["instanceType"]) for r in rows)])
    add(f"{'ZONE':<{zone_w}}  {'TYPE':<{type_w}}  RUNNING  PENDING  PRICE USD/h  STOCK  NOTE", "dim")
    for row in rows:
        price = "-" if row["price"] is None else str(row["price"])
        stock = "-" if row["stock"] is None else str(row["stock"])
        add(f"{row['zone']:<{zone_w}}  {row['instanceType']:<{type_w}}  {row['running']:>7}  "
            f"{row['pending']:>7}  {price:>11}  {stock:>5}  {row['note']}".rstrip())
    add()

    for kind in CONDITIONS:
        cond = condition(obj, kind)
        status = cond.get("status", "-")
        text = (f"{kind:<12} {status:<6} {cond.get('reason', ''):<22} {cond.get('message', '')}"
                if cond else f"{kind:<12} -      (waiting for the operator)")
        add(text.rstrip(), _condition_style(kind, status))
    add()

    recent = sorted_events(events)[-max_events:] if max_events > 0 else []
    add(f"Latest events ({len(recent)})" if recent else "Latest events: none yet", "dim")
    for event in recent:
        add("  " + event_line(event), "yellow" if event.get("type") == "Warning" else None)
    return "\n".join(lines)


def summary_line(obj: dict[str, Any] | None) -> str:
    """The frame in one line: what the demo prints on change when its output is not a terminal."""
    if obj is None:
        return "waiting for the SpotComputeEnvironment to appear"
    numbers = counts(obj)
    cost = status_of(obj).get("hourlyCost", "-")
    conds = "  ".join(
        f"{kind} {condition(obj, kind).get('status', '-')} {condition(obj, kind).get('reason', '')}".rstrip()
        for kind in CONDITIONS
    )
    deleting = "deleting  " if (obj.get("metadata") or {}).get("deletionTimestamp") else ""
    mix = ""
    if status_of(obj).get("capacity"):
        parts = capacity(obj)
        mix = (f"spot {parts['spot']}  on-demand base {parts['onDemandBase']}  "
               f"fallback {parts['onDemandFallback']}  ")
        if parts["returning"]:
            mix += f"returning {parts['returning']}  "
    short = spot_short(obj)
    shortage = f"  |  spot short since {short[0][11:19]} ({', '.join(short[1]) or '?'})" if short else ""
    return (f"{deleting}expected {numbers['expected']}  current {numbers['current']}  "
            f"running {numbers['running']}  pending {numbers['pending']}  {mix}cost {cost} USD/h  |  "
            f"{conds}{shortage}")
