"""The torch_npu stand-in's int8 operators (tests only): importing this module registers them.

Like tests/npu_standin.py, which imports it when installed, it encodes the contracts of the real wheel
(torch_npu 2.14.0) independently of our kernel code: the schemas are verbatim from
`torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml`; the CPU kernels refuse what
`torch_npu/_op_plugin_docs.py` rules out on the active chip (dtypes and argument combinations per chip, the
inference cards' missing per-token scale, an untransposed weight on the 310P, shapes, the weight's format:
`_check_weight_format`) and compute the documented formula exactly (integer products in float64); the fake
kernels give the output shapes of `op_plugin/meta/_meta_registrations.py`, and refuse what the docs rule out in
graph mode only.
npu_trans_quant_param packs a scale as CANN's aclnnTransQuantParam documents: the fp32 bits truncated to 19
(`& 0xFFFFE000`) with bit 46 set, so a matmul fed its output sees the truncated scale, as the chip does.
"""
import torch

from tests import npu_standin
from tests.npu_standin import FORMAT_FRACTAL_NZ, FORMAT_ND, _active, _check

SCHEMAS = {
    "npu_quant_matmul": (
        "npu_quant_matmul(Tensor x1, Tensor x2, Tensor scale, *, Tensor? offset=None, Tensor? pertoken_scale=None, "
        "Tensor? bias=None, int? output_dtype=None, int? x1_dtype=None, int? x2_dtype=None, "
        "int? pertoken_scale_dtype=None, int? scale_dtype=None, int[]? group_sizes=None, Tensor? y_scale=None) "
        "-> Tensor"),
    "npu_trans_quant_param": "npu_trans_quant_param(Tensor scale, Tensor? offset=None, int? round_mode=0) -> Tensor",
    "npu_weight_quant_batchmatmul": (
        "npu_weight_quant_batchmatmul(Tensor x, Tensor weight, Tensor antiquant_scale, Tensor? antiquant_offset=None, "
        "Tensor? quant_scale=None, Tensor? quant_offset=None, Tensor? bias=None, int antiquant_group_size=0, "
        "int inner_precise=0, int? weight_dtype=None) -> Tensor"),
    "npu_dynamic_quant": (
        "npu_dynamic_quant(Tensor input, *, Tensor? smooth_scales=None, Tensor? group_index=None, int? dst_type=None, "
        "str quant_mode=\"pertoken\", float dst_type_max=0.0) -> (Tensor, Tensor)"),
    "npu_quantize": (
        "npu_quantize(Tensor self, Tensor scales, Tensor? zero_points, int dtype, int axis=1, bool div_mode=True) "
        "-> Tensor"),
}

# c10::ScalarType codes: a torch.dtype passed for an `int` argument arrives as its code (the wheel's
# TORCH_DTYPE_ENUM_VALUE_TO_SCALAR_TYPE_MAP).
DTYPES = {1: torch.int8, 3: torch.int32, 5: torch.float16, 6: torch.float32, 12: torch.qint8, 13: torch.quint8,
          15: torch.bfloat16}
FP19_MASK = 0xFFFFE000
TRANS_FLAG = 1 << 46


def _dtype(code, default):
    return default if code is None else DTYPES.get(code, f"code {code}")


def _a3() -> bool:
    return _active().family == "A3"


def _a2_or_a3(chip) -> bool:
    return chip.family in ("A2", "A3")


def _chip_documented(op):
    chip = _active()
    chip.calls[op] += 1
    _check(chip.inference_card or _a2_or_a3(chip), f"{op} is documented for Atlas A2/A3 and the inference cards only")


# ---- npu_trans_quant_param -----------------------------------------------------------------------------------


def trans_quant_param(scale, offset=None, round_mode=0):
    _chip_documented("npu_trans_quant_param")
    _check(scale.dtype == torch.float32, f"npu_trans_quant_param scale dtype {scale.dtype}: float32")
    _check(scale.dim() == 1 or (scale.dim() == 2 and scale.shape[0] == 1),
           f"scale shape {list(scale.shape)}: (t,) or (1, n)")
    _check(round_mode in (0, 1), f"round_mode={round_mode}: 0 or 1")
    bits = scale.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    if round_mode == 1:
        bits = bits + 0x1000
    packed = (bits & FP19_MASK) | TRANS_FLAG
    if offset is not None:
        _check(offset.dtype == torch.float32 and offset.shape == scale.shape, "offset: float32, the shape of scale")
        packed = (packed & 0x4000FFFFFFFF) | ((torch.round(offset).clamp(-256, 255).to(torch.int64) & 0x1FF) << 37)
    return packed


def unpack_scale(packed):
    """The fp32 scale an int64 from npu_trans_quant_param carries (its low 32 bits)."""
    return (packed & 0xFFFFFFFF).to(torch.int32).view(torch.float32)


