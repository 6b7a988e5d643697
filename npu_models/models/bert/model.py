"""BERT encoder with pooler and sequence-classification head (bert-base-cased fine-tuned on SST-2)."""
from dataclasses import dataclass, field

import torch
from torch import nn

from npu_models.layers import PostNormBlock, TextEmbeddings
from npu_models.layers.init import init_weights_


@dataclass
class BertConfig:
    vocab_size: int = 28996
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    pad_token_id: int = 0
    with_pooler: bool = True
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])  # empty: encoder only
    cross_attention_dim: int = 0         # > 0: every block can attend to another encoder's tokens (BLIP)
    # Preprocessing: the checkpoint's own WordPiece vocabulary, cased or not.
    do_lower_case: bool = False

    @property
    def num_labels(self) -> int:
        return len(self.labels)


class Bert(nn.Module):
    """Post-norm BERT. With labels: pooler + linear classifier; without: the encoder (and pooler) only."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config.vocab_size, config.embed_dim, config.max_positions,
                                         config.type_vocab_size, config.norm_eps, config.pad_token_id)
        self.blocks = nn.ModuleList(
            PostNormBlock(config.embed_dim, config.num_heads, config.mlp_dim, config.norm_eps,
                          cross_attention_dim=config.cross_attention_dim or None)
            for _ in range(config.depth)
        )
        self.pooler = nn.Linear(config.embed_dim, config.embed_dim) if config.with_pooler else None
        self.classifier = nn.Linear(config.embed_dim, config.num_labels) if config.num_labels else None

    def init_weights(self, seed: int = 0) -> "Bert":
        return init_weights_(self, seed)

    def forward_features(self, input_ids, attention_mask=None, token_type_ids=None, context=None,
                         cls_only: bool = False):
        """Token ids [B, S] -> last hidden state [B, S, H]; padded keys (mask 0) are not attended to.
        With a context [B, N, C] (cross-attention models) every block also attends to all of its tokens.
        cls_only: the last block computes only the [CLS] row, all a pooler reads: [B, 1, H]."""
        # Key padding mask [B, 1, 1, S], True = attend; padded query rows are still computed.
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        for i, block in enumerate(self.blocks):
            last_for_cls = cls_only and i == len(self.blocks) - 1
            x = block(x, mask, context, queries=x[:, :1] if last_for_cls else None)
        return x

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooler tanh(dense(h[:, 0])) then the classifier; the pooled vector when there are no labels."""
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if self.pooler is not None else hidden[:, 0]
        return self.classifier(pooled) if self.classifier is not None else pooled

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """Logits [B, num_labels] (the pooled vector [B, H] for an encoder without labels)."""
        return self.forward_head(self.forward_features(input_ids, attention_mask, token_type_ids, cls_only=True))


def bert_base_cased_sst2() -> BertConfig:
    """gchhablani/bert-base-cased-finetuned-sst2: bert-base-cased sizes, labels 0 = negative, 1 = positive."""
    return BertConfig()
