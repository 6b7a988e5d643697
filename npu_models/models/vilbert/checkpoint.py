"""AllenNLP ViLBERT archive (`vilbert-vqa-pretrained.2021-03-15.tar.gz`) -> ours, read straight from the tar.gz
(or from an extracted copy: config.json, vocabulary/, weights.th or a quantized weights file)."""
import io
import json
import tarfile
from pathlib import Path

import torch

from npu_models.models.bert.model import BertConfig
from npu_models.models.bert import checkpoint as hf_bert
from npu_models.checkpoints.io import Converted, read_json, read_state_dict
from npu_models.checkpoints.rename import Renamed, RenameTable, apply, fused, official_names
from npu_models.errors import UserError, arg
from npu_models.models.vilbert.model import ViLBERTConfig, bert_base_uncased

TEXT_CONFIG_FILE = "text_model_config.json"
ANSWERS_FILE = "vocabulary/answers.txt"
ARCHIVE_FILES = ("config.json", "weights.th", ANSWERS_FILE)


def single_stream(official: str, ours: str) -> RenameTable:
    """One stream's BERT layers: backbone.encoder.layers1 (text) or layers2 (image)."""
    return {
        fused(f"{official}.{{i}}.attention.self", "query", "key", "value"): f"{ours}.{{i}}.attn.qkv",
        f"{official}.{{i}}.attention.output.dense": f"{ours}.{{i}}.attn.proj",
        f"{official}.{{i}}.attention.output.layer_norm": f"{ours}.{{i}}.attn_norm",
        f"{official}.{{i}}.intermediate.dense": f"{ours}.{{i}}.mlp.fc1",
        f"{official}.{{i}}.output.dense": f"{ours}.{{i}}.mlp.fc2",
        f"{official}.{{i}}.output.layer_norm": f"{ours}.{{i}}.mlp_norm",
    }


CO = "backbone.encoder.c_layer.{i}"
# A co-attention layer's text stream takes text queries (query1) over image keys/values (key2, value2);
# the image stream the other way round. "1" is always the text side, "2" the image side.
TABLE: RenameTable = {
    "backbone.text_embeddings.embeddings.word_embeddings": "text_embeddings.word_embeddings",
    "backbone.text_embeddings.embeddings.position_embeddings": "text_embeddings.position_embeddings",
    "backbone.text_embeddings.embeddings.token_type_embeddings": "text_embeddings.token_type_embeddings",
    "backbone.text_embeddings.layer_norm": "text_embeddings.norm",
    "backbone.image_embeddings.embeddings.image_embeddings": "image_embeddings.features",
    "backbone.image_embeddings.embeddings.location_embeddings": "image_embeddings.locations",
    "backbone.image_embeddings.layer_norm": "image_embeddings.norm",
    **single_stream("backbone.encoder.layers1", "text_layers"),
    **single_stream("backbone.encoder.layers2", "image_layers"),
    f"{CO}.bimodal_attention.query1": "co_layers.{i}.text.cross_attn.q",
    fused(f"{CO}.bimodal_attention", "key2", "value2"): "co_layers.{i}.text.cross_attn.kv",
    f"{CO}.bimodal_attention.query2": "co_layers.{i}.image.cross_attn.q",
    fused(f"{CO}.bimodal_attention", "key1", "value1"): "co_layers.{i}.image.cross_attn.kv",
    f"{CO}.bimodal_output.bert_output1.dense": "co_layers.{i}.text.cross_attn.proj",
    f"{CO}.bimodal_output.bert_output1.layer_norm": "co_layers.{i}.text.cross_attn_norm",
    f"{CO}.bimodal_output.bert_output2.dense": "co_layers.{i}.image.cross_attn.proj",
    f"{CO}.bimodal_output.bert_output2.layer_norm": "co_layers.{i}.image.cross_attn_norm",
    f"{CO}.intermediate1.dense": "co_layers.{i}.text.mlp.fc1",
    f"{CO}.output1.dense": "co_layers.{i}.text.mlp.fc2",
    f"{CO}.output1.layer_norm": "co_layers.{i}.text.mlp_norm",
    f"{CO}.intermediate2.dense": "co_layers.{i}.image.mlp.fc1",
    f"{CO}.output2.dense": "co_layers.{i}.image.mlp.fc2",
    f"{CO}.output2.layer_norm": "co_layers.{i}.image.mlp_norm",
    "backbone.t_pooler.dense": "text_pooler",
    "backbone.v_pooler.dense": "image_pooler",
    "classifier": "classifier",
}


