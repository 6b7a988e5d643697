"""Graph mode per device, and the bounded set of static shapes it is fed.

One backend per device by default (`graph_backend="auto"`), another by name:

| backend       | what it is                                                        | default on            |
| ------------- | ----------------------------------------------------------------- | --------------------- |
| `capture`     | the eager forward (fused kernels included) captured as one device | Atlas 300I / 310P     |
|               | graph per input shape (`torch.npu.graph` NPUGraph, or             |                       |
|               | `torch.cuda.graph`), replayed: CapturedGraphs                     |                       |
| `npugraph_ex` | torchair's capture-and-replay of the compiled graph (aclgraph)    | Atlas A2 / A3         |
| `ge`          | torchair's GE graph (any Ascend chip; torchair documents A2/A3)   | other Ascend chips    |
| `inductor`    | torch.compile; on CUDA with CUDA graphs (mode reduce-overhead);   | CUDA, CPU             |
|               | on the CPU saved per shape and loaded by later processes          |                       |
|               | (runtime.saved_graphs)                                            |                       |

Why: torchair's overview lists Atlas A2, A3 (and 950) only; vLLM-Ascend, which runs the Atlas 300I Duo,
captures the whole eager forward with NPUGraph there and documents npugraph_ex as unsupported on it.

Every backend works on static shapes, so the eval loops feed a fixed batch size and sequence lengths from a
short list of buckets: each distinct shape compiles (and is captured) once. Outputs are the caller's to
keep: where a replay writes into the same memory, they are copied out first.
"""
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map_only, tree_unflatten

from npu_kernels.plan import is_310p, is_a2_or_a3
from npu_models.errors import UserError, arg
from npu_models.runtime.compile_cache import FirstCallTimer, code_fingerprint, use_compile_cache
from npu_models.runtime.device import import_torch_npu, npu_chip_name
from npu_models.runtime.saved_graphs import SavedGraphs, import_in_background

GRAPH_BACKENDS = ("auto", "capture", "npugraph_ex", "ge", "inductor")
# Captured shapes per compiled callable. Each graph holds device resources: vLLM-Ascend's 300I Duo guide says
# hardware event ids limit how many graphs can be captured under TP (by model depth), and its ACL graph design
# notes a stream budget on Ascend. The eval loops need batch sizes x length buckets: SST-2's default 128
# tokens in 16-token buckets is 8, the bench's default batch sizes 3. A shape past the cap runs eagerly, with
# one warning.
MAX_CAPTURED_SHAPES = 16


def copy_out(outputs):
    """The caller's own copy of a graph's outputs: the next replay writes into the same buffers."""
    return tree_map_only(torch.Tensor, torch.clone, outputs)


def default_graph_backend(device) -> str:
    if device.type == "npu":
        chip = npu_chip_name(device)
        return "capture" if is_310p(chip) else "npugraph_ex" if is_a2_or_a3(chip) else "ge"
    return "inductor"


def backend_refusal(backend: str, device) -> str | None:
    """Why `backend` cannot run on `device`, or None."""
    if backend == "capture" and device.type == "cpu":
        return "there are no device graphs to capture on the CPU"
    if backend in ("ge", "npugraph_ex") and device.type != "npu":
        return "torchair compiles for Ascend NPUs only"
    if backend == "npugraph_ex" and not is_a2_or_a3(npu_chip_name(device)):
        return "torchair documents npugraph_ex for Atlas A2/A3 only (vLLM-Ascend: not supported on 300I Duo)"
    if backend == "inductor" and device.type == "npu":
        return "torch.compile's inductor is not our route on Ascend: use capture, npugraph_ex or ge"
    return None


def graph_backend_for(device, graph: bool, backend: str = "auto") -> str | None:
    """The graph backend load_model will use on `device` (None in eager mode); a backend that the device
    cannot run, or one given without graph mode, is refused before any weight is read."""
    if backend not in GRAPH_BACKENDS:
        raise UserError(f"unknown graph backend {backend!r}: use one of {', '.join(GRAPH_BACKENDS)}.")
    if not graph:
        if backend != "auto":
            raise UserError(f"{arg('graph_backend', backend)} chooses how graph mode runs: add {arg('graph', True)}, "
                            "or leave the backend at auto.")
        return None
    if backend == "auto":
        return default_graph_backend(device)
    refusal = backend_refusal(backend, device)
    if refusal:
        valid = [b for b in GRAPH_BACKENDS[1:] if backend_refusal(b, device) is None]
        raise UserError(f"graph backend {backend!r} cannot run on {device.type}: {refusal}. "
                        f"Use auto or one of {', '.join(valid)}.")
    return backend


def begin_graph_mode(device, backend: str) -> None:
    """What graph mode starts before the model is built: on the CPU, the imports its saved graphs need."""
    if backend == "inductor" and device.type == "cpu":
        import_in_background()


