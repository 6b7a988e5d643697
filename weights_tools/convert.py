"""Convert an official checkpoint into our layout (config.json + model.safetensors + assets).

    python -m weights_tools.convert --model bert --checkpoint checkpoint-12630 --out converted/bert-sst2

The result loads faster (no renaming, no q/k/v fusion at start-up) and is what `npu_models.load_model`
and every `--checkpoint` option also accept.
"""
import argparse
import sys
from pathlib import Path

from eval.data.vqa import answer_files
from npu_models import registry
from npu_models.checkpoints.io import save_converted
from npu_models.cli import cli_main
from npu_models.errors import UserError


def convert(model_name: str, checkpoint, out_dir) -> Path:
    entry = registry.get_entry(model_name)
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    converted = registry.load_weights(entry, checkpoint)
    entry = registry.entry_for_config(entry, converted.config)
    save_converted(out_dir, entry.name, converted.config, [converted.state], registry.assets_beside(entry, checkpoint),
                   files=answer_files(entry.task, checkpoint))
    return out_dir


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m weights_tools.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="short name (bert) or registry name")
    parser.add_argument("--checkpoint", required=True, type=Path, help="the official checkpoint file or directory")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (replaced if it exists)")
    args = parser.parse_args(argv)
    if args.out.resolve() == args.checkpoint.resolve():
        raise UserError("--out must differ from --checkpoint: converting in place would replace the original.")
    out = convert(args.model, args.checkpoint, args.out)
    print(f"wrote {out}/ (config.json, model.safetensors"
          + "".join(f", {p.name}" for p in sorted(out.iterdir()) if p.name not in ("config.json", "model.safetensors"))
          + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
