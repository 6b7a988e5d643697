"""Throughput and latency of our model and its reference peer, side by side (the ais_bench --loop equivalent).

    python -m eval.bench --model bert-base-cased-sst2 --device npu:0 --batch-sizes 1,8,32 --json bench.json

For every batch size, mode (eager, graph) and implementation (ours; the peer from transformers or timm,
loaded with the same weights), it runs warm-up iterations, then times --iters iterations with the device
synchronised, and reports samples/s and the median and p90 latency. Rows are written as they arrive.
"""
import argparse
import csv
import datetime
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from eval.common import latency_percentiles, write_json_atomic
from npu_models import registry, runtime
from npu_models.errors import UserError, cli_main

COLUMNS = ["model", "impl", "mode", "batch_size", "seq_len", "samples_per_second", "latency_ms_p50",
           "latency_ms_p90", "device", "dtype", "max_abs_diff_vs_peer", "date"]


@dataclass
class Contender:
    impl: str                      # "ours" or "peer"
    module: torch.nn.Module        # moved to the device and dtype
    fn: Callable                   # (*inputs) -> output tensor: the part that is timed


@dataclass(frozen=True)
class Benchmark:
    make_inputs: Callable          # (config, batch_size, seq_len, device) -> (inputs tuple, sequence length)
    make_peer: Callable | None = None  # checkpoint -> (peer module, peer fn, our config, our state dict)
    timed_part: Callable = lambda model: model  # which entry point of our model is timed
    graph: bool = True             # False where data-dependent shapes (detections) rule out a static graph


def bert_peer(checkpoint):
    """transformers' BertForSequenceClassification, and its weights in our layout with our config."""
    try:
        import transformers
    except ImportError:
        raise UserError("the BERT peer needs transformers: `pip install -e .[test]`, or pass --no-peer "
                        "to time ours alone.") from None
    from npu_models.checkpoints import hf_bert

    entry = registry.get_entry("bert-base-cased-sst2")
    if checkpoint is not None:
        peer = transformers.BertForSequenceClassification.from_pretrained(checkpoint)
    else:
        torch.manual_seed(0)
        config = entry.default_config()
        peer = transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_positions, num_labels=config.num_labels))
    state = peer.state_dict()
    config = hf_bert.config_from_hf(peer.config.to_dict(), {k.removeprefix("bert."): v for k, v in state.items()},
                                    {}, "peer config")
    def run(input_ids, attention_mask, token_type_ids):
        return peer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    return peer, run, config, hf_bert.convert_state_dict(state)[0]


def bert_inputs(config, batch_size, seq_len, device):
    """All-valid token ids at min(seq_len, max positions), as ais_bench feeds them; returns (inputs, seq_len)."""
    seq_len = min(seq_len, config.max_positions)
    generator = torch.Generator().manual_seed(batch_size)
    input_ids = torch.randint(1, config.vocab_size, (batch_size, seq_len), generator=generator)
    mask, types = torch.ones_like(input_ids), torch.zeros_like(input_ids)
    return (input_ids.to(device), mask.to(device), types.to(device)), seq_len


def vit_peer(checkpoint):
    """timm's VisionTransformer (npz converted to its layout), and its weights in our layout with our config."""
    try:
        import timm
    except ImportError:
        raise UserError("the ViT peer needs timm: `pip install -e .[test]`, or pass --no-peer "
                        "to time ours alone.") from None
    from npu_models.checkpoints import vit as vit_weights
    from npu_models.checkpoints.io import read_state_dict

    if checkpoint is None:
        torch.manual_seed(0)
        timm_state = timm.create_model("vit_base_patch32_224", pretrained=False).state_dict()
        num_heads, sidecar = None, {}
    elif checkpoint.suffix == ".npz":
        timm_state, num_heads, _ = vit_weights.jax_to_timm(vit_weights.read_npz(checkpoint))
        sidecar = vit_weights.sidecar_model_config(checkpoint)
    else:
        timm_state = vit_weights.unwrap(read_state_dict(checkpoint), checkpoint)
        num_heads, sidecar = None, vit_weights.sidecar_model_config(checkpoint)
    state = vit_weights.timm_to_ours(timm_state)[0]
    # The peer runs at the checkpoint's own resolution: only the head count comes from the sidecar.
    config = vit_weights.infer_config(state, num_heads, {k: v for k, v in sidecar.items() if k == "num_heads"},
                                      checkpoint)
    peer = timm.models.vision_transformer.VisionTransformer(
        img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim, depth=config.depth,
        num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, num_classes=config.num_classes)
    peer.load_state_dict(timm_state)
    return peer, peer, config, state