def compile_model(model, device, backend: str = "auto", compile_cache=None):
    """The graph-mode version of `model` (a module, or one of its methods) for `device`; the original stays
    usable eagerly. Outputs are the caller's to keep: a later call never overwrites them. Compiled artifacts
    are kept in `compile_cache` (runtime.compile_cache: None for the default directory, "off" for none), and
    the first call per input shape is timed into compile_seconds()."""
    backend = graph_backend_for(device, True, backend)
    cache = use_compile_cache(compile_cache) if backend != "capture" else None  # a capture is not kept
    return FirstCallTimer(compiled_for(model, device, backend, cache), model, device, call_key)


def compiled_for(model, device, backend: str, cache):
    if backend == "capture":
        return CapturedGraphs(model, graph_api(device.type))
    if backend in ("ge", "npugraph_ex"):
        return torchair_compile(model, capture=backend == "npugraph_ex", cache=cache)
    if device.type == "cuda":
        return CudaGraphTrees(torch.compile(model, fullgraph=True, dynamic=False, mode="reduce-overhead"), model)
    quiet_cuda_home_notice()
    owner = module_method(model)
    if cache is not None and owner is not None:  # a later process loads what this one compiles
        return SavedGraphs(*owner, device, cache, call_key)
    return torch.compile(model, fullgraph=True, dynamic=False)


def module_method(model) -> tuple[torch.nn.Module, str] | None:
    """(module, method name) for a module (its forward) or a module's bound method; None for other callables."""
    if isinstance(model, torch.nn.Module):
        return model, "forward"
    owner = getattr(model, "__self__", None)
    if isinstance(owner, torch.nn.Module) and getattr(owner, model.__name__, None) == model:
        return owner, model.__name__
    return None


