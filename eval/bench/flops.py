"""Work done and the device's yardstick: FLOPs of one call counted by torch, and a dense matmul's FLOP/s
measured in the same run (the int8 GEMM's for int8 rows)."""
import statistics

import torch

from eval.timing import time_iterations


def attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and P V of a [B, H, Sq, D] query over Sk keys: torch's counter has this formula for the CUDA
    attention kernels but none for the CPU one (it would count CPU attention as free)."""
    batch, heads, q_len, head_dim = query_shape
    return 2 * batch * heads * q_len * key_shape[-2] * (head_dim + value_shape[-1])


def int_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """An int8 GEMM (quantized layers on CUDA and CPU) does the multiply-adds of the float matmul it replaces:
    counted like one, so an int8 row's work equals its float row's (torch's counter has no formula for it)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


# The operators torch's FLOP counter has no formula for, with ours
FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops,
                 torch.ops.aten._int_mm: int_mm_flops}


def flop_counter():
    """torch's FLOP counter with our formulas: matmuls, convolutions, attention; int8 GEMMs as the matmuls they
    replace. Read its get_total_flops() after the calls it watched."""
    from torch.utils.flop_counter import FlopCounterMode
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


def counted_flops(fn, inputs) -> int:
    """Floating-point operations of one call, counted by torch (flop_counter)."""
    with torch.no_grad(), flop_counter() as counter:
        fn(*inputs)
    return counter.get_total_flops()


def matmul_peak(device, dtype, size: int | None = None, iters: int = 5) -> float:
    """FLOP/s of a dense square matmul in `dtype` on `device`, measured now: the yardstick for
    fraction_of_peak (a model cannot beat the matmul it is made of by much)."""
    size = size or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = time_iterations(torch.matmul, (a, b), device, warmup=2, iters=iters)
    return 2 * size ** 3 / statistics.median(seconds)


def int8_matmul_peak(device, size: int | None = None, iters: int = 5) -> float | None:
    """Multiply-add OP/s (counted as FLOPs are) of torch._int_mm, int8 x int8 -> int32, at a large square
    shape, measured now: the yardstick for int8 rows, whose GEMMs run on the device's integer units (on a CPU
    with VNNI several times the fp32 rate; set against the float peak an int8 row read 400-500%). None where
    torch has no int8 GEMM for the device (Ascend's is npu_quant_matmul, inside the plan's kernels)."""
    if device.type not in ("cpu", "cuda"):
        return None
    size = size or (2048 if device.type == "cpu" else 8192)
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8, device=device)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8, device=device)
    seconds = time_iterations(torch._int_mm, (a, b), device, warmup=2, iters=iters)
    return 2 * size ** 3 / statistics.median(seconds)
