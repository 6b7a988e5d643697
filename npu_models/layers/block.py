"""Transformer encoder blocks, one class per kind, all built from the same Attention and Mlp."""
from torch import nn

from npu_kernels import PORTABLE, add_layer_norm
from npu_models.layers.attention import Attention
from npu_models.layers.mlp import Mlp


class PreNormBlock(nn.Module):
    """ViT: x = x + Attn(LN(x));  x = x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm_eps: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.mlp_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x, mask=None, queries=None):
        """queries: the rows of x [B, Sq, dim] whose outputs are computed (a classifier's last block: x[:, :1]);
        default all of x. Every row of x answers as a key."""
        queries = x if queries is None else queries
        keys = self.attn_norm(x)
        normed = keys if queries is x else self.attn_norm(queries)
        x = queries + self.attn(normed, mask, keys=keys)
        return x + self.mlp(self.mlp_norm(x))


class PostNormBlock(nn.Module):
    """BERT: x = LN(x + Attn(x));  [x = LN(x + CrossAttn(x, context));]  x = LN(x + MLP(x)).

    cross_attention_dim: the context width, for blocks that can also attend to another encoder's tokens
    (BLIP's text encoder over image features); without a context the cross-attention is skipped.
    Each residual add + LayerNorm is one fused op on Ascend (`kernel_plan`, set by the runtime).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm_eps: float, cross_attention_dim: int | None = None):
        super().__init__()
        self.kernel_plan = PORTABLE
        self.attn = Attention(dim, num_heads)
        self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        if cross_attention_dim:
            self.cross_attn = Attention(dim, num_heads, kv_dim=cross_attention_dim)
            self.cross_attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x, mask=None, context=None, context_mask=None, queries=None):
        """queries: the rows of x [B, Sq, dim] whose outputs are computed (a classifier's last block: x[:, :1]);
        default all of x. Every row of x answers as a key."""
        queries = x if queries is None else queries
        x = residual_norm(self.attn(queries, mask, keys=x), queries, self.attn_norm, self.kernel_plan)
        if context is not None:
            x = residual_norm(self.cross_attn(x, context_mask, keys=context), x, self.cross_attn_norm,
                              self.kernel_plan)
        return residual_norm(self.mlp(x), x, self.mlp_norm, self.kernel_plan)


class CrossAttentionBlock(nn.Module):
    """One stream of ViLBERT's co-attention layer: x = LN(x + CrossAttn(x, context)); x = LN(x + MLP(x)),
    the cross-attention with its own heads and width (inner_dim), no self-attention."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, inner_dim: int, mlp_dim: int, norm_eps: float):
        super().__init__()
        self.kernel_plan = PORTABLE
        self.cross_attn = Attention(dim, num_heads, kv_dim=context_dim, inner_dim=inner_dim)
        self.cross_attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x, context, context_mask=None):
        x = residual_norm(self.cross_attn(x, context_mask, keys=context), x, self.cross_attn_norm, self.kernel_plan)
        return residual_norm(self.mlp(x), x, self.mlp_norm, self.kernel_plan)


def residual_norm(update, x, norm: nn.LayerNorm, plan):
    """norm(x + update), one fused op where the plan has it."""
    return add_layer_norm(update, x, norm.weight, norm.bias, norm.eps, plan)
