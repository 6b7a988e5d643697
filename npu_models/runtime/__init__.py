"""The only code that knows NPU vs CUDA vs CPU: devices, dtypes, graph mode, synchronisation."""
from npu_models.runtime.device import (
    default_dtype,
    device_description,
    dtype_name,
    import_torch_npu,
    is_310p,
    npu_chip_name,
    parse_dtype,
    resolve_device,
    synchronize,
)
from npu_models.runtime.graph import bucket_for, compile_model, length_buckets

__all__ = [
    "bucket_for", "compile_model", "default_dtype", "device_description", "dtype_name", "import_torch_npu",
    "is_310p", "length_buckets", "npu_chip_name", "parse_dtype", "resolve_device", "synchronize",
]
