"""Multi-head attention: queries over keys, one fused q/k/v projection where they are the same tokens."""
import torch
import torch.nn.functional as F
from torch import nn

from npu_kernels import PORTABLE, attention
from npu_models.layers.quant import QuantLinear


def fused_qkv_bias(q_bias: torch.Tensor, v_bias: torch.Tensor) -> torch.Tensor:
    """The fused projection's bias from BEiT/VLMo's separate q and v biases (k has none)."""
    return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])


class Attention(nn.Module):
    """Multi-head attention of query tokens over key tokens: q is projected from the queries, k and v from the
    keys. Self-attention: the keys are the queries themselves, or the sequence they are rows of (a
    classifier's last layer queries with its first token only, so no other row's q projection or attention is
    computed); qkv = Linear(dim, 3 * dim), q, k, v stacked along the output (fused at conversion).
    Cross-attention (kv_dim given): the keys are another encoder's tokens; q = Linear(dim, inner),
    kv = Linear(kv_dim, 2 * inner); inner_dim defaults to dim (ViLBERT's co-attention works in its own width).
    proj = Linear(inner, dim).

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
            return fused_qkv_bias(self.q_bias, self.v_bias)
        return self.qkv.bias

    def project_qkv(self, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """x through the fused q/k/v projection's output features `rows`. A quantized projection holds the
        assembled bias itself (quantize_model folds q_bias/v_bias into it)."""
        if isinstance(self.qkv, QuantLinear):
            return self.qkv(x, rows)
        bias = self.qkv_bias()
        return F.linear(x, self.qkv.weight[rows], None if bias is None else bias[rows])

    def project(self, x: torch.Tensor, keys: torch.Tensor | None) -> list[torch.Tensor]:
        """q from the queries x, k and v from the keys, each [B, H, S, D]."""
        if keys is None or keys is x:  # the same tokens: q, k and v in one fused matmul
            return self.split_heads(self.project_qkv(x), 3)
        if not hasattr(self, "qkv"):  # cross-attention: its own q and kv projections
            return [*self.split_heads(self.q(x), 1), *self.split_heads(self.kv(keys), 2)]
        inner = self.num_heads * self.head_dim  # queries that are rows of the keys: the fused weight's rows
        return [*self.split_heads(self.project_qkv(x, slice(None, inner)), 1),
                *self.split_heads(self.project_qkv(keys, slice(inner, None)), 2)]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                keys: torch.Tensor | None = None):
        """x [B, Sq, dim] queries `keys` [B, Sk, kv_dim] (default: x itself); returns [B, Sq, dim].

        mask (bool, True = attend) and bias are over (query, key) pairs, broadcast over the dimensions they
        lack: a key-padding mask [B, 1, 1, Sk] serves any queries, a bias with query rows has x's rows.
        """
        q, k, v = self.project(x, keys)
        out = attention(q, k, v, mask, bias=bias, plan=self.kernel_plan)
        return self.proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.num_heads * self.head_dim))
