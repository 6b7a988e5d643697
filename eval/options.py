"""What every eval command is given, as Python values (eval.cli parses the command line into these), the
files that default from them, and what a run says about itself."""
import dataclasses
import datetime
import hashlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

import npu_models
from npu_models import parallel, registry, runtime
from npu_models.checkpoints.io import file_identity
from npu_models.errors import UserError
from npu_models.quantization import scheme_of


@dataclass
class EvalOptions:
    """The options every eval command shares; each command's options add its own. Paths may be given as
    strings."""
    task: ClassVar[str]               # the command and the registry task it runs: sst2, imagenet, vqa, retrieval
    prediction_key: ClassVar[str]     # the field that keys its predictions records
    # the options naming files or directories the command reads: all checked to exist before any work
    input_paths: ClassVar[tuple[str, ...]] = ("checkpoint", "data", "config")
    model: str | None = None          # short or registry name; None: the task's default model
    checkpoint: Path | None = None    # official checkpoint or converted directory; None: random weights (a demo)
    data: Path | None = None          # the dataset in its real layout; None: the bundled sample
    config: Path | None = None        # hyper-parameters the checkpoint cannot reveal (a config.json)
    device: str = "auto"
    dtype: str = "auto"
    graph: bool = False
    graph_backend: str = "auto"      # with graph: the device's default, or capture | npugraph_ex | ge | inductor
    compile_cache: Path | None = None  # with graph: kept compiled graphs; None: the default dir; "off": none
    tp: int = 1                       # tensor-parallel degree (under torchrun)
    batch_size: int = 32
    output: Path | None = None        # the results JSON (written by the command line)
    predictions: Path | None = None   # streamed, resumable JSON lines
    limit: int | None = None          # only the first N examples
    # when the command started (a perf_counter reading): time_to_first_batch_s counts from here
    started_at: float = field(default_factory=time.perf_counter, compare=False)

    def __post_init__(self):
        if self.model is None:
            self.model = registry.default_entry(self.task).name
        paths_from_strings(self)


def paths_from_strings(options) -> None:
    """Turn the strings a Python caller may give for an options dataclass's Path fields into Paths."""
    for option in dataclasses.fields(options):
        value = getattr(options, option.name)
        if isinstance(value, str) and "Path" in str(option.type):
            setattr(options, option.name, Path(value))


def find_beside(options: EvalOptions, data: Path, name: str) -> Path | None:
    """A file in the data directory or beside the checkpoint, in that order."""
    for directory in (data, options.checkpoint.parent if options.checkpoint else None):
        if directory is not None and (directory / name).is_file():
            return directory / name
    return None


def bert_uncased_vocab(options, data: Path) -> Path:
    """options.vocab, else vocab.txt in the data directory or beside the checkpoint (models whose checkpoint
    does not carry bert-base-uncased's vocabulary)."""
    vocab = options.vocab or find_beside(options, data, "vocab.txt")
    if vocab is None:
        raise UserError("no vocab.txt in --data or beside the checkpoint; pass --vocab with bert-base-uncased's vocab.txt.")
    return vocab


def demo_banner(what: str) -> None:
    if not parallel.is_main_process():
        return
    bar = "=" * 78
    print(f"{bar}\nDEMO RUN: {what}\nThe weights are RANDOM, so the metrics below are meaningless. Pass --checkpoint "
          f"and --data\nfor a real evaluation (see README).\n{bar}", file=sys.stderr, flush=True)


def content_hash(path_or_values) -> str | None:
    """sha256 of a small file (a vocabulary) or of a list of strings (an answer list)."""
    if path_or_values is None:
        return None
    if isinstance(path_or_values, (list, tuple)):
        data = "\n".join(path_or_values).encode("utf-8")
    else:
        data = Path(path_or_values).read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def command_model(options: EvalOptions, model=None, graph: bool | None = None, config=None):
    """The ready `model` (checked against the options: check_ready_model), else the one options.checkpoint holds,
    loaded for the command's task as its options say (`graph` overrides options.graph; `config`: random weights'
    config)."""
    if model is not None:
        check_ready_model(options, model)
        return model
    graph = options.graph if graph is None else graph
    with warnings.catch_warnings():
        if options.checkpoint is None:  # the command's demo banner says so already, louder
            warnings.simplefilter("ignore", npu_models.RandomWeightsWarning)
        return npu_models.load_model(registry.get_entry(options.model, task=options.task).name, options.checkpoint,
                                     options.device, options.dtype, graph, options.tp, task=options.task, config=config,
                                     config_file=options.config, graph_backend=options.graph_backend,
                                     compile_cache=options.compile_cache)


def check_ready_model(options: EvalOptions, model) -> None:
    """A model handed to a command in place of loading options.checkpoint must be one options.model names,
    fine-tuned for options.task: the command picks the task adapter, the tokenizer and the run record by that
    name, so another model would run the wrong code or resume the wrong predictions."""
    entry = registry.get_entry(options.model, task=options.task)
    config = getattr(model, "config", None)
    served = registry.entry_for_config(entry, config) if isinstance(config, entry.config_class) else None
    if served is None or served.task.name != options.task:
        runs = ", ".join(e.name for e in registry.REGISTRY.values() if e.task.name == options.task)
        kind = f"{served.name}, a {served.task.name} model" if served else f"a {type(model).__name__}"
        raise UserError(f"eval.{options.task} was given {kind}, while options.model names {entry.name}; "
                        f"{options.task} runs {runs}: pass a model made for {options.task}, and its registry name "
                        "as model=.")


def run_record(options: EvalOptions, dtype: torch.dtype, model, **outputs_options) -> dict:
    """What a predictions file must agree on to be resumed: the command, model, checkpoint, config file, dtype
    and quantization scheme (a model quantized after the file was written must not resume a float one's
    predictions), plus the command's options that change outputs."""
    return {"command": options.task, "model": registry.get_entry(options.model, task=options.task).name,
            "checkpoint": file_identity(options.checkpoint), "config": content_hash(options.config),
            "dtype": runtime.dtype_name(dtype), "quant": scheme_of(model), **outputs_options}


def run_metadata(options: EvalOptions, device: torch.device, dtype: torch.dtype, model) -> dict:
    """What every results JSON says about the run; "quant" names the model's int8 scheme ("none": float)."""
    return {
        "model": options.model, "checkpoint": str(options.checkpoint) if options.checkpoint else None,
        "random_weights": options.checkpoint is None, "device": runtime.device_description(device),
        "dtype": runtime.dtype_name(dtype), "quant": scheme_of(model), "graph": options.graph,
        "device_settings": runtime.device_settings(device), "batch_size": options.batch_size,
        "date": datetime.date.today().isoformat(),
    }
