"""Registry: the table of model specs (each declared in its folder, npu_models/models/<family>/), the
lookups by name, short name and task, and building a model from its spec."""
import dataclasses
from pathlib import Path

import torch

from npu_models import parallel
from npu_models.checkpoints import quantized
from npu_models.checkpoints.io import (Converted, check_state_dict, cut_degree, expected_shapes, is_converted_dir,
                                       read_converted, shard_file)
from npu_models.errors import UserError, arg
from npu_models.layers.init import SkipInit, materialize_parameters_
from npu_models.models import bert, blip, vilbert, vit, vlmo
from npu_models.parallel import SINGLE, TensorParallel
from npu_models.quantization import quantize_structure
from npu_models.spec import ModelSpec

# One line per model family; the first spec of each task is its eval command's default --model.
REGISTRY = {spec.name: spec for spec in [
    *bert.SPECS,
    *vit.SPECS,
    *vlmo.SPECS,
    *blip.SPECS,
    *vilbert.SPECS,
]}


def default_entry(task: str) -> ModelSpec:
    return next(e for e in REGISTRY.values() if e.task.name == task)


def get_entry(name: str, task: str | None = None) -> ModelSpec:
    """Look a model up by registry name, or by short name (with the task where one short name has several)."""
    if name in REGISTRY:
        return checked_task(REGISTRY[name], task)
    matches = [e for e in REGISTRY.values() if e.short_name == name]
    if len(matches) > 1 and task is not None:
        matches = [e for e in matches if e.task.name == task] or matches
    if len(matches) == 1 or (matches and len({e.family for e in matches}) == 1 and task is None):
        return checked_task(matches[0], task)  # one model, or one family whose checkpoint decides the rest
    if matches:
        raise UserError(f"'{name}' names several models ({', '.join(e.name for e in matches)}); use the full name.")
    known = ", ".join(f"{e.name} ({e.short_name})" for e in REGISTRY.values())
    raise UserError(f"unknown model '{name}'. Known models: {known}.")


def checked_task(entry: ModelSpec, task: str | None) -> ModelSpec:
    if task is not None and entry.task.name != task:
        runs = ", ".join(e.name for e in REGISTRY.values() if e.task.name == task)
        raise UserError(f"{entry.name} is a model for {entry.task.name}, not {task}; the {task} evaluation runs {runs}.")
    return entry


def entry_for_config(entry: ModelSpec, config) -> ModelSpec:
    """Among the models of entry's family, the one whose task the (checkpoint's) config says."""
    task = getattr(config, "task", entry.task.name)
    return next((e for e in REGISTRY.values() if e.family == entry.family and e.task.name == task), entry)


def assets_beside(entry: ModelSpec, checkpoint) -> dict[str, Path]:
    """The files that travel with a converted checkpoint (entry.assets) found beside `checkpoint`."""
    checkpoint = Path(checkpoint)
    source_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return {name: source_dir / name for name in entry.assets if (source_dir / name).is_file()}


def config_from_dict(entry: ModelSpec, values: dict, source):
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UserError(f"{source}: unknown config keys {unknown} for {entry.name}; known keys: {sorted(fields)}. "
                        "A directory converted by an older release: convert the official checkpoint again.")
    return entry.config_class(**values)


