"""SST-2 sentence classification accuracy, as the ModelZoo guide measures BERT-base-cased.

    python -m eval.sst2 --checkpoint checkpoint-12630 --data SST-2/dev.tsv --device npu:0

With neither --checkpoint nor --data it runs a demo: the bundled 40-sentence sample through randomly
initialised full-size weights.
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from eval import metrics
from eval.batching import pad_rows, plan_batches, static_rows
from eval.cli import add_common_args, command_parser, parse_options, run_eval
from eval.loop import EvalLoop
from eval.samples import SAMPLES_DIR
from eval.options import EvalOptions, command_model, content_hash, demo_banner, run_metadata, run_record
from eval.store import PredictionStore
from eval.data.sst2 import read_sst2
from npu_models import registry, runtime
from npu_models.cli import cli_main, note
from npu_models.errors import UserError
from npu_models.tokenizer import bert_tokenizer, check_vocab_fits, pad_token_ids

SAMPLE = SAMPLES_DIR / "sst2"


@dataclass
class SST2Options(EvalOptions):
    task: ClassVar[str] = "sst2"
    prediction_key: ClassVar[str] = "index"
    input_paths: ClassVar[tuple[str, ...]] = EvalOptions.input_paths + ("vocab",)
    seq_len: int = 128                # tokens per sentence with [CLS]/[SEP], capped at the model's positions
    vocab: Path | None = None         # None: the vocab.txt beside the checkpoint (the sample's for random weights)


def parse_args(argv) -> SST2Options:
    parser = command_parser("python -m eval.sst2", __doc__)
    add_common_args(parser, SST2Options)
    parser.add_argument("--seq-len", type=int, help="maximum tokens per sentence incl. [CLS]/[SEP] (default 128, as "
                        "ModelZoo); capped at the model's maximum positions")
    parser.add_argument("--vocab", type=Path, help="vocab.txt (default: the one beside the checkpoint)")
    return parse_options(parser, SST2Options, argv)


def resolve_vocab(vocab: Path | None, checkpoint: Path | None) -> Path:
    """--vocab, else the vocab.txt beside the checkpoint, else (random weights) the sample's."""
    if vocab is not None:
        return vocab
    if checkpoint is None:
        return SAMPLE / "vocab.txt"
    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if not (directory / "vocab.txt").is_file():
        raise UserError(f"no vocab.txt beside the checkpoint in {directory}; pass --vocab with the model's vocab.txt.")
    return directory / "vocab.txt"


def evaluate(options: SST2Options, model=None) -> dict:
    """The command's work. A ready `model` (eval.bench's end-to-end flow, a quantized model being calibrated)
    replaces loading options.checkpoint, which then only locates the vocab.txt beside it."""
    if options.checkpoint is None and model is None:
        demo_banner(f"{registry.get_entry(options.model, task='sst2').name} with random weights on "
                    + ("the bundled SST-2 sample." if options.data is None else f"{options.data}."))
    data = options.data or SAMPLE / "dev.tsv"
    examples = read_sst2(data)[: options.limit]
    model = command_model(options, model)
    if not model.config.num_labels:
        raise UserError(f"{options.checkpoint or 'the model given'} is a BERT encoder without a classification head; "
                        "SST-2 needs a BertForSequenceClassification checkpoint.")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    seq_len = min(options.seq_len, model.config.max_positions)
    if seq_len < options.seq_len:
        note(f"--seq-len {options.seq_len} capped at the model's {model.config.max_positions} positions")
    vocab = resolve_vocab(options.vocab, options.checkpoint)
    check_vocab_fits(vocab, model)
    run = run_record(options, dtype, model, seq_len=seq_len, vocab=content_hash(vocab))
    with EvalLoop(device, options.tp, options.started_at, PredictionStore(options.predictions, "index", run)) as loop:
        todo = loop.store.pending(examples, field="sentence")
        tokenizer = bert_tokenizer(vocab, model.config.do_lower_case, seq_len)
        encoded = [e.ids for e in tokenizer.encode_batch([e.sentence for e in todo])]
        batches = plan_batches([len(ids) for ids in encoded], options.batch_size,
                               runtime.length_buckets(seq_len, runtime.length_step(options.graph)))
        classify(loop, model, todo, encoded, batches, options)
    rows = graph_rows(options, len(todo))
    labelled = [e for e in examples if e.label is not None]
    return {
        "accuracy": metrics.accuracy([loop.store.done[e.index]["prediction"] for e in labelled],
                                     [e.label for e in labelled]) if labelled else None,
        "num_examples": len(examples), "num_computed": len(todo), "seq_len": seq_len,
        "token_rows": sum((rows or len(positions)) * length for positions, length in batches),  # padding included
        "data": str(data), **loop.meter.summary(), **run_metadata(options, device, dtype, model),
    }


def graph_rows(options: SST2Options, count: int) -> int | None:
    """Graph mode compiles one graph per shape: every batch is padded to the same number of rows."""
    return static_rows(options.batch_size, count) if options.graph else None


def classify(loop: EvalLoop, model, todo: list, encoded: list[list[int]], batches, options: SST2Options) -> None:
    device, labels = next(model.parameters()).device, model.config.labels
    rows = graph_rows(options, len(todo))
    compiled = set()
    for positions, length in loop.steps(batches, desc="sst2", unit="batch"):
        batch = make_batch([encoded[i] for i in positions], length, device)
        if rows:
            batch = pad_rows(batch, rows)
            if length not in compiled:  # compile this shape before it is timed
                model(*batch)
                compiled.add(length)
        elif all(len(encoded[i]) == length for i in positions):  # no padded token: attention needs no mask
            batch = (batch[0], None, batch[2])
        with loop.timed(len(positions)):
            probs = model(*batch).float().softmax(dim=-1)[: len(positions)].cpu()
        records = []
        for position, row in zip(positions, probs.tolist()):
            example, prediction = todo[position], metrics.argmax(row)
            records.append({"index": example.index, "sentence": example.sentence, "label": example.label,
                            "prediction": prediction, "prediction_label": labels[prediction], "probs": row})
        loop.add(records)


def make_batch(sequences: list[list[int]], length: int, device):
    """Pad token ids to `length`; returns input_ids, attention_mask, token_type_ids."""
    input_ids, attention_mask = pad_token_ids(sequences, length)
    return input_ids.to(device), attention_mask.to(device), torch.zeros_like(input_ids, device=device)


@cli_main
def main(argv=None):
    shown = ["accuracy", "num_examples", "num_computed", "samples_per_second", "time_to_first_batch_s",
             "compile_s", "latency_ms_p50", "latency_ms_p90", "device", "dtype", "batch_size", "seq_len"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
