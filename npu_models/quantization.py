"""Post-training int8 quantization of a loaded model: calibrate its encoder Linears' input ranges on a few
batches, then replace those Linears by `QuantLinear`s in place.

What is quantized: every nn.Linear that belongs to an attention layer (q/k/v, the output projection, cross-
and co-attention) or an MLP (both layers, every multiway expert) - the encoder's matmuls. Embeddings, norms,
the patch convolution, poolers and task heads stay in float, and `skip` patterns keep more in float.

    calibration = calibrate(model, batches)                   # the float model, w8a8 only
    quantize_model(model, "w8a8", calibration, skip=("blocks.11.*",))
    model = registry.cut_model(entry, model, tp)              # tensor parallelism: the whole model quantized, then cut
    model = runtime.prepare_model(model, device, dtype)       # the device's int8 kernels and their constants
"""
import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from npu_kernels.quant_matmul import SCHEMES
from npu_models import parallel
from npu_models.errors import UserError, UserFacingWarning
from npu_models.layers.attention import Attention
from npu_models.layers.mlp import Mlp
from npu_models.layers.quant import QuantLinear

CALIBRATION_METHODS = ("minmax", "percentile")


class UncalibratedLayersWarning(UserFacingWarning):
    """Some quantizable layers never ran during calibration (a task that does not use them) and stay in float."""


def quantizable_linears(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Linear]:
    """The encoder Linears (children of an Attention or an Mlp) by module path, less those whose path matches
    a `skip` pattern (fnmatch: 'blocks.0.*', '*.fc2'). A model cut for tensor parallelism is refused: its row-
    parallel layers, no longer Linears, would stay in float, and the per-tensor input range of each must be
    the whole input's, the same on every rank."""
    if parallel.is_cut(model):
        raise UserError("this model is cut for tensor parallelism: calibrate and quantize the whole model (the same "
                        "weights and calibration inputs on every rank), then cut it (registry.cut_model).")
    skip = tuple(skip)
    found = {}
    for owner_path, owner in model.named_modules():
        if not isinstance(owner, (Attention, Mlp)):
            continue
        for name, child in owner.named_children():
            path = f"{owner_path}.{name}" if owner_path else name
            if type(child) is nn.Linear and not any(fnmatch.fnmatchcase(path, pattern) for pattern in skip):
                found[path] = child
    return found


# ---- calibration ------------------------------------------------------------------------------------------


@dataclass
class RangeObserver:
    """The input range of one Linear over the calibration batches: min/max of everything seen ("minmax"), or
    the mean over batches of the low and high `percentile` ("percentile": robust to rare outliers)."""
    method: str
    percentile: float
    low: float = float("inf")
    high: float = float("-inf")
    batches: int = 0

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if self.method == "minmax":
            low, high = x.min().item(), x.max().item()
            self.low, self.high = min(self.low, low), max(self.high, high)
        else:
            fraction = self.percentile / 100
            low = x.kthvalue(max(1, round((1 - fraction) * x.numel()))).values.item()
            high = x.kthvalue(max(1, round(fraction * x.numel()))).values.item()
            seen = self.batches
            self.low = low if seen == 0 else (self.low * seen + low) / (seen + 1)
            self.high = high if seen == 0 else (self.high * seen + high) / (seen + 1)
        self.batches += 1

    def range(self) -> tuple[float, float]:
        return self.low, self.high


def default_forward(model: nn.Module, batch) -> None:
    """A batch is the model's positional arguments (a tuple), keyword arguments (a dict) or one tensor."""
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


def observe_input(observer: RangeObserver):
    def hook(module, args, kwargs):
        observer.observe(args[0] if args else kwargs["x"])
    return hook


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, method: str = "minmax", percentile: float = 99.99,
              skip: Iterable[str] = (), forward: Callable[[nn.Module, object], object] = default_forward
              ) -> dict[str, tuple[float, float]]:
    """Run the float model over `batches` (each handed to `forward(model, batch)`; a model with several entry
    points passes its own) and return the input range (low, high) of each quantizable Linear that ran, by
    module path (a task that never runs some layers, such as VLMo's VQA and the text/image experts of its
    joint layers, leaves those out).

    Forward pre-hooks read the inputs. A fused q/k/v projection is applied inside Attention.forward (the
    layer assembles its bias and may use only some of its rows), so its input is read at the Attention's entry.
    """
    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}.")
    if not 50 < percentile <= 100:
        raise UserError(f"calibration percentile {percentile} must lie in (50, 100], e.g. 99.99.")
    modules = dict(model.named_modules())
    observers, handles = {}, []
    for path, linear in quantizable_linears(model, skip).items():
        owner_path, _, name = path.rpartition(".")
        observers[path] = RangeObserver(method, percentile)
        hooked = modules[owner_path] if name == "qkv" and isinstance(modules[owner_path], Attention) else linear
        handles.append(hooked.register_forward_pre_hook(observe_input(observers[path]), with_kwargs=True))
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {path: observer.range() for path, observer in observers.items() if observer.batches}