def vit_inputs(config, batch_size, seq_len, device):
    """Normalised random pixels at the model's input size; the sequence is its patch tokens + class token."""
    generator = torch.Generator().manual_seed(batch_size)
    pixels = torch.randn(batch_size, 3, config.img_size, config.img_size, generator=generator)
    return (pixels.to(device),), config.grid_size ** 2 + 1


def vlmo_vqa_inputs(config, batch_size, seq_len, device):
    """Images at the model's size and questions padded to max_text_len; the joint sequence is text + image."""
    generator = torch.Generator().manual_seed(batch_size)
    image = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    text_ids = torch.randint(1, config.vocab_size, (batch_size, config.max_text_len), generator=generator)
    inputs = (image.to(device), text_ids.to(device), torch.ones_like(text_ids).to(device))
    return inputs, config.max_text_len + config.num_image_tokens


def vlmo_image_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    image = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    return (image.to(device),), config.num_image_tokens


def blip_image_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    size = config.vision.img_size
    return (torch.randn(batch_size, 3, size, size, generator=generator).to(device),), config.vision.grid_size ** 2 + 1


def blip_text_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(1000 % config.text.vocab_size, config.text.vocab_size - 2, (batch_size, config.max_length),
                        generator=generator)
    return (ids.to(device), torch.ones_like(ids).to(device)), config.max_length


def blip_itm_inputs(config, batch_size, seq_len, device):
    (ids, mask), length = blip_text_inputs(config, batch_size, seq_len, device)
    generator = torch.Generator().manual_seed(batch_size)
    image_feat = torch.randn(batch_size, config.vision.grid_size ** 2 + 1, config.vision.embed_dim, generator=generator)
    return (image_feat.to(device), ids, mask), length


def blip_image_part(model):
    """The ModelZoo guide's image OM: image_feat and the ITC image_embed."""
    def image_encoder(images):
        features = model.image_features(images)
        return torch.cat([model.image_embed(features), features[:, 0]], dim=-1)
    return image_encoder


def vilbert_inputs(config, batch_size, seq_len, device):
    """100 precomputed regions per image (as the ModelZoo guide times it) and 32-token questions."""
    generator = torch.Generator().manual_seed(batch_size)
    features = torch.relu(torch.randn(batch_size, 100, config.image_feature_dim, generator=generator))
    corners = torch.rand(batch_size, 100, 2, generator=generator) * 600
    coordinates = torch.cat([corners, corners + 200], dim=-1)
    ids = torch.randint(1, config.text.vocab_size, (batch_size, 32), generator=generator)
    inputs = (features, coordinates, torch.ones(batch_size, 100, dtype=torch.bool), ids, torch.ones_like(ids).bool(),
              torch.zeros_like(ids))
    return tuple(t.to(device) for t in inputs), 32 + 100


def vilbert_detection_inputs(config, batch_size, seq_len, device):
    """Preprocessed 800 x 1333 images (what the reference loader produces) and 32-token questions."""
    generator = torch.Generator().manual_seed(batch_size)
    images = torch.randn(batch_size, 3, 800, 1333, generator=generator)
    ids = torch.randint(1, config.text.vocab_size, (batch_size, 32), generator=generator)
    return (images.to(device), ids.to(device), torch.ones_like(ids).bool().to(device), torch.zeros_like(ids).to(device)), 32 + 100


