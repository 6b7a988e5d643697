"""Scaled dot-product attention with one backend per device and an eager reference.

Convention for every caller: q, k, v are [B, H, S, D] (any strides); `mask` is boolean and broadcastable
to [B, 1, Sq, Sk] or [B, H, Sq, Sk] with True meaning "attend" (the F.scaled_dot_product_attention
convention); `bias` is an optional float tensor broadcastable to [B, H, Sq, Sk] added to the scaled
scores (a relative-position bias). A query row with no attended key at all has an undefined output.
Softmax runs in fp32 on every backend. The backend comes from the caller's `KernelPlan`, fixed at load time.
"""
import torch
import torch.nn.functional as F

from kernels.plan import ASCEND_NO_TOKEN_LIMIT, PORTABLE, AscendAttentionOp, KernelPlan


def eager_attention(q, k, v, mask=None, scale=None, bias=None):
    """The plain math, used as the reference for every other backend and as the Ascend fallback."""
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
    """Our keep-mask (True = attend), shared by all heads, as the Ascend mask (True = masked out).

    PFA and FIA both accept (B, 1, Sq, Sk) and (1, 1, Sq, Sk) (not broadcast shapes, not per-head BNSS),
    contiguous: a key-padding mask [B, 1, 1, Sk] is expanded over the queries.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be torch.bool (True = attend), got {mask.dtype}")
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    if mask.shape[1] != 1:
        raise ValueError(f"Ascend attention masks are shared by all heads; got a per-head mask {list(mask.shape)}")
    return (~mask).expand(mask.shape[0], 1, q_len, k_len).contiguous()


def to_ascend_bias(bias: torch.Tensor, heads: int, q_len: int, k_len: int, dtype) -> torch.Tensor:
    """A broadcastable additive bias as the contiguous (B|1, N, Sq, Sk) `pse_shift`, in the query dtype."""
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    return bias.expand(bias.shape[0], heads, q_len, k_len).to(dtype).contiguous()


def ascend_attention(q, k, v, mask, scale, bias, op: AscendAttentionOp):
    """The chip's fused inference attention, called as documented, or the eager math where it cannot take the case.

    q/k/v go in contiguous (neither op takes strided inputs) in BNSD; with Sq > 1 the output comes back as
    BSND (input_layout BNSD_BSND), so merging the heads afterwards is a free view. Both ops get the
    bidirectional token limits (PFA's default next_tokens=0 would be causal). Batches above the op's limit
    (128 on 310P) are cut into chunks the op takes.
    """
    batch, heads, q_len, head_dim = q.shape
    k_len = k.shape[2]
    per_head_mask = mask is not None and mask.dim() == 4 and mask.shape[1] != 1
    if (not op.accepts(q.dtype, heads, q_len, k_len, head_dim) or (bias is not None and not op.takes_bias)
            or per_head_mask):
        return eager_attention(q, k, v, mask, scale, bias)
    scale = head_dim ** -0.5 if scale is None else scale
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    ascend_mask = None if mask is None else to_ascend_mask(mask, q_len, k_len)
    pse_shift = None if bias is None else to_ascend_bias(bias, heads, q_len, k_len, q.dtype)
    layout = "BNSD_BSND" if q_len > 1 else "BNSD"
    fused = getattr(torch.ops.npu, op.name)
    outputs = []
    for start in range(0, batch, op.max_batch):
        rows = slice(start, start + op.max_batch)
        optional = {}
        if ascend_mask is not None:
            optional["atten_mask"] = ascend_mask[rows] if ascend_mask.shape[0] > 1 else ascend_mask
        if pse_shift is not None:
            optional["pse_shift"] = pse_shift[rows] if pse_shift.shape[0] > 1 else pse_shift
        out = fused(q[rows], k[rows], v[rows], num_heads=heads, input_layout=layout, pre_tokens=ASCEND_NO_TOKEN_LIMIT,
                    next_tokens=ASCEND_NO_TOKEN_LIMIT, **{op.scale_keyword: scale}, **optional)
        outputs.append(out[0] if op.returns_tuple else out)
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return out.transpose(1, 2) if layout == "BNSD_BSND" else out


def attention(q, k, v, mask=None, scale=None, bias=None, plan: KernelPlan = PORTABLE):
    """Attention on the backend the plan names (sdpa by default)."""
    if plan.attention == "ascend":
        return ascend_attention(q, k, v, mask, scale, bias, plan.ascend_attention)
    if plan.attention == "eager":
        return eager_attention(q, k, v, mask, scale, bias)
    return sdpa_attention(q, k, v, mask, scale, bias)
