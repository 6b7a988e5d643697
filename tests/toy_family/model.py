"""A toy sentence classifier: token embedding, pre-norm blocks, final norm, a head on the first token."""
from dataclasses import dataclass, field

import torch
from torch import nn

from npu_models.layers import PreNormBlock
from npu_models.layers.init import init_weights_


@dataclass
class ToyConfig:
    vocab_size: int = 64
    embed_dim: int = 16
    depth: int = 2
    num_heads: int = 2
    mlp_dim: int = 32
    norm_eps: float = 1e-6
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])


class ToyClassifier(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.embed_dim)
        self.blocks = nn.ModuleList(PreNormBlock(config.embed_dim, config.num_heads, config.mlp_dim, config.norm_eps)
                                    for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.head = nn.Linear(config.embed_dim, len(config.labels))

    def init_weights(self, seed: int = 0) -> "ToyClassifier":
        return init_weights_(self, seed)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x)[:, 0])


def toy_tiny() -> ToyConfig:
    return ToyConfig()
