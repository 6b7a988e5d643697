"""Compile a model's graphs ahead of time, so that the eval commands and the server start in graph mode without
compiling.

    python -m weights_tools.compile --model bert --checkpoint bert-sst2 --batch-sizes 32 --out graphs
    python -m eval.sst2 --checkpoint bert-sst2 --graph --compile-cache graphs    # loads them: compile_s ~1 s

Every static shape the model's eval command runs in graph mode (--batch-size x each token-length bucket) is
compiled once, as that command calls the model, and saved under --out (the compile cache, default the one
every graph-mode command uses). On the CPU each is a saved graph that a later process loads without tracing
(npu_models/runtime/saved_graphs.py): it holds code, not weights, so it serves every checkpoint of the same
configuration, and one made for another torch, device, dtype, configuration or source of ours is refused
(one line says which) and compiled again. Elsewhere the device's own cache keeps what it can: inductor's
caches on CUDA, torchair's cache_compile for GE; a 310P capture is not kept, so the command refuses it.

A shape already saved is loaded, not compiled: an interrupted run resumes where it stopped.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from eval.commands import eval_command
from eval.graph_calls import default_lengths, graph_calls, longest_text
from npu_models import RandomWeightsWarning, load_model, parallel, registry, runtime
from npu_models.cli import cli_main, note
from npu_models.errors import UserError, arg, check_paths_exist


def compile_graphs(model_name: str, checkpoint=None, device="cpu", dtype=None, batch_sizes=None, seq_lens=None,
                   out=None) -> list[dict]:
    """Compile (or load) every graph of the model's eval command; one row per shape: shape, how (compiled or
    loaded), seconds."""
    check_paths_exist({"checkpoint": checkpoint})
    entry = registry.get_entry(model_name)
    device = runtime.resolve_device(device)
    if runtime.graph_backend_for(device, True) == "capture":
        raise UserError(f"{device} captures its graphs per process (NPUGraph on 310P): there is nothing to compile "
                        "ahead of time; each capture's time is in the command's compile_s.")
    if batch_sizes is not None and any(b < 1 for b in batch_sizes):
        raise UserError(f"{arg('batch_sizes', ' '.join(map(str, batch_sizes)))}: every batch size must be at least 1.")
    task = entry.task
    if task.name == "retrieval":
        raise UserError(f"{entry.name} is a retrieval model: eval.retrieval runs eagerly, so it has no graph to "
                        "compile.")
    with warnings.catch_warnings():  # random weights are what a graph for any checkpoint of the config is made on
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model = load_model(entry.name, checkpoint, device=device, dtype=dtype, graph=True, compile_cache=out)
    lengths = seq_lens or default_lengths(task, model.config)
    longest = longest_text(task, model.config)
    if seq_lens and longest is not None and max(seq_lens) > longest:
        raise UserError(f"{arg('seq_lens', ' '.join(map(str, seq_lens)))} goes past the {longest} tokens "
                        f"{entry.name} reads at most: give lengths up to {longest}.")
    calls = [call for batch_size in batch_sizes or [eval_command(task.name).options.batch_size]
             for call in graph_calls(task, model, batch_size, lengths)]
    rows = []
    for call in tqdm(calls, desc="compile", unit="shape", disable=not parallel.is_main_process()):
        loaded_before = runtime.graph_counts()["graphs_loaded"]
        start = time.perf_counter()
        with torch.no_grad():  # as the eval loops and the server call the model: grad mode is part of a graph
            call.run()
        how = "loaded" if runtime.graph_counts()["graphs_loaded"] > loaded_before else "compiled"
        rows.append({"shape": call.shape, "how": how, "seconds": round(time.perf_counter() - start, 2)})
    return rows


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m weights_tools.compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="short name (bert, vit, vlmo, vilbert) or registry name")
    parser.add_argument("--checkpoint", type=Path, help="official or converted checkpoint (default: random weights "
                        "of the full size: the graphs serve every checkpoint of that configuration)")
    parser.add_argument("--device", default="cpu", help="auto | npu[:N] | cuda[:N] | cpu (default cpu)")
    parser.add_argument("--dtype", default=None, help="fp32 | fp16 | bf16 (default: the device's)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="the --batch-size of the commands that will load the graphs (default: the eval "
                        "command's default)")
    parser.add_argument("--seq-lens", type=int, nargs="+",
                        help="token lengths to compile (default: every 16-token bucket the command pads to)")
    parser.add_argument("--out", type=Path, help="the compile cache to fill: what --compile-cache names later (default: "
                        "the default compile cache, " + str(runtime.default_compile_cache()) + ")")
    args = parser.parse_args(argv)
    rows = compile_graphs(args.model, args.checkpoint, args.device, args.dtype, args.batch_sizes, args.seq_lens, args.out)
    if parallel.is_main_process():
        for row in rows:
            print(f"{row['how']:9} {row['seconds']:7.2f} s  {row['shape']}")
        compiled = sum(row["how"] == "compiled" for row in rows)
        note(f"{compiled} graph(s) compiled, {len(rows) - compiled} already saved, in "
             f"{runtime.check_compile_cache(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
