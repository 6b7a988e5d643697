"""Hugging Face BERT directory (config.json + pytorch_model.bin or model.safetensors) -> our Bert layout."""
import re
from pathlib import Path
from typing import Callable

import torch

from npu_models.bert import BertConfig
from npu_models.errors import UserError
from weights_tools.common import fuse_into, read_json, read_state_dict

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Buffers some releases carry; they are derived, not learned.
IGNORED_KEYS = {"embeddings.position_ids", "embeddings.token_type_ids"}

TOP_LEVEL = {  # HF module path -> ours
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.norm",
    "pooler.dense": "pooler",
    "classifier": "classifier",
}
PER_LAYER = {  # HF module path under encoder.layer.N -> ours under blocks.N
    "attention.output.dense": "attn.proj",
    "attention.output.LayerNorm": "attn_norm",
    "crossattention.output.dense": "cross_attn.proj",       # BLIP's text encoder (MED)
    "crossattention.output.LayerNorm": "cross_attn_norm",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "mlp_norm",
}
QKV_ORDER = ("query", "key", "value")
LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
QKV_KEY = re.compile(r"^(attention|crossattention)\.self\.(query|key|value)$")
# Self-attention fuses q, k, v into one projection; cross-attention keeps q (on the text) apart from
# k, v (on the other encoder's tokens, possibly of another width).
FUSED = {"attention": {"attn.qkv": QKV_ORDER}, "crossattention": {"cross_attn.q": ("query",),
                                                                   "cross_attn.kv": ("key", "value")}}


def find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)} "
                    "(a Hugging Face model directory).")


def config_from_hf(hf: dict, state_dict: dict, tokenizer_config: dict, source) -> BertConfig:
    """Our config from HF's config.json, with head presence read from the weights themselves."""
    activation = hf.get("hidden_act", "gelu")
    if activation != "gelu":
        raise UserError(f"{source}: hidden_act '{activation}' is not supported; this runtime implements "
                        "BERT with exact (erf) GELU, hidden_act 'gelu'.")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{source}: position_embedding_type '{hf['position_embedding_type']}' is not "
                        "supported; only 'absolute' is.")
    try:
        config = BertConfig(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_positions=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2) if "embeddings.token_type_embeddings.weight" in state_dict else 0,
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), pad_token_id=hf.get("pad_token_id") or 0,
            with_pooler=any(k.startswith("pooler.") for k in state_dict), labels=[],
            do_lower_case=tokenizer_config.get("do_lower_case", True),
            cross_attention_dim=hf.get("encoder_width", hf["hidden_size"])
            if any(".crossattention." in k for k in state_dict) else 0,
        )
    except KeyError as err:
        raise UserError(f"{source} lacks the key {err}, which a BERT config.json must give.") from None
    if "classifier.weight" in state_dict:
        num_labels = state_dict["classifier.weight"].shape[0]
        id2label = hf.get("id2label") or {}
        config.labels = [id2label.get(str(i), f"LABEL_{i}") for i in range(num_labels)]
    return config


def convert_state_dict(hf_state: dict[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """Rename HF keys to ours and fuse q/k/v into one qkv projection.

    Returns (our state dict, our key -> official key(s), official keys that map nowhere).
    """
    ours, origin, unexpected = {}, {}, []
    qkv_parts: dict[tuple[int, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for hf_key, tensor in hf_state.items():
        key = hf_key.removeprefix("bert.")
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # TF-era LayerNorm names
        if key in IGNORED_KEYS:
            continue
        module, _, param = key.rpartition(".")
        if module in TOP_LEVEL:
            our_key = f"{TOP_LEVEL[module]}.{param}"
        elif match := LAYER_KEY.match(key):
            layer, sub, param = match.groups()
            if qkv := QKV_KEY.match(sub):
                qkv_parts.setdefault((int(layer), qkv.group(1), param), {})[qkv.group(2)] = (hf_key, tensor)
                continue
            if sub not in PER_LAYER:
                unexpected.append(hf_key)
                continue
            our_key = f"blocks.{layer}.{PER_LAYER[sub]}.{param}"
        else:
            unexpected.append(hf_key)
            continue
        ours[our_key], origin[our_key] = tensor, hf_key
    for (layer, kind, param), parts in qkv_parts.items():
        for target, names in FUSED[kind].items():
            fuse_into(ours, origin, f"blocks.{layer}.{target}.{param}", names, parts,
                      lambda name: f"...{kind}.self.{name}.{param}")
    return ours, origin, unexpected


def official_key(our_key: str, prefix: str) -> str:
    """The HF name our key is made from, for error messages about keys the checkpoint lacks."""
    module, _, param = our_key.rpartition(".")
    if match := re.match(r"^blocks\.(\d+)\.(.+)$", module):
        layer, sub = match.groups()
        if sub == "attn.qkv":
            return f"{prefix}encoder.layer.{layer}.attention.self.{{query,key,value}}.{param}"
        if sub in ("cross_attn.q", "cross_attn.kv"):
            names = "query" if sub == "cross_attn.q" else "{key,value}"
            return f"{prefix}encoder.layer.{layer}.crossattention.self.{names}.{param}"
        hf_sub = {ours: hf for hf, ours in PER_LAYER.items()}.get(sub, sub)
        return f"{prefix}encoder.layer.{layer}.{hf_sub}.{param}"
    hf_module = {ours: hf for hf, ours in TOP_LEVEL.items()}.get(module, module)
    return f"{'' if hf_module == 'classifier' else prefix}{hf_module}.{param}"


def read_hf_bert(directory, config_file=None) -> tuple[BertConfig, dict, Callable[[str], str], list[str]]:
    """(config, our state dict, our key -> official name, unexpected keys) from a HF BERT model directory;
    config_file replaces the directory's config.json."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; a BERT checkpoint is a Hugging Face model "
                        "directory holding config.json and pytorch_model.bin or model.safetensors.")
    config_path = Path(config_file) if config_file else directory / "config.json"
    hf_config = read_json(config_path)
    if hf_config.get("model_type", "bert") != "bert":
        raise UserError(f"{config_path} describes model_type '{hf_config['model_type']}', "
                        "not 'bert'.")
    tokenizer_path = directory / "tokenizer_config.json"
    tokenizer_config = read_json(tokenizer_path) if tokenizer_path.is_file() else {}
    hf_state = read_state_dict(find_weights(directory))
    config = config_from_hf(hf_config, {k.removeprefix("bert."): v for k, v in hf_state.items()},
                            tokenizer_config, config_path)
    state, origin, unexpected = convert_state_dict(hf_state)
    prefix = "bert." if any(k.startswith("bert.") for k in hf_state) else ""
    return config, state, lambda key: origin.get(key) or official_key(key, prefix), unexpected
