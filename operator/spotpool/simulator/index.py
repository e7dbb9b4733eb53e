"""Indexes over the instances of one region, and DescribeInstances filter evaluation.

The operator lists its instances with a tag filter, paginated, every reconcile; with thousands of
instances a scan per request would dominate the simulator. Each index maps a value to an
insertion-ordered dict of instances, so a page of a single-valued filter is a slice of one dict,
and multi-filter queries scan only the smallest candidate set. Insertion order is launch order,
which is also the order DescribeInstances answers in: new instances append at the end, so offset
pagination stays stable while a pool grows.
"""

from __future__ import annotations

from calendar import timegm
from collections.abc import Callable, Container, Iterable
from itertools import islice
from time import strptime

from spotpool.simulator.api_errors import ApiError
from spotpool.simulator.state import SimInstance

Bucket = dict[str, SimInstance]
Predicate = Callable[[SimInstance], bool]

#: Filters that are documented for DescribeInstances but never match a simulated instance
#: (no dedicated hosts, public IPs or IPv6 here). Accepting them keeps valid requests valid.
_NEVER_MATCHING = frozenset(
    {"host-id", "dedicated-cluster-id", "public-ip-address", "ipv6-address"}
)

_SIMPLE_FILTERS = frozenset(
    {
        "zone",
        "project-id",
        "vpc-id",
        "subnet-id",
        "instance-id",
        "uuid",
        "security-group-id",
        "instance-name",
        "instance-charge-type",
        "instance-state",
        "private-ip-address",
        "tag-key",
        "tag-value",
        "creation-start-time",
        "creation-end-time",
    }
)


def is_describe_filter(name: str) -> bool:
    """Whether DescribeInstances documents this filter name (InvalidFilter otherwise)."""
    return (
        name in _SIMPLE_FILTERS
        or name in _NEVER_MATCHING
        or (name.startswith("tag:") and len(name) > len("tag:"))
    )


class RegionIndex:
    """All visible instances of one region, indexed by the fields filters can use."""

    def __init__(self) -> None:
        self.all: Bucket = {}
        self._by_zone: dict[str, Bucket] = {}
        self._by_name: dict[str, Bucket] = {}
        self._by_tag: dict[tuple[str, str], Bucket] = {}
        self._by_tag_key: dict[str, Bucket] = {}
        self._by_tag_value: dict[str, Bucket] = {}
        self._by_state: dict[str, Bucket] = {}

    def __len__(self) -> int:
        return len(self.all)

    def add(self, inst: SimInstance) -> None:
        iid = inst.instance_id
        self.all[iid] = inst
        self._by_zone.setdefault(inst.zone, {})[iid] = inst
        self._by_name.setdefault(inst.name, {})[iid] = inst
        self._by_state.setdefault(inst.state, {})[iid] = inst
        self._add_tags(inst, inst.indexed_tags)

    def remove(self, inst: SimInstance) -> None:
        iid = inst.instance_id
        del self.all[iid]
        _discard(self._by_zone, inst.zone, iid)
        _discard(self._by_name, inst.name, iid)
        _discard(self._by_state, inst.state, iid)
        self._remove_tags(inst, inst.indexed_tags)

    def retag(self, inst: SimInstance, old: dict[str, str], new: dict[str, str]) -> None:
        """Move an instance between tag buckets after its tags went from `old` to `new`.

        Only the buckets that change are touched, and an instance joining a bucket is put in its
        launch-order place: buckets are pages' order, which must stay launch order."""
        iid = inst.instance_id
        old_values, new_values = set(old.values()), set(new.values())
        for pair in old.items() - new.items():
            _discard(self._by_tag, pair, iid)
        for key in old.keys() - new.keys():
            _discard(self._by_tag_key, key, iid)
        for value in old_values - new_values:
            _discard(self._by_tag_value, value, iid)
        for pair in new.items() - old.items():
            _insert(self._by_tag, pair, inst)
        for key in new.keys() - old.keys():
            _insert(self._by_tag_key, key, inst)
        for value in new_values - old_values:
            _insert(self._by_tag_value, value, inst)

    def _add_tags(self, inst: SimInstance, tags: dict[str, str]) -> None:
        iid = inst.instance_id
        for key, value in tags.items():
            self._by_tag.setdefault((key, value), {})[iid] = inst
            self._by_tag_key.setdefault(key, {})[iid] = inst
            self._by_tag_value.setdefault(value, {})[iid] = inst

    def _remove_tags(self, inst: SimInstance, tags: dict[str, str]) -> None:
        iid = inst.instance_id
        for key, value in tags.items():
            _discard(self._by_tag, (key, value), iid)
            _discard(self._by_tag_key, key, iid)
            _discard(self._by_tag_value, value, iid)

    def restate(self, inst: SimInstance, old_state: str) -> None:
        """Move an instance between state buckets after its state changed."""
        _discard(self._by_state, old_state, inst.instance_id)
        self._by_state.setdefault(inst.state, {})[inst.instance_id] = inst

    def query(
        self, filters: list[tuple[str, list[str]]], offset: int, limit: int
    ) -> tuple[int, list[SimInstance]]:
        """(total matches, the page [offset, offset+limit)) in launch order.

        Filters are ANDed, values within a filter ORed, as documented. The smallest launch-ordered
        bucket is walked and the other indexed filters are applied as C-level membership tests
        (`filter(bucket.__contains__, ...)`); only filters without an index cost Python calls.
        """
        ordered: list[Bucket] = []
        members: list[Container[str]] = []
        rest: list[tuple[str, list[str]]] = []
        for name, values in filters:
            bucket = self._bucket(name, values)
            if bucket is not None:
                ordered.append(bucket)
            elif name == "instance-state":
                members.append(self._state_members(values))
            else:
                rest.append((name, values))
        source = min(ordered, key=len) if ordered else self.all
        ids: Iterable[str] = source
        for other in sorted((b for b in ordered if b is not source), key=len) + members:
            ids = filter(other.__contains__, ids)
        if rest:
            predicates = [_predicate(name, values) for name, values in rest]
            matches = [
                inst for inst in map(source.__getitem__, ids) if all(p(inst) for p in predicates)
            ]
            return len(matches), matches[offset : offset + limit]
        if ids is source:
            return len(source), list(islice(source.values(), offset, offset + limit))
        selected = list(ids)
        return len(selected), [source[iid] for iid in selected[offset : offset + limit]]

    def _state_members(self, states: list[str]) -> Container[str]:
        """The ids in any of `states`; state buckets are in state-change order, so they only
        ever serve as membership tests, never as the page order."""
        buckets = [self._by_state[s] for s in set(states) if s in self._by_state]
        if len(buckets) == 1:
            return buckets[0]
        members: set[str] = set()
        for bucket in buckets:
            members.update(bucket)
        return members

    def _bucket(self, name: str, values: list[str]) -> Bucket | None:
        """The instances matching one index-backed filter, or None if the filter needs a scan."""
        if name == "zone":
            buckets = [self._by_zone.get(v) for v in values]
        elif name == "instance-name":
            buckets = [self._by_name.get(v) for v in values]
        elif name == "tag-key":
            buckets = [self._by_tag_key.get(v) for v in values]
        elif name == "tag-value":
            buckets = [self._by_tag_value.get(v) for v in values]
        elif name.startswith("tag:"):
            key = name[len("tag:") :]
            buckets = [self._by_tag.get((key, v)) for v in values]
        elif name == "instance-id":
            found = {v: self.all[v] for v in values if v in self.all}
            return _in_launch_order(found.values())
        elif name in _NEVER_MATCHING:
            return {}
        else:
            return None
        present = [b for b in buckets if b]
        if not present:
            return {}
        if len(present) == 1:
            return present[0]
        merged: dict[str, SimInstance] = {}
        for bucket in present:
            merged.update(bucket)
        return _in_launch_order(merged.values())


