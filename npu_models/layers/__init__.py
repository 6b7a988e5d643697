"""Shared building blocks: every model is assembled from these."""
from npu_models.layers.attention import Attention
from npu_models.layers.block import CrossAttentionBlock, PostNormBlock, PreNormBlock
from npu_models.layers.embeddings import PatchEmbed, TextEmbeddings
from npu_models.layers.mlp import Mlp
from npu_models.layers.multiway import MultiwayBlock, MultiwayFFN
from npu_models.layers.quant import QuantLinear

__all__ = ["Attention", "CrossAttentionBlock", "Mlp", "MultiwayBlock", "MultiwayFFN", "PatchEmbed", "PostNormBlock", "PreNormBlock",
           "QuantLinear", "TextEmbeddings"]
