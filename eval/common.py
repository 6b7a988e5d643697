"""What every eval command shares: the CLI vocabulary, streamed resumable predictions, result files,
fixed-shape batching and timing."""
import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from npu_models import registry, runtime
from npu_models.errors import UserError

SAMPLES_DIR = Path(__file__).parent / "samples"


def add_common_args(parser: argparse.ArgumentParser, task: str, default_batch_size: int = 32):
    default_model = registry.default_entry(task).name
    runs = ", ".join(f"{e.name} ({e.short_name})" for e in registry.REGISTRY.values() if e.task == task)
    parser.add_argument("--model", default=default_model, help=f"short or registry name: {runs} (default {default_model})")
    parser.add_argument("--checkpoint", type=Path, help="official checkpoint or our converted directory; "
                        "omitted: random full-size weights (a demo, said loudly)")
    parser.add_argument("--data", type=Path, help="dataset in its real layout; omitted: the bundled sample")
    parser.add_argument("--config", type=Path, help="hyper-parameters the checkpoint cannot reveal, in the format of "
                        "the config.json a converter reads beside it (default: that file, if present)")
    parser.add_argument("--device", default="auto", help="auto | npu[:N] | cuda[:N] | cpu (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 cpu, bf16 cuda/910, fp16 310P) | fp32 | fp16 | bf16")
    parser.add_argument("--graph", action="store_true", help="graph mode: torchair on NPU, torch.compile elsewhere")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (run under torchrun)")
    parser.add_argument("--batch-size", type=int, default=default_batch_size)
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--predictions", type=Path, help="stream one JSON line per example here; "
                        "rerunning with the same file resumes")
    parser.add_argument("--limit", type=int, help="evaluate only the first N examples")


def find_beside(args, data: Path, name: str) -> Path | None:
    """A file in the data directory or beside the checkpoint, in that order."""
    for directory in (data, args.checkpoint.parent if args.checkpoint else None):
        if directory is not None and (directory / name).is_file():
            return directory / name
    return None


def bert_uncased_vocab(args, data: Path) -> Path:
    """--vocab, else vocab.txt in the data directory or beside the checkpoint (models whose checkpoint does
    not carry bert-base-uncased's vocabulary)."""
    vocab = args.vocab or find_beside(args, data, "vocab.txt")
    if vocab is None:
        raise UserError("no vocab.txt in --data or beside the checkpoint; pass --vocab with bert-base-uncased's vocab.txt.")
    return vocab


def demo_banner(what: str) -> None:
    bar = "=" * 78
    print(f"{bar}\nDEMO RUN: {what}\nThe weights are RANDOM, so the metrics below are meaningless. Pass --checkpoint "
          f"and --data\nfor a real evaluation (see README).\n{bar}", file=sys.stderr, flush=True)


class PredictionStore:
    """Per-example predictions as JSON lines, appended and flushed as they are produced.

    Opening an existing file loads what is there (a line cut off by an interruption is dropped), so a
    rerun skips finished examples.
    """

    def __init__(self, path: Path | None, key: str = "index"):
        self.path, self.key, self.done = path, key, {}
        self._file = None
        if path is None:
            return
        if path.exists():
            good_bytes = 0
            with open(path, "rb") as handle:
                for raw in handle:
                    try:
                        record = json.loads(raw)
                    except json.JSONDecodeError:
                        break
                    if not raw.endswith(b"\n"):
                        break
                    self.done[record[self.key]] = record
                    good_bytes += len(raw)
            os.truncate(path, good_bytes)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def check_matches(self, key, field: str, value) -> None:
        """Refuse to resume from a file written for different data."""
        if key in self.done and self.done[key].get(field) != value:
            raise UserError(f"{self.path} holds a prediction for {self.key} {key} with a different {field} "
                            f"({self.done[key].get(field)!r} vs {value!r}): it was written for another dataset. "
                            "Delete it or pass another --predictions file.")

    def pending(self, examples: list, field: str | None = None) -> list:
        """The examples without a prediction yet (keyed by the attribute named like the store's key); with
        `field`, refuse a file whose records disagree with the examples on that attribute."""
        if field is not None:
            for example in examples:
                self.check_matches(getattr(example, self.key), field, getattr(example, field))
        todo = [e for e in examples if getattr(e, self.key) not in self.done]
        if len(todo) < len(examples):
            print(f"resuming: {len(examples) - len(todo)} of {len(examples)} predictions already in {self.path}",
                  file=sys.stderr)
        return todo

    def add(self, records: list[dict]) -> None:
        for record in records:
            self.done[record[self.key]] = record
        if self._file is not None:
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def write_json_atomic(path: Path, document) -> None:
    """Write JSON so that an interruption never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    os.replace(staging, path)


def pad_rows(tensors: tuple, rows: int) -> tuple:
    """Repeat each tensor's first row until it has `rows` rows: graph mode's one static batch shape (the
    filler rows are real examples, so no attention row is empty)."""
    return tuple(torch.cat([t, t[:1].expand(rows - len(t), *t.shape[1:])]) if len(t) < rows else t for t in tensors)


def plan_batches(lengths: list[int], batch_size: int, buckets: list[int]) -> list[tuple[list[int], int]]:
    """Sort by length and cut into batches, each padded to the smallest bucket that holds its longest.

    Returns (positions into `lengths`, padded length) per batch.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batches.append((chunk, runtime.bucket_for(max(lengths[i] for i in chunk), buckets)))
    return batches


class LatencyMeter:
    """Wall-clock time of each batch, synchronised with the device."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.samples = device, [], 0

    def __enter__(self):
        runtime.synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        runtime.synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._start)

    def summary(self) -> dict:
        if not self.seconds:
            return {"samples_per_second": None, "latency_ms_p50": None, "latency_ms_p90": None}
        return {"samples_per_second": self.samples / sum(self.seconds), **latency_percentiles(self.seconds)}


def latency_percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"latency_ms_p50": statistics.median(ordered) * 1e3, "latency_ms_p90": p90 * 1e3}


def run_metadata(args, device: torch.device, dtype: torch.dtype) -> dict:
    return {
        "model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "random_weights": args.checkpoint is None, "device": runtime.device_description(device),
        "dtype": runtime.dtype_name(dtype), "graph": args.graph, "batch_size": args.batch_size,
        "date": datetime.date.today().isoformat(),
    }


def run_eval(parse_args, evaluate, shown: list[str], argv) -> int:
    """What every eval command's main does: evaluate, write --output, print the headline numbers."""
    args = parse_args(argv)
    results = evaluate(args)
    if args.output:
        write_json_atomic(args.output, results)
    print_results(results, shown)
    return 0


def print_results(results: dict, keys: list[str]) -> None:
    keys = [k for k in keys if k in results]
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        value = results.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
