"""The runtime's wake-ups: a pool wakes when its spec changed since this replica last saw it."""

from __future__ import annotations

from spotpool.controller.runtime import Runtime


async def test_a_new_generation_wakes_the_pool_and_a_status_write_does_not() -> None:
    runtime = Runtime()
    wakeup = runtime.wakeup("uid-a", "team")
    runtime.wake_on_generation("uid-a", 1)  # first sight (kopf's initial listing)
    assert wakeup.is_set()
    wakeup.clear()
    runtime.wake_on_generation("uid-a", 1)  # a status write: the generation stays
    assert not wakeup.is_set()
    runtime.wake_on_generation("uid-a", 2)  # kubectl scale, whoever else saw it first
    assert wakeup.is_set()
    runtime.forget("uid-a", "team", "pool")
    runtime.wake_on_generation("uid-a", 2)  # a pool recreated under the same uid never happens,
    assert runtime.wakeup("uid-a").is_set()  # but a forgotten one starts from scratch


def test_settling_the_heap_takes_what_startup_made_out_of_every_collection() -> None:
    import gc

    from spotpool.controller.runtime import settle_heap

    made_at_startup = [{"instance": n} for n in range(1000)]
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(made_at_startup)
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in made_at_startup), "a frozen object is still walked"
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
