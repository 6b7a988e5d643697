"""Scaled dot-product attention with one backend per device and an eager reference.

Convention for every caller: q, k, v are [B, H, S, D] (any strides); `mask` is boolean and broadcastable
to [B, 1, Sq, Sk] or [B, H, Sq, Sk] with True meaning "attend" (the F.scaled_dot_product_attention
convention); `bias` is an optional float tensor broadcastable to [B, H, Sq, Sk] added to the scaled
scores (a relative-position bias). A query row with no attended key at all has an undefined output.
Softmax runs in fp32 on every backend. The backend comes from the caller's `KernelPlan`, fixed at load time.
"""
import torch
import torch.nn.functional as F

from npu_kernels.plan import ASCEND_NO_TOKEN_LIMIT, PORTABLE, AscendAttentionOp, KernelPlan


def eager_attention(q, k, v, mask=None, scale=None, bias=None):
    """The plain math, used as the reference for every other backend and as the Ascend fallback."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.float()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.matmul(scores.softmax(dim=-1), v.float()).to(v.dtype)


# A padded key's extra score channel: large enough that exp() of it is 0 in fp32 after any scale the
# models use, small enough for fp16 (max 65504).
PADDED_KEY_SCORE = -30000.0


def fold_key_padding(q, k, v, key_mask):
    """Key padding as one more channel of the dot product, so SDPA needs no [B, H, Sq, Sk] mask tensor.

    q gains a channel of ones, k a channel that is 0 for kept keys and PADDED_KEY_SCORE for padded ones, so
    q.k drops by that much exactly where a key is masked; the head dim is padded with zeros to the next
    multiple of 8 (what the fused kernels take), v too, and the caller slices the output back. The cost is
    8 more channels in both attention matmuls; the saving is the [batch, heads, n, n] bias + mask tensor.
    """
    batch, heads, q_len, head_dim = q.shape
    extra = 8 - head_dim % 8
    ones = q.new_ones(batch, heads, q_len, 1)
    padded_keys = (~key_mask).to(k.dtype).transpose(-1, -2).expand(batch, heads, k.shape[2], 1) * PADDED_KEY_SCORE
    q = torch.cat([q, ones, q.new_zeros(batch, heads, q_len, extra - 1)], dim=-1)
    k = torch.cat([k, padded_keys, k.new_zeros(batch, heads, k.shape[2], extra - 1)], dim=-1)
    return q, k, F.pad(v, (0, extra))


def sdpa_attention(q, k, v, mask=None, scale=None, bias=None):
    """PyTorch's fused attention (flash / memory-efficient / CPU flash kernels).

    SDPA takes one additive float mask. A bias with a key-padding mask ([B, 1, 1, Sk], the common case)
    keeps the bias batch-shared and folds the padding into q and k (fold_key_padding); a bias with any
    other mask becomes the bias with -inf on masked keys. The bias goes in as 4-D: given a 3-D [H, Sq, Sk] mask
    (VLMo's relative positions), torch 2.14 leaves its CPU flash kernel for the unfused math, 4x slower at VLMo's
    941 tokens (measured; a third of VLMo's forward at batch 8)."""
    if bias is not None:
        bias = bias.to(q.dtype)
        while bias.dim() < 4:
            bias = bias.unsqueeze(0)
        if mask is not None and mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1:
            head_dim = q.shape[-1]
            q, k, v = fold_key_padding(q, k, v, mask)
            scale = head_dim ** -0.5 if scale is None else scale
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)[..., :head_dim]
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