def trans_quant_param_fake(scale, offset=None, round_mode=0):
    return scale.new_empty(scale.shape, dtype=torch.int64)


# ---- npu_quant_matmul ----------------------------------------------------------------------------------------

# (scale dtypes, offset allowed, bias dtypes, pertoken_scale: False no / True required / None optional, output)
COMBOS_310P = [
    ({torch.int64, torch.float32}, False, {torch.int32}, False, torch.float16),
    ({torch.int64, torch.float32}, True, {torch.int32}, False, torch.int8),
]
COMBOS_A2_A3 = COMBOS_310P + [
    ({torch.float32, torch.bfloat16}, False, {torch.int32, torch.bfloat16, torch.float32}, None, torch.bfloat16),
    ({torch.float32}, False, {torch.int32, torch.float16, torch.float32}, True, torch.float16),
    ({torch.float32, torch.bfloat16}, False, {torch.int32}, False, torch.int32),
]


def _check_quant_matmul_dtypes(scale, offset, pertoken_scale, bias, output_dtype):
    chip = _active()
    combos = COMBOS_310P if chip.inference_card else COMBOS_A2_A3
    for scales, takes_offset, biases, pertoken, out in combos:
        if (output_dtype == out and scale.dtype in scales and (offset is None or takes_offset)
                and (bias is None or bias.dtype in biases)
                and (pertoken is None or pertoken == (pertoken_scale is not None))):
            return
    _check(chip.inference_card is False or pertoken_scale is None,
           "pertoken_scale is not supported on Atlas inference cards (不支持pertoken_scale)")
    _check(False, f"npu_quant_matmul: scale {scale.dtype}, offset {None if offset is None else offset.dtype}, "
                  f"bias {None if bias is None else bias.dtype}, pertoken_scale "
                  f"{None if pertoken_scale is None else pertoken_scale.dtype}, output {output_dtype}: not a "
                  "documented combination for this chip")


def _check_weight_format(op, weight):
    """The weight in ND, or in FRACTAL_NZ as the whole tensor npu_format_cast returned (a range of NZ rows or
    columns is no layout either op documents) or its transpose. On the inference cards an NZ weight is the
    transpose of the cast one: npu_quant_matmul's doc, "必须先将x2转置后再转亲和format" (x2 transposed, then
    cast: the contiguous (n, k) is cast and passed transposed); npu_weight_quant_batchmatmul's 310P example
    casts the (n, k) weight and passes weight.transpose(0, 1). npu_weight_quant_batchmatmul takes an NZ weight
    in graph mode only ("FRACTAL_NZ格式只在图模式有效", "暂不支持单算子调用"): here, inside torchair's graph."""
    chip = _active()
    acl_format, view = chip.weight_format(weight)
    if acl_format == FORMAT_ND:
        return
    _check(acl_format == FORMAT_FRACTAL_NZ, f"{op}: weight format {acl_format}: ND or FRACTAL_NZ (29)")
    _check(view != "part", f"{op}: the weight is a part of a FRACTAL_NZ tensor: pass the whole tensor "
                           "npu_format_cast returned (or its transpose)")
    _check(view == "transposed" or not chip.inference_card,
           f"{op}: a FRACTAL_NZ weight on Atlas inference cards is transposed before its NZ cast (必须先将x2转置后再转"
           "亲和format): cast the contiguous (n, k) weight and pass its transpose")
    _check(op != "npu_weight_quant_batchmatmul" or chip.in_torchair_graph,
           f"{op}: a FRACTAL_NZ weight is taken in graph mode only, not in a single-op call (暂不支持单算子调用)")


def _check_quant_matmul_shapes(x1, x2, scale, pertoken_scale, bias):
    k, n = x2.shape[-2], x2.shape[-1]
    _check(2 <= x1.dim() <= 6 and 2 <= x2.dim() <= 6, f"x1/x2 dims {x1.dim()}/{x2.dim()}: 2 to 6")
    _check(x1.shape[-1] == k, f"x1 {list(x1.shape)} and x2 {list(x2.shape)}: K differs")
    _check(k <= 65535 and n <= 65535, f"K={k} N={n}: the last dims of x1 and x2 are at most 65535")
    _check(scale.dim() == 1 and scale.shape[0] in (1, n), f"scale shape {list(scale.shape)}: (1,) or ({n},)")
    if _active().inference_card:  # 必须先将x2转置后再转亲和format: the weight comes as (n, k), transposed
        _check(x2.dim() == 2 and x2.stride(0) == 1 and x2.stride(1) == k,
               "x2 must be the transpose of a contiguous (n, k) weight on Atlas inference cards (transposed "
               "before its NZ cast)")
    if pertoken_scale is not None:
        _check(x1.dim() == 2 and pertoken_scale.dim() == 1 and pertoken_scale.shape[0] == x1.shape[0],
               f"pertoken_scale shape {list(pertoken_scale.shape)}: (m,) with x1 (m, k)")
    if bias is not None:
        _check(bias.dim() == 1 and bias.shape[0] == n, f"bias shape {list(bias.shape)}: ({n},)")


