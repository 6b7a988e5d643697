"""VLMo checkpoints released by microsoft/unilm (`vlmo_base_patch16_480_vqa.pt`, `..._384_coco.pt`) -> ours."""
import re
from pathlib import Path

import torch

from npu_models.errors import UserError
from npu_models.vlmo import VLMoConfig, vlmo_base_coco_retrieval, vlmo_base_vqa
from weights_tools.common import read_json, read_state_dict

# Index buffers some files carry, and the BERT position table VLMo never uses (rel_pos embeddings).
IGNORED = {"relative_position_index", "text_relative_position_index", "text_imag_relative_position_index",
           "text_embeddings.position_ids", "text_embeddings.position_embeddings.weight"}
RENAMES = {  # official module path -> ours
    "relative_position_bias_table": "relative_position_bias_table",
    "logit_scale": "logit_scale",
    "transformer.cls_token": "cls_token",
    "transformer.patch_embed.proj": "patch_embed.proj",
    "transformer.norm": "norm",
    "text_embeddings.word_embeddings": "text_embeddings.word_embeddings",
    "text_embeddings.token_type_embeddings": "text_embeddings.token_type_embeddings",
    "text_embeddings.LayerNorm": "text_embeddings.norm",
    "token_type_embeddings": "modality_embeddings",
    "pooler.dense": "pooler",
    "vqa_classifier.0": "vqa_head.0",
    "vqa_classifier.1": "vqa_head.1",
    "vqa_classifier.3": "vqa_head.3",
    "itc_text_proj.fc": "text_proj",
    "itc_image_proj.fc": "image_proj",
}
PER_BLOCK = {
    "gamma_1": "gamma_attn", "gamma_2": "gamma_ffn", "norm1": "attn_norm", "attn.qkv": "attn.qkv",
    "attn.q_bias": "attn.q_bias", "attn.v_bias": "attn.v_bias", "attn.proj": "attn.proj",
    "norm2_text": "ffn.norms.text", "norm2_imag": "ffn.norms.image", "norm2_vl": "ffn.norms.vl",
    "mlp_text.fc1": "ffn.mlps.text.fc1", "mlp_text.fc2": "ffn.mlps.text.fc2",
    "mlp_imag.fc1": "ffn.mlps.image.fc1", "mlp_imag.fc2": "ffn.mlps.image.fc2",
    "mlp_vl.fc1": "ffn.mlps.vl.fc1", "mlp_vl.fc2": "ffn.mlps.vl.fc2",
}
BLOCK_KEY = re.compile(r"^transformer\.blocks\.(\d+)\.(.+?)(?:\.(weight|bias))?$")


def unwrap(checkpoint, path: Path) -> dict[str, torch.Tensor]:
    """The reference's load order: 'state_dict' (Lightning), 'module' (DeepSpeed, prefix stripped), 'model'."""
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict.")
    if isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    elif isinstance(checkpoint.get("module"), dict):
        checkpoint = {k.removeprefix("module."): v for k, v in checkpoint["module"].items()}
    elif isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def rename(state: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    ours, origin, unexpected = {}, {}, []
    for key, tensor in state.items():
        if key in IGNORED:
            continue
        module, _, param = key.rpartition(".")
        if key in RENAMES:
            our_key = RENAMES[key]
        elif module in RENAMES:
            our_key = f"{RENAMES[module]}.{param}"
        elif (match := BLOCK_KEY.match(key)) and match.group(2) in PER_BLOCK:
            layer, sub, param = match.groups()
            our_key = f"blocks.{layer}.{PER_BLOCK[sub]}" + (f".{param}" if param else "")
        else:
            unexpected.append(key)
            continue
        ours[our_key], origin[our_key] = tensor.float(), key
    return ours, origin, unexpected


def sidecar_config(path: Path, config_file=None) -> dict:
    """Hyper-parameters from --config or a config.json beside the checkpoint, named as the reference repo
    names them (flat, or under "model" as in the reference fixtures)."""
    sidecar = Path(config_file) if config_file else path.parent / "config.json"
    if not sidecar.is_file():
        return {}
    document = read_json(sidecar)
    return document.get("model", document)


def infer_config(state: dict, raw: dict, sidecar: dict, path: Path) -> VLMoConfig:
    try:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        vl_layers = sorted(int(k.split(".")[1]) for k in state if k.startswith("blocks.") and ".mlps.vl.fc1.weight" in k)
        max_text_len = (raw.get("text_embeddings.position_embeddings.weight", raw.get("text_embeddings.position_ids"))
                        .shape[-2 if "text_embeddings.position_embeddings.weight" in raw else -1])
        table = state["relative_position_bias_table"]
    except (KeyError, AttributeError, ValueError) as err:
        raise UserError(f"{path}: cannot read the VLMo sizes from the weights (missing {err}).") from None
    head = "vqa" if "vqa_head.0.weight" in state else "retrieval"
    default = vlmo_base_vqa() if head == "vqa" else vlmo_base_coco_retrieval()
    config = VLMoConfig(
        image_size=sidecar.get("image_size", default.image_size), patch_size=patch, embed_dim=dim, depth=depth,
        num_heads=table.shape[1] // depth, mlp_ratio=state["blocks.0.ffn.mlps.text.fc1.weight"].shape[0] / dim,
        vlffn_start_layer_index=vl_layers[0] if vl_layers else depth, max_text_len=max_text_len,
        max_text_len_of_initckpt=sidecar.get("max_text_len_of_initckpt", default.max_text_len_of_initckpt),
        vocab_size=state["text_embeddings.word_embeddings.weight"].shape[0],
        type_vocab_size=state["text_embeddings.token_type_embeddings.weight"].shape[0], head=head,
        num_answers=state["vqa_head.3.weight"].shape[0] if head == "vqa" else 0)
    expected_rows = config.table_rows
    if table.shape[0] != expected_rows:
        raise UserError(
            f"{path}: relative_position_bias_table has {table.shape[0]} rows, but image_size {config.image_size} and "
            f"max_text_len_of_initckpt {config.max_text_len_of_initckpt} need {expected_rows}. The checkpoint cannot "
            "tell its image size: put a config.json beside it with the reference's \"image_size\" and "
            "\"max_text_len_of_initckpt\", or pass the matching model name.")
    return config


def read_vlmo(path, config_file=None) -> tuple:
    """(config, our state dict, our key -> official name, unexpected keys) from a released VLMo .pt file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass the VLMo .pt file itself as --checkpoint.")
    raw = unwrap(read_state_dict(path), path)
    state, origin, unexpected = rename(raw)
    config = infer_config(state, raw, sidecar_config(path, config_file), path)
    return config, state, lambda key: origin.get(key, key), unexpected
