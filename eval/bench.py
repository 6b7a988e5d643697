"""Throughput and latency of our model and its reference peer, side by side (the ais_bench --loop equivalent).

    python -m eval.bench --model bert-base-cased-sst2 --device npu:0 --batch-sizes 1,8,32 --json bench.json

For every batch size, mode (eager, graph) and implementation (ours; the peer from transformers or timm,
loaded with the same weights), it runs warm-up iterations, then times --iters iterations with the device
synchronised, and reports samples/s and the median and p90 latency. Rows are written as they arrive.
"""
import argparse
import copy
import csv
import datetime
import functools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from eval.common import latency_percentiles, write_json_atomic
from eval.data.region_features import MAX_BOXES, RegionFeatureExtractor, pad_regions
from npu_models import parallel, registry, runtime
from npu_models.benchmarks import Benchmark
from npu_models.errors import UserError, cli_main

COLUMNS = ["model", "impl", "mode", "batch_size", "seq_len", "samples_per_second", "latency_ms_p50",
           "latency_ms_p90", "gflop_per_batch", "tflops", "fraction_of_peak", "device", "dtype", "tp",
           "param_mb_per_rank", "max_abs_diff_vs_peer", "date"]


@dataclass
class Contender:
    impl: str                      # "ours" or "peer"
    module: torch.nn.Module        # moved to the device and dtype
    fn: Callable                   # (*inputs) -> output tensor: the part that is timed
    tp: int = 1                    # the tensor-parallel degree it runs at

    @property
    def key(self) -> str:
        return f"{self.impl}@tp{self.tp}"


def with_detection(task) -> Benchmark:
    """A region-feature VQA model timed from images: torchvision's Faster R-CNN (random weights: speed does
    not depend on them) finds the regions as eval.vqa --detector-weights does, in fp32, then the model
    answers in its own dtype. Inputs: preprocessed 800 x 1333 images and 32-token questions."""
    def make_inputs(config, batch_size, seq_len, device):
        generator = torch.Generator().manual_seed(batch_size)
        images = torch.randn(batch_size, 3, 800, 1333, generator=generator)
        ids = torch.randint(1, 100, (batch_size, 32), generator=generator)  # ids below 100 exist in any vocabulary
        return (images.to(device), ids.to(device), torch.ones_like(ids).to(device)), 32 + MAX_BOXES

    def timed_part(model):
        from torchvision.models.detection import fasterrcnn_resnet50_fpn

        parameter = next(model.parameters())
        detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
        extractor = RegionFeatureExtractor(None, parameter.device, detector=detector)

        def run(images, ids, masks):
            found = [pad_regions(d["box_features"], d["box_coordinates"]) for d in extractor(list(images))]
            features, coordinates, box_mask = (torch.stack(parts).to(images.device) for parts in zip(*found))
            return task.answer_logits(model, features.to(parameter.dtype), coordinates.to(parameter.dtype), box_mask,
                                      ids, masks)
        return run

    return Benchmark(make_inputs, timed_part=timed_part, graph=False)


def benchmarks_of(entry) -> dict[str, Benchmark]:
    """The entry's benchmarks by row name: the registry's parts, plus the detector run for region models."""
    parts = {f"{entry.name}/{part}" if part else entry.name: bench for part, bench in entry.benchmarks.items()}
    if entry.vqa is not None and entry.vqa.visual == "regions":
        parts[f"{entry.name}/with-detection"] = with_detection(entry.vqa)
    return parts


