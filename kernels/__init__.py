"""Fused operators, one function each, with a backend per device and an eager reference for tests.

Which backend runs is the caller's `KernelPlan`, fixed when the model is put on its device.
"""
from kernels.activation import gelu
from kernels.attention_backends import attention, to_ascend_mask
from kernels.norm import add_layer_norm
from kernels.plan import EAGER, PORTABLE, KernelPlan, plan_for_ascend_chip

__all__ = ["EAGER", "PORTABLE", "KernelPlan", "add_layer_norm", "attention", "gelu", "plan_for_ascend_chip",
           "to_ascend_mask"]
