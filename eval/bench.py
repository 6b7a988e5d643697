"""Throughput and latency of our model and its reference peer, side by side (the ais_bench --loop equivalent).

    python -m eval.bench --model bert-base-cased-sst2 --device npu:0 --batch-sizes 1,8,32 --json bench.json
    python -m eval.bench --model all --device cuda --dtype bf16           # every model, one markdown table
    python -m eval.bench --end-to-end                                      # SST-2 end to end vs the ModelZoo flow

For every batch size, mode (eager, graph) and implementation (ours; the peer from transformers or timm,
loaded with the same weights), it runs warm-up iterations, then times --iters iterations with the device
synchronised, the implementations taking turns, and reports samples/s, the median and p90 latency, the first
call (compilation included in graph mode), the FLOPs counted and their fraction of a dense matmul measured in
the same run. Graph mode is each one's best: compiled, with CUDA graphs on CUDA. Rows are written as they
arrive.
"""
import argparse
import copy
import csv
import datetime
import functools
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from eval import metrics, peers
from eval.common import latency_percentiles, write_json_atomic
from eval.data.region_features import MAX_BOXES, RegionFeatureExtractor, pad_regions
from npu_models import parallel, registry, runtime
from npu_models.errors import UserError, cli_main
from npu_models.spec import Benchmark

