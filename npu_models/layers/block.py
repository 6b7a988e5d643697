"""Transformer encoder block."""
from torch import nn

from kernels import add_layer_norm
from npu_models.layers.attention import Attention
from npu_models.layers.mlp import Mlp


class PostNormBlock(nn.Module):
    """BERT's block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm_eps: float):
        super().__init__()
        self.attn = Attention(dim, num_heads)
        self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x, mask=None):
        x = add_layer_norm(self.attn(x, mask), x, self.attn_norm.weight, self.attn_norm.bias, self.attn_norm.eps)
        return add_layer_norm(self.mlp(x), x, self.mlp_norm.weight, self.mlp_norm.bias, self.mlp_norm.eps)
