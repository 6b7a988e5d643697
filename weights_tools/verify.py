"""Run our model on a reference fixture directory and compare with the reference outputs.

    python -m weights_tools.verify --model bert DIR

DIR holds one or more checkpoints in the official layout, `inputs.safetensors` and `outputs.safetensors`.
Every checkpoint is converted and run on the inputs; every output tensor our model produces is compared.
Exit status 0 only when all of them are within tolerance. `--quant w8a8` (or w8a8-dynamic, w8a16) quantizes
each model on the fly, calibrated on the fixture's own inputs, and judges it by relative error; with --tp N
(under torchrun) every rank quantizes the whole model, then cuts it. The machinery
is npu_models.verify (the doctor runs it too); this module is its command line.
"""
import argparse
import sys
from pathlib import Path

from npu_models import parallel
from npu_models.cli import cli_main
from npu_models.verify import DEFAULT_TOLERANCE, QUANT_TOLERANCE, compare, find_checkpoints, format_rows, verify  # noqa: F401


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m weights_tools.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="fixture directory in the reference layout")
    parser.add_argument("--model", required=True, help="short name (bert) or registry name")
    parser.add_argument("--device", default="cpu", help="auto | npu[:N] | cuda[:N] | cpu (default cpu)")
    parser.add_argument("--dtype", default="fp32", help="fp32 (default) | fp16 | bf16")
    parser.add_argument("--atol", type=float, help="absolute tolerance (default: 1e-5 fp32, 5e-2 bf16, 1e-2 fp16)")
    parser.add_argument("--rtol", type=float, help="relative tolerance (default: as --atol)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (run under torchrun "
                        "--nproc_per_node N); every rank checks the full outputs")
    parser.add_argument("--quant", default="none", help="none (default) | " + " | ".join(QUANT_TOLERANCE)
                        + ": quantize each model on the fly, calibrated on the fixture's inputs, and judge each output by its "
                        "relative error max|ours - ref| / max|ref| (default bound per scheme: "
                        + ", ".join(f"{s} {t:g}" for s, t in QUANT_TOLERANCE.items()) + ")")
    parser.add_argument("--relative", type=float,
                        help="with --quant: the relative error bound instead of the scheme's")
    args = parser.parse_args(argv)
    rows = verify(args.model, args.directory, args.device, args.dtype, args.atol, args.rtol, args.tp, args.quant,
                  args.relative)
    if parallel.is_main_process():
        print(format_rows(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
