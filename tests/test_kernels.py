import dataclasses

import pytest
import torch
import torch.nn.functional as F

from npu_kernels import EAGER, PORTABLE, activation, attention, norm, plan_for_ascend_chip
from npu_kernels import attention_backends as attention_module
from npu_kernels.attention_backends import eager_attention, sdpa_attention, to_ascend_mask
from npu_kernels.plan import FUSED_INFER_A2, PROMPT_FLASH_310P
from tests.npu_standin import CHIPS, DOCUMENTED_CHIPS, AscendContractError


def random_qkv(batch=3, heads=4, q_len=9, k_len=9, dim=16, dtype=torch.float32):
    return [torch.randn(batch, heads, n, dim, dtype=dtype) for n in (q_len, k_len, k_len)]


def strided_qkv(batch=3, heads=4, q_len=9, k_len=9, dim=16, dtype=torch.float32):
    """q, k, v as the attention layer makes them: [B, H, S, D] views of one [B, S, 3, H, D] projection."""
    fused = torch.randn(batch, max(q_len, k_len), 3, heads, dim, dtype=dtype).permute(2, 0, 3, 1, 4)
    q, k, v = fused[0, :, :, :q_len], fused[1, :, :, :k_len], fused[2, :, :, :k_len]
    assert not q.is_contiguous()
    return q, k, v


def padding_mask(lengths, k_len):
    """Key padding mask [B, 1, 1, Sk], True = attend."""
    return (torch.arange(k_len)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


def fp32_reference(q, k, v, mask=None, scale=None, bias=None):
    return eager_attention(q.float(), k.float(), v.float(), mask, scale, None if bias is None else bias.float())


def test_eager_reference_is_softmax_attention():
    q, k, v = random_qkv()
    expected = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    torch.testing.assert_close(eager_attention(q, k, v), expected, atol=1e-6, rtol=1e-5)


def test_eager_reference_ignores_masked_keys():
    q, k, v = random_qkv(batch=1)
    mask = padding_mask([5], 9)
    k2, v2 = k.clone(), v.clone()
    k2[..., 5:, :] = 100.0
    v2[..., 5:, :] = -100.0
    torch.testing.assert_close(eager_attention(q, k, v, mask), eager_attention(q, k2, v2, mask))
    torch.testing.assert_close(eager_attention(q, k, v, mask), eager_attention(q, k[..., :5, :], v[..., :5, :]))


@pytest.mark.parametrize("mask_kind", ["none", "padding", "full", "2d"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_matches_reference(mask_kind, scale):
    q, k, v = random_qkv(q_len=7, k_len=11)
    mask = {"none": None, "padding": padding_mask([11, 4, 1], 11),
            "full": torch.rand(3, 4, 7, 11) > 0.3, "2d": torch.rand(7, 11) > 0.3}[mask_kind]
    if mask is not None:
        mask[..., 0] = True  # keep every query row attending somewhere: empty rows are undefined
    torch.testing.assert_close(sdpa_attention(q, k, v, mask, scale), eager_attention(q, k, v, mask, scale),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_with_additive_bias_matches_reference(with_mask):
    q, k, v = random_qkv(q_len=7, k_len=7)
    bias = torch.randn(4, 7, 7) * 2  # per-head relative-position bias, broadcast over the batch
    mask = padding_mask([7, 3, 5], 7) if with_mask else None
    expected = eager_attention(q, k, v, mask, None, bias)
    torch.testing.assert_close(sdpa_attention(q, k, v, mask, None, bias), expected, atol=1e-5, rtol=1e-5)
    assert (expected - eager_attention(q, k, v, mask)).abs().max() > 1e-2  # the bias matters


@pytest.mark.parametrize("with_mask", [False, True])
def test_a_per_head_bias_runs_the_fused_cpu_kernel_not_the_math(with_mask):
    """A 3-D [H, Sq, Sk] bias (VLMo's relative positions) sent SDPA to its unfused math path (4x slower at 941
    tokens): the profile must show the CPU flash kernel, and no math."""
    from torch.profiler import profile
    q, k, v = random_qkv(q_len=7, k_len=7)
    bias = torch.randn(4, 7, 7) * 2
    mask = padding_mask([7, 3, 5], 7) if with_mask else None
    with torch.no_grad(), profile() as prof:
        out = sdpa_attention(q, k, v, mask, None, bias)
    kernels = {event.key for event in prof.key_averages() if "attention" in event.key}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    torch.testing.assert_close(out, eager_attention(q, k, v, mask, None, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 12])
def test_bias_with_key_padding_builds_no_batch_by_heads_mask(monkeypatch, dtype, head_dim):
    """The padding is folded into q and k: SDPA gets the batch-shared [1, H, S, S] bias, never a
    [B, H, S, S] tensor, and the result is the masked attention's (fp32 within 1e-5; bf16/fp16 within
    verify's tolerance for the dtype)."""
    from weights_tools.verify import DEFAULT_TOLERANCE
    q, k, v = (t.to(dtype) for t in random_qkv(q_len=9, k_len=9, dim=head_dim))
    bias, mask = torch.randn(1, 4, 9, 9).to(dtype) * 2, padding_mask([9, 3, 6], 9)
    seen = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *args, attn_mask=None, **kw: seen.append(attn_mask.shape) or real_sdpa(*args, attn_mask=attn_mask, **kw))
    out = sdpa_attention(q, k, v, mask, None, bias)
    assert seen == [torch.Size([1, 4, 9, 9])] and out.shape == q.shape
    atol, rtol = (1e-5, 1e-5) if dtype == torch.float32 else DEFAULT_TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), fp32_reference(q, k, v, mask, None, bias), atol=atol, rtol=rtol)


def test_sdpa_matches_reference_in_bf16():
    q, k, v = random_qkv(dtype=torch.bfloat16)
    mask = padding_mask([9, 3, 6], 9)
    torch.testing.assert_close(sdpa_attention(q, k, v, mask).float(), eager_attention(q, k, v, mask).float(),
                               atol=2e-2, rtol=2e-2)


def test_default_plan_is_sdpa_and_eager_plan_the_math(monkeypatch):
    calls = []
    monkeypatch.setattr(attention_module, "sdpa_attention", lambda *a: calls.append("sdpa") or eager_attention(*a))
    monkeypatch.setattr(attention_module, "eager_attention", lambda *a: calls.append("eager"))
    attention(*random_qkv())
    attention(*random_qkv(), plan=EAGER)
    assert calls == ["sdpa", "eager"]


def test_ascend_mask_inverts_and_expands_key_padding():
    mask = padding_mask([3, 1], 4)  # [2, 1, 1, 4]
    converted = to_ascend_mask(mask, q_len=5, k_len=4)
    assert converted.shape == (2, 1, 5, 4) and converted.dtype == torch.bool and converted.is_contiguous()
    expected_row = torch.tensor([[False, False, False, True], [False, True, True, True]])
    assert torch.equal(converted, expected_row[:, None, None, :].expand(2, 1, 5, 4))


def test_ascend_mask_takes_only_shapes_shared_by_the_heads():
    square = torch.rand(4, 6) > 0.5
    assert torch.equal(to_ascend_mask(square, 4, 6), (~square)[None, None])
    with pytest.raises(ValueError, match="per-head"):  # BNSS masks are not accepted by PFA/FIA
        to_ascend_mask(torch.rand(2, 3, 4, 4) > 0.5, 4, 4)
    with pytest.raises(TypeError, match="torch.bool"):
        to_ascend_mask(torch.zeros(2, 1, 1, 4), 4, 4)


@pytest.mark.parametrize("chip, expected", [
    ("Ascend310P3", PROMPT_FLASH_310P), ("Ascend910B2", FUSED_INFER_A2), ("Ascend910_9392", FUSED_INFER_A2)])
def test_plan_per_ascend_chip(chip, expected):
    plan = plan_for_ascend_chip(chip)
    assert plan.attention == "ascend" and plan.ascend_attention == expected
    assert (torch.bfloat16 in plan.ascend_dtypes) == (chip != "Ascend310P3")


def test_unknown_ascend_chip_runs_the_math_not_an_undocumented_fused_op():
    plan = plan_for_ascend_chip("Ascend910A")
    assert plan.attention == "eager" and plan.ascend_attention is None and plan.fused_ops() == ()
    # torch's gelu on NPU runs the tanh form whatever approximate= says: the erf formula instead
    assert plan.gelu == "eager"


def documented_for(plan, family: str) -> list[str]:
    """The plan's fused ops whose doc, as the stand-in encodes it, does not name `family`."""
    return [op for op in plan.fused_ops() if family not in DOCUMENTED_CHIPS[op]]


@pytest.mark.parametrize("chip, family", [("Ascend310P3", "inference"), ("Ascend910B2", "A2"),
                                          ("Ascend910_9392", "A3")])
def test_every_fused_op_a_plan_selects_is_documented_for_its_chip(chip, family):
    plan = plan_for_ascend_chip(chip)
    assert plan.fused_ops(), chip  # the walk has something to check
    assert documented_for(plan, family) == []
    # and the walk has teeth: FIA (A2/A3 only) or the undocumented npu_add_layer_norm on a 310P plan
    planted = dataclasses.replace(plan, attention="ascend", ascend_attention=FUSED_INFER_A2)
    assert documented_for(planted, "inference") == ["npu_fused_infer_attention_score"]


def test_310p_plan_uses_pfa_documented_gelu_and_aten_layer_norm_and_says_why():
    plan = plan_for_ascend_chip("Ascend310P3")
    assert plan.fused_ops() == ("npu_prompt_flash_attention", "npu_gelu") and plan.add_layer_norm == "torch"
    reasons = dict(plan.reasons)
    assert set(reasons) == {"attention", "gelu", "add_layer_norm", "quant_matmul"}
    assert "inference series" in reasons["attention"] and "_op_plugin_docs.py" in reasons["attention"]
    assert "npu_quant_matmul: its doc names the Atlas inference series" in reasons["quant_matmul"]
    assert "torch_npu-npu_gelu.md" in reasons["gelu"]
    assert "no doc page" in reasons["add_layer_norm"]


def test_a3_keeps_npu_gelu_off_as_its_doc_names_a2_only():
    plan = plan_for_ascend_chip("Ascend910_9392")
    assert plan.fused_ops() == ("npu_fused_infer_attention_score",) and plan.gelu == "eager"
    assert "Atlas A2" in dict(plan.reasons)["gelu"]


# ---- the Ascend path, through the torch_npu stand-in (tests/npu_standin.py) ------------------------------


@pytest.mark.parametrize("profile", ["310P", "910B"])
@pytest.mark.parametrize("q_len, k_len", [(9, 9), (6, 8)])
def test_ascend_attention_calls_the_chip_op_as_documented(ascend_chip, profile, q_len, k_len):
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    plan = plan_for_ascend_chip(chip)
    q, k, v = strided_qkv(q_len=q_len, k_len=k_len, dtype=dtype)
    mask = padding_mask([k_len, 3, 1], k_len)
    out = attention(q, k, v, mask, scale=0.2, plan=plan)
    assert standin.calls == {plan.ascend_attention.name: 1}
    assert out.shape == q.shape and out.dtype == dtype
    # bidirectional: PFA's default next_tokens=0 would hide the later keys from every query
    torch.testing.assert_close(out.float(), fp32_reference(q, k, v, mask, 0.2), atol=2e-2, rtol=2e-2)


def test_fused_infer_attention_takes_the_relative_position_bias(ascend_chip):
    standin = ascend_chip("Ascend910B2")
    q, k, v = random_qkv(dtype=torch.bfloat16)
    mask, bias = padding_mask([9, 3, 6], 9), torch.randn(4, 9, 9) * 2
    out = attention(q, k, v, mask, bias=bias, plan=plan_for_ascend_chip("Ascend910B2"))
    assert standin.calls == {"npu_fused_infer_attention_score": 1}
    torch.testing.assert_close(out.float(), fp32_reference(q, k, v, mask, None, bias), atol=3e-2, rtol=3e-2)


def test_310p_splits_batches_over_128(ascend_chip):
    standin = ascend_chip("Ascend310P3")
    q, k, v = random_qkv(batch=130, heads=2, q_len=5, k_len=5, dtype=torch.float16)
    mask = padding_mask([5, 2] * 65, 5)
    out = attention(q, k, v, mask, plan=plan_for_ascend_chip("Ascend310P3"))
    assert standin.calls == {"npu_prompt_flash_attention": 2}
    torch.testing.assert_close(out.float(), fp32_reference(q, k, v, mask), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("chip, case", [
    ("Ascend310P3", "bias"),      # pse_shift: not supported on Atlas inference cards
    ("Ascend310P3", "fp32"),      # PFA on 310P takes fp16 only
    ("Ascend910B2", "fp32"),
    ("Ascend910B2", "head_dim"),  # FIA: fp16/bf16 need D aligned to 16
    ("Ascend910B2", "per_head"),  # BNSS masks are not accepted
])
def test_cases_the_fused_op_cannot_take_run_the_fp32_math(ascend_chip, chip, case):
    standin = ascend_chip(chip)
    dtype = torch.float32 if case == "fp32" else CHIPS["310P" if "310P" in chip else "910B"][1]
    q, k, v = random_qkv(dim=12 if case == "head_dim" else 16, dtype=dtype)
    mask = torch.rand(3, 4, 9, 9) > 0.3 if case == "per_head" else padding_mask([9, 3, 6], 9)
    mask[..., 0] = True
    bias = torch.randn(4, 9, 9) if case == "bias" else None
    out = attention(q, k, v, mask, bias=bias, plan=plan_for_ascend_chip(chip))
    assert sum(standin.calls.values()) == 0
    torch.testing.assert_close(out, eager_attention(q, k, v, mask, None, bias))


def test_one_query_over_the_fused_infer_key_limit_runs_the_math(ascend_chip):
    """FIA's doc: with Q_S = 1, S <= 262144 (20M only for longer queries). One query over 262,145 keys runs the
    eager math; at the limit, or with two queries, the fused op."""
    standin = ascend_chip("Ascend910B2")
    plan = plan_for_ascend_chip("Ascend910B2")
    op = plan.ascend_attention
    assert op.name == "npu_fused_infer_attention_score"
    assert not op.accepts(torch.bfloat16, 1, 1, 262145, 16) and op.accepts(torch.bfloat16, 1, 1, 262144, 16)
    assert op.accepts(torch.bfloat16, 1, 2, 262145, 16)
    q, k, v = (torch.randn(1, 1, s, 16).to(torch.bfloat16) for s in (1, 262145, 262145))
    out = attention(q, k, v, plan=plan)
    assert sum(standin.calls.values()) == 0
    torch.testing.assert_close(out, eager_attention(q, k, v, None, None, None))
    attention(q, k[:, :, :262144], v[:, :, :262144], plan=plan)
    assert standin.calls == {"npu_fused_infer_attention_score": 1}


# The stand-in has teeth: each documented restriction our code works around is refused when violated.

def test_standin_refuses_non_contiguous_inputs(ascend_chip):
    ascend_chip("Ascend910B2")
    q, k, v = random_qkv(dtype=torch.bfloat16)
    with pytest.raises(AscendContractError, match="not contiguous"):
        torch.ops.npu.npu_fused_infer_attention_score(q.transpose(1, 2).contiguous().transpose(1, 2), k, v,
                                                      num_heads=4, input_layout="BNSD")


def test_standin_refuses_pse_shift_and_big_batches_on_310p(ascend_chip):
    ascend_chip("Ascend310P3")
    q, k, v = random_qkv(dtype=torch.float16)
    with pytest.raises(AscendContractError, match="pse_shift"):
        torch.ops.npu.npu_prompt_flash_attention(q, k, v, pse_shift=torch.zeros(1, 4, 9, 9, dtype=torch.float16),
                                                 num_heads=4, input_layout="BNSD", next_tokens=2147483647)
    q, k, v = random_qkv(batch=129, dtype=torch.float16)
    with pytest.raises(AscendContractError, match="B=129"):
        torch.ops.npu.npu_prompt_flash_attention(q, k, v, num_heads=4, input_layout="BNSD")
    with pytest.raises(AscendContractError, match="dtype"):
        torch.ops.npu.npu_prompt_flash_attention(*random_qkv(dtype=torch.bfloat16), num_heads=4, input_layout="BNSD")


def test_standin_refuses_fused_infer_attention_on_310p_and_unaligned_head_dims(ascend_chip):
    ascend_chip("Ascend310P3")
    with pytest.raises(AscendContractError, match="doc does not name this chip"):
        torch.ops.npu.npu_fused_infer_attention_score(*random_qkv(dtype=torch.float16), num_heads=4, input_layout="BNSD")
    ascend_chip("Ascend910B2")
    with pytest.raises(AscendContractError, match="aligned to 16"):
        torch.ops.npu.npu_fused_infer_attention_score(*random_qkv(dim=12, dtype=torch.bfloat16), num_heads=4,
                                                      input_layout="BNSD")


def test_standin_refuses_one_query_over_262144_keys_in_fused_infer_attention(ascend_chip):
    ascend_chip("Ascend910B2")
    q, k = torch.randn(1, 1, 1, 16).to(torch.bfloat16), torch.randn(1, 1, 262145, 16).to(torch.bfloat16)
    with pytest.raises(AscendContractError, match="with Q_S = 1, S <= 262144"):
        torch.ops.npu.npu_fused_infer_attention_score(q, k, k, num_heads=1, input_layout="BNSD")


def test_standin_masks_follow_the_ascend_polarity(ascend_chip):
    """True in atten_mask hides a key: passing our keep-mask unconverted gives a different answer."""
    ascend_chip("Ascend910B2")
    q, k, v = random_qkv(dtype=torch.bfloat16)
    keep = padding_mask([7, 3, 6], 9).expand(3, 1, 9, 9).contiguous()  # no row hides every key
    hidden = torch.ops.npu.npu_fused_infer_attention_score(q, k, v, atten_mask=~keep, num_heads=4, scale=0.25,
                                                           input_layout="BNSD")[0]
    torch.testing.assert_close(hidden.float(), fp32_reference(q, k, v, keep), atol=2e-2, rtol=2e-2)
    wrong = torch.ops.npu.npu_fused_infer_attention_score(q, k, v, atten_mask=keep, num_heads=4, scale=0.25,
                                                          input_layout="BNSD")[0]
    assert (wrong.float() - hidden.float()).abs().max() > 0.1


def test_chip_query_cannot_be_traced_so_it_must_stay_out_of_the_forward(ascend_chip):
    ascend_chip("Ascend910B2")

    def forward_that_asks_the_device(x):
        return x * 2 if "910" in torch.npu.get_device_name(0) else x

    with pytest.raises(Exception, match="builtin|get_device_name|Unsupported"):
        torch.compile(forward_that_asks_the_device, fullgraph=True, backend="eager")(torch.ones(2))


@pytest.mark.parametrize("profile", ["310P", "910B"])
def test_ascend_attention_compiles_into_one_graph_with_the_fused_op(ascend_chip, profile):
    from npu_models import runtime
    from tests.npu_standin import NPU0
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    plan = runtime.kernel_plan(NPU0)
    q, k, v = random_qkv(dtype=dtype)
    mask = padding_mask([9, 3, 6], 9)
    compiled = runtime.compile_model(lambda *args: attention(*args, plan=plan), NPU0, "ge")
    torch.testing.assert_close(compiled(q, k, v, mask), attention(q, k, v, mask, plan=plan))
    assert len(standin.graphs) == 1
    assert standin.ops_in_graphs()[f"npu.{plan.ascend_attention.name}"] == 1
    assert standin.compiler_configs[0].experimental_config.frozen_parameter


# ---- GELU and add + LayerNorm -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_gelu_backends_match_the_erf_formula(dtype, tol):
    x = torch.randn(4, 33, dtype=dtype) * 3
    torch.testing.assert_close(activation.gelu(x, PORTABLE).float(), activation.eager_gelu(x).float(), atol=tol, rtol=tol)
    # the tanh approximation is a real bug that moves BERT logits by ~5e-5: the reference must tell them apart
    assert (F.gelu(x.float(), approximate="tanh") - activation.eager_gelu(x.float())).abs().max() > 1e-4


@pytest.mark.parametrize("profile", ["310P", "910B"])
def test_npu_gelu_asks_for_the_exact_form(ascend_chip, profile):
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    x = torch.randn(8, 5, dtype=dtype) * 3
    torch.testing.assert_close(activation.gelu(x, plan_for_ascend_chip(chip)), activation.eager_gelu(x))
    assert standin.calls == {"npu_gelu": 1}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_add_layer_norm_matches_reference(dtype, tol):
    x, residual = torch.randn(2, 5, 32, dtype=dtype), torch.randn(2, 5, 32, dtype=dtype)
    weight, bias = torch.randn(32, dtype=dtype), torch.randn(32, dtype=dtype)
    torch.testing.assert_close(norm.add_layer_norm(x, residual, weight, bias, 1e-12).float(),
                               norm.eager_add_layer_norm(x, residual, weight, bias, 1e-12).float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("profile", ["310P", "910B"])
def test_add_layer_norm_is_aten_on_ascend_as_the_fused_op_is_undocumented(ascend_chip, profile):
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    x, residual = torch.randn(2, 5, 32, dtype=dtype), torch.randn(2, 5, 32, dtype=dtype)
    weight, bias = torch.randn(32, dtype=dtype), torch.randn(32, dtype=dtype)
    out = norm.add_layer_norm(x, residual, weight, bias, 1e-12, plan_for_ascend_chip(chip))
    assert sum(standin.calls.values()) == 0
    torch.testing.assert_close(out.float(), norm.eager_add_layer_norm(x, residual, weight, bias, 1e-12).float(),
                               atol=2e-2, rtol=2e-2)
    # the stand-in refuses the op itself: no doc page names any chip
    with pytest.raises(AscendContractError, match="npu_add_layer_norm: its doc does not name this chip"):
        torch.ops.npu.npu_add_layer_norm(x, residual, weight, bias, 1e-12, False)


def test_bf16_elementwise_ops_stay_off_the_310p(ascend_chip):
    """310P has no bf16: a bf16 tensor there (never produced by our dtype policy) runs torch's op."""
    standin = ascend_chip("Ascend310P3")
    activation.gelu(torch.randn(4, dtype=torch.bfloat16), plan_for_ascend_chip("Ascend310P3"))
    assert sum(standin.calls.values()) == 0
