"""kopf's queued Events are sent only while this replica leads, checked when they are sent."""

from __future__ import annotations

import importlib
from typing import Any

from spotpool.controller import eventfence


async def test_a_queued_event_is_dropped_once_the_term_ended_and_never_retried() -> None:
    sent: list[dict[str, Any]] = []

    async def post(**kwargs: Any) -> None:
        sent.append(kwargs)

    leading = {"now": True}
    fenced = eventfence.fenced(post, lambda: leading["now"])
    await fenced(reason="Launched", message="m", backoffs=[1, 2, 4])
    leading["now"] = False  # queued while leading, sent after the term ended
    await fenced(reason="Released", message="m", backoffs=[1, 2, 4])
    assert [s["reason"] for s in sent] == ["Launched"]
    assert sent[0]["backoffs"] == ()  # one attempt: a retry could land after the term


def test_install_replaces_the_function_kopfs_poster_calls_and_can_be_repeated() -> None:
    module = importlib.import_module("kopf._cogs.clients.events")
    original = module.post_event
    try:
        assert eventfence.install(lambda: True)
        first = module.post_event
        assert first is not original and first.__wrapped_post__ is original
        assert eventfence.install(lambda: False)
        assert module.post_event.__wrapped_post__ is original  # never wrapped twice
        # kopf's poster calls it through the module attribute, so the replacement is what it calls.
        posting = importlib.import_module("kopf._core.engines.posting")
        assert posting.events is module
    finally:
        module.post_event = original
