"""Each model part timed beside its peer: for every mode and batch size, warm-up calls, then iterations
timed with the implementations taking turns, one row per implementation with samples/s, latency, the first
call, FLOPs and their fraction of the measured matmul peak, and of the ceiling the part's own operators set
(eval.bench.ceiling)."""
import copy
import datetime
import functools
import statistics
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from eval.bench.ceiling import flops_and_ceiling
from eval.bench.load import competing_load
from eval.bench.flops import int8_matmul_peak, matmul_peak
from eval.bench.options import BenchOptions
from eval.bench.report import format_table, quant_speedups, write_rows
from eval.data.region_features import MAX_BOXES, RegionFeatureExtractor, pad_regions
from eval.peers import PEERS
from eval.timing import latency_percentiles, time_interleaved, timed_call
from npu_models import parallel, registry, runtime
from npu_models.spec import Benchmark
from npu_models.checkpoints import quantized
from npu_models.errors import UserError, arg
from npu_models.layers.quant import QuantLinear
from npu_models.parallel import TensorParallel
from npu_models.quantization import calibrate, quantize_model, scheme_of


@dataclass
class Contender:
    impl: str                      # "ours" or "peer"
    module: torch.nn.Module        # moved to the device and dtype
    fn: Callable                   # (*inputs) -> output tensor: the part that is timed
    tp: int = 1                    # the tensor-parallel degree it runs at
    quant: str = "none"            # ours quantized on the fly with this scheme; "none": float

    @property
    def key(self) -> str:
        return f"{self.impl}@tp{self.tp}" + ("" if self.quant == "none" else f"/{self.quant}")


@dataclass
class Part:
    """One benchmark part and the implementations timed on it."""
    name: str
    bench: Benchmark
    config: object                 # our config, from which the inputs are made
    contenders: list[Contender]
    flops: dict = field(default_factory=dict)  # (contender key, batch size) -> FLOPs of a call, the same in every mode
    ceiling: dict = field(default_factory=dict)  # (contender key, batch size) -> FLOP/s of its counted ops alone


@dataclass
class BenchRun:
    """One eval.bench run: where it runs, the peak it is measured against, and every row so far (streamed to
    the console and to the --json/--csv files as each arrives)."""
    options: BenchOptions
    device: torch.device
    dtype: torch.dtype
    tp: TensorParallel
    peak: float
    rows: list[dict] = field(default_factory=list)
    int8_peak: float | None = None  # measured at the first int8 row (eval.bench.flops.int8_matmul_peak)

    def peak_for(self, quant: str) -> tuple[float | None, str]:
        """(the peak a row of `quant` is set against, its name): float rows the dense float matmul, int8 rows
        (whose GEMMs run on integer units) torch._int_mm, both measured in this run."""
        if quant == "none":
            return self.peak, f"{runtime.dtype_name(self.dtype)} matmul"
        if self.int8_peak is None:
            self.int8_peak = int8_matmul_peak(self.device)
            if self.int8_peak is not None:
                self.say(f"int8 GEMM (torch._int_mm) on {runtime.device_description(self.device)}: "
                         f"{self.int8_peak / 1e12:.2f} TOP/s (the peak int8 rows are measured against)", file=sys.stderr)
        return self.int8_peak, "int8 GEMM"

    def say(self, *args, **kwargs) -> None:
        if parallel.is_main_process():  # rank 0 reports for all
            print(*args, **kwargs)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        header, line = format_table([row]).splitlines()
        if len(self.rows) == 1 or self.rows[-2]["model"] != row["model"]:
            self.say(f"{row['model']}\n{header}")  # each part's rows stream under their own header
        self.say(line, flush=True)
        if parallel.is_main_process():
            write_rows(self.rows, self.options.json, self.options.csv)


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


def bench_models(parts: list[tuple], options: BenchOptions, device, dtype, tp: TensorParallel) -> list[dict]:
    """Every named part of every (registry entry, part names) in `parts`; returns all rows."""
    peak = matmul_peak(device, dtype)
    print(f"dense {runtime.dtype_name(dtype)} matmul on {runtime.device_description(device)}: "
          f"{peak / 1e12:.2f} TFLOP/s (the peak fraction_of_peak is measured against)", file=sys.stderr)
    run = BenchRun(options, device, dtype, tp, peak)
    for entry, names in parts:
        build_ours = functools.cache(lambda entry=entry: registry.build_model(entry, options.checkpoint, tp=tp,
                                                                              device=device))  # once for all parts
        benches = benchmarks_of(entry)
        for name in names:
            run_benchmark(run, name, entry, benches[name], build_ours)
    return run.rows


