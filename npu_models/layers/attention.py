"""Multi-head self-attention with one fused q/k/v projection."""
import torch
import torch.nn.functional as F
from torch import nn

from kernels import PORTABLE, attention
from npu_models.layers.quant import QuantLinear


class Attention(nn.Module):
    """Self-attention: qkv = Linear(dim, 3 * dim), q, k, v stacked along the output (fused at conversion).
    Cross-attention (kv_dim given): q = Linear(dim, inner) on x, kv = Linear(kv_dim, 2 * inner) on the context,
    proj = Linear(inner, dim); inner_dim defaults to dim (ViLBERT's co-attention works in its own width).

    qkv_bias: "qkv" (one bias for all three), "qv" (BEiT/VLMo: q and v biases, keys unbiased) or None.
    `num_heads` counts the heads this module computes: tensor parallelism lowers it per rank.
    `kernel_plan` picks the attention backend; the runtime sets it when the model is put on its device.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: str | None = "qkv", kv_dim: int | None = None,
                 inner_dim: int | None = None):
        super().__init__()
        inner_dim = inner_dim or dim
        if inner_dim % num_heads:
            raise ValueError(f"attention width {inner_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.kernel_plan = PORTABLE
        self.head_dim = inner_dim // num_heads
        if kv_dim is None:
            self.qkv = nn.Linear(dim, 3 * inner_dim, bias=qkv_bias == "qkv")
        else:
            self.q = nn.Linear(dim, inner_dim)
            self.kv = nn.Linear(kv_dim, 2 * inner_dim)
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(inner_dim))
            self.v_bias = nn.Parameter(torch.zeros(inner_dim))
        self.proj = nn.Linear(inner_dim, dim)

    def split_heads(self, x: torch.Tensor, parts: int) -> list[torch.Tensor]:
        """[B, S, parts * H * D] -> `parts` tensors [B, H, S, D]."""
        batch, length, _ = x.shape
        return list(x.view(batch, length, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0))

    def qkv_bias(self) -> torch.Tensor | None:
        if hasattr(self, "q_bias"):
            return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        return self.qkv.bias

    def project_qkv(self, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """x through the fused q/k/v projection's output features `rows`. A quantized projection holds the
        assembled bias itself (quantize_model folds q_bias/v_bias into it)."""
        if isinstance(self.qkv, QuantLinear):
            return self.qkv(x, rows)
        bias = self.qkv_bias()
        return F.linear(x, self.qkv.weight[rows], None if bias is None else bias[rows])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                context: torch.Tensor | None = None, cls_only: bool = False):
        """mask (bool, True = attend) and bias are over the keys: x's own tokens, or the context's.

        cls_only: only the first token queries (all keys still answer); returns [B, 1, dim]. A classifier's
        last layer needs no other row, so neither their q projection nor their attention is computed.
        """
        queries = x[:, :1] if cls_only else x
        if context is not None:
            (q,), (k, v) = self.split_heads(self.q(queries), 1), self.split_heads(self.kv(context), 2)
        elif cls_only:  # the fused projection's q rows for the first token, its k/v rows for all
            inner = self.num_heads * self.head_dim
            (q,) = self.split_heads(self.project_qkv(queries, slice(None, inner)), 1)
            k, v = self.split_heads(self.project_qkv(x, slice(inner, None)), 2)
        else:
            q, k, v = self.split_heads(self.project_qkv(x), 3)
        if cls_only:  # a bias or mask given per query keeps the first query's row
            bias = bias[..., :1, :] if bias is not None and bias.dim() > 1 else bias
            mask = mask[..., :1, :] if mask is not None and mask.dim() > 1 else mask
        out = attention(q, k, v, mask, bias=bias, plan=self.kernel_plan)
        return self.proj(out.transpose(1, 2).reshape(queries.shape[0], queries.shape[1], self.num_heads * self.head_dim))
