"""Saved graphs: graph mode on the CPU compiled once per input shape into a file that a later process loads
instead of tracing the model again.

How: `torch.compile(module.forward, fullgraph=True).aot_compile((args, kwargs))` traces and compiles one static
shape; `save_compiled_function` writes it, `torch.compiler.load_compiled_function` reads it back (0.1 s against
4-16 s of Dynamo, AOTAutograd and inductor). The loaded function takes the module as its first argument and
reads the weights from it at every call, so the file holds code, not weights (1.2 MB for bert-base, whose
weights are 438 MB): one saved graph serves every checkpoint of that configuration.

Why not AOTInductor (`torch.export`, `aoti_compile_and_package`, `aoti_load_package`), which the issue also
names: measured on bert-base (batch 8 x 64 tokens, 2-core CPU, torch 2.14.1) it compiled in 13-22 s against 10
s, loaded no faster, and with `package_constants_in_so=False` it still folded `classifier.bias` into the
package: loaded with another checkpoint's weights it answered with the saved bias (max error 1.0). A graph that
reads its weights from the module cannot do that.

A saved graph holds the kernels' source; their compiled libraries live in inductor's cache, which the same
compile-cache directory keeps (`<cache>/inductor`): with that cache cold, a load compiles the C++ again.

Where it applies: inductor on the CPU with a compile cache, for a module or a module's bound method (the
eval commands and the server compile the model's forward). CUDA keeps torch.compile with CUDA graphs and
inductor's caches (not measured here: no GPU); torchair keeps its cache_compile; a 310P capture has nothing to
save (its capture time per shape is in compile_s).

Each file is made for one key (GraphKey): torch's version, the device, the weights' dtypes, the model's
configuration and weight shapes, and our sources. A file made for another key is refused with one line that
says which part differs, and compiled again; so is a file that cannot be read, or whose guards do not fit the
call.
"""
import functools
import hashlib
import json
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch.utils._pytree import tree_map_only

from npu_models.errors import UserFacingWarning
from npu_models.runtime.compile_cache import code_fingerprint

GRAPHS_DIR = "graphs"
_counts = {"graphs_loaded": 0, "graphs_compiled": 0}  # this process's graphs read from files, and compiled


def graph_counts() -> dict[str, int]:
    """How many graphs this process has loaded from saved files (graphs_loaded) and compiled, saving each it could
    (graphs_compiled), so far: the keys results JSONs and the server's /v1/models report them by."""
    return dict(_counts)


def import_in_background() -> None:
    """Import what a saved graph's code imports (torch._inductor's lowering and select_algorithm: about 1.5 s on
    this 2-core CPU) in a thread, while the model is built and its weights are read: the first load then finds
    them imported. Python's import lock makes a load that comes first wait for the thread, never import twice."""
    def work():
        import torch._inductor.async_compile  # noqa: F401
        import torch._inductor.select_algorithm  # noqa: F401

    threading.Thread(target=work, name="import-inductor", daemon=True).start()


class StaleGraphWarning(UserFacingWarning):
    """A saved graph was made for something else (another torch, device, dtype, model or source), or could not be
    used: it is compiled again."""


@dataclass(frozen=True)
class GraphKey:
    """What a saved graph is specific to, beyond its input shapes."""
    torch: str     # torch.__version__
    device: str    # the device type and what code is generated for (the CPU's vector ISA)
    dtype: str     # the weights' dtypes
    model: str     # digest of the model's config and weight names and shapes (a TP shard, int8 layers)
    source: str    # npu_models' and npu_kernels' sources (compile_cache.code_fingerprint)

    @classmethod
    def current(cls, module: torch.nn.Module, device: torch.device) -> "GraphKey":
        tensors = list(module.state_dict(keep_vars=True).items())
        layout = repr(getattr(module, "config", None)) + "".join(f"{n}{tuple(t.shape)}{t.dtype}" for n, t in tensors)
        return cls(torch=torch.__version__, device=device_code(device),
                   dtype=",".join(sorted({str(t.dtype).removeprefix("torch.") for _, t in tensors})),
                   model=hashlib.sha256(layout.encode()).hexdigest()[:16], source=code_fingerprint())

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]

    def first_difference(self, other: "GraphKey") -> str | None:
        """What `other` (a saved graph's key) was made for where it differs from this key, in a few words; None
        if it does not differ."""
        for field in fields(self):
            ours, theirs = getattr(self, field.name), getattr(other, field.name)
            if ours == theirs:
                continue
            if field.name == "model":
                return f"another model configuration (digest {theirs}; this model's is {ours})"
            if field.name == "source":
                return f"other npu_models sources (fingerprint {theirs}; these are {ours})"
            return f"{field.name} {theirs} (this is {field.name} {ours})"
        return None


def device_code(device: torch.device) -> str:
    if device.type == "cpu":
        return f"cpu-{torch.backends.cpu.get_cpu_capability()}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    return device.type


