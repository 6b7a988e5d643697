"""Hugging Face BERT directory (config.json + pytorch_model.bin or model.safetensors) -> our Bert layout."""
import re
from pathlib import Path

import torch

from npu_models.models.bert.model import BertConfig
from npu_models.checkpoints.io import Converted, read_json, read_state_dict
from npu_models.checkpoints.rename import Renamed, RenameTable, apply, fused, official_names, prefixed
from npu_models.errors import UserError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Buffers some releases carry; they are derived, not learned.
IGNORED_KEYS = {"embeddings.position_ids", "embeddings.token_type_ids"}

# BertModel's own modules; a task model (BertForSequenceClassification) nests them under `bert.`.
BODY: RenameTable = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.norm",
    fused("encoder.layer.{i}.attention.self", "query", "key", "value"): "blocks.{i}.attn.qkv",
    "encoder.layer.{i}.attention.output.dense": "blocks.{i}.attn.proj",
    "encoder.layer.{i}.attention.output.LayerNorm": "blocks.{i}.attn_norm",
    # BLIP's text encoder (MED): cross-attention keeps q (on the text) apart from k, v (on the image
    # tokens, possibly of another width).
    "encoder.layer.{i}.crossattention.self.query": "blocks.{i}.cross_attn.q",
    fused("encoder.layer.{i}.crossattention.self", "key", "value"): "blocks.{i}.cross_attn.kv",
    "encoder.layer.{i}.crossattention.output.dense": "blocks.{i}.cross_attn.proj",
    "encoder.layer.{i}.crossattention.output.LayerNorm": "blocks.{i}.cross_attn_norm",
    "encoder.layer.{i}.intermediate.dense": "blocks.{i}.mlp.fc1",
    "encoder.layer.{i}.output.dense": "blocks.{i}.mlp.fc2",
    "encoder.layer.{i}.output.LayerNorm": "blocks.{i}.mlp_norm",
    "pooler.dense": "pooler",
}
HEAD: RenameTable = {"classifier": "classifier"}


def find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise UserError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)} "
                    "(a Hugging Face model directory).")


def read_tokenizer_config(directory: Path) -> dict:
    """The tokenizer_config.json beside a model's weights (its do_lower_case); {} if it has none."""
    path = directory / "tokenizer_config.json"
    return read_json(path) if path.is_file() else {}


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
            vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"], depth=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
            max_positions=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2) if "embeddings.token_type_embeddings.weight" in state_dict else 0,
            norm_eps=hf.get("layer_norm_eps", 1e-12), pad_token_id=hf.get("pad_token_id") or 0,
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


def table_for(hf_state: dict) -> RenameTable:
    prefix = "bert." if any(k.startswith("bert.") for k in hf_state) else ""
    return prefixed(BODY, prefix, "") | HEAD


def tf_names_to_torch(key: str) -> str:
    """TF-era checkpoints name LayerNorm parameters gamma and beta."""
    return re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))


def convert_state_dict(hf_state: dict[str, torch.Tensor], table: RenameTable | None = None) -> Renamed:
    """HF BERT keys -> ours, q/k/v fused; `table` defaults to the one for these keys (with or without `bert.`)."""
    table = table or table_for(hf_state)
    names = {tf_names_to_torch(key): key for key in hf_state}  # PyTorch-era name -> as in the file
    kept = {key: hf_state[original] for key, original in names.items() if key.removeprefix("bert.") not in IGNORED_KEYS}
    renamed = apply(table, kept)
    return Renamed(renamed.state, {k: names.get(v, v) for k, v in renamed.origin.items()},
                   [names[key] for key in renamed.unexpected])


def read_hf_bert(path, config_file=None) -> Converted:
    """A HF BERT model directory in our layout, or one weights file in such a directory (the one msModelSlim
    wrote beside the model's config.json); config_file replaces the directory's config.json."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; a BERT checkpoint is a Hugging Face model "
                        "directory holding config.json and pytorch_model.bin or model.safetensors.")
    config_path = Path(config_file) if config_file else directory / "config.json"
    hf_config = read_json(config_path)
    if hf_config.get("model_type", "bert") != "bert":
        raise UserError(f"{config_path} describes model_type '{hf_config['model_type']}', "
                        "not 'bert'.")
    tokenizer_config = read_tokenizer_config(directory)
    hf_state = read_state_dict(path if path.is_file() else find_weights(directory))
    config = config_from_hf(hf_config, {k.removeprefix("bert."): v for k, v in hf_state.items()},
                            tokenizer_config, config_path)
    table = table_for(hf_state)
    state, origin, unexpected = convert_state_dict(hf_state, table)
    return Converted(config, state, official_names(table, origin), unexpected)
