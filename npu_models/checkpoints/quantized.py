"""Quantized checkpoints in msModelSlim's W8A8 layout, as vLLM-Ascend reads it.

Per quantized Linear `P` (every other tensor stays float, typed FLOAT):
    P.weight         int8 [N, K]                  P.weight_scale   [N, 1] float    P.weight_offset  [N, 1] zeros
    w8a8 only:       P.input_scale [1] float      P.input_offset [1] int8
                     P.quant_bias int32 [N]: round(bias / deq_scale) - input_offset * rowsum(weight)
                     P.deq_scale [N]: input_scale * weight_scale, as npu_trans_quant_param's int64 for fp16
                     models, fp32 otherwise
    P.bias           float [N]: w8a8-dynamic and w8a16 (w8a8 holds it in quant_bias)
and `quant_model_description.json` names each tensor's type (W8A8, W8A8_DYNAMIC, W8A16 or FLOAT) under
`model_quant_type`.

A QuantLinear's own state is weight, weight_scale, input_scale, input_offset and a float bias; the rest is
derived. Reading turns the layout back into that state: the float bias of a w8a8 layer is rebuilt from its
quant_bias, deq_scale is checked against the scales it is the product of, and a fused projection (q/k/v
concatenated at conversion, each part with its own per-tensor input range) takes the union of the ranges.
A row-parallel part (a shard cut by weights_tools.shard) keeps its bias out of the int8 product, so it also
writes the float bias, which it adds after the all-reduce.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from npu_kernels.quant_matmul import (INT8_MAX, INT8_MIN, activation_qparams, bias_from_quant_bias, offset_correction,
                                      pack_deq_scale, quant_bias_and_deq_scale, static_deq_scale, unpack_deq_scale)
from npu_models.errors import UserError
from npu_models.layers.attention import fused_qkv_bias
from npu_models.layers.quant import QuantLinear

DESCRIPTION_FILE = "quant_model_description.json"
TYPES = {"w8a8": "W8A8", "w8a8-dynamic": "W8A8_DYNAMIC", "w8a16": "W8A16"}
SCHEME_OF_TYPE = {kind: scheme for scheme, kind in TYPES.items()}
FLOAT = "FLOAT"
# What each scheme's layer holds besides its weight (and its bias, when the layer has one).
LAYER_TENSORS = {
    "w8a8": ("weight_scale", "weight_offset", "input_scale", "input_offset", "quant_bias", "deq_scale"),
    "w8a8-dynamic": ("weight_scale", "weight_offset"),
    "w8a16": ("weight_scale", "weight_offset"),
}
# deq_scale agrees with input_scale * weight_scale to the fp19 precision of its int64 form (2**-10) and the
# rounding of the scales to a 16-bit dtype (2**-11 each).
DEQ_SCALE_RTOL = 2.0 ** -8
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class QuantInfo:
    """What a quantized checkpoint is: its scheme, its quantized layers (module paths in our layout) and the
    dtype its float tensors are stored in (what a copy cut from it keeps)."""
    scheme: str
    layers: tuple[str, ...]
    dtype: torch.dtype = torch.float16


# ---- writing --------------------------------------------------------------------------------------------------


def layer_tensors(layer: QuantLinear, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One QuantLinear in the layout, its float tensors in `dtype` (the model's: fp16 gives the int64 deq_scale)."""
    n = layer.out_features
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale.reshape(n, 1).to(dtype),
               "weight_offset": torch.zeros(n, 1, dtype=dtype)}
    if layer.scheme == "w8a8":
        quant_bias, deq_scale = quant_bias_and_deq_scale(layer.state())
        tensors |= {"input_scale": layer.input_scale.to(dtype), "input_offset": layer.input_offset,
                    "quant_bias": quant_bias,
                    "deq_scale": pack_deq_scale(deq_scale) if dtype == torch.float16 else deq_scale.float()}
    if layer.bias is not None and (layer.scheme != "w8a8" or layer.matmul_bias() is None):
        tensors["bias"] = layer.bias.to(dtype)
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def quantized_state(model: torch.nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the model's tensors in the layout, the description naming each one's type)."""
    quantized = {path: m for path, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not quantized:
        raise UserError("the model has no quantized layer to save; quantize it first (quantize_model).")
    state, description = {}, {"model_quant_type": TYPES[model.quant_scheme]}
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] not in quantized:
            state[key] = tensor.detach().cpu().to(dtype if tensor.is_floating_point() else tensor.dtype).contiguous()
            description[key] = FLOAT
    for path, layer in quantized.items():
        for name, tensor in layer_tensors(layer, dtype).items():
            state[f"{path}.{name}"] = tensor
            description[f"{path}.{name}"] = TYPES[layer.scheme]
    return state, description


def description_files(description: dict[str, str]) -> dict[str, str]:
    """The description as the file save_converted writes beside the weights."""
    return {DESCRIPTION_FILE: json.dumps(description, indent=2) + "\n"}


# ---- reading --------------------------------------------------------------------------------------------------


def read_description(directory) -> dict[str, str]:
    path = Path(directory) / DESCRIPTION_FILE
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({err}); copy it again from the quantization's output.") from None
    if not isinstance(description, dict):
        raise UserError(f"{path} holds a {type(description).__name__}, not msModelSlim's {{tensor: type}} mapping.")
    return description


def scheme_of(description: dict[str, str], source) -> str:
    """The scheme a description declares: its model_quant_type, which every quantized tensor must share."""
    kind = description.get("model_quant_type")
    if kind not in SCHEME_OF_TYPE:
        raise UserError(f"{source}/{DESCRIPTION_FILE} declares model_quant_type {kind!r}; this runtime reads "
                        f"{', '.join(SCHEME_OF_TYPE)} (per-channel int8 weights). Quantize the float checkpoint with "
                        "weights_tools.quantize, or with msModelSlim as W8A8, W8A8_DYNAMIC or W8A16.")
    # tensor entries have dotted names; model_quant_type, version and the like describe the file
    mixed = sorted({t for k, t in description.items() if "." in k and t not in (kind, FLOAT)})
    if mixed:
        example = next(k for k, t in description.items() if "." in k and t == mixed[0])
        raise UserError(f"{source}/{DESCRIPTION_FILE} mixes {kind} with {', '.join(mixed)} (e.g. {example}); a model "
                        "runs one scheme here: quantize every layer with the same one.")
    return SCHEME_OF_TYPE[kind]


def modelslim_weights(directory: Path) -> Path:
    """The one safetensors file of a directory msModelSlim wrote (quant_model_weight_w8a8.safetensors)."""
    files = sorted(directory.glob("*.safetensors"))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise UserError(f"{directory} holds {DESCRIPTION_FILE} and {len(files)} .safetensors files ({found}); a "
                        "quantized checkpoint of these models is one file (msModelSlim's "
                        "quant_model_weight_<type>.safetensors): keep that one only.")
    return files[0]


def check_file_dtypes(weights: Path, description: dict[str, str]) -> None:
    """Before any tensor is read: every weight the description calls quantized is int8 in the file."""
    with safe_open(str(weights), "pt") as f:
        keys = set(f.keys())
        for key, kind in description.items():
            if kind == FLOAT or not key.endswith(".weight") or key not in keys:
                continue
            dtype = f.get_slice(key).get_dtype()
            if dtype != "I8":
                raise UserError(f"{weights}: {key} is {dtype}, but {DESCRIPTION_FILE} calls it {kind}, an int8 "
                                "weight; the file and its description do not belong together: quantize again.")


def quantized_layers(state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Module paths whose weight is int8: the quantized layers."""
    return tuple(k.removesuffix(".weight") for k, v in state.items() if k.endswith(".weight") and v.dtype == torch.int8)


