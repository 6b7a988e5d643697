"""The int8 linear kernels (npu_kernels/quant_matmul.py): the quantization formulas, the eager reference, the
torch._int_mm backend and the Ascend backend through the stand-in (tests/npu_standin_quant.py), which also
refuses what torch_npu 2.14.0's docs rule out.

Tolerances, measured over 20 random layers (K=64, N=96, x in about [-6, 7], weights ~ N(0, 0.05)):
- int_mm vs eager, fp32: the int32 product is exact; w8a8 differs by the bias rounded to deq_scale units
  (<= deq_scale / 2, 3.7e-5 here), the other schemes by fp32 rounding (2.4e-6): atol 1e-4, rtol 1e-5.
- Ascend vs eager: the op's fp16/bf16 output (2 fp16 ulps, under 1 bf16 ulp, at |y| ~ 5) and the FP19
  truncation of npu_trans_quant_param's scale (relative 2**-10): verify's tolerance for the dtype.
"""
import pytest
import torch
import torch.nn.functional as F
from dataclasses import replace

from npu_kernels import EAGER, PORTABLE, plan_for_ascend_chip
from npu_kernels.plan import QUANT_310P, QUANT_A2, QUANT_A3
from npu_kernels.quant_matmul import (SCHEMES, QuantParams, activation_qparams, eager_quant_linear, int_mm_takes,
                                  prepare_quant_params, quant_linear, quantize_per_tensor, quantize_per_token,
                                  quantize_weight, unsupported_reason)
from tests.npu_standin import CHIPS, FORMAT_FRACTAL_NZ, FORMAT_ND, AscendContractError
from weights_tools.verify import DEFAULT_TOLERANCE

FP32_TOLERANCE = dict(atol=1e-4, rtol=1e-5)


