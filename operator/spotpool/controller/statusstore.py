"""The pool's persisted status: read once per pass, written only over the picture it was planned from.

Why this room exists: a pass that plans from one picture of the status and writes over another
loses what the other holds. The journal (launch records and their sequence) is the one thing that
must never be lost or rolled back, because a launch record that vanishes is a purchase nobody
counts, and the next plan buys again. So:

- **One picture per pass** (`StatusStore.read`): the status, typed (`PersistedStatus`), and the
  resourceVersion it was read at. Every decision of the pass, and every precondition of its
  writes, come from that one picture.
- **Memory only when provably as new as the body.** This process remembers the status it last
  wrote (the body's watch event may still be on its way). Each of its writes is conditional on the
  version before it, so its writes form a chain of resourceVersions (`lineage`) with no foreign
  write in between; the memory is used only while the body's resourceVersion is on that chain
  (the body then predates or equals our last write). Any other body is newer (another writer, a
  spec edit) and is read instead. A failed write, a lost or new leadership term, or a conflict
  drops the memory: the next pass reads the body.
- **Every write is conditional.** The journal write, before money is spent, gives up on a
  conflict unless the newer object differs only in what no plan reads (the status, the spec's
  generation and the deletion mark as the pass read them): then it writes over it; otherwise the
  pass replans from the newer object. The status write after the actions re-reads
  the object on a conflict and writes again only if the journal and the sequence there are still
  those this pass left (the conflict came from fields nobody plans from: kopf's annotations, a
  spec edit); otherwise another writer (a new leader) owns the journal now, and this pass stops.
  A late write of a past leader can then never erase a record or roll the sequence back.

Merging follows the API server's rule (RFC 7386 merge-patch: objects merge recursively, null
removes, anything else replaces), so the copy in memory is what the server holds.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spotpool.controller.fencing import Fence
from spotpool.controller.kube import Conflict, KubeApi
from spotpool.planner.persistence import PersistedStatus, read_status

MAX_LINEAGE = 16
"""Versions of our own write chain remembered: a pass makes at most two writes, and a body's
watch event lags a few writes at most; an older body is simply read as the newer picture's
predecessor would be (the memory is dropped, which costs a conflict, never a wrong plan)."""

JOURNAL_FIELDS = ("inflightLaunches", "launchSequence")
"""The fields a status write must find as this pass left them before it writes over a conflict."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge-patch, as the API server applies a status patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass
class StatusMemory:
    """What this process last knew of one pool's status (in the pool's `PoolMemory`)."""

    status: dict[str, Any] | None = None
    lineage: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_LINEAGE))
    term: int | None = None

    @property
    def version(self) -> str | None:
        return self.lineage[-1] if self.lineage else None

    def drop(self) -> None:
        """Forget: the next pass reads the body (after a failed write, a conflict, a lost term)."""
        self.status = None
        self.lineage.clear()
        self.term = None


@dataclass(frozen=True)
class Picture:
    """The status a pass plans from, and the resourceVersion it was read at."""

    raw: Mapping[str, Any]
    persisted: PersistedStatus
    resource_version: str | None
    from_memory: bool


