"""VLMo checkpoints released by microsoft/unilm (`vlmo_base_patch16_480_vqa.pt`, `..._384_coco.pt`) -> ours."""
from pathlib import Path

import torch

from npu_models.checkpoints.io import Converted, read_sidecar, read_state_dict, unwrap
from npu_models.checkpoints.rename import Renamed, RenameTable, apply, official_names
from npu_models.errors import UserError, arg
from npu_models.models.vlmo.model import VLMoConfig, vlmo_base_coco_retrieval, vlmo_base_vqa

# Index buffers some files carry, and the BERT position table VLMo never uses (rel_pos embeddings).
IGNORED = {"relative_position_index", "text_relative_position_index", "text_imag_relative_position_index",
           "text_embeddings.position_ids", "text_embeddings.position_embeddings.weight"}
TABLE: RenameTable = {  # qkv comes fused; q and v carry their own biases (k has none)
    "relative_position_bias_table": "relative_position_bias_table",
    "logit_scale": "logit_scale",
    "transformer.cls_token": "cls_token",
    "transformer.patch_embed.proj": "patch_embed.proj",
    "transformer.blocks.{i}.gamma_1": "blocks.{i}.gamma_attn",
    "transformer.blocks.{i}.gamma_2": "blocks.{i}.gamma_ffn",
    "transformer.blocks.{i}.norm1": "blocks.{i}.attn_norm",
    "transformer.blocks.{i}.attn.qkv": "blocks.{i}.attn.qkv",
    "transformer.blocks.{i}.attn.q_bias": "blocks.{i}.attn.q_bias",
    "transformer.blocks.{i}.attn.v_bias": "blocks.{i}.attn.v_bias",
    "transformer.blocks.{i}.attn.proj": "blocks.{i}.attn.proj",
    "transformer.blocks.{i}.norm2_text": "blocks.{i}.ffn.norms.text",
    "transformer.blocks.{i}.norm2_imag": "blocks.{i}.ffn.norms.image",
    "transformer.blocks.{i}.norm2_vl": "blocks.{i}.ffn.norms.vl",
    "transformer.blocks.{i}.mlp_text.fc1": "blocks.{i}.ffn.mlps.text.fc1",
    "transformer.blocks.{i}.mlp_text.fc2": "blocks.{i}.ffn.mlps.text.fc2",
    "transformer.blocks.{i}.mlp_imag.fc1": "blocks.{i}.ffn.mlps.image.fc1",
    "transformer.blocks.{i}.mlp_imag.fc2": "blocks.{i}.ffn.mlps.image.fc2",
    "transformer.blocks.{i}.mlp_vl.fc1": "blocks.{i}.ffn.mlps.vl.fc1",
    "transformer.blocks.{i}.mlp_vl.fc2": "blocks.{i}.ffn.mlps.vl.fc2",
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


def rename(state: dict[str, torch.Tensor]) -> Renamed:
    renamed = apply(TABLE, {k: v for k, v in state.items() if k not in IGNORED})
    # fp16 releases read as fp32; integer tensors (a quantized file's int8 weights and scales) stay as they are
    return renamed._replace(state={k: v.float() if v.is_floating_point() else v for k, v in renamed.state.items()})


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
        num_heads=table.shape[1] // depth, mlp_dim=state["blocks.0.ffn.mlps.text.fc1.weight"].shape[0],
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


def read_vlmo(path, config_file=None) -> Converted:
    """A released VLMo .pt file in our layout."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass the VLMo .pt file itself as {arg('checkpoint')}.")
    raw = unwrap(read_state_dict(path), path)
    state, origin, unexpected = rename(raw)
    # the reference fixtures nest the hyper-parameters under "model"; a user's file may be flat
    config = infer_config(state, raw, read_sidecar(path, config_file, section="model"), path)
    return Converted(config, state, official_names(TABLE, origin), unexpected)
