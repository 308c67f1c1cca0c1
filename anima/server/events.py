"""Fan-out of server events (job changes, progress, previews) from the worker thread to asyncio.

The worker publishes from its own thread; each subscriber is an asyncio queue on some event loop,
fed with `call_soon_threadsafe`. A slow subscriber loses progress events, never job events
(its queue is bounded for progress only), so a stalled browser tab cannot grow memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_MAX_PENDING_PROGRESS = 64


class Subscription:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def _put(self, event: dict[str, Any]) -> None:
        if event.get("type") == "progress" and self.queue.qsize() >= _MAX_PENDING_PROGRESS:
            return
        self.queue.put_nowait(event)

    async def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        """Call from inside a running event loop."""
        sub = Subscription(asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._subs.discard(sub)

    def publish(self, event: dict[str, Any]) -> None:
        """Thread-safe; never blocks the publisher."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                sub.loop.call_soon_threadsafe(sub._put, event)
