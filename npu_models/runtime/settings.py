"""Load-time settings on Ascend, as the maintained runtimes deploy these chips, and the one function that
reports them (device line, results JSON).

- Prebuilt binary kernels: `torch_npu.npu.set_compile_mode(jit_compile=False)` (torch_npu/npu/npu_config.py)
  runs the operator binaries shipped with CANN instead of compiling each operator on its first call; users
  report first runs on 310P falling from minutes to seconds. NPU_MODELS_JIT_COMPILE=1 compiles online again.
- Linear weights in FRACTAL_NZ (ACL format 29) on the Atlas inference series (310P): torchair's
  `use_internal_format_weight` (dynamo/torchair/experimental/inference.py) casts every Linear weight so, and
  vLLM-Ascend does on 310P. Cast after the tensor-parallel cut (prepare_model runs after parallel.apply_plan),
  so each rank casts its own share. NPU_MODELS_NZ_WEIGHTS=0 keeps them ND.
- The int8 weights of QuantLinear layers that npu_quant_matmul multiplies (w8a8) too, in the layout its doc
  requires on the Atlas inference series: "x2 transposed first, then cast" — the contiguous [N, K] rows are
  cast, and the kernel passes their transpose as x2 (QuantLinear.store_weights_blocked asks
  npu_kernels.quant_matmul.ascend_takes_nz_weight). The weight
  keeps its logical [N, K] shape, so the eager reference and the scales' constants read it as before; a layer
  whose weight is cast computes all its output features where a caller asks for some rows (a range of NZ rows
  is no tensor the op takes). w8a16 weights stay ND: npu_weight_quant_batchmatmul takes an NZ weight in
  torchair's graph only, not in the single-op calls of eager mode and of the 310P's NPUGraph capture.
- PYTORCH_NPU_ALLOC_CONF is the user's to set (the README says what); it is reported, not changed.
"""
import os
import platform

import torch
from torch import nn

from npu_kernels.plan import is_310p
from npu_models.errors import UserError
from npu_models.runtime.device import import_torch_npu, npu_chip_name

ACL_FORMAT_FRACTAL_NZ = 29  # torch_npu.Format.FRACTAL_NZ (torch_npu/npu/_format.py)
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_switch(name: str, default: bool) -> bool:
    """An on/off environment variable; unset or empty means `default`."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _ON or value in _OFF:
        return value in _ON
    raise UserError(f"environment variable {name}={os.environ[name]!r} is not an on/off switch: set it to 1 or 0, "
                    f"or unset it for the default ({int(default)}).")


def device_settings(device) -> dict:
    """The load-time settings prepare_model applies on `device` ({} off Ascend, where there are none)."""
    if device.type != "npu":
        return {}
    return {"jit_compile": env_switch("NPU_MODELS_JIT_COMPILE", False),
            "nz_weights": is_310p(npu_chip_name(device)) and env_switch("NPU_MODELS_NZ_WEIGHTS", True),
            "PYTORCH_NPU_ALLOC_CONF": os.environ.get("PYTORCH_NPU_ALLOC_CONF")}


def describe_settings(settings: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def device_description(device: torch.device) -> str:
    """A human-readable device name for result files and benchmark tables."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "npu":  # with the load-time settings, so every run's device line shows them
        return f"{device} ({npu_chip_name(device)}; {describe_settings(device_settings(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def apply_device_settings(model: nn.Module, device) -> nn.Module:
    """Put the device's load-time settings into effect for `model` (already on the device, cut for its rank)."""
    settings = device_settings(device)
    if not settings:
        return model
    torch_npu = import_torch_npu()
    torch_npu.npu.set_compile_mode(jit_compile=settings["jit_compile"])
    if settings["nz_weights"]:
        cast_weights_to_nz(model)
    return model


def cast_weights_to_nz(model: nn.Module) -> None:
    """Every weight a Linear multiplies with stored in FRACTAL_NZ. Our own layers (a row-parallel linear of a TP
    cut, an int8 linear) decide which of their weights their kernel takes so: each is handed the cast through its
    `store_weights_blocked(cast)`, so the runtime needs to know no layer type but torch's."""
    torch_npu = import_torch_npu()

    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return torch_npu.npu_format_cast(tensor, ACL_FORMAT_FRACTAL_NZ)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            with torch.no_grad():
                module.weight.data = cast(module.weight.data)
        elif hasattr(module, "store_weights_blocked"):
            module.store_weights_blocked(cast)
