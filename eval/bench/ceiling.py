"""The ceiling a model part's own FLOP-bearing operators set, measured on this device.

The peak (eval.bench.flops.matmul_peak) is one large square matmul. A model multiplies its own shapes: at batch 1,
ViT-B/32's GEMMs are 50 rows against 768 x 3072 weights that stream from memory once per call, and this CPU's
GEMM runs those at about half of its square rate. No forward can beat the operators it is made of, so a
part's fraction of peak is read against theirs:

- every operator of one call that the FLOP counter counts (matmuls, convolutions, attention) is recorded as
  the dispatcher sees it;
- the recording is run again alone, in order, on the part's own weights, with stand-in activations of the same
  shapes, strides and dtypes (one per shape, reused, so a little warmer in cache than in the model: the ceiling
  errs high), and timed;
- `ceiling_fraction_of_peak` is those operators' FLOPs over that time, against the peak; `fraction_of_ceiling`
  is the part's fraction of peak over it: the share of the time spent in those operators, the rest being
  everything between them (norms, activations, copies, Python).
"""
import statistics
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from eval.bench.flops import FLOP_FORMULAS, flop_counter
from eval.timing import time_iterations


@dataclass(frozen=True)
class StandIn:
    """An activation's shape, strides and dtype: the replay gives it a tensor of its own."""
    shape: tuple
    stride: tuple
    dtype: torch.dtype
    device: torch.device

    def make(self) -> torch.Tensor:
        tensor = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)
        if self.dtype.is_floating_point:
            return tensor.normal_()
        return tensor.fill_(1)  # masks attend, indices stay in range


class FlopOperatorRecorder(TorchDispatchMode):
    """Records (operator, arguments) for each counted operator; a tensor that shares storage with one of the
    module's weights is kept (the replay reads the real weights), any other becomes a StandIn."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.weights = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in flop_registry or func.overloadpacket in FLOP_FORMULAS:
            self.calls.append((func, tree_map(self.describe, args), tree_map(self.describe, kwargs)))
        return func(*args, **kwargs)

    def describe(self, value):
        if not isinstance(value, torch.Tensor) or value.untyped_storage().data_ptr() in self.weights:
            return value
        return StandIn(tuple(value.shape), tuple(value.stride()), value.dtype, value.device)


def flops_and_ceiling(fn, module: torch.nn.Module, inputs, device, warmup: int, iters: int) -> tuple[int, float | None]:
    """(FLOPs of `fn(*inputs)` as eval.bench.flops counts them, FLOP/s of those operators run alone; None if it
    has none), from one call that is counted and recorded at once."""
    recorder = FlopOperatorRecorder(module)
    with torch.no_grad(), flop_counter() as counter, recorder:
        fn(*inputs)
    flops = counter.get_total_flops()
    if not recorder.calls:
        return flops, None
    stand_ins = {}

    def real(value):
        if isinstance(value, StandIn):
            if value not in stand_ins:
                stand_ins[value] = value.make()
            return stand_ins[value]
        return value

    calls = [(func, tree_map(real, args), tree_map(real, kwargs)) for func, args, kwargs in recorder.calls]

    def replay():
        for func, args, kwargs in calls:
            func(*args, **kwargs)

    with torch.no_grad():
        seconds = time_iterations(replay, (), device, warmup, iters)
    return flops, flops / statistics.median(seconds)