def stored_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The float dtype of the layout's scales: the model dtype the checkpoint was written for."""
    return next((v.dtype for k, v in state.items() if k.endswith(".weight_scale")), torch.float16)


def module_state(state: dict[str, torch.Tensor], info: QuantInfo, expected, describe, source
                 ) -> dict[str, torch.Tensor]:
    """The state dict our quantized model (whose keys are `expected`) loads, from one in the layout: QuantLinear's
    own tensors, the owner's float q/v biases folded into the projection that holds them. Each layer is checked
    first, its faults named by the checkpoint's own key (`describe`: our key -> the official one)."""
    state = dict(state)
    for path in info.layers:
        tensors = {name: state.pop(f"{path}.{name}") for name in ("weight", "bias", *LAYER_TENSORS[info.scheme])
                   if f"{path}.{name}" in state}
        check_layer(path, tensors, info.scheme, describe, source)
        own = own_tensors(tensors, info.scheme)
        if f"{path}.bias" not in expected and "bias" in own and not own["bias"].count_nonzero():
            del own["bias"]  # a layer without bias: its quant_bias holds only the offset's correction
        state.update({f"{path}.{name}": t for name, t in own.items()})
        owner = path.rpartition(".")[0]
        if path.endswith(".qkv") and f"{owner}.q_bias" in state:  # BEiT/VLMo: the owner's q and v biases
            q_bias, v_bias = state.pop(f"{owner}.q_bias"), state.pop(f"{owner}.v_bias")
            folded = fused_qkv_bias(q_bias, v_bias).float()
            state[f"{path}.bias"] = state.get(f"{path}.bias", torch.zeros_like(folded)) + folded
    return state


