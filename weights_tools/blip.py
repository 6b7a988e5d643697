"""BLIP `model_base_retrieval_coco.pth` ({'model': state_dict, ...}) -> ours: the 472 inference tensors."""
import dataclasses
import math
from pathlib import Path

from npu_models.bert import BertConfig
from npu_models.blip import CLIP_MEAN, CLIP_STD, BlipConfig, blip_text
from npu_models.errors import UserError
from weights_tools import hf_bert
from weights_tools import vit as vit_weights
from weights_tools.adapt import resample_position_embedding
from weights_tools.common import read_json, read_state_dict

# Training-only state: the queues, the temperature, and the momentum encoders (*_m), which differ from
# the weights inference uses.
TRAINING_ONLY = ("temp", "image_queue", "text_queue", "idx_queue", "ptr_queue")
HEADS = ("vision_proj", "text_proj", "itm_head")


def is_training_only(key: str) -> bool:
    return key in TRAINING_ONLY or key.split(".")[0].endswith("_m")


def sidecar_config(path: Path, config_file=None) -> dict:
    """Sizes the weights cannot tell, from a config.json beside the checkpoint: flat ({"image_size",
    "k_test", "med_config"}) or as in the reference fixtures ({"small_model": {"vit": ..., "med_config": ...}})."""
    sidecar = Path(config_file) if config_file else path.parent / "config.json"
    if not sidecar.is_file():
        return {}
    document = read_json(sidecar)
    return document.get("small_model", document)


def text_config(med: dict, state: dict, path: Path) -> BertConfig:
    default = blip_text()
    if not med:  # bert-base sizes unless the sidecar gives med_config.json
        med = {"vocab_size": state["embeddings.word_embeddings.weight"].shape[0],
               "hidden_size": state["embeddings.word_embeddings.weight"].shape[1],
               "num_hidden_layers": len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")}),
               "num_attention_heads": default.num_heads,
               "intermediate_size": state["encoder.layer.0.intermediate.dense.weight"].shape[0],
               "max_position_embeddings": state["embeddings.position_embeddings.weight"].shape[0],
               "encoder_width": state["encoder.layer.0.crossattention.self.key.weight"].shape[1]}
    return hf_bert.config_from_hf(med, state, {"do_lower_case": True}, path.parent / "config.json")


def read_blip(path, config_file=None) -> tuple:
    """(config, our state dict, our key -> official name, unexpected keys) from a BLIP retrieval checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass the BLIP .pth file itself as --checkpoint.")
    checkpoint = read_state_dict(path)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "visual_encoder.patch_embed.proj.weight" not in state:
        raise UserError(f"{path} is not a BLIP retrieval checkpoint: expected {{'model': state_dict}} with "
                        "visual_encoder.*, text_encoder.*, vision_proj, text_proj and itm_head keys.")
    state = {k: v for k, v in state.items() if not is_training_only(k)}
    visual = {k.removeprefix("visual_encoder."): v for k, v in state.items() if k.startswith("visual_encoder.")}
    text = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    unexpected = [k for k in state if not k.startswith(("visual_encoder.", "text_encoder.", *HEADS))]

    sidecar = sidecar_config(path, config_file)
    vit_sidecar = sidecar.get("vit", {"image_size": sidecar["image_size"]} if "image_size" in sidecar else {})
    ours, origin = {}, {}
    vit_state, vit_origin, vit_unexpected = vit_weights.timm_to_ours(visual)
    sizes = {"img_size": vit_sidecar["image_size"]} if "image_size" in vit_sidecar else {}
    vision = vit_weights.infer_config(vit_state, vit_sidecar.get("num_heads"), sizes, path)
    vision = dataclasses.replace(vision, num_classes=0, crop_pct=None, mean=CLIP_MEAN, std=CLIP_STD)
    grid = math.isqrt(vit_state["pos_embed"].shape[1] - 1)
    if grid != vision.grid_size:  # the reference resizes with torch bicubic, no antialias
        vit_state["pos_embed"] = resample_position_embedding(vit_state["pos_embed"], vision.grid_size, antialias=False)
    text_state, text_origin, text_unexpected = hf_bert.convert_state_dict(text)
    text_cfg = text_config(sidecar.get("med_config", {}), text, path)
    for prefix, part, part_origin in (("visual_encoder.", vit_state, vit_origin), ("text_encoder.", text_state, text_origin)):
        for key, tensor in part.items():
            ours[prefix + key], origin[prefix + key] = tensor, prefix + part_origin.get(key, key)
    for key, tensor in state.items():
        if key.startswith(HEADS):
            ours[key], origin[key] = tensor, key
    unexpected += [f"visual_encoder.{k}" for k in vit_unexpected] + [f"text_encoder.{k}" for k in text_unexpected]
    config = BlipConfig(vision=vision, text=text_cfg, embed_dim=state["vision_proj.weight"].shape[0],
                        k_test=sidecar.get("k_test", BlipConfig().k_test))
    return config, ours, lambda key: origin.get(key, key), unexpected
