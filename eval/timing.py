"""Wall-clock time with the device synchronised: per batch of an eval run, and per call of a benchmark."""
import contextlib
import statistics
import time

import torch

from npu_models import runtime


class LatencyMeter:
    """Wall-clock time of each batch, synchronised with the device, and the time from the command's start
    (`started_at`, a perf_counter reading) to the end of its first batch: loading, reading, compiling; and of
    that, the time graph mode spent compiling while the meter ran (runtime.compile_seconds: the first call per
    input shape, 0 in eager mode), with the number of graphs it loaded and compiled."""

    def __init__(self, device: torch.device, started_at: float | None = None):
        self.device, self.seconds, self.samples = device, [], 0
        self.busy_seconds = None  # set by combine(): the busiest data-parallel rank's time in the model
        self.started_at, self.first_batch_s = started_at, None
        self.compile_seconds_at_start = runtime.compile_seconds()
        self.graph_counts_at_start = runtime.graph_counts()

    @contextlib.contextmanager
    def batch(self, samples: int):
        """Time the block as one batch of `samples` examples."""
        runtime.synchronize(self.device)
        start = time.perf_counter()
        yield
        runtime.synchronize(self.device)
        now = time.perf_counter()
        self.seconds.append(now - start)
        self.samples += samples
        if self.first_batch_s is None and self.started_at is not None:
            self.first_batch_s = now - self.started_at

    def combine(self, parts: list[tuple[int, list[float]]]) -> None:
        """Take in every data-parallel rank's (samples, seconds), in rank order. The ranks run side by side,
        so samples_per_second becomes all ranks' samples over the busiest rank's seconds in the model; the
        latencies are those of every rank's batches."""
        self.samples = sum(samples for samples, _ in parts)
        self.seconds = [s for _, seconds in parts for s in seconds]
        self.busy_seconds = max(sum(seconds) for _, seconds in parts)

    def summary(self) -> dict:
        if not self.seconds:
            return {"samples_per_second": None, "latency_ms_p50": None, "latency_ms_p90": None,
                    "time_to_first_batch_s": None, "compile_s": self.compile_s(), **self.graphs()}
        busy = self.busy_seconds or sum(self.seconds)
        return {"samples_per_second": self.samples / busy, **latency_percentiles(self.seconds),
                "time_to_first_batch_s": self.first_batch_s, "compile_s": self.compile_s(), **self.graphs()}

    def compile_s(self) -> float:
        return runtime.compile_seconds() - self.compile_seconds_at_start

    def graphs(self) -> dict:
        """Graph mode on the CPU: how many graphs were loaded from the compile cache, and compiled (and saved)."""
        now = runtime.graph_counts()
        return {key: count - self.graph_counts_at_start[key] for key, count in now.items()}


def latency_percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"latency_ms_p50": statistics.median(ordered) * 1e3, "latency_ms_p90": p90 * 1e3}


def timed_call(fn, args, device):
    """(fn(*args), wall-clock seconds), the device synchronised before and after."""
    runtime.synchronize(device)
    start = time.perf_counter()
    result = fn(*args)
    runtime.synchronize(device)
    return result, time.perf_counter() - start


def time_iterations(fn, inputs, device, warmup, iters) -> list[float]:
    return time_interleaved({"fn": fn}, inputs, device, warmup, iters)["fn"]


def time_interleaved(fns: dict, inputs, device, warmup, iters) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns iteration by iteration, so that a
    shared, noisy machine slows all of them alike instead of whichever ran during the disturbance."""
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn(*inputs)
        seconds = {key: [] for key in fns}
        for _ in range(iters):
            for key, fn in fns.items():
                seconds[key].append(timed_call(fn, inputs, device)[1])
    return seconds
