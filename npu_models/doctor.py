"""Check this machine end to end and print a report to paste into a bug report.

    python -m npu_models.doctor --device npu --json doctor.json
    torchrun --nproc_per_node 2 -m npu_models.doctor --device npu --tp 2 --json doctor-tp2.json

Prints the environment (python, torch, torch_npu, CANN, chip, device count, load-time settings) and the kernel
plan with its reasons, then runs, in the device's default dtype: every reference fixture through verify
(eager), the graph-mode entry points of each fixture's model against eager, every fixture quantized with each
int8 scheme the device runs (verify --quant; w8a8 in graph mode too, where the graph checks run), every fused
kernel against its eager math and, with --tp N under torchrun, every fixture split N ways. One table; exit
status 0 only when every row passed; --json writes every figure.
"""
import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

from npu_kernels.checks import kernel_cases
from npu_kernels.quant_matmul import SCHEMES, unsupported_reason
from npu_models import parallel, registry, runtime
from npu_models.cli import cli_main
from npu_models.compare import compare
from npu_models.errors import UserError, arg
from npu_models.runtime.environment import environment
from npu_models.verify import DEFAULT_TOLERANCE, find_checkpoints, fixture_inputs, quantized_model, verify

FIXTURE_MODELS = ("bert", "vit", "blip", "vlmo", "vilbert")  # fixture directory name = --model short name
# A checkout keeps the fixtures in tests/; an installed package does not carry them (about 11 MB).
CHECKOUT_FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference"
# torch.compile on a CPU takes tens of seconds a model: CI runs graph mode on two small fixtures by default.
CPU_GRAPH_MODELS = ("bert", "vit")
GRAPH_BATCH, GRAPH_SEQ_LEN = 2, 16


def timed_row(check: str, mode: str, run) -> dict:
    """Run `run() -> (ok, max_abs_diff, detail)` as one row; an exception is a failed row that says why."""
    start = time.perf_counter()
    try:
        ok, diff, detail = run()
    except Exception as err:  # the doctor reports every failure and goes on to the next check
        ok, diff, detail = False, float("inf"), f"{type(err).__name__}: {err}"
    return {"check": check, "mode": mode, "ok": bool(ok), "max_abs_diff": diff,
            "seconds": round(time.perf_counter() - start, 3), "detail": detail}


def summary(rows: list[dict]):
    """(ok, max diff, detail) of verify rows: the detail names the failing tensors, then keeps every row."""
    failing = [r["name"] for r in rows if not r["ok"]]
    diff = max(r["max_abs_diff"] for r in rows)
    return not failing, diff, {"failing": failing, "tensors": rows}


def fixture_row(model: str, directory: Path, device, dtype, tp: int) -> dict:
    run = functools.partial(verify, model, directory, device, runtime.dtype_name(dtype), tp=tp)
    return timed_row(f"fixture {model}", "eager" if tp == 1 else f"eager tp={tp}", lambda: summary(run()))


def quant_row(model: str, directory: Path, device, dtype, scheme: str, tp: int = 1) -> dict:
    """The fixture through verify --quant `scheme`: quantized on its inputs (whole, then cut for `tp`), judged by
    the scheme's bound."""
    run = functools.partial(verify, model, directory, device, runtime.dtype_name(dtype), tp=tp, quant=scheme)
    mode = f"eager {scheme}" if tp == 1 else f"eager tp={tp} {scheme}"
    return timed_row(f"fixture {model}", mode, lambda: summary(run()))


def graph_row(model: str, directory: Path, device, dtype, scheme: str = "none") -> dict:
    """Each graph-mode entry point eval.bench compiles (the spec's benchmarks), graph mode against eager; with
    a `scheme`, of the fixture's model quantized on its inputs (the int8 ops inside the device's graph)."""
    def run():
        entry = registry.get_entry(model)
        checkpoint = find_checkpoints(directory)[0]
        built = (registry.build_model(entry, checkpoint) if scheme == "none" else
                 quantized_model(entry, checkpoint, scheme, fixture_inputs(entry, directory), parallel.SINGLE))
        built = runtime.prepare_model(built, device, dtype)
        config = built.config
        atol, rtol = DEFAULT_TOLERANCE[dtype]
        rows = []
        for name, bench in entry.benchmarks.items():
            if not bench.graph:
                continue
            inputs, _ = bench.make_inputs(config, GRAPH_BATCH, GRAPH_SEQ_LEN, device)
            inputs = tuple(runtime.to_model_input(t, device, dtype) for t in inputs)
            part = bench.timed_part(built)
            with torch.no_grad():
                eager, graphed = part(*inputs), runtime.compile_model(part, device)(*inputs)
            rows.append(compare(name or model, graphed, eager, atol, rtol))
        if not rows:
            raise UserError(f"{entry.name} has no graph-mode benchmark part (its spec's `benchmarks`).")
        return summary(rows)
    return timed_row(f"fixture {model}", "graph" if scheme == "none" else f"graph {scheme}", run)


