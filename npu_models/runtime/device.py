"""Device resolution, the dtype policy and synchronisation: the only place that knows npu vs cuda vs cpu."""
import functools
import re

import torch

from npu_kernels.plan import is_310p
from npu_models.errors import UserError, arg

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|npu)(?::(\d+))?$")
_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


@functools.lru_cache(maxsize=None)
def import_torch_npu():
    """Import torch_npu on first use; it registers the 'npu' device type with torch."""
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
    except ImportError as err:
        raise UserError(
            "device 'npu' needs the Ascend PyTorch adapter torch_npu, which is not importable here "
            f"({err}). Install it with `pip install -e .[npu]` (torch_npu matching your torch version and "
            "CANN toolkit, with the Ascend driver installed and `source set_env.sh` done), or choose "
            f"{arg('device', 'cuda')} or {arg('device', 'cpu')}."
        ) from None
    return torch_npu


def npu_available() -> bool:
    try:
        import_torch_npu()
    except UserError:
        return False
    return torch.npu.is_available()


def resolve_device(spec="auto") -> torch.device:
    """Turn 'auto' | 'npu[:N]' | 'cuda[:N]' | 'cpu' (or a torch.device) into a usable torch.device, made
    the current device of its kind.

    'auto' picks npu, then cuda, then cpu.
    """
    device = parse_device(spec)
    if device.type != "cpu":
        getattr(torch, device.type).set_device(device.index)
    return device


def parse_device(spec="auto") -> torch.device:
    """The torch.device `spec` names, refused when this machine has no such device; nothing is set up, so
    the commands check --device with it before any work."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    match = _DEVICE_PATTERN.match(str(spec).strip().lower())
    if match is None:
        raise UserError(f"unknown device '{spec}': use auto, npu, npu:N, cuda, cuda:N or cpu.")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if npu_available():
            kind = "npu"
        elif torch.cuda.is_available():
            kind = "cuda"
        else:
            return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "npu":
        import_torch_npu()
    backend = getattr(torch, kind)
    count = backend.device_count() if backend.is_available() else 0
    index = int(index or 0)
    if count == 0:
        raise UserError(f"device '{spec}' was asked for but no {kind} device is visible; "
                        f"check the driver installation or choose {arg('device', 'cpu')}.")
    if index >= count:
        raise UserError(f"device '{spec}' does not exist: {count} {kind} device(s) are visible "
                        f"(indices 0..{count - 1}).")
    return torch.device(kind, index)


def npu_chip_name(device: torch.device) -> str:
    """The SoC name of an Ascend device, e.g. 'Ascend310P3' or 'Ascend910B2'."""
    import_torch_npu()
    return torch.npu.get_device_name(device.index or 0)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA and 910-class Ascend chips, fp16 on Ascend 310P (no bf16 there)."""
    if device.type == "cpu":
        return torch.float32
    if device.type == "npu" and is_310p(npu_chip_name(device)):
        return torch.float16
    return torch.bfloat16


def parse_dtype(name, device: torch.device) -> torch.dtype:
    """'auto'/None -> the device default; otherwise fp32 | fp16 | bf16 (or a torch.dtype)."""
    if isinstance(name, torch.dtype):
        dtype = name
    elif name is None or name == "auto":
        return default_dtype(device)
    elif str(name).lower() in _DTYPES:
        dtype = _DTYPES[str(name).lower()]
    else:
        raise UserError(f"unknown dtype '{name}': use auto, fp32, fp16 or bf16.")
    if dtype == torch.bfloat16 and device.type == "npu" and is_310p(npu_chip_name(device)):
        raise UserError(f"{npu_chip_name(device)} has no bf16 support: use {arg('dtype', 'fp16')} (the default there).")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def to_model_input(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An input on the model's device; floating-point inputs (pixels, region features) in the model's dtype,
    integer and boolean ones (token ids, masks) unchanged. The copy does not block the host where the
    source is pinned (the eval loaders pin on accelerators): the next batch is prepared meanwhile."""
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None, non_blocking=True)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings measure the computation."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)

