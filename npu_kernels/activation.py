"""Exact (erf) GELU: the Ascend fused op on NPU, torch elsewhere, and the formula as reference."""
import math

import torch
import torch.nn.functional as F

from npu_kernels.plan import PORTABLE, KernelPlan


def eager_gelu(x):
    """0.5 x (1 + erf(x / sqrt 2)), computed in fp32."""
    xf = x.float()
    return (0.5 * xf * (1.0 + torch.erf(xf / math.sqrt(2.0)))).to(x.dtype)


def gelu(x, plan: KernelPlan = PORTABLE):
    if plan.gelu == "ascend" and x.dtype in plan.ascend_dtypes:
        # approximate='none' is the erf form; npu_fast_gelu is a different approximation, never used here.
        return torch.ops.npu.npu_gelu(x, approximate="none")
    if plan.gelu == "eager":
        return eager_gelu(x)
    return F.gelu(x)