class StatusStore:
    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube

    def read(self, body: Mapping[str, Any], memory: StatusMemory, term: int | None) -> Picture:
        """The pass's picture: the memory if the body is on its write chain (and the term is the
        memory's), else the body, which then becomes the memory's start."""
        version = (body.get("metadata") or {}).get("resourceVersion")
        if memory.status is not None and memory.term == term and version is not None and version in memory.lineage:
            return Picture(memory.status, read_status(memory.status), memory.version, from_memory=True)
        status = dict(body.get("status") or {})
        memory.status = status
        memory.lineage.clear()
        if version is not None:
            memory.lineage.append(version)
        memory.term = term
        return Picture(status, read_status(status), version, from_memory=False)

    async def write_journal(self, namespace: str, name: str, memory: StatusMemory, patch: dict[str, Any],
                            fence: Fence | None = None, *, generation: int | None = None,
                            latest: Mapping[str, Any] | None = None) -> str:
        """Write `patch` (the journal, before money is spent) only over what the pass planned
        from; `Conflict` (memory dropped) when anything it planned from changed since. `fence`:
        the pass's term (see `_write`).

        A conflict is checked, not taken as a change: a write that only touched what no plan
        reads (kopf's own annotation after a spec change is handled, labels) leaves the status,
        `metadata.generation` (the spec) and the deletion mark as they were; the journal is then
        written over the newer version at once, instead of the pass being thrown away (which cost
        every spec change, and every new pool, one progress interval). `generation`: the one the
        pass planned from; without it every conflict gives up.

        `latest`: the newest version the watch has delivered (kopf's live body). A new pool's first
        pass always met such a write (kopf adds its finalizer and annotations while the pass reads
        the cloud), and paid a refused write and a read for it before its first purchase. Judged by
        the same rule, a `latest` that differs only in what no plan reads is written over at once;
        one that lags the server still meets the conflict, as before."""
        planned = dict(memory.status or {})
        if latest is not None and generation is not None and memory.status is not None:
            version = ((latest.get("metadata") or {}).get("resourceVersion"))
            if version is not None and version != memory.version and _unchanged(latest, planned, generation):
                memory.lineage.clear()
                memory.lineage.append(str(version))
        try:
            return await self._write(namespace, name, memory, patch, fence)
        except Conflict:
            if generation is None or memory.status is None:
                memory.drop()
                raise
        try:
            current = await self._kube.read_object(namespace, name)
        except BaseException:
            memory.drop()
            raise
        if current is None or not _unchanged(current, planned, generation):
            memory.drop()
            raise Conflict(f"{namespace}/{name}: changed since the pass read it (status, spec or deletion)")
        memory.lineage.clear()
        memory.lineage.append(str(current["metadata"]["resourceVersion"]))
        try:
            return await self._write(namespace, name, memory, patch, fence)
        except Conflict:
            memory.drop()
            raise

    async def write_status(self, namespace: str, name: str, memory: StatusMemory, patch: dict[str, Any],
                           fence: Fence | None = None) -> str:
        """Write the pass's status over the version its last write left; on a conflict, again over
        the newer object only if its journal is still this pass's (see the module docstring)."""
        try:
            return await self._write(namespace, name, memory, patch, fence)
        except Conflict:
            if memory.status is None:
                raise
            memory_journal = {k: memory.status.get(k) for k in JOURNAL_FIELDS}
            try:
                current = await self._kube.read_object(namespace, name)
            except BaseException:
                memory.drop()
                raise
            if current is None:
                memory.drop()
                raise
            status = dict(current.get("status") or {})
            ours = {k: status.get(k) for k in JOURNAL_FIELDS}
            if ours != memory_journal:
                memory.drop()
                raise Conflict(f"{namespace}/{name}: another writer changed the launch journal") from None
            memory.status = status
            memory.lineage.clear()
            memory.lineage.append(str(current["metadata"]["resourceVersion"]))
            return await self._write(namespace, name, memory, patch, fence)

    async def _write(self, namespace: str, name: str, memory: StatusMemory, patch: dict[str, Any],
                     fence: Fence | None = None) -> str:
        """One conditional write, in the pass's term: the fence is checked right before it is sent,
        and the request is bounded by the time the term has left. An API server that holds a write
        (its etcd down) answered it seconds after the term had ended (the chaos e2e saw one land
        5 s after the last renewal); timed out, the client drops the request and the server
        cancels it with its context."""
        timeout = None
        if fence is not None:
            fence.check()
            left = fence.remaining()
            timeout = left if left is not None and math.isfinite(left) else None
        try:
            version = await self._kube.patch_status(namespace, name, patch, resource_version=memory.version,
                                                    timeout=timeout)
        except Conflict:
            raise
        except BaseException:
            memory.drop()  # the write may or may not have landed: read the body next pass
            raise
        memory.status = merge_patch(memory.status or {}, patch)
        memory.lineage.append(version)
        return version


def _unchanged(obj: Mapping[str, Any], planned: Mapping[str, Any], generation: int) -> bool:
    """Whether a newer version of the object holds what the pass planned from: the same status, the
    same spec (`metadata.generation`), no deletion mark. What else changed (kopf's annotations and
    finalizer, labels) no plan reads."""
    meta = obj.get("metadata") or {}
    return (dict(obj.get("status") or {}) == planned and meta.get("generation") == generation
            and not meta.get("deletionTimestamp"))
