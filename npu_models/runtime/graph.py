"""Graph mode and the bounded set of static shapes it is fed.

On Ascend the model is compiled by torchair into a GE graph; elsewhere by torch.compile (inductor).
Both are compiled with static shapes, so the eval loops feed a fixed batch size and sequence lengths
from a short list of buckets: each distinct shape compiles once.
"""
import torch

from npu_models.runtime.device import import_torch_npu


def compile_model(model, device: torch.device):
    """The graph-mode version of `model` (a module, or one of its methods) for `device`; the original stays
    usable eagerly."""
    if device.type == "npu":
        import_torch_npu()
        import torchair
        from torchair.configs.compiler_config import CompilerConfig

        config = CompilerConfig()
        # Weights never change during inference: let GE treat them as constants.
        config.experimental_config.frozen_parameter = True
        backend = torchair.get_npu_backend(compiler_config=config)
        return torch.compile(model, fullgraph=True, backend=backend, dynamic=False)
    return torch.compile(model, fullgraph=True, dynamic=False)


def length_buckets(max_length: int, step: int = 16) -> list[int]:
    """Sequence-length buckets: multiples of `step` up to and including `max_length`. A batch then pads
    fewer than `step` tokens per sequence (powers of two padded a 65-token batch to 128), and graph mode
    compiles at most max_length / step graphs."""
    return list(range(step, max_length, step)) + [max_length]


def bucket_for(length: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")
