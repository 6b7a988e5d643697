"""Reproducible random initialisation, for runs without a checkpoint (demos, benchmarks, tests)."""
import torch
from torch import nn
from torch.overrides import TorchFunctionMode


@torch.no_grad()
def init_weights_(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Normal(0, std) weights clipped at 2 std, zero biases, LayerNorm 1/0 — the BERT/timm recipe.

    Drawn where the parameters live, from a generator seeded there: reproducible for a device type (the
    CPU and CUDA generators give different numbers for one seed), and no host round trip for a model
    materialised on an accelerator.
    """
    generators = {}

    def normal_(param):
        if param.device not in generators:
            generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        values = torch.randn(param.shape, generator=generators[param.device], device=param.device)
        param.copy_(values.clamp_(-2, 2) * std)

    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
            continue
        for name, param in module.named_parameters(recurse=False):
            if name == "bias" and not isinstance(module, nn.Embedding):
                param.zero_()
            else:  # weights, and free parameters such as a class token or position embedding
                normal_(param)
    return model


def materialize_parameters_(model: nn.Module, device) -> nn.Module:
    """Give a model built on the meta device uninitialised parameter storage on `device` (for init_weights_
    to fill: nothing is initialised twice). Buffers are left alone: the models build their constant buffers
    on the CPU even under a meta device."""
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.is_meta:
                setattr(module, name, nn.Parameter(torch.empty_like(param, device=device), param.requires_grad))
    return model


class SkipInit(TorchFunctionMode):
    """torch.nn.init's functions do nothing while a model is built on the meta device under this mode: there
    is nothing there to fill, and on meta tensors nn.init.normal_ (nn.Embedding's reset_parameters) runs a
    Python reference guarded by torch._disable_dynamo, whose first call imports torch._dynamo, about 1 s of
    every command's start. Only torch.nn.init's own functions are skipped; every other call runs as usual."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)