class CudaHomeNotice(logging.Filter):
    """Drops torch.utils.cpp_extension's "No CUDA runtime is found, using CUDA_HOME=..." warning: inductor imports
    that module for the C++ include paths of a CPU graph, and a CPU-only run has no use for a CUDA toolkit that
    merely lies on the disk."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home_notice() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, CudaHomeNotice) for f in logger.filters):
        logger.addFilter(CudaHomeNotice())


def torchair_compile(model, capture: bool, cache=None):
    import_torch_npu()
    import torchair
    from torchair.configs.compiler_config import CompilerConfig

    config = torchair_config(CompilerConfig(), capture)
    method = model.forward if isinstance(model, torch.nn.Module) else model
    if cache is not None and not capture and isinstance(getattr(method, "__self__", None), torch.nn.Module):
        return torchair_cache_compile(method, config, cache)
    backend = torchair.get_npu_backend(compiler_config=config)
    return torch.compile(model, fullgraph=True, backend=backend, dynamic=False)


def torchair_cache_compile(method, config, cache):
    """torchair's GE graph of `method` (a module's bound method), kept under `cache` by
    torchair.inference.cache_compile.

    Its limits decide how it is called: it caches a bound method of an nn.Module only (other functions, such
    as the bench's peers, compile uncached); it keeps ONE graph per method and drops its cache when the method recompiles, and a graph
    loaded from it runs without guards, whatever the input shape: so the graph is compiled with dynamic shapes
    (one graph for every batch shape; GE runs dynamic shapes), not per static shape. Its key is the module's
    repr and the config: our code's fingerprint goes into the directory so that edited code never loads a
    stale graph. Under torch.distributed it adds the rank to the directory itself. The forward must return
    tensors (or tuples of them): the cached code runs with the caller's globals."""
    from torchair.inference import cache_compile

    directory = cache / "torchair" / code_fingerprint()
    return cache_compile(method, config=config, dynamic=True, cache_dir=str(directory))


def torchair_config(config, capture: bool):
    # Weights never change during inference: let GE treat them as constants.
    config.experimental_config.frozen_parameter = True
    if capture:
        # Capture and replay (aclgraph), the mode torchair 2.14 names npugraph_ex ("reduce-overhead" is
        # deprecated). A replay writes into the same memory: outputs are cloned out.
        config.mode = "npugraph_ex"
        config.debug.aclgraph.enable_output_clone = True
    return config


class CudaGraphTrees:
    """A model compiled with CUDA graphs (torch.compile's graph trees, one captured graph per static shape),
    called like the original. Each call is a new inference step whose outputs are copied out of the graphs'
    memory pool. Attributes (config, parameters, methods) are the original model's."""

    def __init__(self, compiled, original):
        self.compiled, self.original = compiled, original

    def __call__(self, *args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return copy_out(self.compiled(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self.original, name)


@dataclass(frozen=True)
class GraphAPI:
    """What capture needs from torch.npu or torch.cuda, which spell it alike but for the graph class."""
    graph_class: type              # torch.npu.NPUGraph | torch.cuda.CUDAGraph
    graph: Callable                # context manager: graph(g, pool=handle) captures the work inside it
    stream_class: type
    stream: Callable               # context manager: stream(s) makes s current
    current_stream: Callable
    graph_pool_handle: Callable


def graph_api(device_type: str) -> GraphAPI:
    if device_type == "npu":
        import_torch_npu()
    module = torch.npu if device_type == "npu" else torch.cuda
    graph_class = module.NPUGraph if device_type == "npu" else module.CUDAGraph
    return GraphAPI(graph_class, module.graph, module.Stream, module.stream, module.current_stream,
                    module.graph_pool_handle)


@dataclass
class Captured:
    """One captured graph: the input buffers it reads and the outputs it writes, on every replay."""
    graph: object
    inputs: list           # the call's flattened arguments, tensors replaced by static buffers
    outputs: object


def call_key(args: tuple, kwargs: dict) -> tuple:
    """What a compiled graph is specific to, for a call: the arguments' structure and input_key."""
    leaves, spec = tree_flatten((args, kwargs))
    return spec, input_key(leaves)


def input_key(leaves: list) -> tuple:
    """What a captured graph is specific to: each tensor's shape, dtype and device, every other value."""
    return tuple((tuple(leaf.shape), leaf.dtype, str(leaf.device)) if isinstance(leaf, torch.Tensor) else leaf
                 for leaf in leaves)


class CapturedGraphs:
    """The eager forward captured as one device graph per input shape, then replayed: one launch a call
    instead of one per kernel. Called like the original, whose attributes it shows.

    A new shape is warmed up eagerly on a side stream (lazy initialisation stays out of the graph), then
    captured into a memory pool all this callable's graphs share: calls are serial and each call's outputs
    are copied out before the next replay, so one graph may reuse another's work memory. A call copies its
    inputs into the graph's static buffers and replays it. The forward must not synchronise with the host
    (.item(), .cpu(), nonzero): capture refuses that.
    """

    def __init__(self, fn, api: GraphAPI, max_graphs: int = MAX_CAPTURED_SHAPES):
        self.fn, self.api, self.max_graphs = fn, api, max_graphs
        self.graphs: dict[tuple, Captured] = {}
        self.pool = None
        self.warned = False

    def __call__(self, *args, **kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        key = (spec, input_key(leaves))
        captured = self.graphs.get(key)
        if captured is None:
            if len(self.graphs) >= self.max_graphs:
                self.warn_uncaptured(leaves)
                return self.fn(*args, **kwargs)
            captured = self.graphs[key] = self.capture(leaves, spec)
        for static, leaf in zip(captured.inputs, leaves):
            if isinstance(leaf, torch.Tensor):
                static.copy_(leaf)
        captured.graph.replay()
        return copy_out(captured.outputs)

    def capture(self, leaves: list, spec) -> Captured:
        static = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = tree_unflatten(static, spec)
        api = self.api
        side = api.stream_class()
        side.wait_stream(api.current_stream())
        with api.stream(side):
            self.fn(*args, **kwargs)
        api.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = api.graph_pool_handle()
        graph = api.graph_class()
        try:
            with api.graph(graph, pool=self.pool):
                outputs = self.fn(*args, **kwargs)
        except Exception as err:
            shapes = [tuple(leaf.shape) for leaf in leaves if isinstance(leaf, torch.Tensor)]
            raise RuntimeError(f"graph capture of {getattr(self.fn, '__qualname__', self.fn)} for inputs {shapes} "
                               f"failed: {err}. A captured forward must not wait for the host (.item(), .cpu(), "
                               "nonzero, shapes read from tensor values); run it eagerly (without graph mode) or choose "
                               "another graph backend.") from err
        return Captured(graph, static, outputs)

    def warn_uncaptured(self, leaves: list) -> None:
        if not self.warned:
            shapes = [tuple(leaf.shape) for leaf in leaves if isinstance(leaf, torch.Tensor)]
            warnings.warn(f"graph mode holds its cap of {self.max_graphs} captured shapes already: inputs {shapes} "
                          "and any further new shape run eagerly (pad to fewer shapes to capture them all).",
                          stacklevel=3)
            self.warned = True

    def __getattr__(self, name):
        if name == "fn":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.fn, name)


def length_buckets(max_length: int, step: int = 16) -> list[int]:
    """Sequence-length buckets: multiples of `step` up to and including `max_length`. A batch then pads
    fewer than `step` tokens per sequence (powers of two padded a 65-token batch to 128), and graph mode
    compiles at most max_length / step graphs."""
    return list(range(step, max_length, step)) + [max_length]


def length_step(graph: bool) -> int:
    """How finely the eval loops pad sequence lengths: multiples of 16 in graph mode, where every length is
    one more compiled graph; in eager mode a new length costs nothing to set up, so each (length-sorted)
    batch pads only to its longest, and a batch of equal lengths needs no attention mask at all."""
    return 16 if graph else 1


def bucket_for(length: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")
