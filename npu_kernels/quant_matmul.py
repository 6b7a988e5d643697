"""Int8 linear layers: y = x W^T + b with W held as int8 per output channel, one backend per device.

Schemes, named as the command line names them:
  w8a8          W int8 per output channel (symmetric); x int8 per tensor with a scale and an offset fixed by
                calibration: the only form the Atlas 300I/310P's npu_quant_matmul takes (no per-token scale).
  w8a8-dynamic  x int8 per token, scale max|x_t| / 127 computed at run time (npu_dynamic_quant's formula):
                Atlas A2/A3, CUDA, CPU.
  w8a16         W int8, x stays float.

The eager reference dequantizes (int8 x scale) and multiplies in fp32; every backend is tested against it.
Backends, as the caller's `KernelPlan.quant_matmul` says: "int_mm" (CPU, CUDA: torch._int_mm, int8 x int8 ->
int32, then one dequantizing pass), "ascend" (npu_quant_matmul / npu_weight_quant_batchmatmul, called as
torch_npu's contrib LinearQuant does) and "eager". A case a backend cannot take runs the eager math.

The static scheme's offset: x_q = round(x / s_x) + z, so x_q W_q^T = (x / s_x) W_q^T + z colsum(W_q); the
int32 `quant_bias` = round(b / deq_scale) - z colsum(W_q) removes it and adds the bias, and
y = (x_q W_q^T + quant_bias) * deq_scale with deq_scale = s_x s_w: msModelSlim's W8A8 layout.
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from npu_kernels.plan import PORTABLE, AscendQuantOps, KernelPlan

SCHEMES = ("w8a8", "w8a8-dynamic", "w8a16")
INT8_MIN, INT8_MAX = -128, 127
# The smallest scale: a constant-zero input or weight row keeps finite divisions, and 2**-24 (fp16's smallest
# subnormal) survives the cast to every model dtype.
TINY_SCALE = 2.0 ** -24


@dataclass(frozen=True)
class QuantParams:
    """One quantized linear layer's tensors. Per output channel: weight rows, weight_scale, bias, deq_scale,
    quant_bias; per tensor: input_scale, input_offset. deq_scale and quant_bias are derived for the backend by
    `prepare_quant_params` (deq_scale is fp32, or npu_trans_quant_param's int64 for Ascend fp16 output)."""
    weight: torch.Tensor                        # int8 [N, K]
    weight_scale: torch.Tensor                  # [N]
    bias: torch.Tensor | None = None            # [N], float
    input_scale: torch.Tensor | None = None     # [1] (w8a8)
    input_offset: torch.Tensor | None = None    # [1] int8 (w8a8)
    deq_scale: torch.Tensor | None = None       # [N] (w8a8 schemes)
    quant_bias: torch.Tensor | None = None      # [N] int32 (w8a8)

    def rows(self, rows: slice) -> "QuantParams":
        """The layer restricted to some output features (a fused q/k/v projection's q rows). The weight must be in
        ND: a range of FRACTAL_NZ rows is no tensor the Ascend ops take (QuantLinear.weight_blocked)."""
        def cut(t):
            return None if t is None else t[rows]
        return replace(self, weight=self.weight[rows], weight_scale=self.weight_scale[rows], bias=cut(self.bias),
                       deq_scale=cut(self.deq_scale), quant_bias=cut(self.quant_bias))


# ---- the quantization formulas ----------------------------------------------------------------------------


def representable_scale(scale: torch.Tensor) -> torch.Tensor:
    """Scales rounded to bf16 values (fp32 storage): they survive the model's cast to fp16 or bf16 unchanged,
    so the weights stay quantized with the scale that dequantizes them."""
    return scale.clamp(min=TINY_SCALE).to(torch.bfloat16).float()


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: weight ~ q * scale[:, None], q in [-127, 127]."""
    weight = weight.detach().float()
    scale = representable_scale(weight.abs().amax(dim=1) / INT8_MAX)
    q = torch.round(weight / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def activation_qparams(low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor (scale [1] fp32, offset [1] int8) mapping [low, high] (widened to hold 0) onto [-128, 127]."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = representable_scale(torch.tensor([(high - low) / (INT8_MAX - INT8_MIN)]))
    offset = torch.round(INT8_MIN - low / scale).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
    return scale, offset


def quantize_per_tensor(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """round(x / scale + offset) saturated to int8 (npu_quantize's formula with div_mode=True; the offset is an
    integer). Four passes over x: each is a parallel region, and on a busy CPU their count is the cost."""
    return torch.addcmul(offset.float(), x.float(), scale.float().reciprocal()).round_().clamp_(INT8_MIN, INT8_MAX).to(
        torch.int8)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dim: (round(x / s), s) with s = max|x| / 127 of shape x.shape[:-1]
    (npu_dynamic_quant's formula). |x / s| <= 127 needs no saturation."""
    x = x.float()
    peak = x.abs().amax(dim=-1).clamp_(min=TINY_SCALE)  # 6x faster than vector_norm(inf) on CPU
    return (x * (INT8_MAX / peak)[..., None]).round_().to(torch.int8), peak / INT8_MAX


def static_deq_scale(input_scale: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """w8a8's per-channel scale from the int32 product to the output: the fp32 product of the two scales."""
    return input_scale.float() * weight_scale.float()


def offset_correction(input_offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What the activation's offset adds to each int32 output row, in deq_scale units: offset * rowsum(W)."""
    return input_offset.to(torch.int64) * weight.to(torch.int64).sum(dim=1)


def quant_bias_and_deq_scale(params: QuantParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The static scheme's int32 bias (the float bias and the offset's correction, in deq_scale units) and the
    fp32 per-channel scale from the int32 product to the output."""
    deq_scale = static_deq_scale(params.input_scale, params.weight_scale)
    correction = offset_correction(params.input_offset, params.weight)
    bias = torch.zeros_like(deq_scale) if params.bias is None else params.bias.float()
    scaled = torch.round(bias.double() / deq_scale.double()).to(torch.int64) - correction
    if scaled.abs().max() >= 2 ** 31:
        raise ValueError(f"its bias reaches {scaled.abs().max().item():.3g} units of its dequantization scale, "
                         "more than the int32 quant_bias holds")
    return scaled.to(torch.int32), deq_scale


def bias_from_quant_bias(quant_bias: torch.Tensor, correction: torch.Tensor, deq_scale: torch.Tensor) -> torch.Tensor:
    """The float bias an int32 quant_bias carries (bias = (quant_bias + correction) * deq_scale, exact in float64),
    in fp32. The one formula for a bias in whole deq_scale units: a layer's state (dequantized_bias) and a file's
    bias read back (checkpoints.quantized) both come from it, so a saved layer loads back bit for bit."""
    return ((quant_bias.double() + correction.double()) * deq_scale.double()).float()


def dequantized_bias(params: QuantParams, scheme: str) -> torch.Tensor | None:
    """The bias the scheme's int8 kernels add, as a float: w8a8 adds it inside the int32 quant_bias, so rounded
    to whole units of deq_scale; the other schemes add the float bias itself."""
    if params.bias is None or scheme != "w8a8":
        return params.bias
    deq_scale = static_deq_scale(params.input_scale, params.weight_scale)
    units = torch.round(params.bias.double() / deq_scale.double())  # quant_bias + correction, as a float64
    return bias_from_quant_bias(units, torch.zeros_like(units), deq_scale).to(params.bias.dtype)


# ---- deq_scale as the Ascend kernels and msModelSlim's files hold it ---------------------------------------

# CANN's aclnnTransQuantParam (torch_npu.npu_trans_quant_param): the fp32 scale's bits with the low 13 mantissa
# bits cleared (an "fp19"), and bit 46 set, in an int64. npu_quant_matmul with fp16 output takes only this form in
# graph mode, and msModelSlim's W8A8 files hold deq_scale so for fp16 models.
PACKED_SCALE_MASK = 0xFFFFE000
PACKED_SCALE_FLAG = 1 << 46


def pack_deq_scale(scale: torch.Tensor) -> torch.Tensor:
    """fp32 scales -> the int64 form (on the CPU: files and tests; a chip packs with npu_trans_quant_param)."""
    bits = scale.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return (bits & PACKED_SCALE_MASK) | PACKED_SCALE_FLAG


def unpack_deq_scale(scale: torch.Tensor) -> torch.Tensor:
    """The fp32 scale an int64 deq_scale carries in its low 32 bits; a float deq_scale as fp32."""
    if scale.dtype != torch.int64:
        return scale.float()
    return (scale & 0xFFFFFFFF).to(torch.int32).view(torch.float32)


# ---- the eager reference -----------------------------------------------------------------------------------


def eager_quant_linear(x: torch.Tensor, params: QuantParams, scheme: str) -> torch.Tensor:
    """Dequantize the weight (and for w8a8 schemes round-trip x through int8), multiply in fp32."""
    weight = params.weight.float() * params.weight_scale.float()[:, None]
    xf = x.float()
    if scheme == "w8a8":
        xq = quantize_per_tensor(xf, params.input_scale, params.input_offset)
        xf = (xq.float() - params.input_offset.float()) * params.input_scale.float()
    elif scheme == "w8a8-dynamic":
        xq, token_scale = quantize_per_token(xf)
        xf = xq.float() * token_scale[..., None]
    return F.linear(xf, weight, None if params.bias is None else params.bias.float()).to(x.dtype)


# ---- CPU and CUDA: torch._int_mm ----------------------------------------------------------------------------


def int_mm_takes(x2d: torch.Tensor, n: int) -> bool:
    """torch._int_mm on CUDA needs more than 16 rows and K, N multiples of 8; the CPU kernel takes any shape."""
    m, k = x2d.shape
    return not x2d.is_cuda or (m > 16 and k % 8 == 0 and n % 8 == 0)


def int_mm_linear(x2d: torch.Tensor, params: QuantParams, scheme: str) -> torch.Tensor:
    """int8 x int8 -> int32 product, then one dequantizing multiply-add per output element (fp32)."""
    if scheme == "w8a16":  # no int8 activation: the int8 weight converts exactly to the activation dtype
        out = F.linear(x2d, params.weight.to(x2d.dtype))
        scale = params.weight_scale
        return out.mul_(scale) if params.bias is None else torch.addcmul(params.bias, out, scale)
    if scheme == "w8a8":
        xq = quantize_per_tensor(x2d, params.input_scale, params.input_offset)
        product = torch._int_mm(xq, params.weight.t())
        return torch.addcmul(params.quant_bias * params.deq_scale, product, params.deq_scale)
    xq, token_scale = quantize_per_token(x2d)
    out = torch._int_mm(xq, params.weight.t()) * token_scale[:, None]
    return out.mul_(params.deq_scale) if params.bias is None else torch.addcmul(params.bias, out, params.deq_scale)


# ---- Ascend: npu_quant_matmul, npu_weight_quant_batchmatmul ----------------------------------------------------


def ascend_linear(x2d: torch.Tensor, params: QuantParams, scheme: str, ops: AscendQuantOps) -> torch.Tensor:
    """The chip's int8 matmul, the weight passed transposed: the [K, N] view of the contiguous [N, K] rows, in ND or
    in the FRACTAL_NZ the runtime casts those rows to on the 310P (ascend_takes_nz_weight); the activation
    quantized by npu_quantize / npu_dynamic_quant."""
    npu = torch.ops.npu
    if scheme == "w8a16":  # bias: fp16 with fp16 activations, fp32 with bf16 ones (A2/A3)
        bias = params.bias if params.bias is None or x2d.dtype == torch.float16 else params.bias.float()
        return npu.npu_weight_quant_batchmatmul(x2d, params.weight.t(), params.weight_scale, bias=bias)
    if scheme == "w8a8-dynamic":
        xq, token_scale = npu.npu_dynamic_quant(x2d)
        return npu.npu_quant_matmul(xq, params.weight.t(), params.deq_scale, pertoken_scale=token_scale,
                                    bias=params.bias, output_dtype=x2d.dtype)
    if ops.quantize_op:  # div_mode=True: x / scales + zero_points, saturated to int8
        xq = npu.npu_quantize(x2d, params.input_scale.float(), params.input_offset, torch.qint8, -1, True)
    else:
        xq = quantize_per_tensor(x2d, params.input_scale, params.input_offset)
    return npu.npu_quant_matmul(xq, params.weight.t(), params.deq_scale, bias=params.quant_bias,
                                output_dtype=x2d.dtype)


# ---- selection ----------------------------------------------------------------------------------------------


def unsupported_reason(scheme: str, plan: KernelPlan) -> str | None:
    """Why a plan's device cannot run `scheme` at all (None when it can)."""
    if scheme not in SCHEMES:
        return f"unknown quantization scheme {scheme!r}: use one of {', '.join(SCHEMES)}"
    if scheme == "w8a8-dynamic" and plan.quant_matmul == "ascend" and not plan.ascend_quant.per_token:
        return ("w8a8-dynamic needs per-token activation scales, which this Ascend chip's npu_quant_matmul does not "
                "take (no pertoken_scale on the Atlas inference cards, no npu_dynamic_quant): quantize with w8a8 "
                "(static, calibrated) or w8a16")
    return None


def ascend_takes(scheme: str, dtype: torch.dtype, params: QuantParams, plan: KernelPlan) -> bool:
    n, k = params.weight.shape
    return plan.quant_matmul == "ascend" and plan.ascend_quant.takes(scheme, dtype, k, n)


def ascend_takes_nz_weight(scheme: str, params: QuantParams, plan: KernelPlan) -> bool:
    """Whether the plan's int8 kernel takes the weight in FRACTAL_NZ, in an eager call and in an NPUGraph capture
    (the 310P's graph mode). npu_quant_matmul does, and its doc says how on the Atlas inference series,
    "必须先将x2转置后再转亲和format" (x2 transposed first, then cast): the contiguous [N, K] rows are cast, and
    their transpose is passed as x2 [K, N] (torch_npu's contrib LinearQuant: weight (out, in), x2 = weight.t()).
    npu_weight_quant_batchmatmul takes an NZ weight in graph mode only ("暂不支持单算子调用, 只支持图模式调用"), so
    w8a16 weights stay ND. The model dtype (the scales') decides whether the Ascend op or the eager math runs."""
    return scheme != "w8a16" and ascend_takes(scheme, params.weight_scale.dtype, params, plan)


def prepare_quant_params(params: QuantParams, scheme: str, plan: KernelPlan = PORTABLE) -> QuantParams:
    """The derived constants the plan's backend reads, computed once on the weights' device: for w8a8,
    quant_bias and deq_scale (npu_trans_quant_param's int64 where npu_quant_matmul outputs fp16, as its doc
    requires in graph mode); for w8a8-dynamic, deq_scale = the fp32 weight scale."""
    if scheme == "w8a16":
        return params
    if scheme == "w8a8-dynamic":
        return replace(params, deq_scale=params.weight_scale.float())
    quant_bias, deq_scale = quant_bias_and_deq_scale(params)
    if ascend_takes(scheme, params.weight_scale.dtype, params, plan) and params.weight_scale.dtype == torch.float16:
        deq_scale = torch.ops.npu.npu_trans_quant_param(deq_scale)
    return replace(params, quant_bias=quant_bias, deq_scale=deq_scale)


def quant_linear(x: torch.Tensor, params: QuantParams, scheme: str, plan: KernelPlan = PORTABLE) -> torch.Tensor:
    """y = x W^T + b for a layer quantized with `scheme`, on the plan's backend; x is [..., K], y [..., N].
    `params` carry the derived constants of `prepare_quant_params` for the same plan and model dtype."""
    n = params.weight.shape[0]
    x2d = x.reshape(-1, x.shape[-1])
    if plan.quant_matmul == "ascend" and ascend_takes(scheme, x.dtype, params, plan):
        out = ascend_linear(x2d, params, scheme, plan.ascend_quant)
    elif plan.quant_matmul == "int_mm" and int_mm_takes(x2d, n):
        out = int_mm_linear(x2d, params, scheme).to(x.dtype)
    else:
        out = eager_quant_linear(x2d, params, scheme)
    return out.view(*x.shape[:-1], n)
