"""Events are posted by the leader only, checked when they are sent, not when they were queued.

kopf queues Events (ours through `kopf.event`, and its per-object loggers' records) and posts them
from a background task, retrying a failed post with backoffs. A replica that stopped leading while
Events were queued, or while a post was being retried, would publish what it learned late: a
standby's word on a pool the new leader now owns. So every post goes through `fenced_post`, which
asks whether this replica leads right before it sends, and sends once (a failed post is logged,
not retried past the moment it was allowed).

This replaces one function of kopf's (`kopf._cogs.clients.events.post_event`, the one the poster
task calls); `install` refuses to start if kopf no longer has it, rather than post unfenced.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

_MODULE = "kopf._cogs.clients.events"

Post = Callable[..., Awaitable[None]]


def fenced(post: Post, leading: Callable[[], bool]) -> Post:
    """`post` (kopf's post_event), sent only while `leading()`, and without retries."""

    async def fenced_post(**kwargs: Any) -> None:
        if not leading():
            log.info("not leading: Event %s not posted (%s)", kwargs.get("reason"), str(kwargs.get("message"))[:200])
            return
        await post(**{**kwargs, "backoffs": ()})

    return fenced_post


def install(leading: Callable[[], bool]) -> bool:
    """Fence kopf's Event posts; False if kopf has no such function (the caller refuses to run)."""
    module = importlib.import_module(_MODULE)
    post = getattr(module, "post_event", None)
    if post is None:
        return False
    post = getattr(post, "__wrapped_post__", post)  # installed before: wrap kopf's own, never ours
    wrapper = fenced(post, leading)
    wrapper.__wrapped_post__ = post  # type: ignore[attr-defined]
    setattr(module, "post_event", wrapper)  # noqa: B010 - the module is imported by name
    return True
