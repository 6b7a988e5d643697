"""ViLBERT for VQA (AllenNLP's vqa_vilbert): a BERT text stream and a region-feature image stream joined by
co-attention layers, ReLU poolers, `mul` fusion and a multi-label answer classifier."""
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from npu_models.models.bert.model import BertConfig
from npu_models.layers import CrossAttentionBlock, PostNormBlock, TextEmbeddings
from npu_models.layers.init import init_weights_
from npu_models.tokenizer import TextInput


def bert_base_uncased() -> BertConfig:
    """The text stream when the archive names bert-base-uncased (its HF config, built in)."""
    return BertConfig(vocab_size=30522, labels=[], with_pooler=False, do_lower_case=True)


@dataclass
class ViLBERTConfig:
    text: BertConfig = field(default_factory=bert_base_uncased)
    image_feature_dim: int = 1024
    image_embed_dim: int = 1024
    image_num_heads: int = 8
    image_depth: int = 6
    image_mlp_dim: int = 1024
    coattention_dim: int = 1024       # the co-attention's own width and heads
    coattention_heads: int = 8
    pooled_dim: int = 1024
    image_biattention_ids: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    text_biattention_ids: list[int] = field(default_factory=lambda: [6, 7, 8, 9, 10, 11])
    fusion: str = "mul"          # "mul" (the released model) or "sum"
    num_answers: int = 10026     # the archive's answer vocabulary decides (PAD and UNK included)

    def __post_init__(self):
        if isinstance(self.text, dict):
            self.text = BertConfig(**self.text)

    @property
    def text_input(self) -> TextInput:
        """Questions are not truncated below the text model's positions; batches pad to a length bucket."""
        return TextInput(self.text.do_lower_case, self.text.max_positions, pad_to_max=False)


class RegionEmbeddings(nn.Module):
    """LayerNorm(Linear(features) + Linear(box coordinates, no bias)); coordinates are raw pixels, as given."""

    def __init__(self, feature_dim: int, dim: int, norm_eps: float = 1e-12):
        super().__init__()
        self.features = nn.Linear(feature_dim, dim)
        self.locations = nn.Linear(4, dim, bias=False)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, box_features, box_coordinates):
        return self.norm(self.features(box_features) + self.locations(box_coordinates))


class CoAttentionLayer(nn.Module):
    """Two cross-attention blocks: text queries over image regions, region queries over the text, both from
    the streams' incoming states, each followed by its own feed-forward block."""

    def __init__(self, text: BertConfig, config: ViLBERTConfig):
        super().__init__()
        heads, inner = config.coattention_heads, config.coattention_dim
        self.text = CrossAttentionBlock(text.embed_dim, config.image_embed_dim, heads, inner, text.mlp_dim, text.norm_eps)
        self.image = CrossAttentionBlock(config.image_embed_dim, text.embed_dim, heads, inner, config.image_mlp_dim, 1e-12)

    def forward(self, text, image, text_mask, image_mask):
        return self.text(text, image, image_mask), self.image(image, text, text_mask)


class ViLBERT(nn.Module):
    def __init__(self, config: ViLBERTConfig):
        super().__init__()
        if len(config.image_biattention_ids) != len(config.text_biattention_ids):
            raise ValueError("image_biattention_ids and text_biattention_ids must pair up")
        self.config = config
        text = config.text
        self.text_embeddings = TextEmbeddings(text.vocab_size, text.embed_dim, text.max_positions,
                                              text.type_vocab_size, text.norm_eps, text.pad_token_id)
        self.image_embeddings = RegionEmbeddings(config.image_feature_dim, config.image_embed_dim)
        self.text_layers = nn.ModuleList(
            PostNormBlock(text.embed_dim, text.num_heads, text.mlp_dim, text.norm_eps)
            for _ in range(text.depth))
        self.image_layers = nn.ModuleList(
            PostNormBlock(config.image_embed_dim, config.image_num_heads, config.image_mlp_dim, 1e-12)
            for _ in range(config.image_depth))
        self.co_layers = nn.ModuleList(CoAttentionLayer(text, config) for _ in config.text_biattention_ids)
        self.text_pooler = nn.Linear(text.embed_dim, config.pooled_dim)
        self.image_pooler = nn.Linear(config.image_embed_dim, config.pooled_dim)
        self.classifier = nn.Linear(config.pooled_dim, config.num_answers)

    def init_weights(self, seed: int = 0) -> "ViLBERT":
        return init_weights_(self, seed)

    def encode(self, box_features, box_coordinates, box_mask, token_ids, mask, type_ids):
        """Both streams through the schedule: before co-attention layer k, the text layers up to
        text_biattention_ids[k] and the image layers up to image_biattention_ids[k]. The output is the state
        after the last co-attention layer: the layers after it, which the reference runs and discards, are
        not run at all."""
        text = self.text_embeddings(token_ids, type_ids)
        image = self.image_embeddings(box_features, box_coordinates)
        text_keys = None if mask is None else mask.bool()[:, None, None, :]  # None: no padded token
        image_keys = box_mask.bool()[:, None, None, :]
        start_text = start_image = 0
        for k, (end_image, end_text) in enumerate(zip(self.config.image_biattention_ids,
                                                      self.config.text_biattention_ids)):
            for i in range(start_text, end_text):
                text = self.text_layers[i](text, text_keys)
            for i in range(start_image, end_image):
                image = self.image_layers[i](image, image_keys)
            text, image = self.co_layers[k](text, image, text_keys, image_keys)
            start_text, start_image = end_text, end_image
        return text, image

    def fuse(self, text, image) -> "Pooled":
        pooled_text = torch.relu(self.text_pooler(text[:, 0]))
        pooled_image = torch.relu(self.image_pooler(image[:, 0]))  # box 0: the highest-scoring detection
        fused = pooled_text * pooled_image if self.config.fusion == "mul" else pooled_text + pooled_image
        return Pooled(pooled_text, pooled_image, fused)

    def forward(self, box_features, box_coordinates, box_mask, token_ids, mask, type_ids):
        """Answer logits [B, num_answers]; probabilities are their sigmoid (multi-label)."""
        text, image = self.encode(box_features, box_coordinates, box_mask, token_ids, mask, type_ids)
        return self.classifier(self.fuse(text, image).fused)


class Pooled(NamedTuple):
    text: torch.Tensor
    image: torch.Tensor
    fused: torch.Tensor   # what the classifier reads


def vilbert_vqa() -> ViLBERTConfig:
    """Sizes of vilbert_vqa_pretrained.jsonnet; the answer count (10026, unconfirmed) comes from the archive."""
    return ViLBERTConfig()
