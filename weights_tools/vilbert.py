"""AllenNLP ViLBERT archive (`vilbert-vqa-pretrained.2021-03-15.tar.gz`) -> ours, read straight from the tar.gz."""
import io
import json
import re
import tarfile
from pathlib import Path

import torch

from npu_models.bert import BertConfig
from npu_models.errors import UserError
from npu_models.vilbert import ViLBERTConfig, bert_base_uncased
from weights_tools import hf_bert
from weights_tools.common import fuse_into, read_json

TEXT_CONFIG_FILE = "text_model_config.json"
TOP_LEVEL = {
    "backbone.text_embeddings.embeddings.word_embeddings": "text_embeddings.word_embeddings",
    "backbone.text_embeddings.embeddings.position_embeddings": "text_embeddings.position_embeddings",
    "backbone.text_embeddings.embeddings.token_type_embeddings": "text_embeddings.token_type_embeddings",
    "backbone.text_embeddings.layer_norm": "text_embeddings.norm",
    "backbone.image_embeddings.embeddings.image_embeddings": "image_embeddings.features",
    "backbone.image_embeddings.embeddings.location_embeddings": "image_embeddings.locations",
    "backbone.image_embeddings.layer_norm": "image_embeddings.norm",
    "backbone.t_pooler.dense": "text_pooler",
    "backbone.v_pooler.dense": "image_pooler",
    "classifier": "classifier",
}
SINGLE_STREAM = {  # under backbone.encoder.layers{1,2}.N -> under {text,image}_layers.N
    "attention.output.dense": "attn.proj", "attention.output.layer_norm": "attn_norm",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "output.layer_norm": "mlp_norm",
}
# A co-attention layer's text stream takes text queries (query1) over image keys/values (key2, value2);
# the image stream the other way round. "1" is always the text side, "2" the image side.
CO_LAYER = {
    "bimodal_output.bert_output1.dense": "text.cross_attn.proj",
    "bimodal_output.bert_output1.layer_norm": "text.cross_attn_norm",
    "bimodal_output.bert_output2.dense": "image.cross_attn.proj",
    "bimodal_output.bert_output2.layer_norm": "image.cross_attn_norm",
    "intermediate1.dense": "text.mlp.fc1", "output1.dense": "text.mlp.fc2", "output1.layer_norm": "text.mlp_norm",
    "intermediate2.dense": "image.mlp.fc1", "output2.dense": "image.mlp.fc2", "output2.layer_norm": "image.mlp_norm",
}
FUSED = {"text.cross_attn.q": ("query1",), "text.cross_attn.kv": ("key2", "value2"),
         "image.cross_attn.q": ("query2",), "image.cross_attn.kv": ("key1", "value1")}
STREAM_KEY = re.compile(r"^backbone\.encoder\.layers([12])\.(\d+)\.(.+)\.(weight|bias)$")
SELF_QKV = re.compile(r"^attention\.self\.(query|key|value)$")
CO_KEY = re.compile(r"^backbone\.encoder\.c_layer\.(\d+)\.(.+)\.(weight|bias)$")


def read_archive(path: Path) -> tuple[dict, dict, list[str]]:
    """(training config, weights, answers by label) from the archive, without extracting it to disk."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            names = set(archive.getnames())
            for needed in ("config.json", "weights.th", "vocabulary/answers.txt"):
                if needed not in names:
                    raise UserError(f"{path} lacks {needed}; an AllenNLP model archive holds config.json, "
                                    "weights.th and vocabulary/.")
            config = json.load(archive.extractfile("config.json"))
            weights = torch.load(io.BytesIO(archive.extractfile("weights.th").read()), map_location="cpu",
                                 weights_only=True)
            answers = archive.extractfile("vocabulary/answers.txt").read().decode("utf-8").splitlines()
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not a readable AllenNLP archive ({err}); download it again.") from None
    # answers.txt starts at index 1 (@@UNKNOWN@@); index 0, @@PADDING@@, is implicit.
    return config, weights, ["@@PADDING@@"] + answers


def text_config(model_block: dict, weights: dict, path: Path, config_file: Path | None) -> BertConfig:
    """The text stream's HF config: --config, text_model_config.json beside the archive, or built in."""
    config_file = config_file or (path.parent / TEXT_CONFIG_FILE if (path.parent / TEXT_CONFIG_FILE).is_file() else None)
    if config_file is not None:
        hf = read_json(config_file)
        # config_from_hf reads which parts exist from HF-named keys: token types are the only optional one here.
        types = weights.get("backbone.text_embeddings.embeddings.token_type_embeddings.weight")
        present = {"embeddings.token_type_embeddings.weight": types} if types is not None else {}
        return hf_bert.config_from_hf(hf, present, {"do_lower_case": True}, config_file)
    if model_block.get("model_name", "bert-base-uncased") != "bert-base-uncased":
        raise UserError(f"{path} was trained on text model '{model_block['model_name']}', whose config is not built "
                        f"in; pass its HF config.json with --config or put it beside the archive as {TEXT_CONFIG_FILE}.")
    return bert_base_uncased()


