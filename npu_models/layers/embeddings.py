"""Token embeddings: text (word + position + type) and image patches."""
import torch
from torch import nn


class TextEmbeddings(nn.Module):
    """word + absolute position (0..S-1, padding does not shift them) + token type, then LayerNorm.

    max_positions=0 leaves out absolute positions (models whose attention carries relative positions);
    type_vocab_size=0 leaves out token types (BLIP's text encoder has none).
    """

    def __init__(self, vocab_size: int, dim: int, max_positions: int, type_vocab_size: int, norm_eps: float,
                 pad_token_id: int = 0):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_positions, dim) if max_positions else None
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(torch.arange(input_ids.shape[1], device=input_ids.device))
        return self.norm(x)


class PatchEmbed(nn.Module):
    """Non-overlapping patches through one strided conv -> tokens [B, N, D] in row-major patch order."""

    def __init__(self, patch_size: int, dim: int, in_channels: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)
