"""Residual add followed by LayerNorm (the post-norm transformer step).

On Ascend this is one fused op, `npu_add_layer_norm(x1, x2, gamma, beta, epsilon, additional_output)
-> (y, mean, rstd, x1 + x2)` (torch_npu's schema and meta registration; fp16/fp32 on 310P, also bf16 on
A2; torchair generates its graph converter from the op's IR). Elsewhere F.layer_norm, whose statistics
accumulate in fp32 on every backend; the eager reference spells the formula out in fp32.
"""
import torch
import torch.nn.functional as F

from kernels.plan import PORTABLE, KernelPlan


def eager_add_layer_norm(x, residual, weight, bias, eps):
    summed = (x + residual).float()
    mean = summed.mean(dim=-1, keepdim=True)
    var = (summed - mean).pow(2).mean(dim=-1, keepdim=True)
    normed = (summed - mean) * torch.rsqrt(var + eps)
    return (normed * weight.float() + bias.float()).to(x.dtype)


def add_layer_norm(x, residual, weight, bias, eps, plan: KernelPlan = PORTABLE):
    """LayerNorm(x + residual) over the last dimension, with weight and bias of that size."""
    if (plan.add_layer_norm == "ascend" and x.dtype in plan.ascend_dtypes and residual.dtype == x.dtype
            and weight.dtype == x.dtype and residual.shape == x.shape):
        return torch.ops.npu.npu_add_layer_norm(x, residual, weight, bias, eps, False)[0]
    if plan.add_layer_norm == "eager":
        return eager_add_layer_norm(x, residual, weight, bias, eps)
    return F.layer_norm(x + residual, weight.shape, weight, bias, eps)
