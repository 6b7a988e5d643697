"""Which backend each fused operator uses, decided once when a model is put on its device.

The forward path never asks the device anything: layers hold a `KernelPlan` (plain data, a constant to
torch.compile) and every kernel function branches only on it and on static shapes and dtypes.
`npu_models.runtime.kernel_plan` builds the plan for a device; `plan_for_ascend_chip` picks each Ascend fused
operator only for the chips its doc page names (OP_DOCS) and records why; AscendAttentionOp holds what each
accepts, as torch_npu documents it (`torch_npu/_op_plugin_docs.py`, 2.14.0).
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
    max_seq_one_query: int | None = None  # FIA: with a query of length 1, keys up to this many
    max_heads: int = 256
    max_head_dim: int = 512
    head_dim_multiple: int = 1      # FIA: fp16/bf16 need D aligned to 16 (32 bytes)

    def accepts(self, dtype, heads: int, q_len: int, k_len: int, head_dim: int) -> bool:
        """Everything but the batch, which `ascend_attention` splits into chunks the op accepts."""
        keys_fit = q_len > 1 or self.max_seq_one_query is None or k_len <= self.max_seq_one_query
        return (dtype in self.dtypes and heads <= self.max_heads and max(q_len, k_len) <= self.max_seq and keys_fit
                and head_dim <= self.max_head_dim and head_dim % self.head_dim_multiple == 0)


# Atlas 300I / 310P: prompt flash attention is the one documented; fp16 only, batch <= 128, S <= 64k,
# pre_tokens must be 2147483647 and next_tokens 0 or 2147483647.
PROMPT_FLASH_310P = AscendAttentionOp("npu_prompt_flash_attention", "scale_value", returns_tuple=False,
                                      dtypes=(torch.float16,), takes_bias=False, max_batch=128, max_seq=65535)
# Atlas A2 / A3 (910B, 910_93): fused infer attention; fp16/bf16, pse_shift (B|1, N, Sq, Sk) in the query dtype.
# Its doc splits the limits by the query length: Q_S > 1, S <= 20971520 (20M); Q_S = 1, S <= 262144.
FUSED_INFER_A2 = AscendAttentionOp("npu_fused_infer_attention_score", "scale", returns_tuple=True,
                                   dtypes=(torch.float16, torch.bfloat16), takes_bias=True, max_batch=65536,
                                   max_seq=20971520, max_seq_one_query=262144, head_dim_multiple=16)


# Where each fused op's chip list was read (the "支持的型号" / "产品支持情况" section of its doc page) and the
# chip families it names. A fused op runs on a chip only where its doc names that chip's family.
@dataclass(frozen=True)
class OpDoc:
    source: str
    families: frozenset[str]        # "inference" (Atlas 推理系列: 300I / 310P), "A2", "A3"


WHEEL_DOCS = "torch_npu 2.14.0 _op_plugin_docs.py"
OP_DOCS = {
    "npu_prompt_flash_attention": OpDoc(f"{WHEEL_DOCS}; op-plugin docs/context/torch_npu-npu_prompt_flash_attention.md",
                                        frozenset({"inference", "A2", "A3"})),
    "npu_fused_infer_attention_score": OpDoc(WHEEL_DOCS, frozenset({"A2", "A3"})),
    # No entry in the wheel; the op-plugin page names the training series, A2 and the inference series (not A3).
    "npu_gelu": OpDoc("op-plugin docs/context/torch_npu-npu_gelu.md", frozenset({"inference", "A2"})),
    # A schema and a meta kernel, but no doc page: neither in the wheel nor in op-plugin's docs/context.
    "npu_add_layer_norm": OpDoc(f"no doc page ({WHEEL_DOCS}, op-plugin docs/context)", frozenset()),
    "npu_quant_matmul": OpDoc(WHEEL_DOCS, frozenset({"inference", "A2", "A3"})),  # per-chip limits: AscendQuantOps
}
FAMILY_NAMES = {"inference": "the Atlas inference series (300I/310P)", "A2": "Atlas A2", "A3": "Atlas A3"}


def chip_family(chip_name: str) -> str | None:
    """The product family a doc page names for an Ascend SoC name; None for chips we do not tell apart."""
    if is_310p(chip_name):
        return "inference"
    if chip_name.startswith("Ascend910B"):
        return "A2"
    if chip_name.startswith("Ascend910_93"):
        return "A3"
    return None


def documented(op: str, family: str | None) -> bool:
    return family in OP_DOCS[op].families


def doc_reason(op: str, family: str | None) -> str:
    """Why `op` is or is not used on a chip of `family`, naming the doc the fact was read from."""
    doc = OP_DOCS[op]
    chip = FAMILY_NAMES.get(family, "this chip")
    if documented(op, family):
        return f"{op}: its doc names {chip} ({doc.source})"
    if not doc.families:
        return f"not {op}: it has {doc.source}"
    return f"not {op}: its doc names only {', '.join(FAMILY_NAMES[f] for f in sorted(doc.families))} ({doc.source})"


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
    """attention: eager | sdpa | ascend;  gelu: eager | torch | ascend;  add_layer_norm: eager | torch;
    quant_matmul: eager | int_mm | ascend.

    ascend_attention is the fused op and its limits (attention='ascend'); ascend_dtypes are the dtypes
    npu_gelu takes on the chip; ascend_quant are the chip's int8 matmul ops (quant_matmul='ascend'). Cases an
    Ascend op cannot take fall back to the eager math (fp32 softmax / statistics, dequantized weights),
    decided from static shapes and dtypes. reasons: (operator, why) for each choice on an Ascend chip, for
    the doctor and the README.
    """
    attention: str = "sdpa"
    gelu: str = "torch"
    add_layer_norm: str = "torch"
    ascend_attention: AscendAttentionOp | None = None
    ascend_dtypes: tuple[torch.dtype, ...] = ()
    quant_matmul: str = "int_mm"
    ascend_quant: AscendQuantOps | None = None
    reasons: tuple[tuple[str, str], ...] = ()

    def fused_ops(self) -> tuple[str, ...]:
        """The torch_npu fused operators this plan calls (the int8 ones are chosen per layer: see ascend_quant)."""
        return tuple(([self.ascend_attention.name] if self.attention == "ascend" else [])
                     + (["npu_gelu"] if self.gelu == "ascend" else []))


PORTABLE = KernelPlan()  # CPU and CUDA: torch's own fused kernels, torch._int_mm for int8
EAGER = KernelPlan(attention="eager", gelu="eager", add_layer_norm="eager", quant_matmul="eager")  # the plain math


# Atlas 300I / 310P: fp16 only, static per-tensor activations (no pertoken_scale, no npu_dynamic_quant).
QUANT_310P = AscendQuantOps(matmul_dtypes=(torch.float16,), per_token=False, quantize_op=True)
# Atlas A2: fp16/bf16, per-token scales; npu_quantize is documented for A2 but not for A3.
QUANT_A2 = AscendQuantOps(matmul_dtypes=(torch.float16, torch.bfloat16), per_token=True, quantize_op=True)
QUANT_A3 = AscendQuantOps(matmul_dtypes=(torch.float16, torch.bfloat16), per_token=True, quantize_op=False)
QUANT_OPS = {"inference": QUANT_310P, "A2": QUANT_A2, "A3": QUANT_A3}


def is_310p(chip_name: str) -> bool:
    """Atlas 300I / 310P inference cards ('Ascend310P3'): no bf16, prompt flash attention without pse_shift."""
    return "310p" in chip_name.lower()  # torchair tells a 310P by the same substring


def is_a2_or_a3(chip_name: str) -> bool:
    """Atlas A2 / A3 training and inference chips ('Ascend910B2', 'Ascend910_9391'): fused infer attention,
    bf16, and graph capture through torchair's npugraph_ex."""
    return chip_family(chip_name) in ("A2", "A3")