def quant_matmul(x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None, output_dtype=None, x1_dtype=None,
                 x2_dtype=None, pertoken_scale_dtype=None, scale_dtype=None, group_sizes=None, y_scale=None):
    _chip_documented("npu_quant_matmul")
    _check(x1.dtype == torch.int8 and x2.dtype == torch.int8, f"x1/x2 dtype {x1.dtype}/{x2.dtype}: int8 (int4 packing "
                                                                "in int32 is not used here)")
    _check(all(a is None for a in (x1_dtype, x2_dtype, pertoken_scale_dtype, scale_dtype, group_sizes, y_scale)),
           "x1_dtype/x2_dtype/scale_dtype/group_sizes/y_scale are not used by this stand-in")
    output_dtype = _dtype(output_dtype, torch.int8)
    _check_quant_matmul_dtypes(scale, offset, pertoken_scale, bias, output_dtype)
    _check_weight_format("npu_quant_matmul", x2)
    _check_quant_matmul_shapes(x1, x2, scale, pertoken_scale, bias)
    _check(output_dtype != torch.int8, "int8 output is not used by this stand-in")
    per_channel = unpack_scale(scale) if scale.dtype == torch.int64 else scale.float()
    product = x1.double() @ x2.double()  # exact: integer sums far below 2**53
    if bias is not None and bias.dtype == torch.int32:
        product = product + bias.double()
    out = product * per_channel.double()
    if pertoken_scale is not None:
        out = out * pertoken_scale.double()[:, None]
    if bias is not None and bias.dtype != torch.int32:
        out = out + bias.double()
    return out.to(output_dtype)


def quant_matmul_fake(x1, x2, scale, *, pertoken_scale=None, output_dtype=None, **unused):
    output_dtype = _dtype(output_dtype, torch.int8)
    # 目前输出int8或float16且无pertoken_scale情况下, 图模式不支持scale直接传入float32数据类型
    float_scale = scale.dtype == torch.float32
    _check(not (output_dtype in (torch.int8, torch.float16) and pertoken_scale is None and float_scale),
           "in graph mode a float32 scale is not supported for int8/float16 output without pertoken_scale: "
           "pass npu_trans_quant_param's int64")
    return x1.new_empty((*x1.shape[:-1], x2.shape[-1]), dtype=output_dtype)


# ---- npu_weight_quant_batchmatmul ----------------------------------------------------------------------------


def weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None, quant_offset=None,
                             bias=None, antiquant_group_size=0, inner_precise=0, weight_dtype=None):
    _chip_documented("npu_weight_quant_batchmatmul")
    chip = _active()
    x_dtypes = (torch.float16,) if chip.inference_card else (torch.float16, torch.bfloat16)
    _check(x.dtype in x_dtypes and x.dim() == 2, f"x {x.dtype} {x.dim()}-D: a 2-D (M, K) tensor of {x_dtypes}")
    _check(weight.dtype == torch.int8 and weight.dim() == 2, f"weight {weight.dtype} {weight.dim()}-D: int8 (K, N)")
    _check_weight_format("npu_weight_quant_batchmatmul", weight)
    k, n = weight.shape
    _check(x.shape[1] == k and 1 <= k <= 65535 and 1 <= n <= 65535, f"x {list(x.shape)}, weight {list(weight.shape)}")
    _check(antiquant_scale.dtype == x.dtype, f"antiquant_scale dtype {antiquant_scale.dtype} must be the x dtype")
    _check(tuple(antiquant_scale.shape) in {(1,), (1, 1), (n,), (1, n)},
           f"antiquant_scale shape {list(antiquant_scale.shape)}: per-tensor (1,) or per-channel (N,)/(1, N)")
    if antiquant_offset is not None:
        _check(antiquant_offset.shape == antiquant_scale.shape and antiquant_offset.dtype == antiquant_scale.dtype,
               "antiquant_offset: the shape and dtype of antiquant_scale")
    _check(quant_scale is None and quant_offset is None, "quant_scale/quant_offset (int8 output) are not used here; "
                                                         "not supported on Atlas inference cards")
    _check(antiquant_group_size == 0 and weight_dtype is None, "per-group and int4 weights are not used here")
    if bias is not None:
        bias_dtype = torch.float32 if x.dtype == torch.bfloat16 else torch.float16
        _check(bias.dtype == bias_dtype and bias.is_contiguous() and tuple(bias.shape) in {(n,), (1, n)},
               f"bias {bias.dtype} {list(bias.shape)}: contiguous ({n},) of {bias_dtype} with {x.dtype} x")
    dequantized = weight.float() + (0 if antiquant_offset is None else antiquant_offset.float().reshape(1, -1))
    out = x.float() @ (dequantized * antiquant_scale.float().reshape(1, -1))
    return (out if bias is None else out + bias.float().reshape(-1)).to(x.dtype)


