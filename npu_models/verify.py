"""Run our model on a reference fixture directory and compare with the reference outputs: the library
behind `python -m weights_tools.verify` (its command line) and `python -m npu_models.doctor`.

A fixture directory holds one or more checkpoints in the official layout, `inputs.safetensors` and
`outputs.safetensors`. Every checkpoint is converted and run on the inputs; every output tensor our model
produces is compared.
"""
import inspect
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from npu_models import parallel, registry, runtime
from npu_models.checkpoints.io import is_converted_dir, read_state_dict
from npu_models.compare import EPSILON, LowPrecisionBounds, compare, compare_outputs  # noqa: F401 (compare: API)
from npu_models.errors import UserError, arg
from npu_models.layers.attention import Attention
from npu_models.quantization import UncalibratedLayersWarning, calibrate, quantize_model, scheme_of

# (atol, rtol) per dtype. fp32 is the parity bar: real bugs such as a tanh GELU move logits by ~5e-5. verify
# judges bf16/fp16 runs per tensor instead (compare.LowPrecisionBounds); these element-wise bounds stay for an
# explicit --atol/--rtol and for the checks that compare two runs of the same dtype (graph vs eager, kernels):
# over the fixtures' 2-12 layers the largest differences against fp32 were 6.2e-2 (bf16) and 7.4e-3 (fp16).
DEFAULT_TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (5e-2, 5e-2), torch.float16: (1e-2, 1e-2)}
# Relative error max|ours - ref| / max|ref| per output tensor allowed for a model quantized on the fly (verify
# --quant), against the float reference. Largest measured on the five shipped fixtures (tests/fixtures/reference,
# fp32 on CPU, tensor: fixture): w8a8 6.3e-2 (BERT's pooler_output; others <= 3.1e-2), w8a8-dynamic 7.8e-2 (BERT's
# pooler_output; BLIP's itm_prob 4.2e-2), w8a16 5.5e-2 (BERT's pooler_output; others <= 2.0e-2). The bounds are
# those maxima with a 1.5x margin: int8 rounding stays under them, while a wrong scale, offset or layout moves
# outputs by tens of percent.
QUANT_TOLERANCE = {"w8a8": 0.1, "w8a8-dynamic": 0.12, "w8a16": 0.08}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz", ".tar.gz")
FIXTURE_FILES = ("inputs.safetensors", "outputs.safetensors", "preprocessed.safetensors")


