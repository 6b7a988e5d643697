"""What every eval command shares: the CLI vocabulary, streamed resumable predictions, result files,
fixed-shape batching and timing."""
import argparse
import datetime
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from npu_models import parallel, registry, runtime
from npu_models.checkpoints.io import file_identity, read_json
from npu_models.errors import UserError

SAMPLES_DIR = Path(__file__).parent / "samples"


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (--batch-size, --limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_common_args(parser: argparse.ArgumentParser, task: str, default_batch_size: int = 32,
                    prediction_key: str | None = None):
    """The shared options; `prediction_key` names the field that keys the command's --predictions lines."""
    parser.set_defaults(task=task, prediction_key=prediction_key, started_at=None)  # run_eval sets started_at
    default_model = registry.default_entry(task).name
    runs = ", ".join(f"{e.name} ({e.short_name})" for e in registry.REGISTRY.values() if e.task.name == task)
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
    parser.add_argument("--batch-size", type=positive_int, default=default_batch_size)
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--predictions", type=Path, help="stream one JSON line per example here; "
                        "rerunning with the same file resumes")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N examples")


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


def progress(iterable, **options):
    """A progress bar on the main process (none under tensor parallelism's other ranks, none when not a terminal)."""
    from tqdm import tqdm
    return tqdm(iterable, disable=None if parallel.is_main_process() else True, **options)


def demo_banner(what: str) -> None:
    if not parallel.is_main_process():
        return
    bar = "=" * 78
    print(f"{bar}\nDEMO RUN: {what}\nThe weights are RANDOM, so the metrics below are meaningless. Pass --checkpoint "
          f"and --data\nfor a real evaluation (see README).\n{bar}", file=sys.stderr, flush=True)


def content_hash(path_or_values) -> str | None:
    """sha256 of a small file (a vocabulary) or of a list of strings (an answer list)."""
    if path_or_values is None:
        return None
    if isinstance(path_or_values, (list, tuple)):
        data = "\n".join(path_or_values).encode("utf-8")
    else:
        data = Path(path_or_values).read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def check_prediction_record(record, path: Path, number: int, key: str, command: str) -> None:
    """A line of a --predictions file must be a JSON object holding the command's key."""
    if not isinstance(record, dict) or key not in record:
        raise UserError(f"{path} line {number} has no '{key}': it is not a predictions file of {command}. "
                        "Pass another --predictions file.")