def weight_quant_batchmatmul_fake(x, weight, antiquant_scale, *args, quant_scale=None, **unused):
    return x.new_empty((x.shape[0], weight.shape[1]), dtype=x.dtype)


# ---- npu_dynamic_quant and npu_quantize -----------------------------------------------------------------------


def dynamic_quant(input, *, smooth_scales=None, group_index=None, dst_type=None, quant_mode="pertoken",
                  dst_type_max=0.0):
    chip = _active()
    chip.calls["npu_dynamic_quant"] += 1
    _check(_a2_or_a3(chip), "npu_dynamic_quant is documented for Atlas A2/A3 only")
    _check(input.dtype in (torch.float16, torch.bfloat16) and input.dim() > 1,
           f"input {input.dtype} {input.dim()}-D: float16/bfloat16 with more than one dimension")
    _check(smooth_scales is None and group_index is None and quant_mode == "pertoken" and dst_type_max == 0.0,
           "smooth_scales/group_index/other modes are not used by this stand-in")
    _check(_dtype(dst_type, torch.int8) == torch.int8, f"dst_type {dst_type}: int8 (quint4x2 not used here)")
    # scale = rowMax(abs(x)) / DTYPE_MAX, y = round(x / scale); an all-zero row quantizes to zeros
    scale = input.float().abs().amax(dim=-1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(input.float() / safe[..., None]).clamp(-128, 127).to(torch.int8), scale


def dynamic_quant_fake(input, **unused):
    return torch.empty_like(input, dtype=torch.int8), input.new_empty(input.shape[:-1], dtype=torch.float32)


def quantize(self, scales, zero_points, dtype, axis=1, div_mode=True):
    chip = _active()
    chip.calls["npu_quantize"] += 1
    _check(chip.inference_card or chip.family == "A2",
           "npu_quantize is documented for Atlas A2 and the Atlas inference series only (not A3)")
    # div_mode=False: "支持Atlas A2"; the inference cards take the division form
    _check(div_mode or not chip.inference_card, "div_mode=False is documented for Atlas A2 only")
    a2 = not chip.inference_card
    _check(self.dtype in ((torch.float32, torch.float16) + ((torch.bfloat16,) if a2 else ())),
           f"input dtype {self.dtype}")
    _check(scales.dtype in ((torch.float32,) + ((torch.bfloat16,) if a2 else ())), f"scales dtype {scales.dtype}")
    _check(zero_points is None or zero_points.dtype in (torch.int8, torch.uint8, torch.int32),
           f"zero_points dtype {zero_points.dtype}: int8, uint8 or int32")
    _check(_dtype(dtype, None) == torch.qint8, f"dtype {dtype}: torch.qint8 is the one used here")
    axis = axis % self.dim()
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        _check(t is None or (t.dim() == 1 and t.shape[0] in (1, self.shape[axis])),
               f"{name} shape {None if t is None else list(t.shape)}: (1,) or (input.shape[axis],)")
    shape = [1] * self.dim()
    shape[axis] = -1
    scaled = self.float() / scales.float().reshape(shape) if div_mode else self.float() * scales.float().reshape(shape)
    if zero_points is not None:
        scaled = scaled + zero_points.float().reshape(shape)
    return torch.round(scaled).clamp(-128, 127).to(torch.int8)


def quantize_fake(self, scales, zero_points, dtype, axis=1, div_mode=True):
    return torch.empty_like(self, dtype=torch.int8)


KERNELS = {
    "npu_quant_matmul": (quant_matmul, quant_matmul_fake),
    "npu_trans_quant_param": (trans_quant_param, trans_quant_param_fake),
    "npu_weight_quant_batchmatmul": (weight_quant_batchmatmul, weight_quant_batchmatmul_fake),
    "npu_dynamic_quant": (dynamic_quant, dynamic_quant_fake),
    "npu_quantize": (quantize, quantize_fake),
}


def _register_ops():
    """Process-wide, once (at import): a fragment of the stand-in's `npu` namespace."""
    return npu_standin.define_ops(torch.library.Library("npu", "FRAGMENT"), SCHEMAS, KERNELS)


npu_standin._register_ops()  # the namespace is defined there
_LIBRARY = _register_ops()
