"""Shared building blocks: every model is assembled from these."""
from npu_models.layers.attention import Attention
from npu_models.layers.block import Block
from npu_models.layers.embeddings import PatchEmbed, TextEmbeddings
from npu_models.layers.mlp import Mlp
from npu_models.layers.multiway import MultiwayBlock, MultiwayFFN

__all__ = ["Attention", "Block", "Mlp", "MultiwayBlock", "MultiwayFFN", "PatchEmbed", "TextEmbeddings"]
