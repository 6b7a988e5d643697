"""Fused operators, one function each, with a backend per device and an eager reference for tests."""
from kernels.activation import gelu
from kernels.attention_backends import attention, to_ascend_mask
from kernels.norm import add_layer_norm

__all__ = ["add_layer_norm", "attention", "gelu", "to_ascend_mask"]