def load_weights(entry: ModelSpec, checkpoint, config_file=None, tp: TensorParallel = SINGLE) -> Converted:
    """An official artifact, our converted directory or a quantized one (ours or msModelSlim's) in our layout,
    its keys and shapes checked against the model its config builds (quantized as the checkpoint says, split
    as `tp` says for a directory of pre-cut shards)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise UserError(f"checkpoint {checkpoint} does not exist; check the path.")
    if config_file is not None and not Path(config_file).is_file():
        raise UserError(f"{arg('config_file', str(config_file))} does not exist; check the path.")
    ours = is_converted_dir(checkpoint)
    quant = quantized.read_info(checkpoint)  # (scheme, description) of a quantized directory, ours or msModelSlim's
    converted = read_ours(entry, checkpoint, tp, quant) if ours else read_official(entry, checkpoint, config_file, quant)
    if quant is not None:
        converted.quant = quantized.QuantInfo(quant[0], quantized.quantized_layers(converted.state),
                                              quantized.stored_dtype(converted.state))
    # a directory cut for --tp holds this rank's share (read_converted refuses another degree)
    shapes = expected_shapes(meta_model(entry, converted.config, tp if cut_degree(checkpoint) > 1 else SINGLE,
                                        converted.quant))
    if converted.quant is not None:
        converted.state = quantized.module_state(converted.state, converted.quant, shapes, converted.official_name,
                                                 checkpoint)
    check_state_dict(converted.state, shapes, converted.official_name, converted.unexpected, checkpoint)
    return converted


def read_ours(entry: ModelSpec, directory: Path, tp: TensorParallel, quant) -> Converted:
    """Our converted directory, named in our layout already: this rank's file, or the whole model's."""
    document, state = read_converted(directory, tp.rank, tp.size, model=entry.name)
    if quant is not None:
        degree = document.get("tp", 1)
        quantized.check_file_dtypes(directory / shard_file(tp.rank if degree > 1 else 0, degree), quant[1])
    return Converted(config_from_dict(entry, document["config"], directory / "config.json"), state, str, [])


def read_official(entry: ModelSpec, checkpoint: Path, config_file, quant) -> Converted:
    """An official artifact through its family's converter; for a directory msModelSlim wrote, its weights
    file (official names, with the quantized layers' tensors beside their weights)."""
    if quant is None:
        return entry.convert(checkpoint, config_file)
    weights = quantized.modelslim_weights(checkpoint)
    quantized.check_file_dtypes(weights, quant[1])
    return entry.convert(weights, config_file)


def meta_model(entry: ModelSpec, config, tp: TensorParallel = SINGLE,
               quant: quantized.QuantInfo | None = None) -> torch.nn.Module:
    """The model's structure without memory (quantized as `quant` says), split as `tp` says."""
    with torch.device("meta"), SkipInit():
        model = entry.build(config)
        if quant is not None:
            quantize_structure(model, quant.scheme, quant.layers)
        return cut_model(entry, model, tp)


def build_model(entry: ModelSpec, checkpoint=None, config=None, config_file=None,
                tp: TensorParallel = SINGLE, device=None) -> torch.nn.Module:
    """The model in fp32 (its quantized layers int8), holding this rank's share when `tp` splits it: converted
    weights on the CPU (a full checkpoint is cut here, a directory of shards gives each rank its own file), or,
    when no checkpoint, random ones drawn directly on `device` (default CPU; reproducible per device type)
    from a structure built without memory, so no weight is initialised twice or copied from the host."""
    if checkpoint is None:  # drawn whole, then cut, so every rank holds its share of the same model
        model = materialize_parameters_(meta_model(entry, config or entry.default_config()), device or "cpu")
        return cut_model(entry, model.init_weights(), tp)
    converted = load_weights(entry, checkpoint, config_file, tp)
    cut_on_disk = cut_degree(checkpoint) > 1  # a directory cut for --tp already holds this rank's share
    model = meta_model(entry, converted.config, tp if cut_on_disk else SINGLE, converted.quant)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in converted.state.items()},
                          assign=True)
    model.quant_info = converted.quant  # a quantized checkpoint's scheme, layers and stored dtype; None: float
    if cut_on_disk:
        return model
    return cut_model(entry, model, tp)


def cut_model(entry: ModelSpec, model: torch.nn.Module, tp: TensorParallel) -> torch.nn.Module:
    """The whole `model` cut in place for `tp` by the plan of its family's model for its config's task (a float
    model, or one quantized whole: npu_models.quantization)."""
    return parallel.apply_plan(model, entry_for_config(entry, model.config).tp_plan, tp)
