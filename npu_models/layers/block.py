"""The transformer encoder block, post-norm (BERT) or pre-norm (ViT)."""
from torch import nn

from kernels import PORTABLE, add_layer_norm
from npu_models.layers.attention import Attention
from npu_models.layers.mlp import Mlp


class Block(nn.Module):
    """post-norm: x = LN(x + Attn(x)); [x = LN(x + CrossAttn(x, context));] x = LN(x + MLP(x))
    pre-norm:  x = x + Attn(LN(x));  x = x + MLP(LN(x))

    cross_attention_dim: the context width, for blocks that can also attend to another encoder's tokens
    (BLIP's text encoder over image features); without a context the cross-attention is skipped.
    self_attention=False with a cross-attention is one stream of ViLBERT's co-attention layer; the
    cross-attention then runs with cross_heads heads in cross_inner_dim channels.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, norm_eps: float, pre_norm: bool = False,
                 cross_attention_dim: int | None = None, self_attention: bool = True,
                 cross_heads: int | None = None, cross_inner_dim: int | None = None):
        super().__init__()
        self.pre_norm = pre_norm
        self.kernel_plan = PORTABLE  # set by the runtime for the device
        if self_attention:
            self.attn = Attention(dim, num_heads)
            self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        if cross_attention_dim:
            if pre_norm:
                raise ValueError("cross-attention is implemented for post-norm blocks only")
            self.cross_attn = Attention(dim, cross_heads or num_heads, kv_dim=cross_attention_dim,
                                        inner_dim=cross_inner_dim)
            self.cross_attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        elif not self_attention:
            raise ValueError("a block needs self-attention, cross-attention or both")
        self.mlp = Mlp(dim, mlp_dim)
        self.mlp_norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x, mask=None, context=None, context_mask=None):
        plan = self.kernel_plan
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), mask)
            return x + self.mlp(self.mlp_norm(x))
        if hasattr(self, "attn"):
            norm = self.attn_norm
            x = add_layer_norm(self.attn(x, mask), x, norm.weight, norm.bias, norm.eps, plan)
        if context is not None:
            norm = self.cross_attn_norm
            x = add_layer_norm(self.cross_attn(x, context_mask, context=context), x, norm.weight, norm.bias, norm.eps, plan)
        return add_layer_norm(self.mlp(x), x, self.mlp_norm.weight, self.mlp_norm.bias, self.mlp_norm.eps, plan)
