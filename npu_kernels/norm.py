"""Residual add followed by LayerNorm (the post-norm transformer step).

F.layer_norm everywhere, whose statistics accumulate in fp32 on every backend (on NPU it runs torch_npu's
own kernel); the eager reference spells the formula out in fp32. Ascend's fused `npu_add_layer_norm` has a
schema and a meta kernel in torch_npu 2.14.0 but no doc page naming any chip (npu_kernels.plan.OP_DOCS), so no
plan calls it.
"""
import torch
import torch.nn.functional as F

from npu_kernels.plan import PORTABLE, KernelPlan


def eager_add_layer_norm(x, residual, weight, bias, eps):
    summed = (x + residual).float()
    mean = summed.mean(dim=-1, keepdim=True)
    var = (summed - mean).pow(2).mean(dim=-1, keepdim=True)
    normed = (summed - mean) * torch.rsqrt(var + eps)
    return (normed * weight.float() + bias.float()).to(x.dtype)


def add_layer_norm(x, residual, weight, bias, eps, plan: KernelPlan = PORTABLE):
    """LayerNorm(x + residual) over the last dimension, with weight and bias of that size."""
    if plan.add_layer_norm == "eager":
        return eager_add_layer_norm(x, residual, weight, bias, eps)
    return F.layer_norm(x + residual, weight.shape, weight, bias, eps)