def open_archive(path: Path) -> tarfile.TarFile:
    try:
        archive = tarfile.open(path, "r:gz")
        names = set(archive.getnames())
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{path} is not a readable AllenNLP archive ({err}); download it again.") from None
    for needed in ARCHIVE_FILES:
        if needed not in names:
            archive.close()
            raise UserError(f"{path} lacks {needed}; an AllenNLP model archive holds config.json, "
                            "weights.th and vocabulary/.")
    return archive


def answers_from(text: str) -> list[str]:
    # answers.txt starts at index 1 (@@UNKNOWN@@); index 0, @@PADDING@@, is implicit.
    return ["@@PADDING@@"] + text.splitlines()


def extracted_dir(path: Path) -> Path | None:
    """The directory of an extracted archive that `path` is, or is a weights file in (msModelSlim writes its
    quantized weights into such a copy, beside config.json and vocabulary/); None for the tar.gz itself."""
    directory = path if path.is_dir() else path.parent
    if path.is_file() and tarfile.is_tarfile(path):
        return None
    if not ((directory / "config.json").is_file() and (directory / ANSWERS_FILE).is_file()):
        raise UserError(f"{path} is neither an AllenNLP archive nor in an extracted one (config.json, vocabulary/"
                        "answers.txt and the weights); pass the .tar.gz.")
    return directory


def read_archive(path: Path) -> tuple[dict, dict, list[str]]:
    """(training config, weights, answers by label) from the archive, without extracting it to disk, or from an
    extracted archive (weights.th, or the weights file `path` names in it)."""
    if (directory := extracted_dir(path)) is not None:
        weights = read_state_dict(path if path.is_file() else directory / "weights.th")
        return read_json(directory / "config.json"), weights, read_answers(directory)
    with open_archive(path) as archive:
        try:
            config = json.load(archive.extractfile("config.json"))
            weights = torch.load(io.BytesIO(archive.extractfile("weights.th").read()), map_location="cpu",
                                 weights_only=True)
            answers = answers_from(archive.extractfile(ANSWERS_FILE).read().decode("utf-8"))
        except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as err:
            raise UserError(f"{path} is not a readable AllenNLP archive ({err}); download it again.") from None
    return config, weights, answers


def read_answers(path) -> list[str]:
    """The answer of each classifier column, from the archive's vocabulary alone (weights.th is not loaded)."""
    path = Path(path)
    if (directory := extracted_dir(path)) is not None:
        return answers_from((directory / ANSWERS_FILE).read_text(encoding="utf-8"))
    with open_archive(path) as archive:
        try:
            return answers_from(archive.extractfile(ANSWERS_FILE).read().decode("utf-8"))
        except (tarfile.TarError, EOFError, OSError) as err:
            raise UserError(f"{path} is not a readable AllenNLP archive ({err}); download it again.") from None


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
                        f"in; pass its HF config.json as {arg('config_file')} or put it beside the archive as "
                        f"{TEXT_CONFIG_FILE}.")
    return bert_base_uncased()


def rename(weights: dict) -> Renamed:
    return apply(TABLE, weights)


def read_vilbert(path, config_file=None) -> Converted:
    """The AllenNLP archive in our layout."""
    path = Path(path)
    training_config, weights, answers = read_archive(path)
    block = training_config.get("model", {})
    if block.get("fusion_method", "sum") not in ("mul", "sum"):
        raise UserError(f"{path}: fusion_method '{block['fusion_method']}' is not supported (mul or sum).")
    config = ViLBERTConfig(
        text=text_config(block, weights, path, config_file), image_feature_dim=block["image_feature_dim"],
        image_embed_dim=block["image_hidden_size"], image_num_heads=block["image_num_attention_heads"],
        image_depth=block["image_num_hidden_layers"], image_mlp_dim=block["image_intermediate_size"],
        coattention_dim=block["combined_hidden_size"], coattention_heads=block["combined_num_attention_heads"],
        pooled_dim=block["pooled_output_dim"], image_biattention_ids=list(block["image_biattention_id"]),
        text_biattention_ids=list(block["text_biattention_id"]), fusion=block.get("fusion_method", "sum"),
        num_answers=len(answers))
    state, origin, unexpected = rename(weights)
    return Converted(config, state, official_names(TABLE, origin), unexpected)

