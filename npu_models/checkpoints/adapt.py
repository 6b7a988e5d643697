"""Small named weight adaptations applied at conversion time."""
import math

import torch
import torch.nn.functional as F


def resample_position_embedding(pos_embed: torch.Tensor, new_grid: int, num_prefix_tokens: int = 1,
                                antialias: bool = True) -> torch.Tensor:
    """Resize a learned [1, prefix + g*g, D] position embedding to a new_grid x new_grid patch grid.

    The prefix (class token) positions are kept; the grid is resized bicubically. timm resizes with
    antialias=True, BLIP's reference with antialias=False: the two filters differ, so callers choose.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[1])
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(f"position embedding with {grid.shape[1]} patch positions is not a square grid")
    if old_grid == new_grid:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", antialias=antialias, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
