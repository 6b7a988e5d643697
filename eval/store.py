"""Results on disk: per-example predictions streamed as resumable JSON lines, and JSON written atomically."""
import json
import os
import sys
import tempfile
from pathlib import Path

from npu_models import parallel
from npu_models.checkpoints.io import read_json
from npu_models.errors import UserError


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
    larger --limit) extend the file. With no path it only keeps the records in memory (`done`).
    """

    def __init__(self, path: Path | None, key: str = "index", run: dict | None = None):
        self.path, self.key, self.done = path, key, {}
        self._file = None
        if path is None:
            return
        # Under tensor parallelism every rank skips the same finished examples; only the main one writes.
        writer = parallel.is_main_process()
        if path.exists():
            good_bytes = self._read(f"eval.{run['command']}" if run else "this command")
            if writer:
                os.truncate(path, good_bytes)
        elif writer:
            path.parent.mkdir(parents=True, exist_ok=True)
        if run is not None:
            self._check_run(run, writer)
        if writer:
            self._file = open(path, "a", encoding="utf-8")

    def _read(self, command: str) -> int:
        """Load the finished records; returns the length of the file's good part."""
        good_bytes = 0
        with open(self.path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if not raw.endswith(b"\n"):
                    break
                check_prediction_record(record, self.path, number, self.key, command)
                self.done[record[self.key]] = record
                good_bytes += len(raw)
        return good_bytes

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
        recorded = {"quant": "none", **read_json(self.run_path)}  # records from before int8 were of float runs
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
        self.say_resuming(len(examples) - len(todo), len(examples))
        return todo

    def say_resuming(self, done: int, total: int) -> None:
        if 0 < done and parallel.is_main_process():
            print(f"resuming: {done} of {total} predictions already in {self.path}", file=sys.stderr)

    def add(self, records: list[dict]) -> None:
        for record in records:
            self.done[record[self.key]] = record
        if self._file is not None:
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_json_atomic(path: Path, document) -> None:
    """Write JSON so that an interruption never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    os.replace(staging, path)