def _in_launch_order(instances: Iterable[SimInstance]) -> Bucket:
    return {inst.instance_id: inst for inst in sorted(instances, key=lambda i: i.seq)}


def _insert(index: dict, key: object, inst: SimInstance) -> None:  # type: ignore[type-arg]
    """Add an instance to a bucket in launch order (at the end unless it is older than the last)."""
    bucket: Bucket = index.setdefault(key, {})
    last = bucket[next(reversed(bucket))] if bucket else None
    bucket[inst.instance_id] = inst
    if last is not None and last.seq > inst.seq:
        index[key] = _in_launch_order(bucket.values())


def _discard(index: dict, key: object, iid: str) -> None:  # type: ignore[type-arg]
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(iid, None)
        if not bucket:
            del index[key]


def _predicate(name: str, values: list[str]) -> Predicate:
    """A test for the filters no index serves (rare in practice: they scan the candidates)."""
    wanted = frozenset(values)
    if name == "instance-charge-type":
        return lambda i: i.charge_type in wanted
    if name == "project-id":
        return lambda i: str(i.project_id) in wanted
    if name == "vpc-id":
        return lambda i: i.vpc_id in wanted
    if name == "subnet-id":
        return lambda i: i.subnet_id in wanted
    if name == "uuid":
        return lambda i: i.uuid in wanted
    if name == "private-ip-address":
        return lambda i: i.private_ip in wanted
    if name == "security-group-id":
        return lambda i: not wanted.isdisjoint(i.security_group_ids)
    if name == "creation-start-time":
        start = min(_parse_filter_time(name, v) for v in values)
        return lambda i: i.created_at >= start
    if name == "creation-end-time":
        end = max(_parse_filter_time(name, v) for v in values)
        return lambda i: i.created_at <= end
    raise ApiError("InvalidFilter", f"The filter {name!r} is not supported by DescribeInstances.")


def _parse_filter_time(name: str, value: str) -> float:
    """`YYYY-MM-DD hh:mm:ss`, read as UTC (the documented format names no zone)."""
    try:
        return float(timegm(strptime(value, "%Y-%m-%d %H:%M:%S")))
    except ValueError:
        raise ApiError(
            "InvalidParameterValue",
            f"Filter {name} value {value!r} must have the format YYYY-MM-DD hh:mm:ss.",
        ) from None