def vilbert_with_detection(model):
    """Region features from torchvision's Faster R-CNN (random weights: speed does not depend on them), then ViLBERT."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from eval.data.region_features import MAX_BOXES, RegionFeatureExtractor

    parameter = next(model.parameters())
    detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    # fp32, as eval.vqa's feature extraction runs it: the model's dtype applies from the region features on.
    extractor = RegionFeatureExtractor(None, parameter.device, detector=detector)

    def run(images, ids, mask, type_ids):
        detections = extractor(list(images))
        features = torch.zeros(len(images), MAX_BOXES, model.config.image_feature_dim, device=images.device)
        coordinates = torch.zeros(len(images), MAX_BOXES, 4, device=images.device)
        box_mask = torch.zeros(len(images), MAX_BOXES, dtype=torch.bool, device=images.device)
        for row, found in enumerate(detections):
            boxes = len(found["box_features"])
            features[row, :boxes], coordinates[row, :boxes] = found["box_features"], found["box_coordinates"]
            box_mask[row, :boxes] = True
        return model(features.to(parameter.dtype), coordinates.to(parameter.dtype), box_mask, ids, mask, type_ids)

    return run


# VLMo has no peer outside its training repository (pytorch_lightning, fairscale): ours is timed alone.
# For retrieval the image encoder is timed; the caption side is a short text-only pass.
BENCHMARKS = {
    "bert-base-cased-sst2": Benchmark(bert_inputs, bert_peer),
    "vit-base-patch32-224": Benchmark(vit_inputs, vit_peer),
    "vlmo-base-vqa": Benchmark(vlmo_vqa_inputs),
    "vlmo-base-coco-retrieval": Benchmark(vlmo_image_inputs, timed_part=lambda model: model.image_embeds),
    # BLIP's three inference parts, as the ModelZoo guide splits them into OM files.
    "blip-retrieval-coco/image": Benchmark(blip_image_inputs, timed_part=blip_image_part),
    "blip-retrieval-coco/text": Benchmark(blip_text_inputs, timed_part=lambda model: model.text_embed),
    "blip-retrieval-coco/itm": Benchmark(blip_itm_inputs),
    # ViLBERT: from cached region features (the ModelZoo guide's figure), and from images through the detector.
    "vilbert-vqa": Benchmark(vilbert_inputs),
    "vilbert-vqa/with-detection": Benchmark(vilbert_detection_inputs, timed_part=vilbert_with_detection, graph=False),
}


def time_iterations(fn, inputs, device, warmup, iters) -> list[float]:
    with torch.no_grad():
        for _ in range(warmup):
            fn(*inputs)
        seconds = []
        for _ in range(iters):
            runtime.synchronize(device)
            start = time.perf_counter()
            fn(*inputs)
            runtime.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return seconds


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert-base-cased-sst2", help="registry or short name")
    parser.add_argument("--checkpoint", type=Path, help="official checkpoint; omitted: random full-size weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    parser.add_argument("--seq-len", type=int, default=128, help="text models: tokens per sequence (default 128)")
    parser.add_argument("--modes", default="eager,graph", help="eager, graph or both (default)")
    parser.add_argument("--no-peer", action="store_true", help="time only our implementation")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--csv", type=Path, help="write the rows as CSV here")
    parser.add_argument("--plot", type=Path, help="write a PNG of throughput against batch size here")
    return parser.parse_args(argv)


def write_outputs(rows, args):
    if args.json:
        write_json_atomic(args.json, rows)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def plot(rows, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: `pip install -e .[plot]`.") from None
    figure, axes = plt.subplots(figsize=(6, 4))
    for impl, mode in sorted({(r["impl"], r["mode"]) for r in rows}):
        points = sorted((r["batch_size"], r["samples_per_second"]) for r in rows if (r["impl"], r["mode"]) == (impl, mode))
        axes.plot(*zip(*points), marker="o", label=f"{impl} {mode}")
    first = rows[0]
    axes.set(xscale="log", xlabel="batch size", ylabel="samples / s",
             title=f"{first['model']} seq {first['seq_len']}, {first['dtype']}, {first['device']}")
    axes.set_xticks(sorted({r["batch_size"] for r in rows}), labels=sorted({r["batch_size"] for r in rows}))
    axes.set_ylim(bottom=0)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def format_table(rows) -> str:
    header = f"{'impl':<5} {'mode':<6} {'batch':>5} {'seq':>4} {'samples/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'diff vs peer':>12}"
    lines = [header]
    for r in rows:
        diff = "" if r["max_abs_diff_vs_peer"] is None else f"{r['max_abs_diff_vs_peer']:.1e}"
        lines.append(f"{r['impl']:<5} {r['mode']:<6} {r['batch_size']:>5} {r['seq_len']:>4} {r['samples_per_second']:>10.1f} "
                     f"{r['latency_ms_p50']:>9.2f} {r['latency_ms_p90']:>9.2f} {diff:>12}")
    return "\n".join(lines)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    entry = registry.get_entry(args.model.split("/")[0])
    names = [n for n in BENCHMARKS if n == entry.name or n.startswith(entry.name + "/")]
    if "/" in args.model:
        names = [n for n in names if n == f"{entry.name}/{args.model.split('/', 1)[1]}"]
    if not names:
        raise UserError(f"no benchmark defined for {args.model}; available: {', '.join(BENCHMARKS)}.")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise UserError(f"--batch-sizes must be comma-separated integers, got '{args.batch_sizes}'.") from None
    modes = args.modes.split(",")
    if set(modes) - {"eager", "graph"}:
        raise UserError(f"--modes takes eager and/or graph, got '{args.modes}'.")
    device = runtime.resolve_device(args.device)
    dtype = runtime.parse_dtype(args.dtype, device)
    rows = []
    build_ours = functools.cache(lambda: registry.build_model(entry, args.checkpoint))  # once for all parts
    for name in names:
        rows += run_benchmark(name, entry, BENCHMARKS[name], args, batch_sizes, modes, device, dtype, rows, build_ours)
    if args.plot:
        plot(rows, args.plot)
    return 0


def run_benchmark(name, entry, bench, args, batch_sizes, modes, device, dtype, earlier_rows, build_ours) -> list[dict]:
    if bench.make_peer is None and not args.no_peer:
        print(f"note: {name} has no peer implementation to run beside ours; timing ours alone", file=sys.stderr)
    if args.no_peer or bench.make_peer is None:
        ours = build_ours()
        config, contenders = ours.config, [Contender("ours", ours, bench.timed_part(ours))]
    else:
        peer, peer_fn, config, state = bench.make_peer(args.checkpoint)
        ours = entry.build(config)
        ours.load_state_dict(state)
        contenders = [Contender("ours", ours, bench.timed_part(ours)), Contender("peer", peer, peer_fn)]
    if args.checkpoint is None:
        print("note: random full-size weights (no --checkpoint); speed does not depend on their values",
              file=sys.stderr)
    for contender in contenders:
        runtime.prepare_model(contender.module, device, dtype)
    rows = []
    if "graph" in modes and not bench.graph:
        print(f"note: {name} has data-dependent shapes (detections); timing it in eager mode only", file=sys.stderr)
    for mode in [m for m in modes if bench.graph or m == "eager"]:
        fns = {c.impl: runtime.compile_model(c.fn, device) if mode == "graph" else c.fn for c in contenders}
        for batch_size in batch_sizes:
            inputs, seq_len = bench.make_inputs(config, batch_size, args.seq_len, device)
            inputs = tuple(runtime.to_model_input(t, device, dtype) for t in inputs)
            outputs = {}
            for contender in contenders:
                fn = fns[contender.impl]
                with torch.no_grad():
                    outputs[contender.impl] = fn(*inputs).float()
                seconds = time_iterations(fn, inputs, device, args.warmup, args.iters)
                diff = ((outputs["ours"] - outputs["peer"]).abs().max().item()
                        if contender.impl == "peer" and "ours" in outputs else None)
                rows.append({"model": name, "impl": contender.impl, "mode": mode, "batch_size": batch_size,
                             "seq_len": seq_len, "samples_per_second": batch_size * len(seconds) / sum(seconds),
                             **latency_percentiles(seconds), "device": runtime.device_description(device),
                             "dtype": runtime.dtype_name(dtype), "max_abs_diff_vs_peer": diff,
                             "date": datetime.date.today().isoformat()})
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
                write_outputs(earlier_rows + rows, args)
    print(f"\n{name} on {rows[0]['device']}, {rows[0]['dtype']}\n{format_table(rows)}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
