"""SST-2 from sentences to predictions: eval.sst2's own code path (our tokenizer, length-sorted batches padded
to their longest, or to multiples of 16 in graph mode, [CLS]-only last layer) against the ModelZoo flow
(eval/bench/modelzoo.py: transformers' tokenizer padding every sentence to --seq-len, a static batch,
transformers' model), on the same weights.

Two ways, a row per flow each:
- in one process ("process": "one"): each flow run once untimed first (graph mode: over all the data, so every
  shape is compiled), then timed;
- as whole processes ("process": "whole", eager mode): `python -m eval.sst2` and the ModelZoo flow's own
  process, each timed from its start to its exit, as a user waits for it: Python's start, the imports, the
  tokenizer, reading the weights and the predictions. The peer's process gets the user's environment, without
  the OpenMP setting npu_models makes for itself.
The rows say how many token rows each computed and whether the predictions agree.
"""
import dataclasses
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from eval import metrics, sst2
from eval.bench.modelzoo import modelzoo_flow, modelzoo_tokenizer, run_as_process
from eval.bench.options import BenchOptions
from eval.bench.report import format_end_to_end
from eval.peers import PEERS
from eval.data.sst2 import read_sst2, write_length_mix
from eval.store import write_json_atomic
from eval.timing import timed_call
from npu_models import parallel, runtime
from npu_models.cli import note
from npu_models.errors import UserError
from npu_models.runtime.openmp import users_environment


def end_to_end(entry, options: BenchOptions, device, dtype) -> list[dict]:
    """Both flows at every mode and batch size of `options`; one row per flow (written to options.json as
    they arrive)."""
    if entry.task.name != "sst2":
        raise UserError(f"--end-to-end times the SST-2 eval; {entry.name} is a {entry.task.name} model.")
    if parallel.world_size() > 1:
        raise UserError("--end-to-end runs in one process; drop torchrun and --tp.")
    peer, peer_fn, config, state = PEERS[entry.name](options.checkpoint)
    scratch = Path(tempfile.mkdtemp(prefix="sst2-end-to-end-"))
    vocab = sst2.resolve_vocab(None, options.checkpoint)
    # The processes read the weights from disk: random ones are saved first, as a Hugging Face directory
    checkpoint = options.checkpoint or save_hf_checkpoint(peer, vocab, config.do_lower_case, scratch / "checkpoint")
    ours = entry.build(config)
    ours.load_state_dict(state)
    for module in (ours, peer):
        runtime.prepare_model(module, device, dtype)
    data = options.data or random_sentences(scratch / "dev.tsv", vocab)
    sentences = [e.sentence for e in read_sst2(data)]
    tokenizer = modelzoo_tokenizer(vocab, config.do_lower_case)
    rows = []
    for mode in options.modes:
        graph, cache = mode == "graph", options.compile_cache
        ours_run = runtime.compile_model(ours, device, compile_cache=cache) if graph else ours
        peer_run = runtime.compile_model(peer_fn, device, compile_cache=cache) if graph else peer_fn
        for batch_size in options.batch_sizes:
            sst2_options = sst2.SST2Options(data=data, batch_size=batch_size, seq_len=options.seq_len, vocab=vocab,
                                            device=str(device), dtype=runtime.dtype_name(dtype), graph=mode == "graph")
            flows = {"ours": lambda limit=None: sst2_flow(ours_run, sst2_options, limit, scratch),
                     "peer": lambda limit=None: modelzoo_flow(peer_run, tokenizer, sentences[:limit], batch_size,
                                                              options.seq_len, device)}
            base = {"model": entry.name, "mode": mode, "process": "one", "batch_size": batch_size,
                    "sentences": len(sentences)}
            rows += compare_flows(flows, base, options.seq_len, device, dtype, data)
            if options.json:
                write_json_atomic(options.json, rows)
    if "eager" in options.modes:
        sentences_file = scratch / "sentences.json"  # JSON: a line-per-sentence file breaks at \x85 or \u2028
        sentences_file.write_text(json.dumps(sentences), encoding="utf-8")
        for batch_size in options.batch_sizes:
            base = {"model": entry.name, "mode": "eager", "process": "whole", "batch_size": batch_size,
                    "sentences": len(sentences)}
            command = ProcessFlow(checkpoint, data, sentences_file, config.do_lower_case, batch_size, options.seq_len,
                                  device, dtype, scratch)
            timed = {"ours": command.ours(), "peer": command.peer()}
            rows += flow_rows(timed, base, options.seq_len, device, dtype, data)
            if options.json:
                write_json_atomic(options.json, rows)
    return rows


def save_hf_checkpoint(peer, vocab: Path, lower_case: bool, directory: Path) -> Path:
    """The peer's weights as a Hugging Face directory both flows' processes read: config, weights, vocab.txt and
    the tokenizer's casing."""
    peer.save_pretrained(directory)
    shutil.copy(vocab, directory / "vocab.txt")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower_case}))
    return directory


