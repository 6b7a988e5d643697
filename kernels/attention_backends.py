"""Scaled dot-product attention with one backend per device and an eager reference.

Convention for every caller: q, k, v are [B, H, S, D]; `mask` is boolean and broadcastable to
[B, H, Sq, Sk] with True meaning "attend" (the F.scaled_dot_product_attention convention); `bias` is an
optional float tensor broadcastable to [B, H, Sq, Sk] added to the scaled scores (a relative-position
bias). A query row with no attended key at all has an undefined output. Softmax runs in fp32 on every
backend.
"""
import functools

import torch
import torch.nn.functional as F

from npu_models.runtime import import_torch_npu, is_310p, npu_chip_name

# Ascend kernels limit attention to a band [i - pre_tokens, i + next_tokens]; this value disables it.
ASCEND_NO_TOKEN_LIMIT = 2147483647


def eager_attention(q, k, v, mask=None, scale=None, bias=None):
    """The plain math, used as the reference for every other backend."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.matmul(scores.softmax(dim=-1), v.float()).to(v.dtype)


def sdpa_attention(q, k, v, mask=None, scale=None, bias=None):
    """PyTorch's fused attention (flash / memory-efficient / CPU flash kernels)."""
    if bias is not None:  # SDPA takes one additive float mask: the bias with -inf on masked keys
        bias = bias.to(q.dtype)
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def to_ascend_mask(mask: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """Convert our keep-mask (True = attend) into the Ascend convention (True = masked out).

    Ascend kernels take bool masks shaped B1SS, BNSS, 11SS or SS, not broadcastable ones, so a key
    padding mask [B, 1, 1, Sk] is expanded to [B, 1, Sq, Sk].
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be torch.bool (True = attend), got {mask.dtype}")
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    batch, heads = mask.shape[0], mask.shape[1]
    return (~mask).expand(batch, heads, q_len, k_len).contiguous()


def to_ascend_bias(bias: torch.Tensor, heads: int, q_len: int, k_len: int, dtype) -> torch.Tensor:
    """A broadcastable additive bias as the [B or 1, N, Sq, Sk] `pse_shift` the Ascend kernels take."""
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    return bias.expand(bias.shape[0], heads, q_len, k_len).to(dtype).contiguous()


@functools.lru_cache(maxsize=None)
def _keyword_for_scale(op_name: str) -> str:
    """npu_fused_infer_attention_score renamed `scale_value` to `scale` in torch_npu 7.0."""
    torch_npu = import_torch_npu()
    try:
        names = {arg.name for arg in getattr(torch.ops.npu, op_name).default._schema.arguments}
    except (AttributeError, RuntimeError):
        import inspect
        names = set(inspect.signature(getattr(torch_npu, op_name)).parameters)
    return "scale" if "scale" in names else "scale_value"


def npu_attention(q, k, v, mask=None, scale=None, bias=None):
    """Ascend fused inference attention: prompt flash attention on 310P, fused infer attention on 910-class.

    Both are called with the bidirectional token limits (their default next_tokens=0 would be causal);
    a bias goes in as `pse_shift`, which both take as [B or 1, N, Sq, Sk] in the query dtype.
    """
    torch_npu = import_torch_npu()
    chip = npu_chip_name(q.device)
    supported = (torch.float16,) if is_310p(chip) else (torch.float16, torch.bfloat16)
    if q.dtype not in supported:
        # The fused kernels do not take this dtype on this chip (fp32, say): fall back to the math.
        return eager_attention(q, k, v, mask, scale, bias)
    heads, q_len, k_len = q.shape[1], q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    ascend_mask = None if mask is None else to_ascend_mask(mask, q_len, k_len)
    common = dict(atten_mask=ascend_mask, num_heads=heads, input_layout="BNSD",
                  pre_tokens=ASCEND_NO_TOKEN_LIMIT, next_tokens=ASCEND_NO_TOKEN_LIMIT)
    if bias is not None:
        common["pse_shift"] = to_ascend_bias(bias, heads, q_len, k_len, q.dtype)
    if is_310p(chip):
        return torch_npu.npu_prompt_flash_attention(q, k, v, scale_value=scale, **common)
    op = "npu_fused_infer_attention_score"
    out, _ = getattr(torch_npu, op)(q, k, v, **{_keyword_for_scale(op): scale}, **common)
    return out


BACKENDS = {"eager": eager_attention, "sdpa": sdpa_attention, "npu": npu_attention}


def attention(q, k, v, mask=None, scale=None, bias=None, backend=None):
    """Attention on the best backend for q's device (npu -> Ascend fused kernel, else SDPA)."""
    if backend is None:
        backend = "npu" if q.device.type == "npu" else "sdpa"
    return BACKENDS[backend](q, k, v, mask, scale, bias)
