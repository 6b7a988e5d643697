"""BLIP `model_base_retrieval_coco.pth` ({'model': state_dict, ...}) -> ours: the 472 inference tensors."""
import dataclasses
import math
from pathlib import Path

from npu_models.models.bert.model import BertConfig
from npu_models.models.blip.model import CLIP_MEAN, CLIP_STD, BlipConfig, blip_text
from npu_models.models.bert import checkpoint as hf_bert
from npu_models.models.vit import checkpoint as vit_weights
from npu_models.checkpoints.adapt import resample_position_embedding
from npu_models.checkpoints.io import Converted, read_sidecar, read_state_dict, unwrap
from npu_models.checkpoints.rename import Renamed, RenameTable, apply, official_names, prefixed
from npu_models.errors import UserError, arg

# Training-only state: the queues, the temperature, and the momentum encoders (*_m), which differ from
# the weights inference uses.
TRAINING_ONLY = ("temp", "image_queue", "text_queue", "idx_queue", "ptr_queue")
HEADS = ("vision_proj", "text_proj", "itm_head")
# A timm ViT and a BERT with cross-attention (MED), under the same prefixes in both layouts.
TABLE: RenameTable = (prefixed(vit_weights.TIMM, "visual_encoder.", "visual_encoder.")
                      | prefixed(hf_bert.BODY, "text_encoder.", "text_encoder.")
                      | {head: head for head in HEADS})


def is_training_only(key: str) -> bool:
    return key in TRAINING_ONLY or key.split(".")[0].endswith("_m")


def rename(state: dict) -> Renamed:
    """Our keys from the inference tensors: training-only state and the text encoder's derived
    buffers (position_ids) are dropped first."""
    derived = {f"text_encoder.{key}" for key in hf_bert.IGNORED_KEYS}
    return apply(TABLE, {k: v for k, v in state.items() if not is_training_only(k) and k not in derived})


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


def read_blip(path, config_file=None) -> Converted:
    """A BLIP retrieval checkpoint in our layout."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass the BLIP .pth file itself as {arg('checkpoint')}.")
    checkpoint = read_state_dict(path)
    state = unwrap(checkpoint, path) if isinstance(checkpoint, dict) else {}
    if "visual_encoder.patch_embed.proj.weight" not in state:
        raise UserError(f"{path} is not a BLIP retrieval checkpoint: expected {{'model': state_dict}} with "
                        "visual_encoder.*, text_encoder.*, vision_proj, text_proj and itm_head keys.")
    ours, origin, unexpected = rename(state)

    # Sizes the weights cannot tell, from a config.json beside the checkpoint: flat ({"image_size",
    # "k_test", "med_config"}) or as in the reference fixtures ({"small_model": {"vit": ..., "med_config": ...}}).
    sidecar = read_sidecar(path, config_file, section="small_model")
    vit_sidecar = sidecar.get("vit", {"image_size": sidecar["image_size"]} if "image_size" in sidecar else {})
    visual = {k.removeprefix("visual_encoder."): v for k, v in ours.items() if k.startswith("visual_encoder.")}
    sizes = {"img_size": vit_sidecar["image_size"]} if "image_size" in vit_sidecar else {}
    vision = vit_weights.infer_config(visual, vit_sidecar.get("num_heads"), sizes, path)
    vision = dataclasses.replace(vision, num_classes=0, crop_pct=None, mean=CLIP_MEAN, std=CLIP_STD)
    grid = math.isqrt(visual["pos_embed"].shape[1] - 1)
    if grid != vision.grid_size:  # the reference resizes with torch bicubic, no antialias
        ours["visual_encoder.pos_embed"] = resample_position_embedding(visual["pos_embed"], vision.grid_size,
                                                                       antialias=False)
    text = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    config = BlipConfig(vision=vision, text=text_config(sidecar.get("med_config", {}), text, path),
                        itc_dim=state["vision_proj.weight"].shape[0],
                        k_test=sidecar.get("k_test", BlipConfig().k_test))
    return Converted(config, ours, official_names(TABLE, origin), unexpected)