# Preferred first: FIA where documented (it takes pse_shift), else PFA.
ATTENTION_OPS = (FUSED_INFER_A2, PROMPT_FLASH_310P)
ELEMENTWISE_DTYPES = {"inference": (torch.float16, torch.float32)}  # no bf16 on the inference series


def plan_for_ascend_chip(chip_name: str) -> KernelPlan:
    """The kernels for an Ascend SoC name as torch.npu.get_device_name reports it ('Ascend310P3', 'Ascend910B2'):
    each fused op only where its doc names the chip's family (OP_DOCS), torch's own ops otherwise."""
    family = chip_family(chip_name)
    attention_op = next((op for op in ATTENTION_OPS if documented(op.name, family)), None)
    reasons = [("attention", doc_reason(attention_op.name, family) if attention_op else
                "eager math: no fused attention op's doc names this chip")]
    if documented("npu_gelu", family):
        gelu = "ascend"
        reasons.append(("gelu", doc_reason("npu_gelu", family)))
    else:
        # torch's own gelu on NPU ignores approximate= and computes the tanh form (torch_npu 7.2.0 API docs,
        # the npu_gelu page's note): the erf formula keeps the models exact.
        gelu = "eager"
        reasons.append(("gelu", f"erf formula, as torch's gelu runs the tanh form on NPU; {doc_reason('npu_gelu', family)}"))
    reasons.append(("add_layer_norm", f"aten add + layer_norm; {doc_reason('npu_add_layer_norm', family)}"))
    quant = QUANT_OPS.get(family)
    reasons.append(("quant_matmul", doc_reason("npu_quant_matmul", family) if quant else
                    "dequantized eager math: no int8 matmul op's doc names this chip"))
    return KernelPlan(attention="ascend" if attention_op else "eager", gelu=gelu, add_layer_norm="torch",
                      ascend_attention=attention_op,
                      ascend_dtypes=ELEMENTWISE_DTYPES.get(family, (torch.float16, torch.bfloat16, torch.float32)),
                      quant_matmul="ascend" if quant else "eager", ascend_quant=quant, reasons=tuple(reasons))
