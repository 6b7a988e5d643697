"""ImageNet-1k validation top-1 / top-5, as the ModelZoo guide measures ViT-B/32.

    python -m eval.imagenet --model vit --checkpoint B_32-...-res_224.npz --data ILSVRC2012_img_val --device npu:0

--data holds either the flat release (ILSVRC2012_val_*.JPEG with the devkit's
ILSVRC2012_validation_ground_truth.txt and meta.mat beside it, in ILSVRC2012_devkit_t12/data/ or one level
up) or one folder per class named by WordNet id. With neither --checkpoint nor --data it runs a demo on
the bundled sample with random full-size weights.
"""
import os
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from eval import metrics
from eval.batching import batch_positions, pad_rows, static_rows
from eval.cli import add_common_args, command_parser, parse_options, run_eval
from eval.data.imagenet import read_imagenet
from eval.data.images import ImageDataset, collate
from eval.loop import EvalLoop
from eval.samples import SAMPLES_DIR
from eval.options import EvalOptions, command_model, demo_banner, run_metadata, run_record
from eval.store import PredictionStore
from npu_models.cli import cli_main
from npu_models.errors import UserError

SAMPLE = SAMPLES_DIR / "imagenet"


@dataclass
class ImageNetOptions(EvalOptions):
    task: ClassVar[str] = "imagenet"
    prediction_key: ClassVar[str] = "file"
    batch_size: int = 64
    num_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))  # DataLoader workers


def parse_args(argv) -> ImageNetOptions:
    parser = command_parser("python -m eval.imagenet", __doc__)
    add_common_args(parser, ImageNetOptions)
    parser.add_argument("--num-workers", type=int, help="DataLoader workers decoding and transforming images")
    return parse_options(parser, ImageNetOptions, argv)


def evaluate(options: ImageNetOptions, model=None) -> dict:
    """The command's work. A ready `model` (a quantized model being calibrated, a model already in memory)
    replaces loading options.checkpoint."""
    if options.checkpoint is None and model is None:
        demo_banner(f"{options.model} with random weights on "
                    + ("the bundled ImageNet sample." if options.data is None else f"{options.data}."))
    data = options.data or SAMPLE
    examples = read_imagenet(data)[: options.limit]
    model = command_model(options, model)
    config = model.config
    if not getattr(config, "num_classes", 0):
        raise UserError(f"{options.checkpoint or 'the model given'} has no classification head; ImageNet needs one.")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    run = run_record(options, dtype, model, image_size=config.image_size)
    with EvalLoop(device, options.tp, options.started_at, PredictionStore(options.predictions, "file", run)) as loop:
        classify(loop, model, loop.store.pending(examples, field="label"), options)

    scored = [e for e in examples if e.label is not None and e.file in loop.store.done]
    ranked = [loop.store.done[e.file]["top5"] for e in scored]
    labels = [e.label for e in scored]
    return {
        "top1": metrics.top_k_accuracy(ranked, labels, 1) if scored else None,
        "top5": metrics.top_k_accuracy(ranked, labels, 5) if scored else None,
        "num_examples": len(scored), "num_images": len(examples), "num_computed": loop.meter.samples,
        "num_unreadable": len(loop.unreadable), "unreadable": loop.unreadable, "data": str(data),
        "image_size": config.image_size, **loop.meter.summary(), **run_metadata(options, device, dtype, model),
    }


def classify(loop: EvalLoop, model, todo: list, options: ImageNetOptions) -> None:
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    top_k = min(5, model.config.num_classes)
    dataset = ImageDataset([e.path for e in todo], model.config.transform)

    def load(mine):
        return torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=options.num_workers,
                                           collate_fn=collate, pin_memory=device.type != "cpu")

    batches = batch_positions(len(todo), options.batch_size)
    for positions, pixels, failed in loop.steps(batches, load, desc="imagenet", unit="batch"):
        for position, error in failed:
            print(f"skipped unreadable image {todo[position].path}: {error}", file=sys.stderr)
        loop.add([], [{"file": todo[position].file, "error": error} for position, error in failed])
        if pixels is None:  # every image of the batch was unreadable
            continue
        if options.graph:  # one static shape for the compiled graph
            (pixels,) = pad_rows((pixels,), static_rows(options.batch_size, len(todo)))
        with loop.timed(len(positions)):
            logits = model(pixels.to(device, dtype, non_blocking=True))
            probs, ranked = logits.float().softmax(dim=-1)[: len(positions)].topk(top_k, dim=-1)
            probs, ranked = probs.cpu(), ranked.cpu()
        loop.add([{"file": todo[p].file, "label": todo[p].label, "prediction": r[0], "top5": r, "top5_probs": pr}
                  for p, r, pr in zip(positions, ranked.tolist(), probs.tolist())])


@cli_main
def main(argv=None):
    shown = ["top1", "top5", "num_examples", "num_unreadable", "samples_per_second", "time_to_first_batch_s",
             "compile_s", "latency_ms_p50", "latency_ms_p90", "device", "dtype", "batch_size", "image_size"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