class PredictionStore:
    """Per-example predictions as JSON lines, appended and flushed as they are produced.

    Opening an existing file loads what is there (a line cut off by an interruption is dropped), so a
    rerun skips finished examples. `run` records what produced the predictions (command, model, checkpoint
    identity, dtype and every option that changes outputs) in `<file>.run.json` beside it; a rerun that
    differs in any of them is refused, so one file never mixes two runs. More examples of the same data (a
    larger --limit) extend the file.
    """

    def __init__(self, path: Path | None, key: str = "index", run: dict | None = None):
        self.path, self.key, self.done = path, key, {}
        self._file = None
        if path is None:
            return
        # Under tensor parallelism every rank skips the same finished examples; only the main one writes.
        writer = parallel.is_main_process()
        if path.exists():
            good_bytes = 0
            with open(path, "rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    try:
                        record = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        break
                    if not raw.endswith(b"\n"):
                        break
                    check_prediction_record(record, path, number, self.key,
                                            f"eval.{run['command']}" if run else "this command")
                    self.done[record[self.key]] = record
                    good_bytes += len(raw)
            if writer:
                os.truncate(path, good_bytes)
        elif writer:
            path.parent.mkdir(parents=True, exist_ok=True)
        if run is not None:
            self._check_run(run, writer)
        if writer:
            self._file = open(path, "a", encoding="utf-8")

    @property
    def run_path(self) -> Path:
        return self.path.with_name(self.path.name + ".run.json")

    def _check_run(self, run: dict, writer: bool) -> None:
        run = json.loads(json.dumps(run))  # as it reads back from JSON
        if not self.done or not self.run_path.is_file():
            if self.done:
                raise UserError(f"{self.path} holds {len(self.done)} predictions but no record of the run that made "
                                f"them ({self.run_path.name}); they cannot be trusted for this run. Delete it or pass "
                                "another --predictions file.")
            if writer:
                write_json_atomic(self.run_path, run)
            return
        recorded = read_json(self.run_path)
        differences = [f"{key}: {recorded.get(key)!r} then, {run.get(key)!r} now"
                       for key in sorted(set(recorded) | set(run)) if recorded.get(key) != run.get(key)]
        if differences:
            raise UserError(f"{self.path} was written by another run ({'; '.join(differences)}). Resuming would mix "
                            "two runs' predictions: delete it (and its .run.json) or pass another --predictions file.")

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
        if len(todo) < len(examples) and parallel.is_main_process():
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


def batch_positions(count: int, batch_size: int) -> list[list[int]]:
    """Positions 0..count-1 cut into batches in order (the batches one process would run)."""
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


class StepGather:
    """Data parallelism's collection point: after each step (one batch per rank) every rank's records and
    unreadable items are gathered and stored in data-parallel rank order, which is the order one process
    would produce them in (each rank runs every dp-th batch). Rank 0 appends them to --predictions as they
    arrive, so an interrupted run resumes as a single-process one does; every rank keeps them, so every rank
    computes the same metrics."""

    def __init__(self, dp: parallel.DataParallel, store: PredictionStore, num_batches: int):
        self.dp, self.store, self.unreadable = dp, store, []
        self.remaining = dp.steps(num_batches)
        # Ranks that read different finished examples would cut different batches and wait on each other.
        planned = dp.gather(num_batches)
        if len(set(planned)) > 1:
            raise RuntimeError(f"the data-parallel ranks planned different numbers of batches: {planned}")

    def add(self, records: list[dict], unreadable: list[dict]) -> None:
        for rank_records, rank_unreadable in self.dp.gather((records, unreadable)):
            self.store.add(rank_records)
            self.unreadable.extend(rank_unreadable)
        self.remaining -= 1

    def finish(self) -> None:
        """Take part in the gathers of the steps this rank has no batch for (a rank with fewer batches)."""
        while self.remaining > 0:
            self.add([], [])


def plan_batches(lengths: list[int], batch_size: int, buckets: list[int]) -> list[tuple[list[int], int]]:
    """Sort by length and cut into batches, each padded to the smallest bucket that holds its longest.

    Returns (positions into `lengths`, padded length) per batch.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks = [[order[i] for i in positions] for positions in batch_positions(len(order), batch_size)]
    return [(chunk, runtime.bucket_for(max(lengths[i] for i in chunk), buckets)) for chunk in chunks]


class LatencyMeter:
    """Wall-clock time of each batch, synchronised with the device, and the time from the command's start
    (`started_at`, a perf_counter reading) to the end of its first batch: loading, reading, compiling."""

    def __init__(self, device: torch.device, started_at: float | None = None):
        self.device, self.seconds, self.samples = device, [], 0
        self.busy_seconds = None  # set by gather(): the busiest data-parallel rank's time in the model
        self.started_at, self.first_batch_s = started_at, None

    def __enter__(self):
        runtime.synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        runtime.synchronize(self.device)
        now = time.perf_counter()
        self.seconds.append(now - self._start)
        if self.first_batch_s is None and self.started_at is not None:
            self.first_batch_s = now - self.started_at

    def gather(self, dp: parallel.DataParallel) -> None:
        """Take in every data-parallel rank's batches (a collective: every rank calls it). The ranks run side
        by side, so samples_per_second becomes all ranks' samples over the busiest rank's seconds in the
        model; the latencies are those of every rank's batches."""
        parts = dp.gather((self.samples, self.seconds))
        self.samples = sum(samples for samples, _ in parts)
        self.seconds = [s for _, seconds in parts for s in seconds]
        self.busy_seconds = max(sum(seconds) for _, seconds in parts)

    def summary(self) -> dict:
        if not self.seconds:
            return {"samples_per_second": None, "latency_ms_p50": None, "latency_ms_p90": None,
                    "time_to_first_batch_s": None}
        busy = self.busy_seconds or sum(self.seconds)
        return {"samples_per_second": self.samples / busy, **latency_percentiles(self.seconds),
                "time_to_first_batch_s": self.first_batch_s}


def latency_percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"latency_ms_p50": statistics.median(ordered) * 1e3, "latency_ms_p90": p90 * 1e3}


def run_record(args, dtype: torch.dtype, **options) -> dict:
    """What a predictions file must agree on to be resumed: the command, model, checkpoint, --config and
    dtype, plus the command's options that change outputs."""
    return {"command": args.task, "model": registry.get_entry(args.model, task=args.task).name,
            "checkpoint": file_identity(args.checkpoint), "config": content_hash(args.config),
            "dtype": runtime.dtype_name(dtype), **options}


def run_metadata(args, device: torch.device, dtype: torch.dtype) -> dict:
    return {
        "model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "random_weights": args.checkpoint is None, "device": runtime.device_description(device),
        "dtype": runtime.dtype_name(dtype), "graph": args.graph, "batch_size": args.batch_size,
        "date": datetime.date.today().isoformat(),
    }


def check_writable(path: Path | None, option: str) -> None:
    """Fail now, not after hours of work, when a result file cannot be written where it was asked for."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file path.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
        if path.exists():
            open(path, "a").close()
    except OSError as err:
        raise UserError(f"{option} {path} cannot be written ({err.strerror or err}); choose a writable location.") from None


def check_before_work(args) -> None:
    """Everything that can be checked before data is read and a model is built."""
    registry.get_entry(args.model, task=args.task)  # names the models that can do the task
    parallel.check_world(args.tp)
    check_writable(args.output, "--output")
    check_writable(args.predictions, "--predictions")
    if args.predictions is not None and args.prediction_key is not None and args.predictions.is_file():
        with open(args.predictions, "rb") as handle:
            first = handle.readline()
        try:
            record = json.loads(first) if first.endswith(b"\n") else {args.prediction_key: None}
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        check_prediction_record(record, args.predictions, 1, args.prediction_key, f"eval.{args.task}")


def run_eval(parse_args, evaluate, shown: list[str], argv) -> int:
    """What every eval command's main does: check the arguments, evaluate, write --output, print the
    headline numbers."""
    args = parse_args(argv)
    args.started_at = time.perf_counter()
    check_before_work(args)
    results = evaluate(args)
    if parallel.is_main_process():
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