def run_benchmark(run: BenchRun, name: str, entry, bench: Benchmark, build_ours) -> list[dict]:
    part = Part(name, bench, *contenders_of(run, name, entry, bench, build_ours))
    for contender in part.contenders:
        runtime.prepare_model(contender.module, run.device, run.dtype)
    if "graph" in run.options.modes and not bench.graph:
        run.say(f"note: {name} has data-dependent shapes (detections); timing it in eager mode only", file=sys.stderr)
    first = len(run.rows)
    for mode in [m for m in run.options.modes if bench.graph or m == "eager"]:
        cache = run.options.compile_cache
        fns = {c.key: runtime.compile_model(c.fn, run.device, compile_cache=cache) if mode == "graph" else c.fn
               for c in part.contenders}
        for batch_size in run.options.batch_sizes:
            time_batch(run, part, fns, mode, batch_size)
    rows = run.rows[first:]
    run.say(f"\n{name} on {rows[0]['device']}, {rows[0]['dtype']}\n{format_table(rows)}")
    for line in quant_speedups(rows):
        run.say(line)
    return rows


def contenders_of(run: BenchRun, name: str, entry, bench: Benchmark, build_ours) -> tuple[object, list[Contender]]:
    """(our config, the contenders): ours (split under --tp), ours whole beside it under --tp, ours quantized
    with each --quant scheme (quantized whole, then split), and the peer on the same weights unless there is
    none or --no-peer."""
    make_peer, checkpoint, tp, quant = PEERS.get(name), run.options.checkpoint, run.tp, run.options.quant
    prequantized = checkpoint is not None and quantized.read_info(checkpoint) is not None
    if prequantized and set(quant) != {"none"}:
        raise UserError(f"{checkpoint} is quantized already: time it without {arg('quant')} (its rows carry its "
                        f"scheme), or give {arg('quant')} with its float checkpoint.")
    if (make_peer is None or prequantized) and not run.options.no_peer:
        why = "a quantized checkpoint, which the peer cannot read" if prequantized else "no peer implementation"
        run.say(f"note: {name}: {why}; timing ours alone", file=sys.stderr)
    whole, peer = None, None
    if run.options.no_peer or make_peer is None or prequantized:
        ours = build_ours()
        config = ours.config
        float_copy = functools.partial(registry.build_model, entry, checkpoint, device=run.device)  # ours: maybe prepared
        if tp.size > 1 and "none" in quant:
            try:
                whole = registry.build_model(entry, checkpoint)
            except UserError as err:  # pre-cut shards hold no whole model
                run.say(f"note: no tp=1 row for {name}: {err.command_line_message()}", file=sys.stderr)
    else:
        peer_module, peer_fn, config, state = make_peer(checkpoint)
        ours = entry.build(config)
        ours.load_state_dict(state)
        whole_float = copy.deepcopy(ours) if tp.size > 1 else ours  # ours is cut in place below; the peer runs whole
        float_copy = functools.partial(copy.deepcopy, whole_float)  # whole, for the int8 contenders
        whole = whole_float if tp.size > 1 and "none" in quant else None
        ours = registry.cut_model(entry, ours, tp)
        peer = Contender("peer", peer_module, peer_fn)
    contenders = [Contender("ours", ours, bench.timed_part(ours), tp.size, scheme_of(ours))] if "none" in quant else []
    contenders += [Contender("ours", whole, bench.timed_part(whole))] if whole is not None else []
    contenders += [quantized_contender(run, entry, bench, config, float_copy(), s) for s in quant if s != "none"]
    contenders += [peer] if peer is not None else []
    if checkpoint is None:
        run.say("note: random full-size weights (no --checkpoint); speed does not depend on their values",
                file=sys.stderr)
    return config, contenders


