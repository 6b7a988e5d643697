"""Kernel selection, done once when a model is put on its device (never inside a forward)."""
import torch

from npu_kernels import PORTABLE, KernelPlan, plan_for_ascend_chip
from npu_kernels.quant_matmul import unsupported_reason
from npu_models.errors import UserError
from npu_models.runtime.device import npu_chip_name
from npu_models.runtime.settings import apply_device_settings


def kernel_plan(device: torch.device) -> KernelPlan:
    """The fused-operator backends for `device`: Ascend ops chosen by chip on NPU, torch's elsewhere.

    The chip name is a device query that graph mode cannot trace, so it is asked here, at load time.
    """
    if device.type == "npu":
        return plan_for_ascend_chip(npu_chip_name(device))
    return PORTABLE


def check_quant_scheme(scheme: str, device: torch.device) -> None:
    """Refuse, before any weight is read, a model quantized with a scheme `device`'s kernels cannot run."""
    reason = unsupported_reason(scheme, kernel_plan(device))
    if reason:
        raise UserError(f"the checkpoint is quantized with {scheme}, which {device} cannot run: {reason}.")


def configure_kernels(model: torch.nn.Module, plan: KernelPlan) -> torch.nn.Module:
    """Give every layer that calls a fused operator the plan (layers hold it as `kernel_plan`)."""
    for module in model.modules():
        if hasattr(module, "kernel_plan"):
            module.kernel_plan = plan
    return model


def prepare_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model on `device` in `dtype`, in eval mode without gradients, with that device's kernels, its
    weight-derived constants (a module's prepare_for_inference) computed there, and the device's load-time
    settings (runtime.settings: binary kernels, NZ weights on 310P) applied last. The kernels are chosen
    before the constants, which may depend on them (QuantLinear's deq_scale). load_model calls it after the
    tensor-parallel cut, so the settings apply to this rank's share."""
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    configure_kernels(model, kernel_plan(device))
    for module in model.modules():  # weight-derived constants computed once, where and as they will be used
        if hasattr(module, "prepare_for_inference"):
            module.prepare_for_inference()
    return apply_device_settings(model, device)
