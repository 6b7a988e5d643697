"""Exact (erf) GELU: the Ascend fused op on NPU, torch elsewhere, and the formula as reference."""
import math

import torch
import torch.nn.functional as F

from npu_models.runtime import import_torch_npu


def eager_gelu(x):
    """0.5 x (1 + erf(x / sqrt 2)), computed in fp32."""
    xf = x.float()
    return (0.5 * xf * (1.0 + torch.erf(xf / math.sqrt(2.0)))).to(x.dtype)


def torch_gelu(x):
    return F.gelu(x)


def npu_gelu(x):
    # approximate='none' is the erf form; npu_fast_gelu is a different approximation, never used here.
    return import_torch_npu().npu_gelu(x, approximate="none")


BACKENDS = {"eager": eager_gelu, "torch": torch_gelu, "npu": npu_gelu}


def gelu(x, backend=None):
    if backend is None:
        backend = "npu" if x.device.type == "npu" else "torch"
    return BACKENDS[backend](x)
