"""Compile once: where graph mode keeps what it compiled, so that a second run of the same command loads it
instead of compiling again, and how long a run spent compiling.

- torch.compile (CPU, CUDA): inductor's FX graph cache and the AOTAutograd cache (both on by default in
  torch 2.14) write under TORCHINDUCTOR_CACHE_DIR, whose default is a per-user folder in /tmp that a reboot
  may wipe. We point it at `<cache>/inductor`; Triton's kernels (CUDA) go to its `triton/` folder unless
  TRITON_CACHE_DIR says otherwise. torch reads that directory from the environment only (and writes it
  there itself, torch/_inductor/runtime/cache_dir_utils.py), so it is the one environment variable this
  sets; the switches are torch config (`torch._inductor.config.fx_graph_cache`,
  `torch._functorch.config.enable_autograd_cache`). Dynamo still traces the model in every process: a
  cached run skips inductor's code generation and C++/Triton compilation, not the trace.
- torchair's GE graph: `torchair.inference.cache_compile` keeps the compiled graph of one module method
  under `<cache>/torchair` (see graph.torchair_compile for where it applies).

The cache: `compile_cache=` in load_model / `--compile-cache DIR` on the command line; None means
TORCHINDUCTOR_CACHE_DIR when the user set it, else $XDG_CACHE_HOME/npu-models/compile (~/.cache/...);
"off" (or False) turns the caches off. It is applied when graph mode compiles, never in eager mode.
"""
import functools
import hashlib
import os
import tempfile
import time
from pathlib import Path

from npu_models.errors import UserError, arg
from npu_models.runtime.device import synchronize

OFF = "off"
# The user's own choice of inductor cache, read before anything (torch included) writes the variable.
_USER_INDUCTOR_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
_compile_seconds = 0.0  # this process's time spent in first calls per shape of graph-mode callables


def default_compile_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "npu-models" / "compile"


def resolve_compile_cache(value) -> Path | None:
    """The cache directory `value` (None, False, "off", or a path) names; None when the cache is off."""
    if value is False or str(value) == OFF:
        return None
    if value is None:
        return Path(_USER_INDUCTOR_DIR) if _USER_INDUCTOR_DIR else default_compile_cache()
    return Path(value).expanduser()


def check_compile_cache(value) -> Path | None:
    """The cache directory, created and proven writable; refused with the fix before any work."""
    directory = resolve_compile_cache(value)
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test."):
            pass
    except OSError as err:
        raise UserError(f"the compile cache {directory} cannot be written ({err.strerror or err}): choose a writable "
                        f"directory ({arg('compile_cache')}), or turn the cache off ({arg('compile_cache', OFF)}).") from None
    return directory


def use_compile_cache(value) -> Path | None:
    """Point torch's compile caches at the cache directory (or turn them off) before graph mode compiles."""
    import torch._functorch.config
    import torch._inductor.config

    directory = check_compile_cache(value)
    torch._inductor.config.fx_graph_cache = directory is not None
    torch._functorch.config.enable_autograd_cache = directory is not None
    if directory is not None:
        inductor = str((directory / "inductor").absolute())
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") != inductor:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor
            from torch._inductor.utils import clear_caches
            clear_caches()  # code caches in memory still name the previous directory
    return directory


@functools.cache
def code_fingerprint() -> str:
    """A hash of this package's and the kernels' sources. torchair's cache_compile keys its cache by the
    module's repr and the compiler config only, so a changed forward would load a stale graph: the
    fingerprint goes into its directory name."""
    import npu_kernels

    digest = hashlib.sha256()
    # npu_models' folder from this file's place: importing the package from inside it would be a cycle
    for root in (Path(__file__).resolve().parents[1], Path(npu_kernels.__file__).parent):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def compile_seconds() -> float:
    """Seconds this process has spent compiling (or capturing) so far: the first call per input shape of every
    graph-mode callable, which compiles and runs once (see FirstCallTimer)."""
    return _compile_seconds


class FirstCallTimer:
    """A graph-mode callable that times its first call per input shape (each compiles, or captures, a graph,
    then runs it once) into compile_seconds(). Called like the original, whose attributes it shows."""

    def __init__(self, run, original, device, input_key):
        self.run, self.original, self.device, self.input_key = run, original, device, input_key
        self.seen = set()
        self.compile_s = 0.0

    def __call__(self, *args, **kwargs):
        global _compile_seconds
        key = self.input_key(args, kwargs)
        if key in self.seen:
            return self.run(*args, **kwargs)
        synchronize(self.device)
        start = time.perf_counter()
        outputs = self.run(*args, **kwargs)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.seen.add(key)
        self.compile_s += seconds
        _compile_seconds += seconds
        return outputs

    def __getattr__(self, name):
        if name == "original":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.original, name)


