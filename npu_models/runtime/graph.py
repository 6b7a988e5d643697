"""Graph mode and the bounded set of static shapes it is fed.

On Ascend the model is compiled by torchair; elsewhere by torch.compile (inductor). Where the device can
replay a captured graph (CUDA graphs; aclgraph on Atlas A2/A3 through torchair's npugraph_ex mode), every
call after the first is one launch instead of one per kernel: the time a small batch spends on the host.
All are compiled with static shapes, so the eval loops feed a fixed batch size and sequence lengths from a
short list of buckets: each distinct shape compiles (and is captured) once.
"""
import torch
from torch.utils._pytree import tree_map_only

from kernels.plan import is_a2_or_a3
from npu_models.runtime.device import import_torch_npu, npu_chip_name


def compile_model(model, device: torch.device):
    """The graph-mode version of `model` (a module, or one of its methods) for `device`; the original stays
    usable eagerly. Outputs are the caller's to keep: a later call never overwrites them."""
    if device.type == "npu":
        import_torch_npu()
        import torchair
        from torchair.configs.compiler_config import CompilerConfig

        config = CompilerConfig()
        # Weights never change during inference: let GE treat them as constants.
        config.experimental_config.frozen_parameter = True
        if is_a2_or_a3(npu_chip_name(device)):
            # Capture and replay (aclgraph), the mode torchair 2.14 names npugraph_ex ("reduce-overhead" is
            # deprecated); documented for Atlas A2/A3, not for the 310P inference cards, which keep the GE
            # graph. A replay writes into the same memory: outputs are cloned out.
            config.mode = "npugraph_ex"
            config.debug.aclgraph.enable_output_clone = True
        backend = torchair.get_npu_backend(compiler_config=config)
        return torch.compile(model, fullgraph=True, backend=backend, dynamic=False)
    if device.type == "cuda":
        return CapturedGraphs(torch.compile(model, fullgraph=True, dynamic=False, mode="reduce-overhead"), model)
    return torch.compile(model, fullgraph=True, dynamic=False)


class CapturedGraphs:
    """A model compiled with CUDA graphs (one captured graph per static shape), called like the original.

    Each call is a new inference step, and its outputs are copied out of the graphs' memory pool: the next
    replay of the same graph writes into the same buffers, so a kept output would otherwise change under its
    holder. Attributes (config, parameters, methods) are the original model's.
    """

    def __init__(self, compiled, original):
        self.compiled, self.original = compiled, original

    def __call__(self, *args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map_only(torch.Tensor, torch.clone, self.compiled(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self.original, name)


def length_buckets(max_length: int, step: int = 16) -> list[int]:
    """Sequence-length buckets: multiples of `step` up to and including `max_length`. A batch then pads
    fewer than `step` tokens per sequence (powers of two padded a 65-token batch to 128), and graph mode
    compiles at most max_length / step graphs."""
    return list(range(step, max_length, step)) + [max_length]


def length_step(graph: bool) -> int:
    """How finely the eval loops pad sequence lengths: multiples of 16 in graph mode, where every length is
    one more compiled graph; in eager mode a new length costs nothing to set up, so each (length-sorted)
    batch pads only to its longest, and a batch of equal lengths needs no attention mask at all."""
    return 16 if graph else 1


def bucket_for(length: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")
