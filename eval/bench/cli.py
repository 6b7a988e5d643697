"""Throughput and latency of our model and its reference peer, side by side (the ais_bench --loop equivalent).

    python -m eval.bench --model bert-base-cased-sst2 --device npu:0 --batch-sizes 1,8,32 --json bench.json
    python -m eval.bench --model all --device cuda --dtype bf16           # every model, one markdown table
    python -m eval.bench --end-to-end                                      # SST-2 end to end vs the ModelZoo flow

For every batch size, mode (eager, graph) and implementation (ours; the peer from transformers or timm,
loaded with the same weights), it runs warm-up iterations, then times --iters iterations with the device
synchronised, the implementations taking turns, and reports samples/s, the median and p90 latency, the first
call (compilation included in graph mode), the FLOPs counted and their fraction of a dense matmul measured in
the same run. Graph mode is each one's best: compiled, with CUDA graphs on CUDA. Rows are written as they
arrive. --quant none,w8a8 times ours in float and int8 side by side (quantized on the fly, w8a8 calibrated on
the bench's own inputs); every row names its `quant`.
"""
import sys
from pathlib import Path

from eval.bench.end_to_end import end_to_end
from eval.bench.options import BenchOptions
from eval.bench.report import format_end_to_end, markdown_table, plot
from eval.bench.throughput import bench_models, benchmarks_of
from eval.cli import command_parser
from npu_models import parallel, registry, runtime
from npu_models.cli import cli_main
from npu_models.errors import UserError


def parse_args(argv) -> BenchOptions:
    parser = command_parser("python -m eval.bench", __doc__)
    parser.add_argument("--model", help="registry or short name, name/part for one part, or 'all' for every model "
                        "and one markdown table (default: the SST-2 model)")
    parser.add_argument("--checkpoint", type=Path, help="official checkpoint; omitted: random full-size weights")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--batch-sizes", help="comma-separated (default 1,8,32; 32 with --end-to-end)")
    parser.add_argument("--seq-len", type=int, help="text models: tokens per sequence (default 128)")
    parser.add_argument("--modes", help="eager, graph or both (default)")
    parser.add_argument("--no-peer", action="store_true", help="time only our implementation")
    parser.add_argument("--tp", type=int, help="tensor-parallel degree for ours (run under torchrun "
                        "--nproc_per_node N); the peer runs whole on every rank")
    parser.add_argument("--compile-cache", type=Path, metavar="DIR", help="graph mode: keep compiled graphs here "
                        "(default: as the eval commands); 'off': no cache")
    parser.add_argument("--warmup", type=int, help="(default 3)")
    parser.add_argument("--iters", type=int, help="(default 10)")
    parser.add_argument("--json", type=Path, help="write the rows as a JSON list here")
    parser.add_argument("--csv", type=Path, help="write the rows as CSV here")
    parser.add_argument("--plot", type=Path, help="write a PNG of throughput against batch size here")
    parser.add_argument("--end-to-end", action="store_true",
                        help="SST-2 models: time `python -m eval.sst2`'s own code path over --data against the ModelZoo "
                             "flow (every sentence padded to --seq-len, transformers' tokenizer and model)")
    parser.add_argument("--data", type=Path, help="with --end-to-end: SST-2 dev.tsv (default: 872 sentences of "
                        "random words with SST-2's length mix)")
    parser.add_argument("--quant", help="comma list of none (our float model), w8a8, w8a8-dynamic, w8a16: ours "
                        "quantized on the fly, calibrated on the bench's own inputs (under --tp: the whole model on "
                        "every rank, then cut), timed beside float (default none)")
    parser.add_argument("--load", dest="loads", help="comma list of idle (the machine as it is) and busy (every core "
                        "also running a Python loop in its own process, as when a test run shares the machine): each "
                        "row timed under each (default idle)")
    given = vars(parser.parse_args(argv))
    if "batch_sizes" in given:
        try:
            given["batch_sizes"] = [int(b) for b in given["batch_sizes"].split(",")]
        except ValueError:
            raise UserError(f"--batch-sizes must be comma-separated integers, got '{given['batch_sizes']}'.") from None
    if "modes" in given:
        given["modes"] = tuple(given["modes"].split(","))
    if "quant" in given:
        given["quant"] = tuple(given["quant"].split(","))
    if "loads" in given:
        given["loads"] = tuple(given["loads"].split(","))
    return BenchOptions(**given)


def selected_parts(options: BenchOptions) -> list[tuple]:
    """(registry entry, benchmark part names) for --model: one model, one part of it, or all."""
    if options.model == "all":
        if options.checkpoint is not None or options.end_to_end:
            raise UserError("--model all runs every model on random full-size weights; --checkpoint and "
                            "--end-to-end take one model.")
        return [(entry, list(benchmarks_of(entry))) for entry in registry.REGISTRY.values()]
    entry = registry.get_entry(options.model.split("/")[0])
    names = available = list(benchmarks_of(entry))
    if "/" in options.model:
        names = [n for n in available if n == f"{entry.name}/{options.model.split('/', 1)[1]}"]
    if not names:
        raise UserError(f"no benchmark defined for {options.model}; available: {', '.join(available)}.")
    return [(entry, names)]


@cli_main
def main(argv=None):
    options = parse_args(argv)
    parts = selected_parts(options)
    device = runtime.resolve_device(options.device)
    dtype = runtime.parse_dtype(options.dtype, device)
    tp = parallel.init_tensor_parallel(options.tp, device.type)
    device = parallel.local_device(device)
    if options.end_to_end:
        print(format_end_to_end(end_to_end(parts[0][0], options, device, dtype)))
        return 0
    rows = bench_models(parts, options, device, dtype, tp)
    if parallel.is_main_process():
        if len(parts) > 1:
            print(f"\n{markdown_table(rows)}")
        if options.plot:
            plot(rows, options.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