COLUMNS = ["model", "impl", "mode", "batch_size", "seq_len", "samples_per_second", "latency_ms_p50",
           "latency_ms_p90", "first_call_s", "gflop_per_batch", "tflops", "fraction_of_peak", "device", "dtype", "tp",
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
    if entry.task.name == "vqa" and entry.task.visual == "regions":
        parts[f"{entry.name}/with-detection"] = with_detection(entry.task)
    return parts


def attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Q K^T and P V of a [B, H, Sq, D] query over Sk keys: torch's counter has this formula for the CUDA
    attention kernels but none for the CPU one (it would count CPU attention as free)."""
    batch, heads, q_len, head_dim = query_shape
    return 2 * batch * heads * q_len * key_shape[-2] * (head_dim + value_shape[-1])


def counted_flops(fn, inputs) -> int:
    """Floating-point operations of one call, counted by torch (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    cpu_attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
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


def timed_call(fn, args, device):
    """(fn(*args), wall-clock seconds), the device synchronised before and after."""
    runtime.synchronize(device)
    start = time.perf_counter()
    result = fn(*args)
    runtime.synchronize(device)
    return result, time.perf_counter() - start


def time_iterations(fn, inputs, device, warmup, iters) -> list[float]:
    return time_interleaved({"fn": fn}, inputs, device, warmup, iters)["fn"]


def time_interleaved(fns: dict, inputs, device, warmup, iters) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions taking turns iteration by iteration, so that a
    shared, noisy machine slows all of them alike instead of whichever ran during the disturbance."""
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn(*inputs)
        seconds = {key: [] for key in fns}
        for _ in range(iters):
            for key, fn in fns.items():
                seconds[key].append(timed_call(fn, inputs, device)[1])
    return seconds


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=registry.default_entry("sst2").name,
                        help="registry or short name, name/part for one part, or 'all' for every model and one "
                             "markdown table (default: the SST-2 model)")
    parser.add_argument("--checkpoint", type=Path, help="official checkpoint; omitted: random full-size weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-sizes", help="comma-separated (default 1,8,32; 32 with --end-to-end)")
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
    parser.add_argument("--end-to-end", action="store_true",
                        help="SST-2 models: time `python -m eval.sst2`'s own code path over --data against the ModelZoo "
                             "flow (every sentence padded to --seq-len, transformers' tokenizer and model)")
    parser.add_argument("--data", type=Path, help="with --end-to-end: SST-2 dev.tsv (default: 872 sentences of "
                        "random words with SST-2's length mix)")
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
    if args.model == "all":
        if args.checkpoint is not None or args.end_to_end:
            raise UserError("--model all runs every model on random full-size weights; --checkpoint and "
                            "--end-to-end take one model.")
        parts = [(entry, list(benchmarks_of(entry))) for entry in registry.REGISTRY.values()]
    else:
        entry = registry.get_entry(args.model.split("/")[0])
        available = list(benchmarks_of(entry))
        names = available
        if "/" in args.model:
            names = [n for n in available if n == f"{entry.name}/{args.model.split('/', 1)[1]}"]
        if not names:
            raise UserError(f"no benchmark defined for {args.model}; available: {', '.join(available)}.")
        parts = [(entry, names)]
    try:
        batch_sizes = [int(b) for b in (args.batch_sizes or ("32" if args.end_to_end else "1,8,32")).split(",")]
    except ValueError:
        raise UserError(f"--batch-sizes must be comma-separated integers, got '{args.batch_sizes}'.") from None
    modes = args.modes.split(",")
    if set(modes) - {"eager", "graph"}:
        raise UserError(f"--modes takes eager and/or graph, got '{args.modes}'.")
    device = runtime.resolve_device(args.device)
    dtype = runtime.parse_dtype(args.dtype, device)
    tp = parallel.init_tensor_parallel(args.tp, device.type)
    device = parallel.local_device(device)
    if args.end_to_end:
        rows = end_to_end(parts[0][0], args, batch_sizes, modes, device, dtype)
        print(format_end_to_end(rows))
        return 0
    peak = matmul_peak(device, dtype)
    print(f"dense {runtime.dtype_name(dtype)} matmul on {runtime.device_description(device)}: "
          f"{peak / 1e12:.2f} TFLOP/s (the peak fraction_of_peak is measured against)", file=sys.stderr)
    rows = []
    for entry, names in parts:
        build_ours = functools.cache(lambda entry=entry: registry.build_model(entry, args.checkpoint, tp=tp,
                                                                              device=device))  # once for all parts
        benches = benchmarks_of(entry)
        for name in names:
            rows += run_benchmark(name, entry, benches[name], args, batch_sizes, modes, device, dtype, rows, build_ours,
                                  tp, peak)
    if parallel.is_main_process():
        if len(parts) > 1:
            print(f"\n{markdown_table(rows)}")
        if args.plot:
            plot(rows, args.plot)
    return 0


def markdown_table(rows) -> str:
    """Every row as one markdown table, then each implementation's best mode per model part and batch size
    set side by side (the honest ratio: each at its fastest)."""
    lines = ["| model | impl | mode | batch | seq | samples/s | p50 ms | TFLOP/s | % of peak | max diff vs peer |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        diff = "" if r["max_abs_diff_vs_peer"] is None else f"{r['max_abs_diff_vs_peer']:.1e}"
        lines.append(f"| {r['model']} | {r['impl']}{'' if r['tp'] == 1 else ' tp' + str(r['tp'])} | {r['mode']} | "
                     f"{r['batch_size']} | {r['seq_len']} | {r['samples_per_second']:.1f} | {r['latency_ms_p50']:.2f} | "
                     f"{r['tflops']:.2f} | {100 * r['fraction_of_peak']:.1f} | {diff} |")
    best = {}
    for r in rows:
        key = (r["model"], r["batch_size"], r["impl"], r["tp"])
        if key not in best or r["samples_per_second"] > best[key]["samples_per_second"]:
            best[key] = r
    pairs = [(best[key], best.get((key[0], key[1], "peer", 1))) for key in best if key[2] == "ours"]
    pairs = [(ours, peer) for ours, peer in pairs if peer is not None]
    if pairs:
        lines += ["", "| model | batch | ours best | peer best | ours / peer |", "|---|---:|---|---|---:|"]
        for ours, peer in pairs:
            lines.append(f"| {ours['model']} | {ours['batch_size']} | {ours['mode']}, {ours['samples_per_second']:.1f}/s | "
                         f"{peer['mode']}, {peer['samples_per_second']:.1f}/s | "
                         f"{ours['samples_per_second'] / peer['samples_per_second']:.2f}x |")
    first = rows[0]
    lines += ["", f"{first['device']}, {first['dtype']}, {first['date']}; peak = dense {first['dtype']} matmul measured "
              "in the same run."]
    return "\n".join(lines)


def run_benchmark(name, entry, bench, args, batch_sizes, modes, device, dtype, earlier_rows, build_ours,
                  tp, peak: float) -> list[dict]:
    say = print if parallel.is_main_process() else (lambda *a, **k: None)  # rank 0 reports for all
    make_peer = peers.PEERS.get(name)
    if make_peer is None and not args.no_peer:
        say(f"note: {name} has no peer implementation to run beside ours; timing ours alone", file=sys.stderr)
    whole = None  # ours unsplit, timed beside the split one under --tp
    if args.no_peer or make_peer is None:
        ours = build_ours()
        config = ours.config
        if tp.size > 1:
            try:
                whole = registry.build_model(entry, args.checkpoint)
            except UserError as err:  # pre-cut shards hold no whole model
                say(f"note: no tp=1 row for {name}: {err}", file=sys.stderr)
        contenders = [Contender("ours", ours, bench.timed_part(ours), tp.size)]
    else:
        peer, peer_fn, config, state = make_peer(args.checkpoint)
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
            outputs, first_call = {}, {}  # the first call at a shape compiles (and captures) in graph mode
            with torch.no_grad():
                for c in contenders:
                    output, first_call[c.key] = timed_call(fns[c.key], inputs, device)
                    outputs[c.key] = output.float()
            timings = time_interleaved(fns, inputs, device, args.warmup, args.iters)
            for contender in contenders:
                seconds = timings[contender.key]
                if (contender.key, batch_size) not in flops:  # counted eagerly: the work graph mode does too
                    flops[contender.key, batch_size] = counted_flops(contender.fn, inputs)
                achieved = flops[contender.key, batch_size] / statistics.median(seconds)
                ours_output = outputs.get(f"ours@tp{tp.size}")
                diff = ((ours_output - outputs[contender.key]).abs().max().item()
                        if contender.impl == "peer" and ours_output is not None else None)
                rows.append({"model": name, "impl": contender.impl, "mode": mode, "batch_size": batch_size,
                             "seq_len": seq_len, "samples_per_second": batch_size * len(seconds) / sum(seconds),
                             **latency_percentiles(seconds), "first_call_s": first_call[contender.key],
                             "gflop_per_batch": flops[contender.key, batch_size] / 1e9,
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


def end_to_end(entry, args, batch_sizes, modes, device, dtype) -> list[dict]:
    """SST-2 from sentences to predictions, both flows on the same weights in this process: eval.sst2's own
    code path (our tokenizer, length-sorted batches padded to their longest, or to multiples of 16 in graph
    mode, [CLS]-only last layer)
    against the ModelZoo flow (transformers' tokenizer padding every sentence to --seq-len, a static batch,
    transformers' model). Each is run once untimed first (graph mode: over all the data, so every shape is
    compiled), then timed; the rows say how many token rows each computed and whether predictions agree."""
    import tempfile

    from eval import sst2
    from eval.data.sst2 import read_sst2, write_length_mix

    if entry.task.name != "sst2":
        raise UserError(f"--end-to-end times the SST-2 eval; {entry.name} is a {entry.task.name} model.")
    if parallel.world_size() > 1:
        raise UserError("--end-to-end runs in one process; drop torchrun and --tp.")
    peer, peer_fn, config, state = peers.PEERS[entry.name](args.checkpoint)
    ours = entry.build(config)
    ours.load_state_dict(state)
    for module in (ours, peer):
        runtime.prepare_model(module, device, dtype)
    scratch = Path(tempfile.mkdtemp(prefix="sst2-end-to-end-"))
    vocab = sst2.resolve_vocab(None, args.checkpoint)
    if args.data is None:
        words = [w for w in vocab.read_text(encoding="utf-8").split() if w.isalpha() and not w.startswith("[")]
        data = write_length_mix(scratch / "dev.tsv", words)
        print(f"note: {data}: 872 sentences of random words with SST-2's length mix; pass --data with SST-2's "
              "dev.tsv for the real text", file=sys.stderr)
    else:
        data = args.data
    sentences = [e.sentence for e in read_sst2(data)]
    tokenizer = modelzoo_tokenizer(vocab, config.do_lower_case)
    rows, runs = [], 0
    for mode in modes:
        ours_fn = runtime.compile_model(ours, device) if mode == "graph" else ours
        peer_run = runtime.compile_model(peer_fn, device) if mode == "graph" else peer_fn
        for batch_size in batch_sizes:
            def run_ours(limit=None):
                nonlocal runs
                runs += 1
                predictions = scratch / f"ours-{runs}.jsonl"
                argv = ["--data", str(data), "--batch-size", str(batch_size), "--seq-len", str(args.seq_len),
                        "--vocab", str(vocab), "--predictions", str(predictions), "--device", str(device),
                        "--dtype", runtime.dtype_name(dtype)] + (["--graph"] if mode == "graph" else [])
                results = sst2.evaluate(sst2.parse_args(argv + (["--limit", str(limit)] if limit else [])), ours_fn)
                records = [json.loads(line) for line in predictions.read_text().splitlines()]
                return [r["probs"] for r in sorted(records, key=lambda r: r["index"])], results["token_rows"]

            def run_peer(limit=None):
                return modelzoo_flow(peer_run, tokenizer, sentences[:limit], batch_size, args.seq_len, device)

            timed = {}
            for impl, flow in (("ours", run_ours), ("peer", run_peer)):
                flow(None if mode == "graph" else batch_size)  # warm-up
                (probs, token_rows), seconds = timed_call(flow, (), device)
                timed[impl] = (seconds, probs, token_rows)
            for impl, (seconds, probs, token_rows) in timed.items():
                peer_probs = timed["peer"][1]
                agree = sum(metrics.argmax(a) == metrics.argmax(b) for a, b in zip(probs, peer_probs))
                diff = max(abs(x - y) for a, b in zip(probs, peer_probs) for x, y in zip(a, b))
                rows.append({"model": entry.name, "impl": impl, "flow": "eval.sst2" if impl == "ours" else
                             f"pad to {args.seq_len}", "mode": mode, "batch_size": batch_size,
                             "sentences": len(sentences), "seconds": seconds,
                             "sentences_per_second": len(sentences) / seconds, "token_rows": token_rows,
                             "speedup_vs_peer": timed["peer"][0] / seconds, "agree_with_peer": agree,
                             "max_abs_diff_vs_peer": diff,
                             "device": runtime.device_description(device), "dtype": runtime.dtype_name(dtype),
                             "data": str(data), "date": datetime.date.today().isoformat()})
                print(format_end_to_end(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if args.json:
                write_json_atomic(args.json, rows)
    return rows


def modelzoo_tokenizer(vocab: Path, lower_case: bool):
    try:
        import transformers
    except ImportError:
        raise UserError("--end-to-end runs the ModelZoo flow with transformers: `pip install -e .[test]`.") from None
    return transformers.BertTokenizer(str(vocab), do_lower_case=lower_case)


def modelzoo_flow(run, tokenizer, sentences, batch_size, seq_len, device):
    """The ModelZoo SST-2 flow in one process: every sentence tokenised and padded to seq_len, batches of a
    fixed size (the last one padded with empty rows, as a static-shape OM takes it), argmax of the logits.
    Returns (class probabilities per sentence, token rows computed)."""
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    predictions, token_rows = [], 0
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            batch = [encoded[k][start:start + batch_size] for k in ("input_ids", "attention_mask", "token_type_ids")]
            count = len(batch[0])
            batch = [torch.cat([t, t.new_zeros(batch_size - count, seq_len)]).to(device) for t in batch]
            predictions += run(*batch)[:count].float().softmax(dim=-1).tolist()
            token_rows += batch_size * seq_len
    return predictions, token_rows


def format_end_to_end(rows) -> str:
    header = (f"{'impl':<5} {'flow':<12} {'mode':<6} {'batch':>5} {'sentences':>9} {'seconds':>8} {'sent/s':>8} "
              f"{'token rows':>10} {'speedup':>8} {'agree':>6} {'diff vs peer':>12}")
    lines = [header]
    for r in rows:
        lines.append(f"{r['impl']:<5} {r['flow']:<12} {r['mode']:<6} {r['batch_size']:>5} {r['sentences']:>9} "
                     f"{r['seconds']:>8.2f} {r['sentences_per_second']:>8.1f} {r['token_rows']:>10} "
                     f"{r['speedup_vs_peer']:>7.2f}x {r['agree_with_peer']:>6} {r['max_abs_diff_vs_peer']:>12.1e}")
    return "\n".join(lines)


def parameter_megabytes(module: torch.nn.Module) -> float:
    """Parameter memory this process holds (its share under tensor parallelism), in MiB."""
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


if __name__ == "__main__":
    sys.exit(main())
