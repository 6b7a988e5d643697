"""SST-2 sentence classification accuracy, as the ModelZoo guide measures BERT-base-cased.

    python -m eval.sst2 --checkpoint checkpoint-12630 --data SST-2/dev.tsv --device npu:0

With neither --checkpoint nor --data it runs a demo: the bundled 40-sentence sample through randomly
initialised full-size weights.
"""
import argparse
import sys
from pathlib import Path

import torch

import npu_models
from eval import metrics
from eval.common import (SAMPLES_DIR, LatencyMeter, PredictionStore, StepGather, add_common_args, content_hash, demo_banner,
                         pad_rows, plan_batches, progress, run_eval, run_metadata, run_record)
from eval.data.sst2 import read_sst2
from npu_models import parallel, registry, runtime
from npu_models.errors import UserError, cli_main
from npu_models.tokenizer import bert_tokenizer

SAMPLE = SAMPLES_DIR / "sst2"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.sst2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "sst2", prediction_key="index")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="maximum tokens per sentence incl. [CLS]/[SEP] (default 128, as ModelZoo); "
                             "capped at the model's maximum positions")
    parser.add_argument("--vocab", type=Path, help="vocab.txt (default: the one beside the checkpoint)")
    return parser.parse_args(argv)


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


def evaluate(args, model=None) -> dict:
    """The command's work; `model` given (eval.bench --end-to-end) replaces loading --checkpoint."""
    if args.checkpoint is None and model is None:
        demo_banner(f"{registry.get_entry(args.model, task='sst2').name} with random weights on "
                    + ("the bundled SST-2 sample." if args.data is None else f"{args.data}."))
    data = args.data or SAMPLE / "dev.tsv"
    examples = read_sst2(data)[: args.limit]
    if model is None:
        model = npu_models.load_model(args.model, args.checkpoint, args.device, args.dtype, args.graph, args.tp,
                                      task="sst2", config_file=args.config, graph_backend=args.graph_backend)
    config = model.config
    if not config.num_labels:
        raise UserError(f"{args.checkpoint} is a BERT encoder without a classification head; "
                        "SST-2 needs a BertForSequenceClassification checkpoint.")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    seq_len = min(args.seq_len, config.max_positions)
    if seq_len < args.seq_len:
        print(f"note: --seq-len {args.seq_len} capped at the model's {config.max_positions} positions", file=sys.stderr)

    vocab = resolve_vocab(args.vocab, args.checkpoint)
    store = PredictionStore(args.predictions, key=args.prediction_key, run=run_record(args, dtype, seq_len=seq_len, vocab=content_hash(vocab)))
    todo = store.pending(examples, field="sentence")

    tokenizer = bert_tokenizer(vocab, config.do_lower_case, seq_len)
    encoded = [e.ids for e in tokenizer.encode_batch([e.sentence for e in todo])]
    buckets = runtime.length_buckets(seq_len, runtime.length_step(args.graph))
    batches = plan_batches([len(ids) for ids in encoded], args.batch_size, buckets)
    dp = parallel.data_parallel(args.tp)
    mine = dp.share(batches)
    # Graph mode compiles one graph per shape: every batch is padded to the full batch size.
    rows = args.batch_size if args.graph else None

    meter, gathered = LatencyMeter(device, args.started_at), StepGather(dp, store, len(batches))
    if args.graph and mine:
        for length in sorted({length for _, length in mine}):
            with torch.no_grad():
                model(*pad_rows(make_batch([[0]], length, device), rows))  # compile every shape before timing
    try:
        for positions, length in progress(mine, desc="sst2", unit="batch"):
            batch = make_batch([encoded[i] for i in positions], length, device)
            if rows:
                batch = pad_rows(batch, rows)
            elif all(len(encoded[i]) == length for i in positions):  # no padded token: attention needs no mask
                batch = (batch[0], None, batch[2])
            with meter, torch.no_grad():
                probs = model(*batch).float().softmax(dim=-1)[: len(positions)].cpu()
            meter.samples += len(positions)
            records = []
            for position, row in zip(positions, probs.tolist()):
                example = todo[position]
                prediction = metrics.argmax(row)
                records.append({"index": example.index, "sentence": example.sentence, "label": example.label,
                                "prediction": prediction, "prediction_label": config.labels[prediction],
                                "probs": row})
            gathered.add(records, [])
        gathered.finish()
    finally:
        store.close()
    meter.gather(dp)

    labelled = [e for e in examples if e.label is not None]
    results = {
        "accuracy": metrics.accuracy([store.done[e.index]["prediction"] for e in labelled],
                                     [e.label for e in labelled]) if labelled else None,
        "num_examples": len(examples), "num_computed": len(todo), "seq_len": seq_len,
        "token_rows": sum((rows or len(positions)) * length for positions, length in batches),  # padding included
        "data": str(data), **meter.summary(), **run_metadata(args, device, dtype),
    }
    return results


def make_batch(sequences: list[list[int]], length: int, device):
    """Pad token ids to `length`; returns input_ids, attention_mask, token_type_ids."""
    input_ids = torch.zeros(len(sequences), length, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device), torch.zeros_like(input_ids, device=device)


@cli_main
def main(argv=None):
    shown = ["accuracy", "num_examples", "num_computed", "samples_per_second", "time_to_first_batch_s",
             "latency_ms_p50", "latency_ms_p90", "device", "dtype", "batch_size", "seq_len"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
