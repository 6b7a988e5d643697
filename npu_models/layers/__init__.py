"""Shared building blocks: every model is assembled from these."""
from npu_models.layers.attention import Attention
from npu_models.layers.block import PostNormBlock
from npu_models.layers.embeddings import TextEmbeddings
from npu_models.layers.mlp import Mlp

__all__ = ["Attention", "Mlp", "PostNormBlock", "TextEmbeddings"]
