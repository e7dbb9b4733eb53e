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
