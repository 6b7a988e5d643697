"""Quantize a checkpoint to int8 once, calibrated on real data, into msModelSlim's W8A8 layout.

    python -m weights_tools.quantize --model bert --checkpoint checkpoint-12630 --scheme w8a8 \\
        --calib SST-2/dev.tsv --calib-samples 256 --out bert-sst2-w8a8
    python -m eval.sst2 --checkpoint bert-sst2-w8a8 --data SST-2/dev.tsv

w8a8 calibrates: the float model runs the model's own eval command (eval.sst2, eval.imagenet, eval.vqa or
eval.retrieval, with its reader, preprocessing and batching) over the first --calib-samples examples of
--calib (what that command's --data takes), and each quantized Linear's input range is recorded (min-max,
or --calib-method percentile). w8a8-dynamic and w8a16 need no calibration.

The output directory holds config.json (the model, its config and "quant": scheme, dtype, calibration),
model.safetensors in msModelSlim's W8A8 layout (npu_models/checkpoints/quantized.py) with its
quant_model_description.json, and the checkpoint's assets (vocab.txt). Every --checkpoint option takes it;
weights_tools.shard cuts it for tensor parallelism.
"""
import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from npu_kernels.quant_matmul import SCHEMES
from eval.data.vqa import answer_files
from npu_models import registry, runtime
from npu_models.checkpoints import quantized
from npu_models.checkpoints.io import file_identity
from npu_models.cli import cli_main
from npu_models.errors import UserError, UserFacingWarning, arg, check_paths_exist
from npu_models.quantization import CALIBRATION_METHODS, calibrate, quantize_model

DEFAULT_CALIB_SAMPLES = 128


class CalibrationWarning(UserFacingWarning):
    """The calibration data held fewer examples than asked for."""


def quantize(model_name: str, checkpoint, scheme: str, out, calib=None, calib_samples: int = DEFAULT_CALIB_SAMPLES,
             calib_method: str = "minmax", percentile: float = 99.99, skip=(), dtype: str = "fp16",
             config_file=None, batch_size: int = 8) -> Path:
    """`checkpoint` quantized with `scheme` into the directory `out` (see the module docstring)."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_request(scheme, calib, calib_samples, dtype, checkpoint, out)
    entry = registry.get_entry(model_name)
    model = registry.build_model(entry, checkpoint, config_file=config_file)
    if getattr(model, "quant_info", None) is not None:
        raise UserError(f"{checkpoint} is quantized already ({model.quant_info.scheme}); quantize the float checkpoint.")
    entry = registry.entry_for_config(entry, model.config)
    recipe = {}
    calibration = None
    if scheme == "w8a8":
        calibration, used = calibrate_on_data(entry, model, checkpoint, Path(calib), calib_samples, calib_method,
                                              percentile, skip, config_file, batch_size)
        if used < calib_samples:
            warnings.warn(CalibrationWarning(f"{calib} holds {used} calibration examples, fewer than the "
                                             f"{calib_samples} asked for ({arg('calib_samples')}); calibrated on "
                                             f"those {used}."), stacklevel=2)
        recipe = {"calibration": {"data": str(calib), "samples": used, "method": calib_method,
                                  **({"percentile": percentile} if calib_method == "percentile" else {})}}
    quantize_model(model, scheme, calibration, skip)
    quantized.save_quantized(out, entry.name, model.config, [model], quantized.DTYPES[dtype],
                             registry.assets_beside(entry, checkpoint), file_identity(checkpoint),
                             {**recipe, **({"skip": list(skip)} if skip else {})}, answer_files(entry.task, checkpoint))
    return out


def check_request(scheme, calib, calib_samples, dtype, checkpoint: Path, out: Path) -> None:
    """Everything the arguments alone can get wrong, refused before the model is read."""
    if scheme not in SCHEMES:
        raise UserError(f"unknown {arg('scheme', scheme)}: use one of {', '.join(SCHEMES)}.")
    if dtype not in quantized.DTYPES:
        raise UserError(f"unknown {arg('dtype', dtype)}: use one of {', '.join(quantized.DTYPES)}.")
    if scheme == "w8a8" and calib is None:
        raise UserError(f"w8a8 fixes each layer's activation range by calibration: pass {arg('calib')} with data in the "
                        "layout the model's eval command reads as --data (an SST-2 TSV, an ImageNet folder, a VQAv2 or "
                        "retrieval directory), or quantize with w8a8-dynamic / w8a16, which need none.")
    check_paths_exist({"checkpoint": checkpoint, "calib": calib})
    if calib_samples < 1:
        raise UserError(f"{arg('calib_samples', calib_samples)}: calibrate on at least one example.")
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"{arg('out')} must differ from {arg('checkpoint')}: quantizing in place would replace the original.")


def calibrate_on_data(entry, model, checkpoint: Path, data: Path, samples: int, method: str, percentile: float, skip,
                      config_file, batch_size: int) -> tuple[dict[str, tuple[float, float]], int]:
    """(input ranges of the quantizable layers over the first `samples` examples of `data`, how many examples
    that was: fewer where the data holds fewer), read and batched by the model's eval command (its predictions go
    to a scratch directory)."""
    from eval.commands import eval_command, run_eval_command  # they import the whole runtime: only when calibrating
    cpu = torch.device("cpu")
    runtime.prepare_model(model, cpu, torch.float32)  # in place: the observers stay on these modules
    results = {}
    with tempfile.TemporaryDirectory(prefix="calibration-") as scratch:
        def run(m, _):
            results.update(run_eval_command(entry.task.name, m, model_name=entry.name, checkpoint=checkpoint,
                                            data=data, limit=samples, config=config_file, device="cpu", dtype="fp32",
                                            batch_size=batch_size, predictions=Path(scratch) / "predictions.jsonl"))
        ranges = calibrate(model, [None], method, percentile, skip, forward=run)
    return ranges, results[eval_command(entry.task.name).limited]


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m weights_tools.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="short name (bert) or registry name")
    parser.add_argument("--checkpoint", required=True, type=Path, help="the float checkpoint: official or converted")
    parser.add_argument("--scheme", required=True, help=" | ".join(SCHEMES))
    parser.add_argument("--calib", type=Path, help="w8a8: calibration data, as the model's eval command takes --data")
    parser.add_argument("--calib-samples", type=int, default=DEFAULT_CALIB_SAMPLES,
                        help=f"examples to calibrate on, the first of --calib (default {DEFAULT_CALIB_SAMPLES})")
    parser.add_argument("--calib-method", default="minmax", choices=CALIBRATION_METHODS,
                        help="minmax (default): the whole range seen; percentile: robust to rare outliers")
    parser.add_argument("--percentile", type=float, default=99.99, help="with --calib-method percentile (default 99.99)")
    parser.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                        help="keep layers matching this module path pattern in float (fnmatch, e.g. 'blocks.11.*'); "
                             "repeatable")
    parser.add_argument("--dtype", default="fp16", help="dtype of the file's float tensors: fp16 (default, the Atlas "
                        "inference cards'; deq_scale then in npu_trans_quant_param's int64 form) | bf16 | fp32")
    parser.add_argument("--config", type=Path, help="hyper-parameters the checkpoint cannot reveal (as for every command)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (replaced if it exists)")
    args = parser.parse_args(argv)
    out = quantize(args.model, args.checkpoint, args.scheme, args.out, args.calib, args.calib_samples,
                   args.calib_method, args.percentile, tuple(args.skip), args.dtype, args.config, args.batch_size)
    print(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
