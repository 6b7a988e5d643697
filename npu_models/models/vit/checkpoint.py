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
from npu_models.errors import UserError, arg
from npu_models.models.vit.model import ViTConfig

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
# Google's AugReg npz: Flax module paths, q/k/v apart (fused here into timm's qkv), kernels in JAX
# layouts (torch_layout). Read into timm's names, so one table (TIMM) leads on to ours.
NPZ_BLOCK = "Transformer/encoderblock_{i}/"
NPZ_ATTENTION = NPZ_BLOCK + "MultiHeadDotProductAttention_1/"
NPZ: RenameTable = {
    "embedding/kernel": "patch_embed.proj.weight",
    "embedding/bias": "patch_embed.proj.bias",
    "cls": "cls_token",
    "Transformer/posembed_input/pos_embedding": "pos_embed",
    NPZ_BLOCK + "LayerNorm_0/scale": "blocks.{i}.norm1.weight",
    NPZ_BLOCK + "LayerNorm_0/bias": "blocks.{i}.norm1.bias",
    tuple(f"{NPZ_ATTENTION}{n}/kernel" for n in ("query", "key", "value")): "blocks.{i}.attn.qkv.weight",
    tuple(f"{NPZ_ATTENTION}{n}/bias" for n in ("query", "key", "value")): "blocks.{i}.attn.qkv.bias",
    NPZ_ATTENTION + "out/kernel": "blocks.{i}.attn.proj.weight",
    NPZ_ATTENTION + "out/bias": "blocks.{i}.attn.proj.bias",
    NPZ_BLOCK + "LayerNorm_2/scale": "blocks.{i}.norm2.weight",
    NPZ_BLOCK + "LayerNorm_2/bias": "blocks.{i}.norm2.bias",
    NPZ_BLOCK + "MlpBlock_3/Dense_0/kernel": "blocks.{i}.mlp.fc1.weight",
    NPZ_BLOCK + "MlpBlock_3/Dense_0/bias": "blocks.{i}.mlp.fc1.bias",
    NPZ_BLOCK + "MlpBlock_3/Dense_1/kernel": "blocks.{i}.mlp.fc2.weight",
    NPZ_BLOCK + "MlpBlock_3/Dense_1/bias": "blocks.{i}.mlp.fc2.bias",
    "Transformer/encoder_norm/scale": "norm.weight",
    "Transformer/encoder_norm/bias": "norm.bias",
    "head/kernel": "head.weight",
    "head/bias": "head.bias",
}
QKV_PART = re.compile(r"/(query|key|value)/(kernel|bias)$")


def timm_to_ours(state: dict[str, torch.Tensor]) -> Renamed:
    return apply(TIMM, state)


def torch_layout(name: str, array: np.ndarray) -> torch.Tensor:
    """JAX kernels are HWIO (the patch conv), [D, heads, head_dim] (q/k/v; biases [heads, head_dim]),
    [heads, head_dim, D] (attention out) and [in, out] (Dense); PyTorch wants OIHW and [out, in]."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
    if name == "embedding/kernel":
        return tensor.permute(3, 2, 0, 1)
    if part := QKV_PART.search(name):
        return tensor.flatten(1).t() if part.group(2) == "kernel" else tensor.flatten()
    if name.endswith("/out/kernel"):
        return tensor.flatten(0, 1).t()
    return tensor.t() if name.endswith("/kernel") and tensor.ndim == 2 else tensor


def npz_to_timm(arrays: dict[str, np.ndarray]) -> Renamed:
    return apply(NPZ, {name: torch_layout(name, array) for name, array in arrays.items()})


def npz_num_heads(arrays: dict[str, np.ndarray]) -> int:
    query = arrays.get(NPZ_ATTENTION.replace("{i}", "0") + "query/kernel")
    return query.shape[1] if query is not None else 0


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


def read_vit(path, config_file=None) -> Converted:
    """Either ViT layout (Google .npz or a timm state dict) in ours; errors name the file's own keys."""
    path = Path(path)
    if path.is_dir():
        candidates = [p for p in sorted(path.iterdir()) if p.suffix in (".npz", ".safetensors", ".bin", ".pth")]
        if len(candidates) != 1:
            raise UserError(f"{path} holds {len(candidates)} ViT weight files; pass the one to use as "
                            f"{arg('checkpoint')}.")
        path = candidates[0]
    if path.suffix == ".npz":
        arrays = read_npz(path)
        official, npz_origin, unused = npz_to_timm(arrays)
        num_heads, npz_name = npz_num_heads(arrays), official_names(NPZ, npz_origin)
    else:
        official, num_heads, unused = timm_state(read_state_dict(path), path), None, []
        npz_name = str
    state, origin, unexpected = timm_to_ours(official)
    config = infer_config(state, num_heads, read_sidecar(path, config_file, section="model"), path)
    if state["pos_embed"].shape[1] != config.grid_size ** 2 + 1:
        state["pos_embed"] = resample_position_embedding(state["pos_embed"], config.grid_size)
    timm_name = official_names(TIMM, origin)
    return Converted(config, state, lambda key: npz_name(timm_name(key)), unused + unexpected)


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
    return ViTConfig(image_size=sidecar.get("img_size", grid * patch), patch_size=patch, embed_dim=dim, depth=depth,
                     num_heads=num_heads, mlp_dim=mlp_dim,
                     num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0)
