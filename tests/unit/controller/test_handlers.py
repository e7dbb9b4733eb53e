"""The delete handler on a standby: it writes nothing while it waits to lead, and never acts on the
body it was handed once it leads (kopf calls it again with the object as it is then)."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from spotpool.controller import handlers
from spotpool.controller.redaction import DELETION_WAITS
from spotpool.controller.runtime import Runtime, of


class Leadership:
    def __init__(self, leading: bool) -> None:
        self.leading = asyncio.Event()
        if leading:
            self.leading.set()

    def is_leader(self, term: int | None = None) -> bool:
        return self.leading.is_set()

    async def wait_leading(self) -> int:
        await self.leading.wait()
        return 1


@pytest.fixture
def runtime() -> Runtime:
    return Runtime()


@pytest.fixture
def leadership(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Leadership:
    fake = Leadership(leading=False)
    monkeypatch.setattr(runtime, "leadership", fake)
    return fake


async def test_the_leader_goes_on_at_once(runtime: Runtime, leadership: Leadership) -> None:
    leadership.leading.set()
    await handlers._await_leading(runtime)


async def test_a_standby_waits_then_asks_to_be_called_again(runtime: Runtime, leadership: Leadership,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "STANDBY_RETRY", 0.05)
    with pytest.raises(kopf.TemporaryError) as raised:
        await handlers._await_leading(runtime)
    assert str(raised.value).startswith(DELETION_WAITS) and raised.value.delay == 0


async def test_a_standby_that_comes_to_lead_starts_again_from_a_fresh_body(runtime: Runtime,
                                                                           leadership: Leadership) -> None:
    waiting = asyncio.ensure_future(handlers._await_leading(runtime))
    await asyncio.sleep(0)
    assert not waiting.done()  # no retry recorded (no patch) while it waits
    leadership.leading.set()
    with pytest.raises(kopf.TemporaryError):
        await asyncio.wait_for(waiting, timeout=5)


@pytest.mark.parametrize("secrets", [True, False])
def test_secrets_are_watched_only_while_pools_may_sign_with_them(monkeypatch: pytest.MonkeyPatch,
                                                                 secrets: bool) -> None:
    """With --no-secret-credentials the operator needs (and the chart grants) no access to Secrets:
    nothing may list or watch them."""
    from spotpool.controller.config import OperatorConfig

    watched: list[str] = []

    def recorder(kind: str) -> object:
        def decorator(group: str, version: str, plural: str, **_: object) -> object:
            watched.append(f"{kind} {plural}")
            return lambda fn: fn
        return decorator

    monkeypatch.setattr(kopf, "index", recorder("index"))
    monkeypatch.setattr(kopf.on, "event", recorder("event"))
    handlers.register(OperatorConfig(secret_credentials=secrets))
    assert watched == (["index secrets", "event secrets"] if secrets else [])


def test_handlers_find_the_runtime_in_kopfs_memo_and_its_per_object_copies() -> None:
    """The CLI hands the runtime down through kopf's operator-level memo; kopf gives each object a
    shallow copy, in which the object's own state lives beside the shared runtime."""
    import copy

    runtime = Runtime()
    operator_memo = kopf.Memo(runtime=runtime)
    one, other = copy.copy(operator_memo), copy.copy(operator_memo)
    assert of(one) is runtime and of(other) is runtime
    assert handlers._state(one)[0] is not handlers._state(other)[0]  # each object its own memory
    with pytest.raises(RuntimeError, match="runtime"):
        of(kopf.Memo())


async def test_first_passes_run_a_bounded_batch_at_a_time_and_later_passes_never_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At startup every pool's daemon begins its first pass together; the peak those make is
    CPython's high-water mark for good, so at most `first_passes_at_once` run at once. A pool's
    later passes take no part in the gate (a settled pool never queues behind new ones)."""
    import copy
    from types import SimpleNamespace

    from spotpool.controller.config import OperatorConfig
    from spotpool.controller.reconciler import Outcome

    class Stopped(asyncio.Event):  # kopf.DaemonStopped: false until the daemon is stopped
        def __bool__(self) -> bool:
            return self.is_set()

    runtime = Runtime(OperatorConfig(first_passes_at_once=2, observe_interval=0.01, heartbeat_interval=0.01))
    running: set[str] = set()
    most = 0
    passes: dict[str, int] = {}
    release = asyncio.Event()

    class Reconciler:
        async def reconcile(self, body: dict, memory: object, lock: asyncio.Lock, **_: object) -> Outcome:
            nonlocal most
            uid = body["metadata"]["uid"]
            passes[uid] = passes.get(uid, 0) + 1
            first = passes[uid] == 1
            if first:
                running.add(uid)
                most = max(most, len(running))
            if first and uid != "uid-0":
                await release.wait()  # the others' first passes hold on until the test lets them go
            running.discard(uid)
            return Outcome(progressing=False)

    monkeypatch.setattr(Runtime, "parts", property(lambda self: SimpleNamespace(reconciler=Reconciler())))
    monkeypatch.setattr(runtime, "leadership", Leadership(leading=True))
    operator_memo = kopf.Memo(runtime=runtime)
    stopped = Stopped()
    daemons = []
    for n in range(6):
        meta = {"uid": f"uid-{n}", "namespace": "ns", "name": f"pool-{n}"}
        daemons.append(asyncio.ensure_future(handlers.keep_pool(
            body={"metadata": meta}, meta=meta, memo=copy.copy(operator_memo), stopped=stopped,
            logger=SimpleNamespace(error=lambda *a: None), spot_pools={})))
    # uid-0's first pass ends at once; two others then hold the gate and three wait for it, while
    # uid-0 goes on with pass after pass.
    while passes.get("uid-0", 0) < 5:
        await asyncio.sleep(0.005)
    assert len(running) == 2 and most == 2, f"first passes at once: {sorted(running)}, at most {most}"
    assert len(passes) == 3, f"first passes begun: {sorted(passes)}"
    release.set()
    while len(passes) < 6:
        await asyncio.sleep(0.005)
    stopped.set()
    await asyncio.wait_for(asyncio.gather(*daemons), timeout=5)
    assert most == 2