# ---- replacing the layers -----------------------------------------------------------------------------------


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, calibration: dict[str, tuple[float, float]] | None = None,
                   skip: Iterable[str] = ()) -> nn.Module:
    """Replace every quantizable Linear (see `quantizable_linears`) by a QuantLinear of `scheme`, in place (all
    of them or, on an error, none). w8a8 quantizes the layers `calibration` (from `calibrate`) has a range for;
    the others, which the calibration never ran, stay in float (with a warning). runtime.prepare_model then
    puts the model on its device's kernels and derives each layer's constants for them."""
    if scheme not in SCHEMES:
        raise UserError(f"unknown quantization scheme {scheme!r}: use one of {', '.join(SCHEMES)}.")
    linears = quantizable_linears(model, skip)
    if scheme == "w8a8":
        calibrated = {path: linear for path, linear in linears.items() if path in (calibration or {})}
        if not calibrated:
            raise UserError("w8a8 needs the calibrated input range of the layers it quantizes and none was given: "
                            "calibrate the float model first (calibration = calibrate(model, batches)).")
        uncalibrated = [path for path in linears if path not in calibrated]
        if uncalibrated:
            warnings.warn(UncalibratedLayersWarning(
                f"{len(uncalibrated)} layer(s) never ran during calibration and stay in float, e.g. "
                f"{uncalibrated[0]}; calibrate on every task the model will run to quantize them."), stacklevel=2)
        linears = calibrated
    modules = dict(model.named_modules())
    quantized = {}
    for path, linear in linears.items():
        owner_path, _, name = path.rpartition(".")
        owner = modules[owner_path]
        # BEiT/VLMo's separate q and v biases are folded into the quantized fused projection
        folded = isinstance(owner, Attention) and name == "qkv" and hasattr(owner, "q_bias")
        range_ = calibration.get(path) if scheme == "w8a8" else None
        try:
            quantized[path] = QuantLinear.from_float(linear, scheme, range_, owner.qkv_bias() if folded else None)
        except ValueError as err:
            raise UserError(f"{path} cannot be quantized with {scheme}: {err}; keep it in float with "
                            f"skip=({path!r},).") from None
    return install(model, quantized, scheme)


def install(model: nn.Module, layers: dict[str, QuantLinear], scheme: str) -> nn.Module:
    """Put `layers` in place of the Linears at their paths. A fused q/k/v projection whose owner keeps separate
    q and v biases (BEiT/VLMo) takes them into its own bias: the owner's are removed."""
    modules = dict(model.named_modules())
    for path, layer in layers.items():
        owner_path, _, name = path.rpartition(".")
        owner = modules[owner_path]
        setattr(owner, name, layer)
        if name == "qkv" and hasattr(owner, "q_bias"):
            del owner.q_bias, owner.v_bias
    model.quant_scheme = scheme
    return model


def quantize_structure(model: nn.Module, scheme: str, paths: Iterable[str]) -> nn.Module:
    """The model with empty QuantLinears of `scheme` at `paths` (Linears of the model), to load a quantized
    checkpoint into: the structure quantize_model makes, without weights (built on the meta device too)."""
    modules = dict(model.named_modules())
    layers = {}
    for path in paths:
        linear = modules.get(path)
        if type(linear) is not nn.Linear:
            raise UserError(f"the checkpoint quantizes {path}, which is not a Linear layer of the model; it was made "
                            "for another model or layout: quantize the float checkpoint again.")
        owner_path, _, name = path.rpartition(".")
        folded = name == "qkv" and hasattr(modules[owner_path], "q_bias")
        with torch.device(linear.weight.device):
            layers[path] = QuantLinear(linear.in_features, linear.out_features, scheme,
                                       bias=linear.bias is not None or folded)
    return install(model, layers, scheme)


def scheme_of(model) -> str:
    """The scheme quantize_model gave `model`, "none" for a float model. A graph-mode model from
    runtime.compile_model shows its original's attributes (FirstCallTimer), so it reports the scheme too."""
    return getattr(model, "quant_scheme", "none")
