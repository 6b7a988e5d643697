"""PyTorch-native inference for published vision-language and language models on Ascend NPU, CUDA and CPU."""
import warnings
from pathlib import Path

import npu_models.runtime  # noqa: F401  first, before torch: it sets how OpenMP's threads wait (runtime/openmp.py)
from npu_models.errors import UserError, UserFacingWarning, arg

__version__ = "0.1.0"


class RandomWeightsWarning(UserFacingWarning):
    """A model was built without a checkpoint: its weights are random and its outputs mean nothing."""


def load_model(name_or_path, checkpoint=None, device="auto", dtype=None, graph=False, tp=1, task=None, config=None,
               config_file=None, graph_backend="auto", compile_cache=None):
    """The one public entry: a ready-to-run model in eval mode.

    name_or_path: a registry name ('bert-base-cased-sst2'), a short name ('bert'), or a directory
        written by `python -m weights_tools.convert`.
    checkpoint: an official artifact (converted on the fly), our converted directory, or a quantized one
        (weights_tools.quantize's, or msModelSlim's W8A8 layout); None gives reproducible random weights of
        the full size.
    device: auto | npu[:N] | cuda[:N] | cpu.  dtype: None/'auto' for the device default, or fp32/fp16/bf16.
    graph: graph mode (static shapes): NPUGraph capture on 310P, torchair's npugraph_ex on A2/A3, torch.compile
        on CUDA (with CUDA graphs) and CPU.
    graph_backend: auto (the device's default above) | capture | npugraph_ex | ge | inductor
        (npu_models.runtime.graph); only with graph=True.
    compile_cache: with graph=True, the directory compiled graphs are kept in, so that the next process loads
        them instead of compiling again; None: TORCHINDUCTOR_CACHE_DIR if set, else
        $XDG_CACHE_HOME/npu-models/compile (~/.cache/npu-models/compile); "off" or False: no cache
        (npu_models.runtime.compile_cache).
    tp: tensor-parallel degree; under torchrun each of the `tp` processes holds its share of every split layer.
    task: picks among models sharing a short name ('vlmo' -> 'vqa' or 'retrieval').
    config: the model config for random weights (no checkpoint); default: the registry's full-size one.
    config_file: replaces the config.json a converter reads beside an official checkpoint (--config).
    """
    from npu_models import parallel, registry, runtime
    from npu_models.checkpoints.io import is_converted_dir, read_json

    if checkpoint is None and Path(str(name_or_path)).is_dir() and is_converted_dir(name_or_path):
        checkpoint, name_or_path = name_or_path, read_json(Path(name_or_path) / "config.json")["model"]
    entry = registry.get_entry(str(name_or_path), task)
    device = runtime.resolve_device(device)
    dtype = runtime.parse_dtype(dtype, device)
    graph_backend = runtime.graph_backend_for(device, graph, graph_backend)
    check_before_loading(checkpoint, device, graph, compile_cache)
    if graph:
        runtime.begin_graph_mode(device, graph_backend)
    if checkpoint is None:  # after the checks above: a refused call warns of nothing
        warnings.warn(RandomWeightsWarning(f"{entry.name} has RANDOM weights (no checkpoint given): its outputs are "
                                           f"meaningless. Pass {arg('checkpoint')} with an official checkpoint or a "
                                           "converted directory."), stacklevel=2)
    tensor_parallel = parallel.init_tensor_parallel(tp, device.type)
    # random weights are drawn on the device itself; a checkpoint's are read to the CPU and moved
    model = registry.build_model(entry, checkpoint, config, config_file, tensor_parallel,
                                 device=parallel.local_device(device))
    served = registry.entry_for_config(entry, model.config)
    if task is not None and served.task.name != task:
        raise UserError(f"{checkpoint} is a {served.task.name} checkpoint ({served.name}); {task} needs a {task} "
                        f"fine-tune such as {entry.name}'s.")
    model = runtime.prepare_model(model, parallel.local_device(device), dtype)
    return runtime.compile_model(model, device, graph_backend, compile_cache) if graph else model


def check_before_loading(checkpoint, device, graph: bool, compile_cache) -> None:
    """What load_model refuses before any weight is read: an unwritable compile cache (graph mode), and a
    quantized checkpoint whose scheme this device cannot run."""
    from npu_models import runtime
    from npu_models.checkpoints import quantized

    if graph:
        runtime.check_compile_cache(compile_cache)
    quant = None if checkpoint is None else quantized.read_info(checkpoint)
    if quant is not None:
        runtime.check_quant_scheme(quant[0], device)


__all__ = ["RandomWeightsWarning", "UserError", "load_model"]
