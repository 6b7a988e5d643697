"""Cut a checkpoint once into one file per tensor-parallel rank, so that each chip reads only its half.

    python -m weights_tools.shard --model vlmo --tp 2 --checkpoint vlmo_base_patch16_480_vqa.pt --out vlmo-tp2
    torchrun --nproc_per_node 2 -m eval.vqa --model vlmo --tp 2 --checkpoint vlmo-tp2 ...

The directory is our converted layout (config.json + assets) with model-rank<r>-of-<N>.safetensors per rank;
config.json records the model, the degree and the source it was cut from. It is refused by a run of
another model or another --tp. A whole checkpoint (official, converted or quantized) also works under --tp:
it is cut on the fly. A quantized checkpoint (weights_tools.quantize, or msModelSlim's) is cut into the same
quantized layout: per-channel scales follow the output rows they scale, and a row-parallel layer's bias is
kept apart, added once after the all-reduce.
"""
import argparse
import copy
import sys
from pathlib import Path

from eval.data.vqa import answer_files
from npu_models import parallel, registry
from npu_models.checkpoints import quantized
from npu_models.checkpoints.io import file_identity, save_converted
from npu_models.cli import cli_main
from npu_models.errors import UserError


def shard(model_name: str, checkpoint, tp: int, out_dir, config_file=None) -> Path:
    if tp < 2:
        raise UserError(f"--tp {tp}: shards are for two or more ranks; weights_tools.convert writes the whole model.")
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    entry = registry.get_entry(model_name)
    full = registry.build_model(entry, checkpoint, config_file=config_file)
    entry = registry.entry_for_config(entry, full.config)
    parts = [registry.cut_model(entry, copy.deepcopy(full), parallel.TensorParallel(rank, tp))
             for rank in range(tp)]  # the same plan and head shares a run with --tp applies
    assets, source = registry.assets_beside(entry, checkpoint), file_identity(checkpoint)
    answers = answer_files(entry.task, checkpoint)  # ViLBERT's, from inside its archive
    if getattr(full, "quant_info", None) is not None:  # each rank's part in the quantized layout, in its dtype
        quantized.save_quantized(out_dir, entry.name, full.config, parts, full.quant_info.dtype, assets, source,
                                 files=answers)
    else:
        save_converted(out_dir, entry.name, full.config, [part.state_dict() for part in parts], assets, source,
                       files=answers)
    return out_dir


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m weights_tools.shard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="short name (vlmo) or registry name")
    parser.add_argument("--tp", required=True, type=int, help="tensor-parallel degree to cut for")
    parser.add_argument("--checkpoint", required=True, type=Path, help="official checkpoint or our converted directory")
    parser.add_argument("--config", type=Path, help="hyper-parameters the checkpoint cannot reveal (as for every command)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write (replaced if it exists)")
    args = parser.parse_args(argv)
    if args.out.resolve() == args.checkpoint.resolve():
        raise UserError("--out must differ from --checkpoint: cutting in place would replace the original.")
    out = shard(args.model, args.checkpoint, args.tp, args.out, args.config)
    print(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
