"""ImageNet-1k validation top-1 / top-5, as the ModelZoo guide measures ViT-B/32.

    python -m eval.imagenet --model vit --checkpoint B_32-...-res_224.npz --data ILSVRC2012_img_val --device npu:0

--data holds either the flat release (ILSVRC2012_val_*.JPEG with the devkit's
ILSVRC2012_validation_ground_truth.txt and meta.mat beside it, in ILSVRC2012_devkit_t12/data/ or one level
up) or one folder per class named by WordNet id. With neither --checkpoint nor --data it runs a demo on
the bundled sample with random full-size weights.
"""
import argparse
import os
import sys

import torch

import npu_models
from eval import metrics
from eval.common import (SAMPLES_DIR, LatencyMeter, PredictionStore, StepGather, add_common_args, batch_positions,
                         demo_banner, pad_rows, progress, run_eval, run_metadata, run_record)
from eval.data.imagenet import read_imagenet
from eval.data.images import ImageDataset, collate
from npu_models import parallel
from npu_models.errors import UserError, cli_main

SAMPLE = SAMPLES_DIR / "imagenet"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.imagenet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "imagenet", default_batch_size=64, prediction_key="file")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers decoding and transforming images")
    return parser.parse_args(argv)


def evaluate(args) -> dict:
    if args.checkpoint is None:
        demo_banner(f"{args.model} with random weights on "
                    + ("the bundled ImageNet sample." if args.data is None else f"{args.data}."))
    data = args.data or SAMPLE
    examples = read_imagenet(data)[: args.limit]
    model = npu_models.load_model(args.model, args.checkpoint, args.device, args.dtype, args.graph, args.tp,
                                  task="imagenet", config_file=args.config,
                                  graph_backend=args.graph_backend)
    config = model.config
    if not getattr(config, "num_classes", 0):
        raise UserError(f"{args.checkpoint} has no classification head; ImageNet needs one.")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    top_k = min(5, config.num_classes)

    store = PredictionStore(args.predictions, key=args.prediction_key, run=run_record(args, dtype, image_size=config.image_size))
    todo = store.pending(examples, field="label")
    dp = parallel.data_parallel(args.tp)
    batches = batch_positions(len(todo), args.batch_size)
    loader = torch.utils.data.DataLoader(ImageDataset([e.path for e in todo], config.transform),
                                         batch_sampler=dp.share(batches), num_workers=args.num_workers,
                                         collate_fn=collate, pin_memory=device.type != "cpu")
    meter, gathered = LatencyMeter(device, args.started_at), StepGather(dp, store, len(batches))
    try:
        for positions, pixels, failed in progress(loader, desc="imagenet", unit="batch"):
            for position, error in failed:
                print(f"skipped unreadable image {todo[position].path}: {error}", file=sys.stderr)
            gathered.add(predict(model, pixels, positions, todo, args, meter, top_k),
                         [{"file": todo[position].file, "error": error} for position, error in failed])
        gathered.finish()
    finally:
        store.close()
    meter.gather(dp)
    unreadable = gathered.unreadable

    scored = [e for e in examples if e.label is not None and e.file in store.done]
    ranked = [store.done[e.file]["top5"] for e in scored]
    labels = [e.label for e in scored]
    return {
        "top1": metrics.top_k_accuracy(ranked, labels, 1) if scored else None,
        "top5": metrics.top_k_accuracy(ranked, labels, 5) if scored else None,
        "num_examples": len(scored), "num_images": len(examples), "num_computed": meter.samples,
        "num_unreadable": len(unreadable), "unreadable": unreadable, "data": str(data),
        "image_size": config.image_size, **meter.summary(), **run_metadata(args, device, dtype),
    }


def predict(model, pixels, positions: list[int], todo, args, meter: LatencyMeter, top_k: int) -> list[dict]:
    """The prediction records of one batch (none when every image of it was unreadable)."""
    if pixels is None:
        return []
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if args.graph:  # one static shape for the compiled graph
        (pixels,) = pad_rows((pixels,), args.batch_size)
    with meter, torch.no_grad():
        logits = model(pixels.to(device, dtype, non_blocking=True))
        probs, ranked = logits.float().softmax(dim=-1)[: len(positions)].topk(top_k, dim=-1)
        probs, ranked = probs.cpu(), ranked.cpu()
    meter.samples += len(positions)
    return [{"file": todo[p].file, "label": todo[p].label, "prediction": r[0], "top5": r, "top5_probs": pr}
            for p, r, pr in zip(positions, ranked.tolist(), probs.tolist())]


@cli_main
def main(argv=None):
    shown = ["top1", "top5", "num_examples", "num_unreadable", "samples_per_second", "time_to_first_batch_s",
             "latency_ms_p50", "latency_ms_p90", "device", "dtype", "batch_size", "image_size"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