def rename(weights: dict) -> tuple[dict, dict, list[str]]:
    ours, origin, unexpected, parts = {}, {}, [], {}
    for key, tensor in weights.items():
        module, _, param = key.rpartition(".")
        if module in TOP_LEVEL:
            our_key = f"{TOP_LEVEL[module]}.{param}"
        elif match := STREAM_KEY.match(key):
            stream, layer, sub, param = match.groups()
            prefix = f"{'text' if stream == '1' else 'image'}_layers.{layer}"
            if qkv := SELF_QKV.match(sub):
                target = (f"{prefix}.attn.qkv", ("query", "key", "value"), param)
                parts.setdefault(target, {})[qkv.group(1)] = (key, tensor)
                continue
            if sub not in SINGLE_STREAM:
                unexpected.append(key)
                continue
            our_key = f"{prefix}.{SINGLE_STREAM[sub]}.{param}"
        elif match := CO_KEY.match(key):
            layer, sub, param = match.groups()
            if sub.startswith("bimodal_attention."):
                name = sub.removeprefix("bimodal_attention.")
                target = next((t for t, names in FUSED.items() if name in names), None)
                if target is None:
                    unexpected.append(key)
                    continue
                parts.setdefault((f"co_layers.{layer}.{target}", FUSED[target], param), {})[name] = (key, tensor)
                continue
            if sub not in CO_LAYER:
                unexpected.append(key)
                continue
            our_key = f"co_layers.{layer}.{CO_LAYER[sub]}.{param}"
        else:
            unexpected.append(key)
            continue
        ours[our_key], origin[our_key] = tensor, key
    for (target, names, param), found in parts.items():
        fuse_into(ours, origin, f"{target}.{param}", names, found)
    return ours, origin, unexpected


def read_vilbert(path, config_file=None) -> tuple:
    """(config, our state dict, our key -> official name, unexpected keys) from the AllenNLP archive."""
    path = Path(path)
    training_config, weights, answers = read_archive(path)
    block = training_config.get("model", {})
    if block.get("fusion_method", "sum") not in ("mul", "sum"):
        raise UserError(f"{path}: fusion_method '{block['fusion_method']}' is not supported (mul or sum).")
    config = ViLBERTConfig(
        text=text_config(block, weights, path, config_file), image_feature_dim=block["image_feature_dim"],
        image_hidden_size=block["image_hidden_size"], image_num_heads=block["image_num_attention_heads"],
        image_num_layers=block["image_num_hidden_layers"], image_intermediate_size=block["image_intermediate_size"],
        combined_hidden_size=block["combined_hidden_size"], combined_num_heads=block["combined_num_attention_heads"],
        pooled_dim=block["pooled_output_dim"], image_biattention_ids=list(block["image_biattention_id"]),
        text_biattention_ids=list(block["text_biattention_id"]), fusion=block.get("fusion_method", "sum"),
        num_answers=len(answers))
    state, origin, unexpected = rename(weights)
    return config, state, lambda key: origin.get(key, key), unexpected


def read_answers(path) -> list[str]:
    """The answer of each classifier column, from the archive's vocabulary."""
    return read_archive(Path(path))[2]
