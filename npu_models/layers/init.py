"""Reproducible random initialisation, for runs without a checkpoint (demos, benchmarks, tests)."""
import torch
from torch import nn


@torch.no_grad()
def init_weights_(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Normal(0, std) weights clipped at 2 std, zero biases, LayerNorm 1/0 — the BERT/timm recipe."""
    generator = torch.Generator().manual_seed(seed)

    def normal_(param):
        param.copy_(torch.randn(param.shape, generator=generator).clamp_(-2, 2) * std)

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