def quantized_contender(run: BenchRun, entry, bench: Benchmark, config, model: torch.nn.Module,
                        scheme: str) -> Contender:
    """Ours (a whole float copy, before prepare_model) quantized with `scheme`, then cut for --tp; w8a8 calibrated
    in float32 on the part's own inputs at the largest batch size, through the part that is timed. Every rank
    calibrates the same whole model on the same inputs, so the ranks cut one quantized model."""
    calibration = None
    if scheme == "w8a8":
        inputs, _ = bench.make_inputs(config, max(run.options.batch_sizes), run.options.seq_len, run.device)
        parameter = next(model.parameters())
        inputs = tuple(runtime.to_model_input(t, parameter.device, parameter.dtype) for t in inputs)
        timed = bench.timed_part(model)
        calibration = calibrate(model, [inputs], forward=lambda _, batch: timed(*batch))
    model = registry.cut_model(entry, quantize_model(model, scheme, calibration), run.tp)
    return Contender("ours", model, bench.timed_part(model), run.tp.size, scheme)


def time_batch(run: BenchRun, part: Part, fns: dict, mode: str, batch_size: int) -> None:
    """One row per contender at one mode and batch size: the first call (it compiles and captures in graph
    mode) timed alone, then --iters calls taking turns."""
    inputs, seq_len = part.bench.make_inputs(part.config, batch_size, run.options.seq_len, run.device)
    inputs = tuple(runtime.to_model_input(t, run.device, run.dtype) for t in inputs)
    outputs, first_call = {}, {}
    with torch.no_grad():
        for c in part.contenders:
            output, first_call[c.key] = timed_call(fns[c.key], inputs, run.device)
            outputs[c.key] = output.float()
    for load in run.options.loads:
        with competing_load(load):
            timings = time_interleaved(fns, inputs, run.device, run.options.warmup, run.options.iters)
        add_rows(run, part, mode, batch_size, seq_len, load, inputs, outputs, first_call, timings)


def add_rows(run: BenchRun, part: Part, mode: str, batch_size: int, seq_len: int, load: str, inputs, outputs: dict,
             first_call: dict, timings: dict) -> None:
    ours_output, peer_output = outputs.get(f"ours@tp{run.tp.size}"), outputs.get("peer@tp1")
    for c in part.contenders:
        seconds = timings[c.key]
        if (c.key, batch_size) not in part.flops:  # counted eagerly (the work graph mode does too), in the same call
            # that records the operators whose own rate is the ceiling (eval.bench.ceiling), measured idle, once
            part.flops[c.key, batch_size], part.ceiling[c.key, batch_size] = flops_and_ceiling(
                c.fn, c.module, inputs, run.device, run.options.warmup, run.options.iters)
        flops, ceiling = part.flops[c.key, batch_size], part.ceiling[c.key, batch_size]
        achieved = flops / statistics.median(seconds)
        diff = None  # the peer's row: against our float model; an int8 row: against the peer
        if c.impl == "peer" and ours_output is not None:
            diff = (ours_output - outputs[c.key]).abs().max().item()
        elif c.quant != "none" and peer_output is not None:
            diff = (outputs[c.key] - peer_output).abs().max().item()
        peak, peak_name = run.peak_for(c.quant)
        run.add({"model": part.name, "impl": c.impl, "quant": c.quant, "mode": mode, "load": load,
                 "batch_size": batch_size, "seq_len": seq_len,
                 "samples_per_second": batch_size * len(seconds) / sum(seconds), **latency_percentiles(seconds),
                 "first_call_s": first_call[c.key], "gflop_per_batch": flops / 1e9, "tflops": achieved / 1e12,
                 "fraction_of_peak": None if peak is None else achieved / peak, "peak": peak_name,
                 "ceiling_fraction_of_peak": None if peak is None or ceiling is None else ceiling / peak,
                 "fraction_of_ceiling": None if ceiling is None else achieved / ceiling,
                 "device": runtime.device_description(run.device),
                 "dtype": runtime.dtype_name(run.dtype), "tp": c.tp, "param_mb_per_rank": parameter_megabytes(c.module),
                 "max_abs_diff_vs_peer": diff, "date": datetime.date.today().isoformat()})


def parameter_megabytes(module: torch.nn.Module) -> float:
    """Parameter memory this process holds (its share under tensor parallelism), in MiB: a quantized layer's
    int8 weights and scales (buffers, not parameters) included."""
    tensors = [*module.parameters()]
    tensors += [b for m in module.modules() if isinstance(m, QuantLinear) for b in m.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20
