"""What the registry lists: one ModelSpec per registered model, declared in its family's folder
(`npu_models/models/<family>/__init__.py`), which holds everything else about the model too."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from npu_models.checkpoints.io import Converted
from npu_models.tasks import Task


@dataclass(frozen=True)
class Benchmark:
    """One part of a model that eval.bench times."""
    make_inputs: Callable          # (config, batch_size, seq_len, device) -> (inputs tuple, sequence length)
    timed_part: Callable = lambda model: model  # which entry point of our model is timed
    graph: bool = True             # False where data-dependent shapes (detections) rule out a static graph


@dataclass(frozen=True)
class Ranking:
    """An output of candidate indices [R, k], each row the top-k of a row of a score output. In low
    precision two candidates whose scores tie within tolerance may swap places; verify accepts such a swap
    (judged by the reference's scores) and still fails a candidate whose reference score is clearly lower."""
    scores: str                    # the output whose rows were ranked, e.g. "itc_sims"
    transposed: bool = False       # the rows ranked are the columns of `scores` (texts ranking images)
    # [R, N] outputs holding values only at each row's candidates (re-ranked score matrices): a cell that
    # differs only because of an accepted swap is left out of their comparison
    scattered: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str                     # the registry name: bert-base-cased-sst2
    short_name: str               # what --model also accepts: bert
    # The folder under npu_models/models/. Specs of one family share build and convert: a checkpoint's
    # config says which of them it is (VLMo's VQA and retrieval fine-tunes).
    family: str
    config_class: type
    default_config: Callable[[], Any]
    build: Callable[[Any], torch.nn.Module]
    # (official artifact path, config file or None) -> Converted; the config file replaces the config.json
    # the converter looks for beside the artifact
    convert: Callable[[Path, Path | None], Converted]
    # what the eval command task.name (sst2, imagenet, vqa, retrieval) calls on the model: npu_models.tasks
    task: Task
    # files that travel with a converted checkpoint (e.g. the tokenizer vocabulary)
    assets: tuple[str, ...] = ()
    # tensor-parallel plan: module path pattern -> "heads" | "mlp" | "head_columns" (npu_models.parallel);
    # everything it does not name (embeddings, norms, poolers, heads) is replicated
    tp_plan: dict[str, str] = dataclasses.field(default_factory=dict)
    # what eval.bench times, by part name ("" for the whole model)
    benchmarks: dict[str, Benchmark] = dataclasses.field(default_factory=dict)
    # (model, **fixture inputs) -> {reference name: tensor}: what weights_tools.verify compares with a
    # reference fixture's outputs.safetensors, produced by the methods the eval commands run
    outputs: Callable[..., dict[str, torch.Tensor]] | None = None
    # output name -> Ranking, for the outputs above that are candidate indices rather than values
    rankings: dict[str, Ranking] = dataclasses.field(default_factory=dict)
