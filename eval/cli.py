"""The eval commands' command line: the shared flags, argv parsed into a command's options dataclass, what
is checked before any work, the results file and the headline printed at the end. Each command's
parse_args adds its own flags; its evaluate takes the options."""
import argparse
import json
import tempfile
from pathlib import Path

from eval.options import EvalOptions
from eval.store import check_prediction_record, write_json_atomic
from npu_models import parallel, registry, runtime
from npu_models.errors import UserError, check_paths_exist


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (--batch-size, --limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser. A flag left out is left out of the namespace (argparse.SUPPRESS), so the options
    class's default applies: defaults live in one place, the options dataclass."""
    return argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_options(parser: argparse.ArgumentParser, options: type, argv) -> object:
    """argv -> the command's options dataclass (each flag's dest is the name of its field)."""
    return options(**vars(parser.parse_args(argv)))


def add_common_args(parser: argparse.ArgumentParser, options: type[EvalOptions]):
    """The shared flags, one per EvalOptions field."""
    default_model = registry.default_entry(options.task).name
    runs = ", ".join(f"{e.name} ({e.short_name})" for e in registry.REGISTRY.values() if e.task.name == options.task)
    parser.add_argument("--model", help=f"short or registry name: {runs} (default {default_model})")
    parser.add_argument("--checkpoint", type=Path, help="official checkpoint or our converted directory; "
                        "omitted: random full-size weights (a demo, said loudly)")
    parser.add_argument("--data", type=Path, help="dataset in its real layout; omitted: the bundled sample")
    parser.add_argument("--config", type=Path, help="hyper-parameters the checkpoint cannot reveal, in the format of "
                        "the config.json a converter reads beside it (default: that file, if present)")
    parser.add_argument("--device", help="auto | npu[:N] | cuda[:N] | cpu (default auto)")
    parser.add_argument("--dtype", help="auto (fp32 cpu, bf16 cuda/910, fp16 310P) | fp32 | fp16 | bf16")
    parser.add_argument("--graph", action="store_true", help="graph mode: NPUGraph capture on 310P, torchair "
                        "npugraph_ex on A2/A3, torch.compile on CUDA (CUDA graphs) and CPU")
    parser.add_argument("--graph-backend", choices=runtime.GRAPH_BACKENDS,
                        help="with --graph: auto (the device's default) | capture | npugraph_ex | ge | inductor")
    parser.add_argument("--compile-cache", type=Path, metavar="DIR", help="with --graph: keep compiled graphs here, so "
                        "the next run loads them instead of compiling (default: $TORCHINDUCTOR_CACHE_DIR if set, else "
                        f"{runtime.default_compile_cache()}); 'off': no cache")
    parser.add_argument("--tp", type=int, help="tensor-parallel degree (run under torchrun)")
    parser.add_argument("--batch-size", type=positive_int, help=f"(default {options.batch_size})")
    parser.add_argument("--output", type=Path, help="write the results JSON here")
    parser.add_argument("--predictions", type=Path, help="stream one JSON line per example here; "
                        "rerunning with the same file resumes")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N examples")


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


def check_before_work(options: EvalOptions) -> None:
    """Everything that can be checked before data is read and a model is built."""
    check_paths_exist({name: getattr(options, name, None) for name in options.input_paths})
    registry.get_entry(options.model, task=options.task)  # names the models that can do the task
    parallel.check_world(options.tp)
    if getattr(options, "score", None) is None:  # eval.vqa --score scores a file: no model, no device
        runtime.parse_dtype(options.dtype, runtime.parse_device(options.device))
    if options.graph:
        runtime.check_compile_cache(options.compile_cache)
    check_writable(options.output, "--output")
    check_writable(options.predictions, "--predictions")
    if options.predictions is not None and options.predictions.is_file():
        with open(options.predictions, "rb") as handle:
            first = handle.readline()
        key = options.prediction_key
        try:
            record = json.loads(first) if first.endswith(b"\n") else {key: None}
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        check_prediction_record(record, options.predictions, 1, key, f"eval.{options.task}")


def run_eval(parse_args, evaluate, shown: list[str], argv) -> int:
    """What every eval command's main does: parse argv into options, check them, evaluate, write --output,
    print the headline numbers."""
    options = parse_args(argv)
    check_before_work(options)
    results = evaluate(options)
    if parallel.is_main_process():
        if options.output:
            write_json_atomic(options.output, results)
        print_results(results, shown)
    return 0


def print_results(results: dict, keys: list[str]) -> None:
    keys = [k for k in keys if k in results]
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        value = results.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
