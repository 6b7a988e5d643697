"""Vision Transformer (timm's vit_base_patch32_224, Google AugReg weights) for ImageNet classification."""
from dataclasses import dataclass

import torch
from torch import nn

from npu_models.layers import PatchEmbed, PreNormBlock
from npu_models.layers.init import init_weights_
from npu_models.transforms import ImageTransform


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 32
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    norm_eps: float = 1e-6
    # timm's eval transform for this checkpoint: shorter side to int(224 / 0.9) = 248, bicubic, crop 224.
    crop_pct: float = 0.9
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self):  # JSON (our converted config.json) gives lists
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def transform(self) -> ImageTransform:
        return ImageTransform(self.image_size, tuple(self.mean), tuple(self.std), self.crop_pct, "bicubic")


class ViT(nn.Module):
    """Patch embedding, class token, learned position embedding, pre-norm blocks, final norm, token pooling."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image size {config.image_size} is not a multiple of patch size {config.patch_size}")
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size ** 2 + 1, dim))
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, config.num_heads, config.mlp_dim, config.norm_eps)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes else None

    def init_weights(self, seed: int = 0) -> "ViT":
        return init_weights_(self, seed)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token in front, plus the position embedding."""
        patches = self.patch_embed(pixels)
        tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        return tokens + self.pos_embed

    def forward_features(self, pixels: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """Pixels [B, 3, S, S] -> final-norm tokens [B, N + 1, D] (class token first).
        cls_only: the last block computes only the class token's row, all the head reads: [B, 1, D]."""
        x = self.embed(pixels)
        for i, block in enumerate(self.blocks):
            last_for_cls = cls_only and i == len(self.blocks) - 1
            x = block(x, queries=x[:, :1] if last_for_cls else None)
        return self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features[:, 0]
        return self.head(pooled) if self.head is not None else pooled

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(pixels, cls_only=True))


def vit_base_patch32_224() -> ViTConfig:
    return ViTConfig()