def find_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in a fixture dir: model directories (config.json + weights) and weight files."""
    found = []
    for path in sorted([directory, *directory.iterdir()]):
        if path.is_dir():
            has_weights = any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir())
            if is_converted_dir(path) or (has_weights and (path / "config.json").is_file() and path != directory):
                found.append(path)
        elif path.name.endswith(WEIGHT_SUFFIXES) and path.name not in FIXTURE_FILES:
            found.append(path)
    return found


def verify(model_name: str, directory, device="cpu", dtype="fp32", atol=None, rtol=None, tp=1, quant="none",
           relative=None) -> list[dict]:
    """One row per compared tensor (per checkpoint); raises UserError when nothing can be compared.
    atol/rtol default to DEFAULT_TOLERANCE for the dtype. `quant` (a scheme of QUANT_TOLERANCE): each model is
    quantized on the fly, calibrated on the fixture's own inputs, and judged by relative error within
    `relative` (default QUANT_TOLERANCE[quant]) instead of atol/rtol; under `tp` every rank quantizes the whole
    model, then cuts it, and checks the full outputs. A quantized checkpoint in the directory (weights_tools.quantize's
    or msModelSlim's) is judged by its own scheme's bound."""
    directory = Path(directory)
    entry = registry.get_entry(model_name)
    if entry.outputs is None:
        raise UserError(f"{entry.name} names no outputs to compare (its spec's `outputs`); nothing can be verified.")
    if quant != "none" and quant not in QUANT_TOLERANCE:
        raise UserError(f"unknown {arg('quant', quant)}: use none or one of {', '.join(QUANT_TOLERANCE)}.")
    if quant == "none" and relative is not None:
        raise UserError(f"{arg('relative')} bounds a quantized model's relative error: give {arg('quant')} too, "
                        f"or use {arg('atol')}/{arg('rtol')} for the float model.")
    relative = None if quant == "none" else QUANT_TOLERANCE[quant] if relative is None else relative
    device = runtime.resolve_device(device)  # a device this machine lacks is refused before any work
    dtype = runtime.parse_dtype(dtype, device)
    for name in ("inputs.safetensors", "outputs.safetensors"):
        if not (directory / name).is_file():
            raise UserError(f"{directory} has no {name}; a fixture directory holds checkpoint(s), "
                            "inputs.safetensors and outputs.safetensors.")
    inputs, references = fixture_inputs(entry, directory), read_state_dict(directory / "outputs.safetensors")
    checkpoints = find_checkpoints(directory)
    if not checkpoints:
        raise UserError(f"no checkpoint found in {directory}: expected a model directory or weight file "
                        f"({', '.join(WEIGHT_SUFFIXES)}).")
    group = parallel.init_tensor_parallel(tp, device.type)
    # bf16/fp16 without explicit tolerances: judged per tensor as the accuracy tools judge it (compare.py)
    low_precision = dtype in EPSILON and atol is None and rtol is None
    default_atol, default_rtol = DEFAULT_TOLERANCE[dtype]
    atol, rtol = default_atol if atol is None else atol, default_rtol if rtol is None else rtol
    rows = []
    for checkpoint in checkpoints:
        model, bound = model_to_verify(entry, checkpoint, quant, inputs, group, relative)
        depth = sum(isinstance(m, Attention) for m in model.modules())
        bounds = LowPrecisionBounds.for_model(dtype, depth) if low_precision and bound is None else None
        model = runtime.prepare_model(model, parallel.local_device(device), dtype)
        with torch.no_grad():
            produced = entry.outputs(model, **{k: runtime.to_model_input(v, device, dtype) for k, v in inputs.items()})
        prefix = f"{checkpoint.name}/" if len(checkpoints) > 1 else ""
        rows += compare_outputs(produced, references, entry.rankings, atol, rtol, prefix, bound, bounds)
    if not rows:
        raise UserError(f"our {entry.name} model produces none of the tensors in {directory / 'outputs.safetensors'} "
                        f"({', '.join(references)}).")
    return rows


def model_to_verify(entry, checkpoint, quant: str, inputs: dict, tp: parallel.TensorParallel, relative):
    """(the model verify runs for `checkpoint`, the relative error bound judging it; None: atol/rtol): the float
    model, or it quantized on the fixture's inputs with `quant`, or a quantized checkpoint judged as --quant
    judges its scheme."""
    if quant != "none":
        return quantized_model(entry, checkpoint, quant, inputs, tp), relative
    model = registry.build_model(entry, checkpoint, tp=tp)
    scheme = scheme_of(model)
    return model, None if scheme == "none" else QUANT_TOLERANCE[scheme]


@torch.no_grad()
def quantized_model(entry, checkpoint, scheme: str, inputs: dict, tp: parallel.TensorParallel) -> torch.nn.Module:
    """The checkpoint's model quantized with `scheme`, w8a8 calibrated on the fixture's inputs through the spec's
    `outputs` (every entry point the fixture checks), then cut for `tp`. Every rank builds and quantizes the whole
    model in float32, as built (before prepare_model), on the same inputs, so that the ranks cut one quantized
    model: a row-parallel layer's activation range is that of its whole input."""
    model = registry.build_model(entry, checkpoint)
    if scheme_of(model) != "none":
        raise UserError(f"{checkpoint} is quantized already ({scheme_of(model)}); verify it without "
                        f"{arg('quant')} (it is judged by its scheme's bound), or quantize its float checkpoint.")
    parameter = next(model.parameters())
    batch = {k: runtime.to_model_input(v, parameter.device, parameter.dtype) for k, v in inputs.items()}
    calibration = calibrate(model, [batch], forward=lambda m, b: entry.outputs(m, **b)) if scheme == "w8a8" else None
    with warnings.catch_warnings():
        # layers the fixture's entry points never run stay in float, and no output compared here passes them
        warnings.simplefilter("ignore", UncalibratedLayersWarning)
        quantize_model(model, scheme, calibration)
    return registry.cut_model(entry, model, tp)


def fixture_inputs(entry, directory) -> dict[str, torch.Tensor]:
    """The fixture's inputs that the spec's `outputs` takes (fixtures may carry more: raw images for
    preprocessing checks)."""
    accepted = inspect.signature(entry.outputs).parameters
    return {k: v for k, v in load_file(str(Path(directory) / "inputs.safetensors")).items() if k in accepted}


def format_rows(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'tensor':<{width}}  {'shape':<18} {'max abs diff':>12}  {'tolerance':<20} result"]
    for r in rows:
        relative = f"relative {r['relative_diff']:.1e} " if "relative_diff" in r else ""
        if "cosine" in r:  # a low-precision row: the metrics the accuracy tools print
            relative = f"cos {r['cosine']:.6f} relL2 {r['relative_l2']:.1e} max/|ref| {r['max_error']:.1e} "
        lines.append(f"{r['name']:<{width}}  {str(r['shape']):<18} {r['max_abs_diff']:>12.3e}  "
                     f"{r['tolerance']:<20} {'PASS' if r['ok'] else 'FAIL'} {relative}{r['note']}".rstrip())
    passed = sum(r["ok"] for r in rows)
    relative = [r["relative_diff"] for r in rows if "relative_diff" in r]
    low = [r for r in rows if "cosine" in r]
    lines.append(f"verify: {passed}/{len(rows)} tensors within tolerance, "
                 f"max abs diff {max(r['max_abs_diff'] for r in rows):.1e}"
                 + (f", max relative diff {max(relative):.1e}" if relative and not low else "")
                 + (f", lowest cos {min(r['cosine'] for r in low):.6f}, largest relL2 "
                    f"{max(r['relative_l2'] for r in low):.1e}" if low else ""))
    return "\n".join(lines)