def counted_flops(fn, inputs) -> int:
    """Floating-point operations of one call, counted by torch (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops()


def matmul_peak(device, dtype, size: int | None = None, iters: int = 5) -> float:
    """FLOP/s of a dense square matmul in `dtype` on `device`, measured now: the yardstick for
    fraction_of_peak (a model cannot beat the matmul it is made of by much)."""
    size = size or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    seconds = time_iterations(torch.matmul, (a, b), device, warmup=2, iters=iters)
    return 2 * size ** 3 / statistics.median(seconds)


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
    parser.add_argument("--model", default=registry.default_entry("sst2").name,
                        help="registry or short name, or name/part for one part (default: the SST-2 model)")
    parser.add_argument("--checkpoint", type=Path, help="official checkpoint; omitted: random full-size weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    parser.add_argument("--seq-len", type=int, default=128, help="text models: tokens per sequence (default 128)")
    parser.add_argument("--modes", default="eager,graph", help="eager, graph or both (default)")
    parser.add_argument("--no-peer", action="store_true", help="time only our implementation")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree for ours (run under torchrun "
                        "--nproc_per_node N); the peer runs whole on every rank")
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
    header = (f"{'impl':<5} {'mode':<6} {'tp':>2} {'batch':>5} {'seq':>4} {'samples/s':>10} {'p50 ms':>9} {'p90 ms':>9} "
              f"{'% peak':>7} {'MiB/rank':>9} {'diff vs peer':>12}")
    lines = [header]
    for r in rows:
        diff = "" if r["max_abs_diff_vs_peer"] is None else f"{r['max_abs_diff_vs_peer']:.1e}"
        lines.append(f"{r['impl']:<5} {r['mode']:<6} {r['tp']:>2} {r['batch_size']:>5} {r['seq_len']:>4} "
                     f"{r['samples_per_second']:>10.1f} {r['latency_ms_p50']:>9.2f} {r['latency_ms_p90']:>9.2f} "
                     f"{100 * r['fraction_of_peak']:>7.1f} {r['param_mb_per_rank']:>9.1f} {diff:>12}")
    return "\n".join(lines)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    entry = registry.get_entry(args.model.split("/")[0])
    available = benchmarks_of(entry)
    names = list(available)
    if "/" in args.model:
        names = [n for n in names if n == f"{entry.name}/{args.model.split('/', 1)[1]}"]
    if not names:
        raise UserError(f"no benchmark defined for {args.model}; available: {', '.join(available)}.")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise UserError(f"--batch-sizes must be comma-separated integers, got '{args.batch_sizes}'.") from None
    modes = args.modes.split(",")
    if set(modes) - {"eager", "graph"}:
        raise UserError(f"--modes takes eager and/or graph, got '{args.modes}'.")
    device = runtime.resolve_device(args.device)
    dtype = runtime.parse_dtype(args.dtype, device)
    tp = parallel.init_tensor_parallel(args.tp, device.type)
    device = parallel.local_device(device)
    peak = matmul_peak(device, dtype)
    print(f"dense {runtime.dtype_name(dtype)} matmul on {runtime.device_description(device)}: "
          f"{peak / 1e12:.2f} TFLOP/s (the peak fraction_of_peak is measured against)", file=sys.stderr)
    rows = []
    build_ours = functools.cache(lambda: registry.build_model(entry, args.checkpoint, tp=tp))  # once for all parts
    for name in names:
        rows += run_benchmark(name, entry, available[name], args, batch_sizes, modes, device, dtype, rows, build_ours, tp,
                              peak)
    if args.plot and parallel.is_main_process():
        plot(rows, args.plot)
    return 0


def run_benchmark(name, entry, bench, args, batch_sizes, modes, device, dtype, earlier_rows, build_ours,
                  tp, peak: float) -> list[dict]:
    say = print if parallel.is_main_process() else (lambda *a, **k: None)  # rank 0 reports for all
    if bench.make_peer is None and not args.no_peer:
        say(f"note: {name} has no peer implementation to run beside ours; timing ours alone", file=sys.stderr)
    whole = None  # ours unsplit, timed beside the split one under --tp
    if args.no_peer or bench.make_peer is None:
        ours = build_ours()
        config = ours.config
        if tp.size > 1:
            try:
                whole = registry.build_model(entry, args.checkpoint)
            except UserError as err:  # pre-cut shards hold no whole model
                say(f"note: no tp=1 row for {name}: {err}", file=sys.stderr)
        contenders = [Contender("ours", ours, bench.timed_part(ours), tp.size)]
    else:
        peer, peer_fn, config, state = bench.make_peer(args.checkpoint)
        ours = entry.build(config)
        ours.load_state_dict(state)
        whole = copy.deepcopy(ours) if tp.size > 1 else None
        ours = parallel.apply_plan(ours, registry.entry_for_config(entry, config).tp_plan, tp)  # the peer runs whole
        contenders = [Contender("ours", ours, bench.timed_part(ours), tp.size), Contender("peer", peer, peer_fn)]
    if whole is not None:
        contenders.insert(1, Contender("ours", whole, bench.timed_part(whole)))
    if args.checkpoint is None:
        say("note: random full-size weights (no --checkpoint); speed does not depend on their values",
              file=sys.stderr)
    for contender in contenders:
        runtime.prepare_model(contender.module, device, dtype)
    rows = []
    if "graph" in modes and not bench.graph:
        say(f"note: {name} has data-dependent shapes (detections); timing it in eager mode only", file=sys.stderr)
    flops = {}  # (contender, batch size) -> FLOPs of one call: the same in every mode, counted once
    for mode in [m for m in modes if bench.graph or m == "eager"]:
        fns = {c.key: runtime.compile_model(c.fn, device) if mode == "graph" else c.fn for c in contenders}
        for batch_size in batch_sizes:
            inputs, seq_len = bench.make_inputs(config, batch_size, args.seq_len, device)
            inputs = tuple(runtime.to_model_input(t, device, dtype) for t in inputs)
            outputs = {}
            for contender in contenders:
                fn = fns[contender.key]
                with torch.no_grad():
                    outputs[contender.key] = fn(*inputs).float()
                seconds = time_iterations(fn, inputs, device, args.warmup, args.iters)
                if (contender.key, batch_size) not in flops:  # counted eagerly: the work graph mode does too
                    flops[contender.key, batch_size] = counted_flops(contender.fn, inputs)
                achieved = flops[contender.key, batch_size] / statistics.median(seconds)
                ours_output = outputs.get(f"ours@tp{tp.size}")
                diff = ((ours_output - outputs[contender.key]).abs().max().item()
                        if contender.impl == "peer" and ours_output is not None else None)
                rows.append({"model": name, "impl": contender.impl, "mode": mode, "batch_size": batch_size,
                             "seq_len": seq_len, "samples_per_second": batch_size * len(seconds) / sum(seconds),
                             **latency_percentiles(seconds), "gflop_per_batch": flops[contender.key, batch_size] / 1e9,
                             "tflops": achieved / 1e12, "fraction_of_peak": achieved / peak,
                             "device": runtime.device_description(device),
                             "dtype": runtime.dtype_name(dtype), "tp": contender.tp,
                             "param_mb_per_rank": parameter_megabytes(contender.module), "max_abs_diff_vs_peer": diff,
                             "date": datetime.date.today().isoformat()})
                say(format_table(rows[-1:]).splitlines()[-1], flush=True)
                if parallel.is_main_process():
                    write_outputs(earlier_rows + rows, args)
    say(f"\n{name} on {rows[0]['device']}, {rows[0]['dtype']}\n{format_table(rows)}")
    return rows


def parameter_megabytes(module: torch.nn.Module) -> float:
    """Parameter memory this process holds (its share under tensor parallelism), in MiB."""
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


if __name__ == "__main__":
    sys.exit(main())
