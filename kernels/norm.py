"""Residual add followed by LayerNorm (the post-norm transformer step).

No device documents a fused add+LayerNorm for this use (torch_npu has fused add+RMSNorm only), so the
device path is F.layer_norm, whose statistics accumulate in fp32 on every backend; the eager reference
spells the formula out in fp32.
"""
import torch
import torch.nn.functional as F


def eager_add_layer_norm(x, residual, weight, bias, eps):
    summed = (x + residual).float()
    mean = summed.mean(dim=-1, keepdim=True)
    var = (summed - mean).pow(2).mean(dim=-1, keepdim=True)
    normed = (summed - mean) * torch.rsqrt(var + eps)
    return (normed * weight.float() + bias.float()).to(x.dtype)


def torch_add_layer_norm(x, residual, weight, bias, eps):
    return F.layer_norm(x + residual, weight.shape, weight, bias, eps)


BACKENDS = {"eager": eager_add_layer_norm, "torch": torch_add_layer_norm}


def add_layer_norm(x, residual, weight, bias, eps, backend="torch"):
    return BACKENDS[backend](x, residual, weight, bias, eps)
