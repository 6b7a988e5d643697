"""Multi-head self-attention with one fused q/k/v projection."""
import torch
import torch.nn.functional as F
from torch import nn

from kernels import attention


class Attention(nn.Module):
    """qkv: Linear(dim, 3 * dim) with q, k, v stacked along the output (fused at conversion time).

    qkv_bias: "qkv" (one bias for all three), "qv" (BEiT/VLMo: q and v biases, keys unbiased) or None.
    `num_heads` counts the heads this module computes: tensor parallelism lowers it per rank.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: str | None = "qkv"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias == "qkv")
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None):
        batch, length, _ = x.shape
        if hasattr(self, "q_bias"):
            qkv = F.linear(x, self.qkv.weight, torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias]))
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, mask, bias=bias)  # each of q, k, v: [B, H, S, D]
        return self.proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))