@dataclasses.dataclass
class ProcessFlow:
    """Each flow as the fresh process a user starts, timed from its start to its exit. ours and peer return
    (seconds, class probabilities per sentence, token rows)."""
    checkpoint: Path
    data: Path
    sentences: Path
    lower_case: bool
    batch_size: int
    seq_len: int
    device: torch.device
    dtype: torch.dtype
    scratch: Path

    def ours(self):
        out = Path(tempfile.mkdtemp(dir=self.scratch))
        seconds = self.timed_process([sys.executable, "-m", "eval.sst2", "--data", str(self.data), "--checkpoint",
                                      str(self.checkpoint), *self.shared_flags(), "--predictions",
                                      str(out / "predictions.jsonl"), "--output", str(out / "results.json")])
        results = json.loads((out / "results.json").read_text())
        return seconds, read_predictions(out / "predictions.jsonl"), results["token_rows"]

    def peer(self):
        out = Path(tempfile.mkdtemp(dir=self.scratch)) / "peer.json"
        seconds = self.timed_process(run_as_process(
            ["--checkpoint", str(self.checkpoint), "--sentences", str(self.sentences), *self.shared_flags(),
             "--out", str(out)] + (["--lower-case"] if self.lower_case else [])))
        result = json.loads(out.read_text())
        return seconds, result["probs"], result["token_rows"]

    def shared_flags(self) -> list[str]:
        return ["--batch-size", str(self.batch_size), "--seq-len", str(self.seq_len), "--device", str(self.device),
                "--dtype", runtime.dtype_name(self.dtype)]

    def timed_process(self, command: list[str]) -> float:
        start = time.perf_counter()
        done = subprocess.run(command, cwd=self.scratch, env=users_environment(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise UserError(f"the whole-process run failed (exit {done.returncode}): {' '.join(command)}\n"
                            f"{done.stderr[-3000:]}")
        return seconds


def random_sentences(path: Path, vocab: Path) -> Path:
    words = [w for w in vocab.read_text(encoding="utf-8").split() if w.isalpha() and not w.startswith("[")]
    write_length_mix(path, words)
    note(f"{path}: 872 sentences of random words with SST-2's length mix; pass --data with SST-2's dev.tsv for "
         "the real text")
    return path


def sst2_flow(model, options: sst2.SST2Options, limit: int | None, scratch: Path) -> tuple[list, int]:
    """eval.sst2's library function on `model`, its predictions streamed to a fresh file (nothing to resume)
    and read back in example order. Returns (class probabilities per sentence, token rows computed)."""
    predictions = Path(tempfile.mkdtemp(dir=scratch)) / "predictions.jsonl"
    results = sst2.evaluate(dataclasses.replace(options, predictions=predictions, limit=limit), model)
    return read_predictions(predictions), results["token_rows"]


def read_predictions(path: Path) -> list:
    """Class probabilities per sentence, in example order, from eval.sst2's --predictions stream."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["probs"] for r in sorted(records, key=lambda r: r["index"])]


def compare_flows(flows: dict, base: dict, seq_len: int, device, dtype, data: Path) -> list[dict]:
    """Each flow warmed up (graph mode: over all the data, every shape compiled), then timed over all the
    data; one row each, set against the peer's."""
    timed = {}
    for impl, flow in flows.items():
        flow(None if base["mode"] == "graph" else base["batch_size"])  # warm-up
        (probs, token_rows), seconds = timed_call(flow, (), device)
        timed[impl] = (seconds, probs, token_rows)
    return flow_rows(timed, base, seq_len, device, dtype, data)


def flow_rows(timed: dict, base: dict, seq_len: int, device, dtype, data: Path) -> list[dict]:
    """One row per flow from its (seconds, probabilities, token rows), set against the peer's."""
    rows = []
    peer_seconds, peer_probs, _ = timed["peer"]
    for impl, (seconds, probs, token_rows) in timed.items():
        agree = sum(metrics.argmax(a) == metrics.argmax(b) for a, b in zip(probs, peer_probs))
        diff = max(abs(x - y) for a, b in zip(probs, peer_probs) for x, y in zip(a, b))
        rows.append({"model": base["model"], "impl": impl, "flow": "eval.sst2" if impl == "ours" else f"pad to {seq_len}",
                     "mode": base["mode"], "process": base["process"], "batch_size": base["batch_size"], "sentences": base["sentences"],
                     "seconds": seconds, "sentences_per_second": base["sentences"] / seconds, "token_rows": token_rows,
                     "speedup_vs_peer": peer_seconds / seconds, "agree_with_peer": agree, "max_abs_diff_vs_peer": diff,
                     "device": runtime.device_description(device), "dtype": runtime.dtype_name(dtype),
                     "data": str(data), "date": datetime.date.today().isoformat()})
        print(format_end_to_end(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows

