import pytest
import torch
import torch.nn.functional as F

from kernels import activation, attention_backends as attention_module, norm
from kernels.attention_backends import ASCEND_NO_TOKEN_LIMIT, eager_attention, npu_attention, sdpa_attention, to_ascend_mask


def random_qkv(batch=3, heads=4, q_len=9, k_len=9, dim=16, dtype=torch.float32):
    return [torch.randn(batch, heads, n, dim, dtype=dtype) for n in (q_len, k_len, k_len)]


def padding_mask(lengths, k_len):
    """Key padding mask [B, 1, 1, Sk], True = attend."""
    return (torch.arange(k_len)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


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


def test_sdpa_matches_reference_in_bf16():
    q, k, v = random_qkv(dtype=torch.bfloat16)
    mask = padding_mask([9, 3, 6], 9)
    torch.testing.assert_close(sdpa_attention(q, k, v, mask).float(), eager_attention(q, k, v, mask).float(),
                               atol=2e-2, rtol=2e-2)


def test_default_backend_on_cpu_is_sdpa(monkeypatch):
    calls = []
    monkeypatch.setitem(attention_module.BACKENDS, "sdpa", lambda *a: calls.append("sdpa") or eager_attention(*a))
    attention_module.attention(*random_qkv())
    assert calls == ["sdpa"]


def test_ascend_mask_inverts_and_expands_key_padding():
    mask = padding_mask([3, 1], 4)  # [2, 1, 1, 4]
    converted = to_ascend_mask(mask, q_len=5, k_len=4)
    assert converted.shape == (2, 1, 5, 4) and converted.dtype == torch.bool and converted.is_contiguous()
    expected_row = torch.tensor([[False, False, False, True], [False, True, True, True]])
    assert torch.equal(converted, expected_row[:, None, None, :].expand(2, 1, 5, 4))


def test_ascend_mask_keeps_per_head_and_2d_masks():
    per_head = torch.rand(2, 3, 4, 4) > 0.5
    assert torch.equal(to_ascend_mask(per_head, 4, 4), ~per_head)
    square = torch.rand(4, 6) > 0.5
    assert torch.equal(to_ascend_mask(square, 4, 6), (~square)[None, None])
    with pytest.raises(TypeError, match="torch.bool"):
        to_ascend_mask(torch.zeros(2, 1, 1, 4), 4, 4)


def ascend_reference(q, k, v, atten_mask, num_heads, scale, pre_tokens, next_tokens, input_layout, pse_shift=None):
    """The documented Ascend semantics: True in atten_mask masks out; only keys j with
    i - pre_tokens <= j <= i + next_tokens are visible; pse_shift [B|1, N, Sq, Sk] is added to the scores."""
    assert input_layout == "BNSD" and q.shape[1] == num_heads
    if pse_shift is not None:
        assert pse_shift.dim() == 4 and pse_shift.shape[1:] == (num_heads, q.shape[2], k.shape[2])
        assert pse_shift.dtype == q.dtype
    i = torch.arange(q.shape[2])[:, None]
    j = torch.arange(k.shape[2])[None, :]
    visible = (j >= i - pre_tokens) & (j <= i + next_tokens)
    if atten_mask is not None:
        assert atten_mask.dtype == torch.bool and atten_mask.dim() == 4
        visible = visible & ~atten_mask
    return eager_attention(q, k, v, visible, scale, pse_shift)


def test_npu_backend_on_310p_calls_prompt_flash_attention(fake_torch_npu, monkeypatch):
    calls = []

    def npu_prompt_flash_attention(q, k, v, *, atten_mask=None, num_heads=1, scale_value=1.0,
                                   pre_tokens=ASCEND_NO_TOKEN_LIMIT, next_tokens=0, input_layout="BSH"):
        calls.append(next_tokens)
        return ascend_reference(q, k, v, atten_mask, num_heads, scale_value, pre_tokens, next_tokens, input_layout)

    fake_torch_npu.npu_prompt_flash_attention = npu_prompt_flash_attention
    monkeypatch.setattr(attention_module, "npu_chip_name", lambda device: "Ascend310P3")
    q, k, v = random_qkv(dtype=torch.float16)
    mask = padding_mask([9, 2, 5], 9)
    out = npu_attention(q, k, v, mask)
    assert calls == [ASCEND_NO_TOKEN_LIMIT]  # bidirectional, not the causal default
    torch.testing.assert_close(out.float(), eager_attention(q.float(), k.float(), v.float(), mask), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("scale_keyword", ["scale", "scale_value"])
def test_npu_backend_on_910_calls_fused_infer_attention(fake_torch_npu, monkeypatch, scale_keyword):
    def fused(q, k, v, *, atten_mask=None, num_heads=1, pre_tokens=ASCEND_NO_TOKEN_LIMIT,
              next_tokens=ASCEND_NO_TOKEN_LIMIT, input_layout="BSH", pse_shift=None, **scale):
        assert list(scale) == [scale_keyword]
        out = ascend_reference(q, k, v, atten_mask, num_heads, scale[scale_keyword], pre_tokens, next_tokens,
                               input_layout, pse_shift)
        return out, None

    # Both spellings of the scale argument exist across torch_npu releases.
    exec(f"def npu_fused_infer_attention_score(q, k, v, *, atten_mask=None, pse_shift=None, num_heads=1,"
         f" {scale_keyword}=1.0, pre_tokens=0, next_tokens=0, input_layout='BSH'):\n"
         f"    return fused(q, k, v, atten_mask=atten_mask, num_heads=num_heads, {scale_keyword}={scale_keyword},"
         " pre_tokens=pre_tokens, next_tokens=next_tokens, input_layout=input_layout, pse_shift=pse_shift)",
         {"fused": fused}, fake_torch_npu.__dict__)
    monkeypatch.setattr(attention_module, "npu_chip_name", lambda device: "Ascend910B2")
    q, k, v = random_qkv(q_len=6, k_len=8, dtype=torch.bfloat16)
    mask = padding_mask([8, 3, 1], 8)
    out = npu_attention(q, k, v, mask, scale=0.2)
    torch.testing.assert_close(out.float(), eager_attention(q.float(), k.float(), v.float(), mask, 0.2),
                               atol=2e-2, rtol=2e-2)
    bias = torch.randn(4, 6, 8)
    out = npu_attention(q, k, v, mask, scale=0.2, bias=bias)
    torch.testing.assert_close(out.float(), eager_attention(q.float(), k.float(), v.float(), mask, 0.2, bias),
                               atol=3e-2, rtol=3e-2)


def test_npu_backend_falls_back_to_math_for_unsupported_dtype(fake_torch_npu, monkeypatch):
    monkeypatch.setattr(attention_module, "npu_chip_name", lambda device: "Ascend310P3")
    q, k, v = random_qkv()  # fp32: the 310P kernel takes fp16 only
    mask = padding_mask([9, 2, 5], 9)
    torch.testing.assert_close(npu_attention(q, k, v, mask), eager_attention(q, k, v, mask))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_gelu_backends_match_the_erf_formula(dtype, tol):
    x = torch.randn(4, 33, dtype=dtype) * 3
    torch.testing.assert_close(activation.torch_gelu(x).float(), activation.eager_gelu(x).float(), atol=tol, rtol=tol)
    # the tanh approximation is a real bug that moves BERT logits by ~5e-5: the reference must tell them apart
    assert (F.gelu(x.float(), approximate="tanh") - activation.eager_gelu(x.float())).abs().max() > 1e-4


def test_npu_gelu_asks_for_the_exact_form(fake_torch_npu):
    fake_torch_npu.npu_gelu = lambda x, approximate: F.gelu(x, approximate=approximate)
    x = torch.randn(8, 5)
    torch.testing.assert_close(activation.gelu(x, backend="npu"), activation.eager_gelu(x))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_add_layer_norm_matches_reference(dtype, tol):
    x, residual = torch.randn(2, 5, 32, dtype=dtype), torch.randn(2, 5, 32, dtype=dtype)
    weight, bias = torch.randn(32, dtype=dtype), torch.randn(32, dtype=dtype)
    torch.testing.assert_close(norm.torch_add_layer_norm(x, residual, weight, bias, 1e-12).float(),
                               norm.eager_add_layer_norm(x, residual, weight, bias, 1e-12).float(), atol=tol, rtol=tol)