def check_layer(path: str, tensors: dict[str, torch.Tensor], scheme: str, describe, source) -> None:
    """A layer's tensors present, of the layout's dtypes and mutually consistent: else one paragraph naming
    the tensor at fault and the fix."""
    def fault(name, what):
        return UserError(f"{source}: {describe(f'{path}.{name}')} {what}. A {TYPES[scheme]} layer holds weight (int8), "
                         f"{', '.join(LAYER_TENSORS[scheme])}; quantize the float checkpoint again as {scheme} "
                         "(python -m weights_tools.quantize, or msModelSlim).")
    missing = [name for name in LAYER_TENSORS[scheme] if name not in tensors]
    if missing:
        raise fault(missing[0], "is missing")
    n = tensors["weight"].shape[0]
    for name in LAYER_TENSORS[scheme]:
        if name in ("input_scale", "input_offset"):  # [1]; a fused projection's: one per part
            if tensors[name].numel() < 1 or n % tensors[name].numel() or tensors[name].numel() != tensors[
                    "input_scale"].numel():
                raise fault(name, f"has shape {list(tensors[name].shape)}, not [1] (one value for the whole input)")
        elif tensors[name].numel() != n:
            raise fault(name, f"has {tensors[name].numel()} values for the weight's {n} output rows")
    if not tensors["weight_scale"].is_floating_point() or not (tensors["weight_scale"] > 0).all():
        raise fault("weight_scale", "is not a positive float per output row")
    if tensors["weight_offset"].count_nonzero():
        raise fault("weight_offset", "is not zero: the weights are asymmetric, and the int8 kernels here take "
                                     "symmetric weights only (msModelSlim: w_sym=True)")
    if scheme == "w8a8":
        check_static_tensors(tensors, fault)


