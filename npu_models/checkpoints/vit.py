"""ViT checkpoints -> our layout: Google AugReg `.npz` (JAX names and kernel layouts) or a timm state dict."""
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from npu_models.checkpoints.adapt import resample_position_embedding
from npu_models.checkpoints.io import Converted, read_sidecar, read_state_dict, unwrap
from npu_models.checkpoints.rename import Renamed, RenameTable, apply, official_names
from npu_models.errors import UserError
from npu_models.vit import ViTConfig

# timm's VisionTransformer already fuses q/k/v; only norms are named differently.
TIMM: RenameTable = {
    "cls_token": "cls_token",
    "pos_embed": "pos_embed",
    "patch_embed.proj": "patch_embed.proj",
    "blocks.{i}.norm1": "blocks.{i}.attn_norm",
    "blocks.{i}.attn.qkv": "blocks.{i}.attn.qkv",
    "blocks.{i}.attn.proj": "blocks.{i}.attn.proj",
    "blocks.{i}.norm2": "blocks.{i}.mlp_norm",
    "blocks.{i}.mlp.fc1": "blocks.{i}.mlp.fc1",
    "blocks.{i}.mlp.fc2": "blocks.{i}.mlp.fc2",
    "norm": "norm",
    "head": "head",
}
JAX_BLOCK = "Transformer/encoderblock_{}/"
JAX_ATTENTION = "MultiHeadDotProductAttention_1/"


def timm_to_ours(state: dict[str, torch.Tensor]) -> Renamed:
    return apply(TIMM, state)


def jax_to_timm(arrays: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    """Google's npz layout -> timm names and PyTorch layouts; returns (state, num_heads, unused npz keys).

    JAX kernels are [in, out] (Dense), [D, heads, head_dim] (q/k/v), [heads, head_dim, D] (out) and
    HWIO (the patch conv); PyTorch wants [out, in] and OIHW.
    """
    used = set()

    def take(name):
        if name not in arrays:
            raise UserError(f"the npz checkpoint lacks '{name}', which a Google ViT checkpoint holds.")
        used.add(name)
        return torch.from_numpy(np.ascontiguousarray(arrays[name])).float()

    state = {
        "patch_embed.proj.weight": take("embedding/kernel").permute(3, 2, 0, 1),
        "patch_embed.proj.bias": take("embedding/bias"),
        "cls_token": take("cls"),
        "pos_embed": take("Transformer/posembed_input/pos_embedding"),
        "norm.weight": take("Transformer/encoder_norm/scale"),
        "norm.bias": take("Transformer/encoder_norm/bias"),
    }
    if "head/kernel" in arrays:
        state["head.weight"], state["head.bias"] = take("head/kernel").t(), take("head/bias")
    depth = len({m.group(1) for k in arrays if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    num_heads = arrays[JAX_BLOCK.format(0) + JAX_ATTENTION + "query/kernel"].shape[1] if depth else 0
    for i in range(depth):
        block, attention = JAX_BLOCK.format(i), JAX_BLOCK.format(i) + JAX_ATTENTION
        qkv = [take(f"{attention}{name}/kernel").flatten(1).t() for name in ("query", "key", "value")]
        state.update({
            f"blocks.{i}.norm1.weight": take(block + "LayerNorm_0/scale"),
            f"blocks.{i}.norm1.bias": take(block + "LayerNorm_0/bias"),
            f"blocks.{i}.attn.qkv.weight": torch.cat(qkv),
            f"blocks.{i}.attn.qkv.bias": torch.cat([take(f"{attention}{n}/bias").flatten()
                                                    for n in ("query", "key", "value")]),
            f"blocks.{i}.attn.proj.weight": take(attention + "out/kernel").flatten(0, 1).t(),
            f"blocks.{i}.attn.proj.bias": take(attention + "out/bias"),
            f"blocks.{i}.norm2.weight": take(block + "LayerNorm_2/scale"),
            f"blocks.{i}.norm2.bias": take(block + "LayerNorm_2/bias"),
            f"blocks.{i}.mlp.fc1.weight": take(block + "MlpBlock_3/Dense_0/kernel").t(),
            f"blocks.{i}.mlp.fc1.bias": take(block + "MlpBlock_3/Dense_0/bias"),
            f"blocks.{i}.mlp.fc2.weight": take(block + "MlpBlock_3/Dense_1/kernel").t(),
            f"blocks.{i}.mlp.fc2.bias": take(block + "MlpBlock_3/Dense_1/bias"),
        })
    return state, num_heads, sorted(set(arrays) - used)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a readable .npz checkpoint ({err}); the file is probably corrupt: "
                        "download it again.") from None


def timm_state(checkpoint, path: Path) -> dict[str, torch.Tensor]:
    state = unwrap(checkpoint, path)
    if "patch_embed.proj.weight" not in state:
        found = ", ".join(list(state)[:8]) + (", ..." if len(state) > 8 else "")
        raise UserError(f"{path} is not a ViT checkpoint layout this runtime knows. Found keys: {found}. "
                        "Expected a Google AugReg .npz (embedding/kernel, Transformer/encoderblock_N/...) or a "
                        "timm state dict (patch_embed.proj.weight, blocks.N.attn.qkv.weight, ...).")
    return state


def sidecar_model_config(path: Path, config_file=None) -> dict:
    """The sidecar's `model` section (the fixtures' constructor arguments: num_heads, img_size)."""
    return read_sidecar(path, config_file, section="model")


def read_vit(path, config_file=None) -> Converted:
    """Either ViT layout (Google .npz or a timm state dict) in ours; names in errors are timm's."""
    path = Path(path)
    if path.is_dir():
        candidates = [p for p in sorted(path.iterdir()) if p.suffix in (".npz", ".safetensors", ".bin", ".pth")]
        if len(candidates) != 1:
            raise UserError(f"{path} holds {len(candidates)} ViT weight files; pass the one to use as --checkpoint.")
        path = candidates[0]
    if path.suffix == ".npz":
        official, num_heads, unused = jax_to_timm(read_npz(path))
    else:
        official, num_heads, unused = timm_state(read_state_dict(path), path), None, []
    state, origin, unexpected = timm_to_ours(official)
    config = infer_config(state, num_heads, sidecar_model_config(path, config_file), path)
    if state["pos_embed"].shape[1] != config.grid_size ** 2 + 1:
        state["pos_embed"] = resample_position_embedding(state["pos_embed"], config.grid_size)
    return Converted(config, state, official_names(TIMM, origin), unexpected + unused)


def infer_config(state: dict, num_heads: int | None, sidecar: dict, path: Path) -> ViTConfig:
    """Sizes from the weights; what they cannot tell (heads in a timm file, a new input size) from the sidecar."""
    try:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        grid = math.isqrt(state["pos_embed"].shape[1] - 1)
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise UserError(f"{path}: cannot read the ViT sizes from the weights (missing {err}).") from None
    default = ViTConfig()
    num_heads = num_heads or sidecar.get("num_heads") or (default.num_heads if dim == default.embed_dim else None)
    if num_heads is None:
        raise UserError(f"{path}: a timm state dict does not record the number of attention heads for "
                        f"width {dim}; put a config.json beside it with {{\"model\": {{\"num_heads\": N}}}}.")
    return ViTConfig(img_size=sidecar.get("img_size", grid * patch), patch_size=patch, embed_dim=dim, depth=depth,
                     num_heads=num_heads, mlp_ratio=mlp_dim / dim,
                     num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0)
