"""Registry: model name -> config, builder and converter for its official checkpoint layout."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from npu_models import benchmarks, parallel
from npu_models.models.bert import model as bert
from npu_models.models.blip import model as blip
from npu_models.models.vilbert import model as vilbert
from npu_models.models.vit import model as vit
from npu_models.models.vlmo import model as vlmo
from npu_models.benchmarks import Benchmark
from npu_models.models.blip import checkpoint as blip_weights
from npu_models.models.bert import checkpoint as hf_bert
from npu_models.models.vilbert import checkpoint as vilbert_weights
from npu_models.models.vit import checkpoint as vit_weights
from npu_models.models.vlmo import checkpoint as vlmo_weights
from npu_models.checkpoints.io import Converted, check_state_dict, expected_shapes, is_converted_dir, read_converted
from npu_models.errors import UserError
from npu_models.layers.init import materialize_parameters_
from npu_models.parallel import SINGLE, TensorParallel
from npu_models.tasks import RetrievalTask, VQATask


@dataclass(frozen=True)
class ModelEntry:
    name: str
    short_name: str
    config_class: type
    default_config: Callable[[], Any]
    build: Callable[[Any], torch.nn.Module]
    # (official artifact path, config file or None) -> Converted; the config file replaces the config.json
    # the converter looks for beside the artifact
    convert: Callable[[Path, Path | None], Converted]
    task: str                     # the eval command that runs it: sst2, imagenet, vqa, retrieval
    # files that travel with a converted checkpoint (e.g. the tokenizer vocabulary)
    assets: tuple[str, ...] = ()
    # what eval.vqa / eval.retrieval call on the model (npu_models.tasks), for entries of those tasks
    vqa: VQATask | None = None
    retrieval: RetrievalTask | None = None
    # what eval.bench times, by part name ("" for the whole model): npu_models.benchmarks
    benchmarks: dict[str, Benchmark] = dataclasses.field(default_factory=dict)
    # tensor-parallel plan: module path pattern -> "heads" | "mlp" | "head_columns" (npu_models.parallel);
    # everything it does not name (embeddings, norms, poolers, heads) is replicated
    tp_plan: dict[str, str] = dataclasses.field(default_factory=dict)


BERT_TP = {"blocks.*.attn": "heads", "blocks.*.cross_attn": "heads", "blocks.*.mlp": "mlp"}
VIT_TP = {"blocks.*.attn": "heads", "blocks.*.mlp": "mlp"}
VLMO_TP = {"blocks.*.attn": "heads", "blocks.*.ffn.mlps.*": "mlp", "relative_position_bias_table": "head_columns"}
BLIP_TP = {**{f"visual_encoder.{k}": v for k, v in VIT_TP.items()},
           **{f"text_encoder.{k}": v for k, v in BERT_TP.items()}}
VILBERT_TP = {"text_layers.*.attn": "heads", "text_layers.*.mlp": "mlp", "image_layers.*.attn": "heads",
              "image_layers.*.mlp": "mlp", "co_layers.*.*.cross_attn": "heads", "co_layers.*.*.mlp": "mlp"}


def blip_encode_images(model, pixels):
    features = model.image_features(pixels)  # the ITM head re-reads every image token
    return model.image_embeds(features), features


VLMO_VQA = VQATask("pixels", lambda model, pixels, ids, masks: model(pixels, ids, masks))
VILBERT_VQA = VQATask("regions", lambda model, features, boxes, box_mask, ids, masks: model(
    features, boxes, box_mask, ids, None if masks is None else masks.bool(), torch.zeros_like(ids)), multi_label=True,
    answers_in_checkpoint=vilbert_weights.read_answers)
VLMO_RETRIEVAL = RetrievalTask(lambda model, pixels: (model.image_embeds(pixels), None),
                               lambda model, ids, masks: model.text_embeds(ids, masks))
BLIP_RETRIEVAL = RetrievalTask(blip_encode_images, lambda model, ids, masks: model.text_embeds(ids, masks),
                               rerank=blip.rerank, rerank_k=lambda config: config.k_test,
                               unselected_score=blip.UNSELECTED_SCORE)


REGISTRY = {
    entry.name: entry
    for entry in [
        ModelEntry("bert-base-cased-sst2", "bert", bert.BertConfig, bert.bert_base_cased_sst2, bert.Bert,
                   hf_bert.read_hf_bert, "sst2", assets=("vocab.txt",), benchmarks=benchmarks.BERT, tp_plan=BERT_TP),
        ModelEntry("vit-base-patch32-224", "vit", vit.ViTConfig, vit.vit_base_patch32_224, vit.ViT,
                   vit_weights.read_vit, "imagenet", benchmarks=benchmarks.VIT, tp_plan=VIT_TP),
        ModelEntry("vlmo-base-vqa", "vlmo", vlmo.VLMoConfig, vlmo.vlmo_base_vqa, vlmo.VLMo,
                   vlmo_weights.read_vlmo, "vqa", assets=("vocab.txt",), vqa=VLMO_VQA, benchmarks=benchmarks.VLMO_VQA,
                   tp_plan=VLMO_TP),
        ModelEntry("vlmo-base-coco-retrieval", "vlmo", vlmo.VLMoConfig, vlmo.vlmo_base_coco_retrieval, vlmo.VLMo,
                   vlmo_weights.read_vlmo, "retrieval", assets=("vocab.txt",), retrieval=VLMO_RETRIEVAL,
                   benchmarks=benchmarks.VLMO_RETRIEVAL, tp_plan=VLMO_TP),
        ModelEntry("blip-retrieval-coco", "blip", blip.BlipConfig, blip.blip_retrieval_coco, blip.Blip,
                   blip_weights.read_blip, "retrieval", assets=("vocab.txt",), retrieval=BLIP_RETRIEVAL,
                   benchmarks=benchmarks.BLIP, tp_plan=BLIP_TP),
        ModelEntry("vilbert-vqa", "vilbert", vilbert.ViLBERTConfig, vilbert.vilbert_vqa, vilbert.ViLBERT,
                   vilbert_weights.read_vilbert, "vqa", vqa=VILBERT_VQA, benchmarks=benchmarks.VILBERT,
                   tp_plan=VILBERT_TP),
    ]
}  # the first entry of each task is its eval command's default --model


def default_entry(task: str) -> ModelEntry:
    return next(e for e in REGISTRY.values() if e.task == task)


def get_entry(name: str, task: str | None = None) -> ModelEntry:
    """Look a model up by registry name, or by short name (with the task where one short name has several)."""
    if name in REGISTRY:
        return checked_task(REGISTRY[name], task)
    matches = [e for e in REGISTRY.values() if e.short_name == name]
    if len(matches) > 1 and task is not None:
        matches = [e for e in matches if e.task == task] or matches
    if len(matches) == 1 or (matches and len({(e.build, e.convert) for e in matches}) == 1 and task is None):
        return checked_task(matches[0], task)  # one model, or one family whose checkpoint decides the rest
    if matches:
        raise UserError(f"'{name}' names several models ({', '.join(e.name for e in matches)}); use the full name.")
    known = ", ".join(f"{e.name} ({e.short_name})" for e in REGISTRY.values())
    raise UserError(f"unknown model '{name}'. Known models: {known}.")


def checked_task(entry: ModelEntry, task: str | None) -> ModelEntry:
    if task is not None and entry.task != task:
        runs = ", ".join(e.name for e in REGISTRY.values() if e.task == task)
        raise UserError(f"{entry.name} is a model for {entry.task}, not {task}; the {task} evaluation runs {runs}.")
    return entry


def entry_for_config(entry: ModelEntry, config) -> ModelEntry:
    """Among models built by the same class, the one whose task the (checkpoint's) config says."""
    task = getattr(config, "task", entry.task)
    return next((e for e in REGISTRY.values() if e.build is entry.build and e.task == task), entry)


def assets_beside(entry: ModelEntry, checkpoint) -> dict[str, Path]:
    """The files that travel with a converted checkpoint (entry.assets) found beside `checkpoint`."""
    checkpoint = Path(checkpoint)
    source_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return {name: source_dir / name for name in entry.assets if (source_dir / name).is_file()}


def config_from_dict(entry: ModelEntry, values: dict, source):
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(f"{source}: unknown config keys {unknown} for {entry.name}; known keys: {sorted(fields)}. "
                        "A directory converted by an older release: convert the official checkpoint again.")
    return entry.config_class(**values)


def load_weights(entry: ModelEntry, checkpoint, config_file=None, tp: TensorParallel = SINGLE) -> Converted:
    """An official artifact or our converted directory in our layout, its keys and shapes checked
    against the model its config builds (split as `tp` says, for a directory of pre-cut shards)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise UserError(f"checkpoint {checkpoint} does not exist; check the path.")
    ours = is_converted_dir(checkpoint)
    if ours:
        _, values, state = read_converted(checkpoint, tp.rank, tp.size, model=entry.name)
        converted = Converted(config_from_dict(entry, values, checkpoint / "config.json"), state, str, [])
    else:
        if config_file is not None and not Path(config_file).is_file():
            raise UserError(f"config file {config_file} does not exist; check the --config path.")
        converted = entry.convert(checkpoint, config_file)
    # our directories hold the share of the --tp they were cut for (read_converted refuses another degree)
    shapes = expected_shapes(meta_model(entry, converted.config, tp if ours else SINGLE))
    check_state_dict(converted.state, shapes, converted.official_name, converted.unexpected, checkpoint)
    return converted


def meta_model(entry: ModelEntry, config, tp: TensorParallel = SINGLE) -> torch.nn.Module:
    """The model's structure without memory, split as `tp` says."""
    with torch.device("meta"):
        return parallel.apply_plan(entry.build(config), entry_for_config(entry, config).tp_plan, tp)


def build_model(entry: ModelEntry, checkpoint=None, config=None, config_file=None,
                tp: TensorParallel = SINGLE, device=None) -> torch.nn.Module:
    """The model in fp32, holding this rank's share when `tp` splits it: converted weights on the CPU (a full
    checkpoint is cut here, a directory of shards gives each rank its own file), or, when no checkpoint,
    random ones drawn directly on `device` (default CPU; reproducible per device type) from a structure
    built without memory, so no weight is initialised twice or copied from the host."""
    if checkpoint is None:  # drawn whole, then cut, so every rank holds its share of the same model
        model = materialize_parameters_(meta_model(entry, config or entry.default_config()), device or "cpu")
        return parallel.apply_plan(model.init_weights(), entry_for_config(entry, model.config).tp_plan, tp)
    converted = load_weights(entry, checkpoint, config_file, tp)
    cut_on_disk = is_converted_dir(checkpoint)  # our directories already hold this rank's share
    model = meta_model(entry, converted.config, tp if cut_on_disk else SINGLE)
    model.load_state_dict({k: v.float() for k, v in converted.state.items()}, assign=True)
    if cut_on_disk:
        return model
    return parallel.apply_plan(model, entry_for_config(entry, converted.config).tp_plan, tp)  # cut the whole model
