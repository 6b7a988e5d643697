"""One batcher per device: inputs of one batch key (endpoint and padded shape) wait at most --max-wait-ms for
others, up to --max-batch-size inputs and --max-batch-tokens tokens; the device runs one batch at a time on
its own thread, while the event loop goes on admitting, parsing and preparing the next requests."""
import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Waiting:
    """One prepared input waiting for its batch, and the future its request awaits."""
    tensors: tuple
    tokens: int
    future: asyncio.Future
    since: float = field(default_factory=time.perf_counter)


class BatchFailed(Exception):
    """The device failed while running a batch: its inputs' requests fail with 500."""


class Batcher:
    """`run(key, batch)` -> one output per input, on the device thread. `on_batch(key, size, tokens, seconds,
    error, queue_seconds)` reports each batch (metrics, health): its run time, its error or None, and how long
    each of its inputs waited."""

    def __init__(self, run: Callable, max_batch_size: int, max_batch_tokens: int, max_wait_s: float,
                 on_batch: Callable, name: str = "device"):
        self.run, self.on_batch = run, on_batch
        self.max_batch_size, self.max_batch_tokens, self.max_wait_s = max_batch_size, max_batch_tokens, max_wait_s
        self.waiting: dict[tuple, list[Waiting]] = {}
        self.device_thread = ThreadPoolExecutor(1, thread_name_prefix=name)
        self.arrived = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.device_thread.shutdown(wait=True)

    def load(self) -> int:
        """Inputs waiting for a batch (the least-loaded batcher takes the next request)."""
        return sum(len(items) for items in self.waiting.values())

    async def submit(self, key: tuple, tensors: tuple, tokens: int):
        waiting = Waiting(tensors, tokens, asyncio.get_running_loop().create_future())
        self.waiting.setdefault(key, []).append(waiting)
        self.arrived.set()
        return await waiting.future

    def full(self, items: list[Waiting]) -> bool:
        return len(items) >= self.max_batch_size or sum(w.tokens for w in items) >= self.max_batch_tokens

    def next_batch(self, now: float) -> tuple[tuple, list[Waiting]] | None:
        """The key whose batch is full, else the one whose oldest input has waited long enough; None: wait."""
        ready = [key for key, items in self.waiting.items() if items and (
            self.full(items) or now - items[0].since >= self.max_wait_s)]
        if not ready:
            return None
        key = min(ready, key=lambda k: self.waiting[k][0].since)  # the oldest input first: nothing starves
        items, taken, tokens = self.waiting[key], [], 0
        while items and len(taken) < self.max_batch_size and (
                not taken or tokens + items[0].tokens <= self.max_batch_tokens):
            tokens += items[0].tokens
            taken.append(items.pop(0))
        if not items:
            del self.waiting[key]
        return key, taken

    def seconds_to_wait(self, now: float) -> float | None:
        oldest = [items[0].since for items in self.waiting.values() if items]
        return None if not oldest else max(0.0, min(oldest) + self.max_wait_s - now)

    async def loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chosen = self.next_batch(time.perf_counter())
            if chosen is None:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), self.seconds_to_wait(time.perf_counter()))
                except asyncio.TimeoutError:
                    pass
                continue
            key, batch = chosen
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.device_thread, self.run, key, [w.tensors for w in batch])
                error = None
            except Exception as err:  # the device's fault fails this batch, not the server
                outputs, error = None, err
            self.on_batch(key, len(batch), sum(w.tokens for w in batch), time.perf_counter() - started, error,
                          [started - w.since for w in batch])
            for position, waiting in enumerate(batch):
                if waiting.future.done():  # its request went away
                    continue
                if error is not None:
                    waiting.future.set_exception(BatchFailed(f"{type(error).__name__}: {error}"))
                else:
                    waiting.future.set_result(outputs[position])
