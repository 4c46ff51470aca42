"""Dynamic batching for a Serve replica: the requests that arrive while the model is busy go
into the next batch together.

Ray Serve's `@serve.batch` closes a batch at `batch_wait_timeout_s` even while the previous
batch is still in the model, so under load the model works through a queue of small batches
(docs/serving.md measures it). Here one loop takes the next batch only when the model is free,
as TF Serving's and Triton's batchers do: everything that queued meanwhile goes in at once, up
to `max_batch_size`. A batch waits at most `wait_s` after its first request for others, and not
at all when no other request on the replica is on its way to it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable


class Batcher:
    """`await batcher(item)` gives `infer([..., item, ...])`'s answer for that item.

    `infer` is an async function from a list of items to a list of answers, one per item;
    `coming()` counts the requests that may still submit an item (those being read or
    decoded): at zero, a batch closes without waiting.
    """

    def __init__(self, infer: Callable[[list], Awaitable[list]], max_batch_size: int,
                 wait_s: float, coming: Callable[[], int] = lambda: 1):
        self._infer, self._coming = infer, coming
        self.max_batch_size, self.wait_s = int(max_batch_size), float(wait_s)
        self._queue: deque[tuple[Any, asyncio.Future, float]] = deque()
        self._arrived: asyncio.Event | None = None  # made on the loop that serves requests
        self._loop_task: asyncio.Task | None = None

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        future = loop.create_future()
        self._queue.append((item, future, loop.time()))
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._queue[0][2] + self.wait_s
            while len(self._queue) < self.max_batch_size and self._coming() > 0:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            taken = [self._queue.popleft()
                     for _ in range(min(len(self._queue), self.max_batch_size))]
            batch = [(item, future) for item, future, _ in taken if not future.done()]
            if batch:
                await self._answer(batch)

    async def _answer(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            answers = await self._infer([item for item, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"infer returned {len(answers)} answers for "
                                   f"{len(batch)} items")
        except Exception as exc:  # this batch's requests fail; the next batch is unaffected
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers):
            if not future.done():
                future.set_result(answer)
