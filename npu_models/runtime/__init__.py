"""The only code that knows NPU vs CUDA vs CPU: devices, dtypes, kernel choice, graph mode, load-time
settings, compile caches, synchronisation."""
from npu_models.runtime.openmp import prefer_short_spin_waits

prefer_short_spin_waits()  # before anything imports torch: OpenMP reads its settings once, when torch loads it

from npu_models.runtime.compile_cache import check_compile_cache, compile_seconds, default_compile_cache
from npu_models.runtime.device import (
    default_dtype,
    dtype_name,
    import_torch_npu,
    is_310p,
    npu_chip_name,
    parse_device,
    parse_dtype,
    resolve_device,
    synchronize,
    to_model_input,
)
from npu_models.runtime.graph import (
    GRAPH_BACKENDS,
    begin_graph_mode,
    bucket_for,
    compile_model,
    graph_backend_for,
    length_buckets,
    length_step,
)
from npu_models.runtime.saved_graphs import graph_counts
from npu_models.runtime.kernels import check_quant_scheme, configure_kernels, kernel_plan, prepare_model
from npu_models.runtime.settings import apply_device_settings, device_description, device_settings

__all__ = [
    "GRAPH_BACKENDS", "apply_device_settings", "begin_graph_mode", "bucket_for", "check_compile_cache", "check_quant_scheme", "compile_model", "compile_seconds",
    "configure_kernels", "default_compile_cache", "default_dtype",
    "device_description", "device_settings", "dtype_name", "graph_backend_for", "graph_counts", "import_torch_npu", "is_310p",
    "kernel_plan", "length_buckets", "length_step", "npu_chip_name", "parse_device", "parse_dtype", "prepare_model",
    "resolve_device", "synchronize", "to_model_input",
]
