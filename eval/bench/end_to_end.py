"""SST-2 from sentences to predictions, both flows on the same weights in this process: eval.sst2's own
code path (our tokenizer, length-sorted batches padded to their longest, or to multiples of 16 in graph
mode, [CLS]-only last layer) against the ModelZoo flow (transformers' tokenizer padding every sentence to
--seq-len, a static batch, transformers' model). Each is run once untimed first (graph mode: over all the
data, so every shape is compiled), then timed; the rows say how many token rows each computed and whether
predictions agree."""
import dataclasses
import datetime
import json
import sys
import tempfile
from pathlib import Path

import torch

from eval import metrics, sst2
from eval.bench.options import BenchOptions
from eval.bench.report import format_end_to_end
from eval.peers import PEERS
from eval.data.sst2 import read_sst2, write_length_mix
from eval.store import write_json_atomic
from eval.timing import timed_call
from npu_models import parallel, runtime
from npu_models.cli import note
from npu_models.errors import UserError


def end_to_end(entry, options: BenchOptions, device, dtype) -> list[dict]:
    """Both flows at every mode and batch size of `options`; one row per flow (written to options.json as
    they arrive)."""
    if entry.task.name != "sst2":
        raise UserError(f"--end-to-end times the SST-2 eval; {entry.name} is a {entry.task.name} model.")
    if parallel.world_size() > 1:
        raise UserError("--end-to-end runs in one process; drop torchrun and --tp.")
    peer, peer_fn, config, state = PEERS[entry.name](options.checkpoint)
    ours = entry.build(config)
    ours.load_state_dict(state)
    for module in (ours, peer):
        runtime.prepare_model(module, device, dtype)
    scratch = Path(tempfile.mkdtemp(prefix="sst2-end-to-end-"))
    vocab = sst2.resolve_vocab(None, options.checkpoint)
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
            base = {"model": entry.name, "mode": mode, "batch_size": batch_size, "sentences": len(sentences)}
            rows += compare_flows(flows, base, options.seq_len, device, dtype, data)
            if options.json:
                write_json_atomic(options.json, rows)
    return rows


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
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    return [r["probs"] for r in sorted(records, key=lambda r: r["index"])], results["token_rows"]


def compare_flows(flows: dict, base: dict, seq_len: int, device, dtype, data: Path) -> list[dict]:
    """Each flow warmed up (graph mode: over all the data, every shape compiled), then timed over all the
    data; one row each, set against the peer's."""
    timed = {}
    for impl, flow in flows.items():
        flow(None if base["mode"] == "graph" else base["batch_size"])  # warm-up
        (probs, token_rows), seconds = timed_call(flow, (), device)
        timed[impl] = (seconds, probs, token_rows)
    rows = []
    peer_seconds, peer_probs, _ = timed["peer"]
    for impl, (seconds, probs, token_rows) in timed.items():
        agree = sum(metrics.argmax(a) == metrics.argmax(b) for a, b in zip(probs, peer_probs))
        diff = max(abs(x - y) for a, b in zip(probs, peer_probs) for x, y in zip(a, b))
        rows.append({"model": base["model"], "impl": impl, "flow": "eval.sst2" if impl == "ours" else f"pad to {seq_len}",
                     "mode": base["mode"], "batch_size": base["batch_size"], "sentences": base["sentences"],
                     "seconds": seconds, "sentences_per_second": base["sentences"] / seconds, "token_rows": token_rows,
                     "speedup_vs_peer": peer_seconds / seconds, "agree_with_peer": agree, "max_abs_diff_vs_peer": diff,
                     "device": runtime.device_description(device), "dtype": runtime.dtype_name(dtype),
                     "data": str(data), "date": datetime.date.today().isoformat()})
        print(format_end_to_end(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
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