def check_static_tensors(tensors: dict[str, torch.Tensor], fault) -> None:
    offset = tensors["input_offset"].double()
    if not (offset == offset.round()).all() or offset.min() < INT8_MIN or offset.max() > INT8_MAX:
        raise fault("input_offset", "is not an integer in [-128, 127]")
    if tensors["quant_bias"].dtype != torch.int32:
        raise fault("quant_bias", f"is {tensors['quant_bias'].dtype}, not int32")
    deq_scale = tensors["deq_scale"]
    if deq_scale.dtype not in (torch.int64, torch.float32):
        raise fault("deq_scale", f"is {deq_scale.dtype}, not int64 (npu_trans_quant_param's form) or float32")
    parts = part_of_rows(tensors["weight"].shape[0], tensors["input_scale"].numel())
    product = tensors["input_scale"].double().flatten()[parts] * tensors["weight_scale"].double().flatten()
    relative = ((unpack_deq_scale(deq_scale).double().flatten() - product).abs() / product).max().item()
    if relative > DEQ_SCALE_RTOL:
        raise fault("deq_scale", f"differs from input_scale x weight_scale by up to {relative:.2g} (relative): it "
                                 "belongs to other scales")


def part_of_rows(rows: int, parts: int) -> torch.Tensor:
    """The part of a fused projection (q, k, v concatenated at conversion) each output row comes from."""
    return torch.arange(rows) * parts // rows


def own_tensors(tensors: dict[str, torch.Tensor], scheme: str) -> dict[str, torch.Tensor]:
    """QuantLinear's state from a checked layer: scales as fp32 vectors; a fused projection's per-part input
    ranges, where they differ, merged into the range that holds them all; w8a8's float bias, where the layout has none, rebuilt
    from quant_bias (bias = (quant_bias + offset * rowsum(weight)) * deq_scale, per part)."""
    weight = tensors["weight"]
    own = {"weight": weight, "weight_scale": tensors["weight_scale"].float().flatten()}
    if "bias" in tensors:
        own["bias"] = tensors["bias"].float()
    if scheme != "w8a8":
        return own
    scales, offsets = tensors["input_scale"].double().flatten(), tensors["input_offset"].double().flatten()
    if "bias" not in tensors:
        parts = part_of_rows(weight.shape[0], len(scales))
        part_offsets = tensors["input_offset"].flatten()[parts]
        deq_scale = static_deq_scale(tensors["input_scale"].flatten()[parts], own["weight_scale"])
        own["bias"] = bias_from_quant_bias(tensors["quant_bias"], offset_correction(part_offsets, weight), deq_scale)
    if (scales == scales[0]).all() and (offsets == offsets[0]).all():  # one range (the parts share their input)
        own["input_scale"], own["input_offset"] = scales[:1].float(), offsets[:1].to(torch.int8)
    else:
        low, high = ((INT8_MIN - offsets) * scales).min().item(), ((INT8_MAX - offsets) * scales).max().item()
        own["input_scale"], own["input_offset"] = activation_qparams(low, high)
    return own


def read_info(directory) -> tuple[str, dict[str, str]] | None:
    """(scheme, description) of a quantized directory, ours or msModelSlim's (its description file says); None
    for anything else."""
    directory = Path(directory)
    if not directory.is_dir() or not (directory / DESCRIPTION_FILE).is_file():
        return None
    description = read_description(directory)
    return scheme_of(description, directory), description


def save_quantized(out_dir, model_name: str, config, parts: list[torch.nn.Module], dtype: torch.dtype,
                   assets: dict[str, Path], source: dict | None = None, recipe: dict | None = None,
                   files: dict[str, str] | None = None) -> None:
    """A quantized model (one part per tensor-parallel rank, or the whole) as our directory in the layout:
    config.json (with "quant": the scheme, the float dtype and how it was made), the weights and
    quant_model_description.json."""
    from npu_models.checkpoints.io import save_converted
    states, descriptions = zip(*(quantized_state(part, dtype) for part in parts))
    quant = {"scheme": parts[0].quant_scheme, "dtype": str(dtype).removeprefix("torch."), **(recipe or {})}
    save_converted(out_dir, model_name, config, list(states), assets, source, extra={"quant": quant},
                   files={**description_files(descriptions[0]), **(files or {})})