def kernel_rows(plan, device, dtype) -> list[dict]:
    atol, rtol = DEFAULT_TOLERANCE[dtype]
    try:
        cases = kernel_cases(plan, device, dtype)
    except Exception as err:  # a backend that cannot even run is one failed row, not a crash
        failure = f"{type(err).__name__}: {err}"
        return [timed_row("kernels", "eager", lambda: (False, float("inf"), failure))]
    return [timed_row(f"kernel {name}", "vs eager math",
                      lambda ours=ours, ref=ref, name=name: summary([compare(name, ours, ref, atol, rtol)]))
            for name, ours, ref in cases]


def fixture_dirs(root: Path | None) -> dict[str, Path]:
    root = CHECKOUT_FIXTURES if root is None else Path(root)
    missing = [m for m in FIXTURE_MODELS if not (root / m / "outputs.safetensors").is_file()]
    if missing:
        raise UserError(f"no reference fixtures for {', '.join(missing)} under {root}: the fixtures live in the "
                        f"repository (tests/fixtures/reference), not in the installed package. Point "
                        f"{arg('fixtures')} at a checkout's tests/fixtures/reference.")
    return {m: root / m for m in FIXTURE_MODELS}


def describe(device, tp: int = 1) -> dict:
    """The environment, the dtype the checks run in and the kernel plan with its reasons."""
    plan = runtime.kernel_plan(device)
    return {**environment(device), "dtype": runtime.dtype_name(runtime.default_dtype(device)), "tp": tp,
            "int8": {scheme: unsupported_reason(scheme, plan) or "runs" for scheme in SCHEMES},
            "kernel_plan": {"attention": plan.attention, "gelu": plan.gelu, "add_layer_norm": plan.add_layer_norm,
                            "fused_ops": list(plan.fused_ops()), "reasons": [list(r) for r in plan.reasons]}}


def run_checks(device, tp: int, fixtures: dict[str, Path], graph_models) -> tuple[dict, list[dict]]:
    """(environment and plan, rows) for `device` in its default dtype."""
    facts, dtype, plan = describe(device, tp), runtime.default_dtype(device), runtime.kernel_plan(device)
    rows = []
    schemes = [scheme for scheme in SCHEMES if unsupported_reason(scheme, plan) is None]
    for model, directory in fixtures.items():
        rows.append(fixture_row(model, directory, device, dtype, 1))
        if tp > 1:
            rows.append(fixture_row(model, directory, device, dtype, tp))
        if model in graph_models and tp == 1:
            rows.append(graph_row(model, directory, device, dtype))
        rows += [quant_row(model, directory, device, dtype, scheme, t) for t in sorted({1, tp}) for scheme in schemes]
        if model in graph_models and tp == 1 and "w8a8" in schemes:
            rows.append(graph_row(model, directory, device, dtype, "w8a8"))
    rows += kernel_rows(plan, device, dtype)
    return facts, rows


def format_report(facts: dict, rows: list[dict]) -> str:
    lines = [f"{key}: {value}" for key, value in facts.items() if key != "kernel_plan"]
    plan = facts["kernel_plan"]
    lines.append(f"kernel plan: attention={plan['attention']} gelu={plan['gelu']} add_layer_norm={plan['add_layer_norm']}")
    lines += [f"  {op}: {why}" for op, why in plan["reasons"]]
    width = max(len(r["check"]) for r in rows)
    lines.append(f"\n{'check':<{width}}  {'mode':<23} {'result':<6} {'max diff':>10} {'seconds':>8}")
    for r in rows:
        failing = r["detail"].get("failing") if isinstance(r["detail"], dict) else r["detail"]
        why = f"  {failing}" if not r["ok"] and failing else ""
        lines.append(f"{r['check']:<{width}}  {r['mode']:<23} {'PASS' if r['ok'] else 'FAIL':<6} "
                     f"{r['max_abs_diff']:>10.2e} {r['seconds']:>8.2f}{why}")
    passed = sum(r["ok"] for r in rows)
    lines.append(f"doctor: {passed}/{len(rows)} checks passed")
    return "\n".join(lines)


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m npu_models.doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | npu[:N] | cuda[:N] | cpu (default auto)")
    parser.add_argument("--tp", type=int, default=1, help="also run every fixture split N ways "
                        "(under torchrun --nproc_per_node N)")
    parser.add_argument("--json", type=Path, help="write the environment, the plan and every row here")
    parser.add_argument("--fixtures", type=Path, help="the reference fixtures (default: the checkout's "
                        "tests/fixtures/reference)")
    parser.add_argument("--graph-all", action="store_true", help="graph mode for every fixture on the CPU too "
                        f"(default there: {', '.join(CPU_GRAPH_MODELS)}, as torch.compile is slow on a CPU)")
    args = parser.parse_args(argv)
    fixtures = fixture_dirs(args.fixtures)
    device = runtime.resolve_device(args.device)
    graph_models = CPU_GRAPH_MODELS if device.type == "cpu" and not args.graph_all else FIXTURE_MODELS
    facts, rows = run_checks(device, args.tp, fixtures, graph_models)
    if parallel.is_main_process():
        print(format_report(facts, rows))
        if args.json:
            args.json.write_text(json.dumps({"environment": facts, "rows": rows}, indent=1, default=str))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