def describe_inputs(shape_key) -> str:
    """The tensor shapes of a call key, for messages."""
    _, leaves = shape_key
    return str([leaf[0] for leaf in leaves if isinstance(leaf, tuple) and len(leaf) == 3])


class SavedGraphs:
    """`method` of `module` (its forward by default) in graph mode, one compiled graph per input shape, each kept
    under `cache`/graphs and loaded from there by a later process. Called like the method; attributes are the
    module's.

    `loaded` and `compiled` list the input keys this object read from files and compiled itself, in order: the
    tests prove with them which happened."""

    def __init__(self, module: torch.nn.Module, method: str, device: torch.device, cache: Path, call_key):
        self.module, self.method, self.device, self.call_key = module, method, device, call_key
        self.key = GraphKey.current(module, device)
        self.directory = Path(cache) / GRAPHS_DIR / f"{type(module).__qualname__}.{method}"
        self.graphs: dict = {}
        self.loaded: list = []
        self.compiled: list = []

    def __call__(self, *args, **kwargs):
        # Dynamo guards the strides too: a batch sliced out of a wider tensor is the same graph made contiguous
        args, kwargs = tree_map_only(torch.Tensor, torch.Tensor.contiguous, (args, kwargs))
        shape_key = self.call_key(args, kwargs)
        graph = self.graphs.get(shape_key)
        if graph is None:
            graph = self.graphs[shape_key] = self.load_or_compile(shape_key, args, kwargs)
        return graph(*args, **kwargs)

    def slot(self, shape_key) -> Path:
        """The folder of every saved graph of this method for this call's shapes (one file per GraphKey)."""
        return self.directory / hashlib.sha256(repr(shape_key).encode()).hexdigest()[:20]

    def load_or_compile(self, shape_key, args, kwargs):
        slot = self.slot(shape_key)
        path = slot / f"{self.key.digest()}.graph"
        where = f"the saved graph {path}"
        if path.exists():
            try:
                with open(path, "rb") as f:
                    graph = torch.compiler.load_compiled_function(f)
                if graph.guard_check(self.module, *args, **kwargs):
                    self.loaded.append(shape_key)
                    _counts["graphs_loaded"] += 1
                    return functools.partial(graph, self.module)
                reason = "its guards do not fit this call"
            except Exception as err:  # a damaged or foreign file: compiled again, never a failed run
                reason = f"it cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            self.warn(f"{where} is not used: {reason}: compiling it again.")
        else:
            self.warn_if_stale(slot, shape_key)
        return self.compile(shape_key, args, kwargs, path)

    def warn_if_stale(self, slot: Path, shape_key) -> None:
        """One line when this slot holds graphs, none of them made for this key: which part of the key differs
        (for the newest of them)."""
        saved = sorted(slot.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if slot.exists() else []
        for sidecar in saved:
            try:
                theirs = GraphKey(**json.loads(sidecar.read_text())["key"])
            except (OSError, ValueError, TypeError, KeyError):
                continue
            difference = self.key.first_difference(theirs)
            if difference:
                self.warn(f"the saved graph of {type(self.module).__name__}.{self.method} for inputs "
                          f"{describe_inputs(shape_key)} in {slot} was made for {difference}: compiling it again.")
                return

    def warn(self, message: str) -> None:
        warnings.warn(StaleGraphWarning(message), stacklevel=4)

    def compile(self, shape_key, args, kwargs, path: Path):
        bound = getattr(self.module, self.method)
        _counts["graphs_compiled"] += 1
        graph = torch.compile(bound, fullgraph=True, dynamic=False).aot_compile((args, kwargs))
        if not graph.guard_check(self.module, *args, **kwargs):
            # a forward that cannot be called back with its module as first argument (nn.Sequential's): compiled
            # the usual way, from inductor's cache, and not saved
            return torch.compile(bound, fullgraph=True, dynamic=False)
        self.compiled.append(shape_key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            graph.save_compiled_function(str(path))  # written to a temporary file, then renamed
            sidecar = {"key": asdict(self.key), "method": f"{type(self.module).__qualname__}.{self.method}",
                       "inputs": describe_inputs(shape_key), "saved": time.strftime("%Y-%m-%d %H:%M:%S")}
            temporary = path.with_suffix(f".json.{os.getpid()}")
            temporary.write_text(json.dumps(sidecar, indent=1))
            temporary.replace(path.with_suffix(".json"))
        except Exception as err:  # a full disk, or code torch cannot serialise, costs the next start its compile
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.warn(f"the graph of {type(self.module).__name__}.{self.method} for inputs {describe_inputs(shape_key)} "
                      f"could not be saved under {path.parent} ({reason}); the next start compiles it again.")
        return functools.partial(graph, self.module)

    def __getattr__(self, name):
        if name == "module":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.module, name)
