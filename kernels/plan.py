"""Which backend each fused operator uses, decided once when a model is put on its device.

The forward path never asks the device anything: layers hold a `KernelPlan` (plain data, a constant to
torch.compile) and every kernel function branches only on it and on static shapes and dtypes.
`npu_models.runtime.kernel_plan` builds the plan for a device; `plan_for_ascend_chip` holds what each
Ascend chip's fused operators accept, as torch_npu documents it (`torch_npu/_op_plugin_docs.py`, 2.14.0).
"""
from dataclasses import dataclass

import torch

# Ascend attention limits a band [i - pre_tokens, i + next_tokens]; this value disables it.
ASCEND_NO_TOKEN_LIMIT = 2147483647


@dataclass(frozen=True)
class AscendAttentionOp:
    """What one Ascend fused attention operator accepts on one chip family."""
    name: str                       # torch.ops.npu.<name>
    scale_keyword: str              # PFA spells it scale_value, FIA scale (every wheel from 2.1 to 2.14)
    returns_tuple: bool             # FIA returns (out, softmax_lse)
    dtypes: tuple[torch.dtype, ...]
    takes_bias: bool                # pse_shift: not supported on Atlas inference cards (310P)
    max_batch: int
    max_seq: int
    max_heads: int = 256
    max_head_dim: int = 512
    head_dim_multiple: int = 1      # FIA: fp16/bf16 need D aligned to 16 (32 bytes)

    def accepts(self, dtype, heads: int, q_len: int, k_len: int, head_dim: int) -> bool:
        """Everything but the batch, which `ascend_attention` splits into chunks the op accepts."""
        return (dtype in self.dtypes and heads <= self.max_heads and max(q_len, k_len) <= self.max_seq
                and head_dim <= self.max_head_dim and head_dim % self.head_dim_multiple == 0)


# Atlas 300I / 310P: prompt flash attention is the one documented; fp16 only, batch <= 128, S <= 64k,
# pre_tokens must be 2147483647 and next_tokens 0 or 2147483647.
PROMPT_FLASH_310P = AscendAttentionOp("npu_prompt_flash_attention", "scale_value", returns_tuple=False,
                                      dtypes=(torch.float16,), takes_bias=False, max_batch=128, max_seq=65535)
# Atlas A2 / A3 (910B, 910_93): fused infer attention; fp16/bf16, pse_shift (B|1, N, Sq, Sk) in the query dtype.
FUSED_INFER_A2 = AscendAttentionOp("npu_fused_infer_attention_score", "scale", returns_tuple=True,
                                   dtypes=(torch.float16, torch.bfloat16), takes_bias=True, max_batch=65536,
                                   max_seq=20971520, head_dim_multiple=16)


@dataclass(frozen=True)
class AscendQuantOps:
    """What one Ascend chip family's int8 matmul operators accept (torch_npu 2.14.0 `_op_plugin_docs.py`).

    npu_quant_matmul (int8 x int8 -> float, per-channel `scale`, int32 `bias`) is documented for A2, A3 and
    the Atlas inference cards; `pertoken_scale` is "not supported" on the inference cards, and bf16 output
    only on A2/A3. npu_weight_quant_batchmatmul (float x int8) takes fp16 activations on the inference cards,
    fp16/bf16 on A2/A3. npu_dynamic_quant (per-token, symmetric) lists A2/A3 only; npu_quantize (per tensor,
    div_mode=True) lists A2 and the Atlas inference series, not A3. Both matmuls take K, N <= 65535.
    """
    matmul_dtypes: tuple[torch.dtype, ...]       # the activation/output dtypes of both matmuls
    per_token: bool                              # npu_dynamic_quant + npu_quant_matmul(pertoken_scale=...)
    quantize_op: bool                            # npu_quantize for the static activation (else the aten math)
    max_k_n: int = 65535

    def takes(self, scheme: str, dtype: torch.dtype, k: int, n: int) -> bool:
        return (dtype in self.matmul_dtypes and max(k, n) <= self.max_k_n
                and (scheme != "w8a8-dynamic" or self.per_token))


@dataclass(frozen=True)
class KernelPlan:
    """attention: eager | sdpa | ascend;  gelu, add_layer_norm: eager | torch | ascend;
    quant_matmul: eager | int_mm | ascend.

    ascend_attention is the fused op and its limits (attention='ascend'); ascend_dtypes are the dtypes
    npu_gelu and npu_add_layer_norm take on the chip; ascend_quant are the chip's int8 matmul ops
    (quant_matmul='ascend'). Cases an Ascend op cannot take fall back to the eager math (fp32 softmax /
    statistics, dequantized weights), decided from static shapes and dtypes.
    """
    attention: str = "sdpa"
    gelu: str = "torch"
    add_layer_norm: str = "torch"
    ascend_attention: AscendAttentionOp | None = None
    ascend_dtypes: tuple[torch.dtype, ...] = ()
    quant_matmul: str = "int_mm"
    ascend_quant: AscendQuantOps | None = None


PORTABLE = KernelPlan()  # CPU and CUDA: torch's own fused kernels, torch._int_mm for int8
EAGER = KernelPlan(attention="eager", gelu="eager", add_layer_norm="eager", quant_matmul="eager")  # the plain math


# Atlas 300I / 310P: fp16 only, static per-tensor activations (no pertoken_scale, no npu_dynamic_quant).
QUANT_310P = AscendQuantOps(matmul_dtypes=(torch.float16,), per_token=False, quantize_op=True)
# Atlas A2: fp16/bf16, per-token scales; npu_quantize is documented for A2 but not for A3.
QUANT_A2 = AscendQuantOps(matmul_dtypes=(torch.float16, torch.bfloat16), per_token=True, quantize_op=True)
QUANT_A3 = AscendQuantOps(matmul_dtypes=(torch.float16, torch.bfloat16), per_token=True, quantize_op=False)


def is_310p(chip_name: str) -> bool:
    """Atlas 300I / 310P inference cards ('Ascend310P3'): no bf16, prompt flash attention without pse_shift."""
    return "310p" in chip_name.lower()  # torchair tells a 310P by the same substring


def is_a2_or_a3(chip_name: str) -> bool:
    """Atlas A2 / A3 training and inference chips ('Ascend910B2', 'Ascend910_9391'): fused infer attention,
    bf16, and graph capture (aclgraph)."""
    return chip_name.startswith(("Ascend910B", "Ascend910_93"))


def plan_for_ascend_chip(chip_name: str) -> KernelPlan:
    """The kernels for an Ascend SoC name as torch.npu.get_device_name reports it ('Ascend310P3', 'Ascend910B2')."""
    if is_310p(chip_name):
        return KernelPlan("ascend", "ascend", "ascend", PROMPT_FLASH_310P, (torch.float16, torch.float32),
                          "ascend", QUANT_310P)
    if is_a2_or_a3(chip_name):
        quant = QUANT_A3 if chip_name.startswith("Ascend910_93") else QUANT_A2
        return KernelPlan("ascend", "ascend", "ascend", FUSED_INFER_A2, (torch.float16, torch.bfloat16, torch.float32),
                          "ascend", quant)
    # Other Ascend chips (910A, 310B, ...): neither fused attention, the fused elementwise ops nor the int8
    # matmuls are documented for them; torch's own ops run through torch_npu's aten kernels.
    return KernelPlan(attention="eager", quant_matmul="eager")
