"""Fused operators, one function each, with a backend per device and an eager reference for tests.

Which backend runs is the caller's `KernelPlan`, fixed when the model is put on its device.
"""
from npu_kernels.activation import gelu
from npu_kernels.attention_backends import attention, to_ascend_mask
from npu_kernels.norm import add_layer_norm
from npu_kernels.plan import EAGER, PORTABLE, KernelPlan, plan_for_ascend_chip
from npu_kernels.quant_matmul import SCHEMES as QUANT_SCHEMES
from npu_kernels.quant_matmul import quant_linear

__all__ = ["EAGER", "PORTABLE", "QUANT_SCHEMES", "KernelPlan", "add_layer_norm", "attention", "gelu",
           "plan_for_ascend_chip", "quant_linear", "to_ascend_mask"]
