"""Mixture-of-modality-experts (VLMo): shared attention, one pre-norm FFN expert per modality."""
import torch
from torch import nn

from npu_models.layers.attention import Attention
from npu_models.layers.mlp import Mlp

# A route lists (expert, number of tokens) for consecutive slices of the sequence, e.g.
# (("text", 40), ("image", 901)). Routes are Python constants, so graph mode sees static slices.
Route = tuple[tuple[str, int], ...]


class MultiwayFFN(nn.Module):
    """LayerNorm + MLP per expert; each expert runs only on its own contiguous slice of tokens."""

    def __init__(self, dim: int, hidden_dim: int, experts: tuple[str, ...], norm_eps: float):
        super().__init__()
        self.norms = nn.ModuleDict({name: nn.LayerNorm(dim, eps=norm_eps) for name in experts})
        self.mlps = nn.ModuleDict({name: Mlp(dim, hidden_dim) for name in experts})

    def forward(self, x: torch.Tensor, route: Route) -> torch.Tensor:
        outputs, start = [], 0
        for expert, length in route:
            part = x[:, start:start + length]
            outputs.append(self.mlps[expert](self.norms[expert](part)))
            start += length
        if start != x.shape[1]:
            raise ValueError(f"route covers {start} tokens, the sequence has {x.shape[1]}")
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


class MultiwayBlock(nn.Module):
    """Pre-norm block with layer-scale: x += g1 * Attn(LN(x)); x += g2 * MultiwayFFN(x, route)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm_eps: float, experts: tuple[str, ...],
                 layer_scale: float = 0.1):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias="qv")
        self.gamma_attn = nn.Parameter(torch.full((dim,), layer_scale))
        self.ffn = MultiwayFFN(dim, mlp_dim, experts, norm_eps)
        self.gamma_ffn = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x, route: Route, mask=None, bias=None, queries=None):
        """queries: the rows of x whose outputs are computed (a classifier's last block: x[:, :1]), default all
        of x; every row of x answers as a key. `route` and the bias's query rows are the queries'."""
        queries = x if queries is None else queries
        keys = self.attn_norm(x)
        normed = keys if queries is x else self.attn_norm(queries)
        x = queries + self.gamma_attn * self.attn(normed, mask, bias, keys=keys)
        return x + self.gamma_ffn * self.ffn(x, route)