def random_layer(scheme, n=96, k=64, dtype=torch.float32, bias=True, seed=0):
    """A layer quantized from N(0, 0.05) weights and an input x [5, 7, k] it was calibrated on (90% of its range)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=generator) * 0.05
    x = torch.randn(5, 7, k, generator=generator) * 2 + 0.5
    q, scale = quantize_weight(weight)
    params = QuantParams(q, scale.to(dtype), (torch.randn(n, generator=generator) * 0.1).to(dtype) if bias else None)
    if scheme == "w8a8":
        input_scale, input_offset = activation_qparams(x.min().item() * 0.9, x.max().item() * 0.9)
        params = replace(params, input_scale=input_scale.to(dtype), input_offset=input_offset)
    return x.to(dtype), params, weight


# ---- the formulas ------------------------------------------------------------------------------------------


def test_weights_quantize_per_channel_within_half_a_step():
    weight = torch.randn(16, 40) * torch.logspace(-3, 0, 16)[:, None]  # rows of very different magnitude
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and (q.abs().amax(dim=1) >= 126).all()
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    assert torch.equal(scale.to(torch.bfloat16).float(), scale)  # survives the model's cast to bf16 or fp16
    assert torch.equal(scale.half().float(), scale)


def test_activation_range_maps_onto_the_int8_range_with_zero_exact():
    scale, offset = activation_qparams(-0.17, 12.0)  # a GELU output's range
    x = torch.tensor([-0.17, 0.0, 12.0, 50.0, -3.0])
    q = quantize_per_tensor(x, scale, offset)
    assert q.tolist()[:3] == [-128, offset.item(), 127] and q.tolist()[3:] == [127, -128]  # saturated outside
    assert (q.float() - offset.float())[1] * scale == 0  # zero (padding, ReLU zeros) dequantizes to exactly zero
    scale, offset = activation_qparams(1.0, 3.0)  # a range without zero is widened to hold it
    assert quantize_per_tensor(torch.tensor([0.0]), scale, offset).item() == offset.item() == -128


def test_per_token_scales_are_each_rows_peak():
    x = torch.randn(6, 10) * torch.logspace(-2, 2, 6)[:, None]
    x[2] = 0.0  # a constant-zero row stays finite
    q, scale = quantize_per_token(x)
    assert torch.allclose(scale[[0, 1, 3, 4, 5]], x.abs().amax(dim=-1)[[0, 1, 3, 4, 5]] / 127)
    assert (q.abs().amax(dim=-1)[[0, 1, 3, 4, 5]] == 127).all() and (q[2] == 0).all()
    assert ((q.float() * scale[:, None] - x).abs() <= scale[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_eager_reference_is_the_dequantized_matmul(scheme):
    x, params, _ = random_layer(scheme)
    dequantized_weight = params.weight.float() * params.weight_scale[:, None]
    rounded = x
    if scheme == "w8a8":
        xq = torch.clamp(torch.round(x / params.input_scale) + params.input_offset, -128, 127)
        rounded = (xq - params.input_offset) * params.input_scale
    elif scheme == "w8a8-dynamic":
        peak = x.abs().amax(dim=-1, keepdim=True)
        rounded = torch.round(x / (peak / 127)) * (peak / 127)
    expected = F.linear(rounded, dequantized_weight, params.bias)
    torch.testing.assert_close(eager_quant_linear(x, params, scheme), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_layer_is_close_to_the_float_one(scheme):
    """A sanity bound on the quantization error itself (relative Frobenius error, measured 0.3-0.9%)."""
    x, params, weight = random_layer(scheme)
    exact = F.linear(x, weight, params.bias)
    error = (eager_quant_linear(x, params, scheme) - exact).norm() / exact.norm()
    assert 1e-4 < error < 0.02, error  # int8 quantization is visible, and small


# ---- torch._int_mm ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_int_mm_backend_matches_the_eager_reference(scheme, bias, monkeypatch):
    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or int_mm(a, b))
    for seed in range(5):
        x, params, _ = random_layer(scheme, bias=bias, seed=seed)
        prepared = prepare_quant_params(params, scheme, PORTABLE)
        out = quant_linear(x, prepared, scheme, PORTABLE)
        assert out.shape == (5, 7, 96) and out.dtype == x.dtype
        torch.testing.assert_close(out, eager_quant_linear(x, params, scheme), **FP32_TOLERANCE)
        rows = slice(32, None)  # a fused projection's k/v rows
        torch.testing.assert_close(quant_linear(x, prepared.rows(rows), scheme, PORTABLE),
                                   eager_quant_linear(x, params.rows(rows), scheme), **FP32_TOLERANCE)
    assert len(calls) == (0 if scheme == "w8a16" else 10)  # int8 x int8 for both w8a8 schemes


def test_a_forgotten_offset_correction_is_caught():
    """The comparison can fail: the static scheme without the z * colsum(W) correction is far off."""
    x, params, _ = random_layer("w8a8")
    prepared = prepare_quant_params(params, "w8a8", PORTABLE)
    broken = replace(prepared, quant_bias=prepared.quant_bias + params.input_offset.int() * params.weight.int().sum(1))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(quant_linear(x, broken, "w8a8", PORTABLE), eager_quant_linear(x, params, "w8a8"),
                                   **FP32_TOLERANCE)


def test_int_mm_shape_rules_per_device():
    """CUDA's _int_mm needs M > 16 and K, N multiples of 8 (otherwise the eager math runs); the CPU's any."""
    assert int_mm_takes(torch.zeros(8, 12), 10)
    if torch.cuda.is_available():  # no GPU here: checked where one is
        assert not int_mm_takes(torch.zeros(8, 16, device="cuda"), 16)
        assert not int_mm_takes(torch.zeros(32, 12, device="cuda"), 16)
        assert int_mm_takes(torch.zeros(32, 16, device="cuda"), 16)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_eager_plan_runs_the_reference(scheme):
    x, params, _ = random_layer(scheme)
    torch.testing.assert_close(quant_linear(x, prepare_quant_params(params, scheme, EAGER), scheme, EAGER),
                               eager_quant_linear(x, params, scheme), atol=0, rtol=0)


# ---- Ascend, through the stand-in ---------------------------------------------------------------------------


def test_plans_name_the_documented_ops_per_chip():
    assert plan_for_ascend_chip("Ascend310P3").ascend_quant == QUANT_310P
    assert plan_for_ascend_chip("Ascend910B2").ascend_quant == QUANT_A2
    assert plan_for_ascend_chip("Ascend910_9391").ascend_quant == QUANT_A3
    assert plan_for_ascend_chip("Ascend910A").quant_matmul == "eager"
    assert not QUANT_310P.per_token and QUANT_A2.per_token and QUANT_A3.per_token
    assert QUANT_310P.matmul_dtypes == (torch.float16,) and torch.bfloat16 in QUANT_A2.matmul_dtypes
    assert QUANT_A2.quantize_op and not QUANT_A3.quantize_op  # npu_quantize's doc names A2, not A3
    assert "per-token" in unsupported_reason("w8a8-dynamic", plan_for_ascend_chip("Ascend310P3"))
    assert unsupported_reason("w8a8-dynamic", plan_for_ascend_chip("Ascend910B2")) is None
    assert all(unsupported_reason(s, PORTABLE) is None for s in SCHEMES) and unsupported_reason("w4a8", PORTABLE)


ASCEND_OPS = {
    ("310P", "w8a8"): {"npu_quantize": 1, "npu_quant_matmul": 1},
    ("310P", "w8a16"): {"npu_weight_quant_batchmatmul": 1},
    ("910B", "w8a8"): {"npu_quantize": 1, "npu_quant_matmul": 1},
    ("910B", "w8a8-dynamic"): {"npu_dynamic_quant": 1, "npu_quant_matmul": 1},
    ("910B", "w8a16"): {"npu_weight_quant_batchmatmul": 1},
}


@pytest.mark.parametrize("profile, scheme", list(ASCEND_OPS))
def test_ascend_backend_matches_the_eager_reference(ascend_chip, profile, scheme):
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    plan = plan_for_ascend_chip(chip)
    atol, rtol = DEFAULT_TOLERANCE[dtype]
    for seed in range(5):
        x, params, _ = random_layer(scheme, dtype=dtype, seed=seed)
        prepared = prepare_quant_params(params, scheme, plan)
        if scheme == "w8a8" and dtype == torch.float16:
            assert prepared.deq_scale.dtype == torch.int64  # npu_trans_quant_param's form, as graph mode requires
        standin.calls.clear()
        out = quant_linear(x, prepared, scheme, plan)
        assert standin.calls == ASCEND_OPS[profile, scheme]
        assert out.dtype == dtype and out.shape == (5, 7, 96)
        torch.testing.assert_close(out.float(), eager_quant_linear(x, params, scheme).float(), atol=atol, rtol=rtol)


def test_a3_quantizes_the_static_activation_with_the_aten_math(ascend_chip):
    standin = ascend_chip("Ascend910_9391")
    plan = plan_for_ascend_chip("Ascend910_9391")
    x, params, _ = random_layer("w8a8", dtype=torch.bfloat16)
    out = quant_linear(x, prepare_quant_params(params, "w8a8", plan), "w8a8", plan)
    assert standin.calls == {"npu_quant_matmul": 1}
    torch.testing.assert_close(out.float(), eager_quant_linear(x, params, "w8a8").float(), atol=5e-2, rtol=5e-2)


def test_ascend_falls_back_to_the_eager_math_where_no_op_takes_the_case(ascend_chip):
    standin = ascend_chip("Ascend310P3")
    plan = plan_for_ascend_chip("Ascend310P3")
    for scheme in ("w8a8", "w8a16"):
        x, params, _ = random_layer(scheme, dtype=torch.float32)  # fp32: the 310P's int8 matmuls output fp16
        out = quant_linear(x, prepare_quant_params(params, scheme, plan), scheme, plan)
        torch.testing.assert_close(out, eager_quant_linear(x, params, scheme), atol=0, rtol=0)
    assert sum(standin.calls.values()) == 0


def test_trans_quant_param_truncates_the_scale_to_19_bits(ascend_chip):
    from tests.npu_standin_quant import unpack_scale
    ascend_chip("Ascend310P3")
    scale = torch.tensor([1.2345678e-5, 3.0, 0.1], dtype=torch.float32)
    packed = torch.ops.npu.npu_trans_quant_param(scale)
    assert packed.dtype == torch.int64 and ((packed >> 46) & 1).eq(1).all()
    unpacked = unpack_scale(packed)
    assert (unpacked <= scale).all() and ((scale - unpacked) / scale < 2 ** -10).all() and unpacked[1] == 3.0


def nz(weight):
    return torch.ops.npu.npu_format_cast(weight, FORMAT_FRACTAL_NZ)


def ascend_inputs(k=64, n=32, m=6):
    x1 = torch.randint(-128, 127, (m, k), dtype=torch.int8)
    weight = torch.randint(-127, 127, (n, k), dtype=torch.int8)
    return x1, weight


@pytest.mark.parametrize("call, message", [
    (lambda x1, w: torch.ops.npu.npu_quant_matmul(x1, w.t(), torch.ones(32), pertoken_scale=torch.ones(6),
                                                  output_dtype=torch.float16), "pertoken_scale"),
    (lambda x1, w: torch.ops.npu.npu_quant_matmul(x1, w.t().contiguous(), torch.ones(32), output_dtype=torch.float16),
     "transpose"),
    (lambda x1, w: torch.ops.npu.npu_quant_matmul(x1.float(), w.t(), torch.ones(32), output_dtype=torch.float16),
     "dtype"),
    (lambda x1, w: torch.ops.npu.npu_quant_matmul(x1, w.t(), torch.ones(32), bias=torch.ones(32),
                                                  output_dtype=torch.float16), "combination"),
    (lambda x1, w: torch.ops.npu.npu_quant_matmul(x1, w.t(), torch.ones(32), output_dtype=torch.bfloat16),
     "combination"),
    (lambda x1, w: torch.ops.npu.npu_dynamic_quant(torch.randn(4, 8, dtype=torch.float16)), "A2/A3 only"),
    (lambda x1, w: torch.ops.npu.npu_weight_quant_batchmatmul(torch.randn(6, 64, dtype=torch.bfloat16), w.t(),
                                                              torch.ones(32, dtype=torch.bfloat16)), "x torch.bfloat16"),
    (lambda x1, w: torch.ops.npu.npu_weight_quant_batchmatmul(torch.randn(6, 64, dtype=torch.float16), w.t(),
                                                              torch.ones(32, dtype=torch.float32)), "antiquant_scale"),
    (lambda x1, w: torch.ops.npu.npu_quantize(torch.randn(4, 64), torch.ones(1), torch.zeros(1, dtype=torch.int8),
                                              torch.qint8, -1, False), "div_mode"),
    # FRACTAL_NZ weights: (k, n) cast without the transpose; a range of the cast rows; w8a16's in a single-op call
    (lambda x1, w: torch.ops.npu.npu_quant_matmul(x1, nz(w.t().contiguous()), torch.ones(32),
                                                  output_dtype=torch.float16), "transposed before its NZ cast"),
    (lambda x1, w: torch.ops.npu.npu_quant_matmul(x1, nz(w)[:16].t(), torch.ones(16), output_dtype=torch.float16),
     "part of a FRACTAL_NZ tensor"),
    (lambda x1, w: torch.ops.npu.npu_weight_quant_batchmatmul(torch.randn(6, 64, dtype=torch.float16), nz(w).t(),
                                                              torch.ones(32, dtype=torch.float16)), "graph mode only"),
])
def test_310p_refuses_what_its_docs_rule_out(ascend_chip, call, message):
    ascend_chip("Ascend310P3")
    with pytest.raises(AscendContractError, match=message):
        call(*ascend_inputs())


def test_310p_takes_the_nz_cast_of_the_weight_rows_passed_transposed(ascend_chip):
    """npu_quant_matmul's doc on the Atlas inference series: x2 transposed, then cast to NZ."""
    standin = ascend_chip("Ascend310P3")
    x1, weight = ascend_inputs()
    scale = torch.full((32,), 0.5)
    cast = nz(weight)
    assert standin.npu_format(cast) == FORMAT_FRACTAL_NZ and standin.npu_format(weight) == FORMAT_ND
    torch.testing.assert_close(torch.ops.npu.npu_quant_matmul(x1, cast.t(), scale, output_dtype=torch.float16),
                               torch.ops.npu.npu_quant_matmul(x1, weight.t(), scale, output_dtype=torch.float16))
    assert standin.weight_format(cast.t()) == (FORMAT_FRACTAL_NZ, "transposed")
    assert standin.weight_format(nz(weight.t())) == (FORMAT_FRACTAL_NZ, "whole")  # the cast lays out (k, n)
    assert nz(weight.t()).is_contiguous()


