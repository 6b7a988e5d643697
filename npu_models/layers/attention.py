"""Multi-head self-attention with one fused q/k/v projection."""
import torch
from torch import nn

from kernels import attention


class Attention(nn.Module):
    """qkv: Linear(dim, 3 * dim) with q, k, v stacked along the output (fused at conversion time).

    `num_heads` counts the heads this module computes: tensor parallelism lowers it per rank.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, S, D]
        out = attention(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))
