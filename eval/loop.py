"""The one evaluation loop every command feeds: this rank's share of the batches, one gather of every
data-parallel rank's records per step, predictions stored in one process's order, and time per batch.

    with EvalLoop(device, tp, started_at, store) as loop:
        for positions, inputs in loop.steps(batches, load):    # how to batch
            with loop.timed(len(positions)):
                outputs = model(*inputs)                        # what to run
            loop.add(records_of(positions, outputs))            # what to record
    loop.store.done, loop.unreadable, loop.meter.summary()

The gathers are collectives: every rank must take part in each one, or the others wait for ever. The loop
makes them, not the command: after each step (also the steps a rank has no batch for), at the end of a
pass its body left early, and when the latency meters are combined at the end. A rank that raises sends its
error in place of its next gather, so every rank stops at that same gather with the same error.
"""
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from eval.store import PredictionStore
from eval.timing import LatencyMeter
from npu_models import parallel
from npu_models.errors import UserError


def progress(iterable, **options):
    """A progress bar on the main process (none under tensor parallelism's other ranks, none when not a terminal)."""
    from tqdm import tqdm
    return tqdm(iterable, disable=None if parallel.is_main_process() else True, **options)


@dataclass(frozen=True)
class RankFailed:
    """What a rank sends in place of its gathered value once it has raised."""
    rank: int
    message: str
    user_error: bool


@dataclass
class _Pass:
    remaining: int                    # gathers still to make
    sink: Callable[[list], None]      # takes each rank's records of a step, in rank order


class EvalLoop:
    """Context manager owning the loop's skeleton (see the module docstring): the data-parallel share, the
    gathers, the latency meter, the store (closed on leaving, whatever happened) and torch.no_grad."""

    def __init__(self, device: torch.device, tp: int = 1, started_at: float | None = None,
                 store: PredictionStore | None = None):
        self.store = store if store is not None else PredictionStore(None)
        self.device = device
        self.dp = parallel.data_parallel(tp)
        self.meter = LatencyMeter(device, started_at)
        self.unreadable = []          # every rank's unreadable items, in one process's order
        self._records, self._unreadable = [], []  # this rank's, of the step in progress
        self._pass = None
        self._stopped = False         # another rank's error has stopped every rank
        self._no_grad = torch.no_grad()

    def __enter__(self):
        self._no_grad.__enter__()
        return self

    def __exit__(self, kind, error, traceback):
        try:
            if error is None:
                self._finish_pass()
                self.meter.combine(self._gather((self.meter.samples, self.meter.seconds)))
            elif isinstance(error, Exception) and not self._stopped:
                self.dp.gather(RankFailed(self.dp.rank, str(error), isinstance(error, UserError)))
        finally:
            self._no_grad.__exit__(kind, error, traceback)
            self.store.close()
        return False

    def steps(self, batches: list, load: Callable[[list], Iterable] | None = None,
              sink: Callable[[list], None] | None = None, **progress_options):
        """Yield this rank's share of `batches`, as they are or through `load` (this rank's batches -> one
        item per batch, e.g. a DataLoader with them as its batch sampler). After each item, every rank's
        add()ed records go to `sink` (default: the store) in one process's order."""
        self._finish_pass()
        planned = self._gather(len(batches))
        if len(set(planned)) > 1:  # ranks that read different finished examples would wait on each other
            raise RuntimeError(f"the data-parallel ranks planned different numbers of batches: {planned}")
        mine = self.dp.share(batches)
        self._pass = this_pass = _Pass(self.dp.steps(len(batches)), sink or self.store.add)
        for item in progress(mine if load is None else load(mine), total=len(mine), **progress_options):
            yield item
            if self._pass is not this_pass:  # the body started another pass: this one is finished
                return
            self._step()
        self._finish_pass()

    def add(self, records: list, unreadable: list[dict] = ()) -> None:
        """Records (and unreadable items) of the batch in progress."""
        self._records.extend(records)
        self._unreadable.extend(unreadable)

    def timed(self, samples: int):
        """Time the block as one batch of `samples` examples."""
        return self.meter.batch(samples)

    def _step(self) -> None:
        mine, self._records, self._unreadable = (self._records, self._unreadable), [], []
        for records, unreadable in self._gather(mine):
            self._pass.sink(records)
            self.unreadable.extend(unreadable)
        self._pass.remaining -= 1

    def _finish_pass(self) -> None:
        """Take part in the gathers of the steps this rank has no batch for (or that the body skipped)."""
        while self._pass is not None and self._pass.remaining > 0:
            self._step()
        self._pass = None

    def _gather(self, value) -> list:
        parts = self.dp.gather(value)
        failed = [part for part in parts if isinstance(part, RankFailed)]
        if failed:
            self._stopped = True
            if failed[0].user_error:  # the same paragraph on every rank
                raise UserError(failed[0].message)
            raise RuntimeError(f"data-parallel rank {failed[0].rank} stopped: {failed[0].message}")
        return parts