def test_910b_takes_per_token_scales_and_refuses_wrong_dtypes(ascend_chip):
    ascend_chip("Ascend910B2")
    x1, weight = ascend_inputs()
    out = torch.ops.npu.npu_quant_matmul(x1, weight.t(), torch.ones(32), pertoken_scale=torch.full((6,), 0.5),
                                         bias=torch.ones(32, dtype=torch.bfloat16), output_dtype=torch.bfloat16)
    expected = (x1.double() @ weight.t().double()) * 0.5 + 1
    torch.testing.assert_close(out.float(), expected.float().bfloat16().float())
    with pytest.raises(AscendContractError, match="pertoken_scale shape"):
        torch.ops.npu.npu_quant_matmul(x1, weight.t(), torch.ones(32), pertoken_scale=torch.ones(5),
                                       output_dtype=torch.bfloat16)
    with pytest.raises(AscendContractError, match="combination"):  # a float16 bias with bf16 output
        torch.ops.npu.npu_quant_matmul(x1, weight.t(), torch.ones(32), bias=torch.ones(32, dtype=torch.float16),
                                       output_dtype=torch.bfloat16)
    with pytest.raises(AscendContractError, match="bias"):  # bf16 activations take a float32 bias
        torch.ops.npu.npu_weight_quant_batchmatmul(torch.randn(6, 64, dtype=torch.bfloat16), weight.t(),
                                                   torch.ones(32, dtype=torch.bfloat16),
                                                   bias=torch.ones(32, dtype=torch.bfloat16))
    ascend_chip("Ascend910_9391")
    with pytest.raises(AscendContractError, match="not A3"):
        torch.ops.npu.npu_quantize(torch.randn(4, 64), torch.ones(1), None, torch.qint8, -1, True)


def test_graph_mode_needs_the_int64_scale_for_fp16_output(ascend_chip):
    """The doc: in graph mode, fp16/int8 output without pertoken_scale takes no float32 scale."""
    ascend_chip("Ascend310P3")
    x1, weight = ascend_inputs()
    call = lambda scale: torch.ops.npu.npu_quant_matmul(x1, weight.t(), scale, output_dtype=torch.float16)  # noqa: E731
    call(torch.ones(32))  # eager takes it
    with pytest.raises(Exception, match="npu_trans_quant_param"):
        torch.compile(call, fullgraph=True, backend="eager")(torch.ones(32))
    packed = torch.ops.npu.npu_trans_quant_param(torch.ones(32))
    torch.testing.assert_close(torch.compile(call, fullgraph=True, backend="eager")(packed), call(torch.ones(32)))
