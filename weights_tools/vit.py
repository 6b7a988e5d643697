"""ViT checkpoints -> our layout: Google AugReg `.npz` (JAX names and kernel layouts) or a timm state dict."""
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from npu_models.errors import UserError
from npu_models.vit import ViTConfig
from weights_tools.adapt import resample_position_embedding
from weights_tools.common import read_json, read_state_dict

TIMM_TOP_LEVEL = {"patch_embed.proj": "patch_embed.proj", "norm": "norm", "head": "head"}
TIMM_PER_BLOCK = {"norm1": "attn_norm", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "mlp_norm",
                  "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
TIMM_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
JAX_BLOCK = "Transformer/encoderblock_{}/"
JAX_ATTENTION = "MultiHeadDotProductAttention_1/"


def timm_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """Rename a timm VisionTransformer state dict; returns (ours, our key -> timm key, unexpected)."""
    ours, origin, unexpected = {}, {}, []
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if key in ("cls_token", "pos_embed"):
            our_key = key
        elif module in TIMM_TOP_LEVEL:
            our_key = f"{TIMM_TOP_LEVEL[module]}.{param}"
        elif (match := TIMM_BLOCK_KEY.match(key)) and match.group(2) in TIMM_PER_BLOCK:
            our_key = f"blocks.{match.group(1)}.{TIMM_PER_BLOCK[match.group(2)]}.{match.group(3)}"
        else:
            unexpected.append(key)
            continue
        ours[our_key], origin[our_key] = tensor, key
    return ours, origin, unexpected


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


def unwrap(state: dict, path: Path) -> dict:
    """timm/torch files sometimes nest the state dict under 'state_dict' or 'model'."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    if "patch_embed.proj.weight" not in state:
        found = ", ".join(list(state)[:8]) + (", ..." if len(state) > 8 else "")
        raise UserError(f"{path} is not a ViT checkpoint layout this runtime knows. Found keys: {found}. "
                        "Expected a Google AugReg .npz (embedding/kernel, Transformer/encoderblock_N/...) or a "
                        "timm state dict (patch_embed.proj.weight, blocks.N.attn.qkv.weight, ...).")
    return state


def sidecar_model_config(path: Path, config_file=None) -> dict:
    """Constructor arguments from --config or a config.json beside the checkpoint (the fixtures' `model` section)."""
    sidecar = Path(config_file) if config_file else path.parent / "config.json"
    return read_json(sidecar).get("model", {}) if sidecar.is_file() else {}


def read_vit(path, config_file=None) -> tuple:
    """(config, our state dict, our key -> official name, unexpected keys) from either ViT layout."""
    path = Path(path)
    if path.is_dir():
        candidates = [p for p in sorted(path.iterdir()) if p.suffix in (".npz", ".safetensors", ".bin", ".pth")]
        if len(candidates) != 1:
            raise UserError(f"{path} holds {len(candidates)} ViT weight files; pass the one to use as --checkpoint.")
        path = candidates[0]
    if path.suffix == ".npz":
        timm_state, num_heads, unused = jax_to_timm(read_npz(path))
    else:
        timm_state, num_heads, unused = unwrap(read_state_dict(path), path), None, []
    state, origin, unexpected = timm_to_ours(timm_state)
    config = infer_config(state, num_heads, sidecar_model_config(path, config_file), path)
    if state["pos_embed"].shape[1] != config.grid_size ** 2 + 1:
        state["pos_embed"] = resample_position_embedding(state["pos_embed"], config.grid_size)
    return config, state, lambda key: origin.get(key, key), unexpected + unused


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
