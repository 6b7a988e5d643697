"""Tensor parallelism of quantized models: every family's small model (tests/test_quant_models.py's), quantized
whole with each scheme (w8a8 calibrated), then cut for tp=2 over two gloo processes, computes what the same
quantized model computes in one process; and two planted bugs of the row-parallel layers are caught. The
commands that quantize on the fly (`weights_tools.verify --quant`, `eval.bench --quant`) do the same under --tp:
their tp=2 figures are their tp=1 figures, and quantizing after the cut is caught.

The int32 products are exact per rank, so w8a8 and w8a16 differ from tp=1 by the float rounding of the sum
(relative error measured here: at most 2.3e-7); w8a8-dynamic's row-parallel ranks quantize their own columns
with their own per-token scales, so it differs by quantization noise (measured: at most 1.1e-3).
"""
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp

from eval.bench import cli
from npu_kernels.quant_matmul import SCHEMES
from npu_models import parallel, registry, runtime, verify
from npu_models.errors import UserError
from npu_models.layers.quant import QuantLinear
from npu_models.parallel import RowParallelQuantLinear
from npu_models.quantization import calibrate, quantize_model
from tests.conftest import BERT_FIXTURE
from tests.test_ascend import CASES
from tests.test_parallel import ROOT, free_port
from tests.test_quant_models import EXPECTED_WARNING, build, run_method
from weights_tools.verify import main as verify_command

TOLERANCE = {"w8a8": 2e-6, "w8a16": 2e-6, "w8a8-dynamic": 5e-3}  # relative error (norm) against tp=1


def offset_correction_on_full_rows():
    """Planted bug: every rank's quant_bias corrects the offset with the whole weight's row sums."""
    init, prepare = RowParallelQuantLinear.__init__, RowParallelQuantLinear.prepare_for_inference

    def keep_full_rows(self, layer, columns, tp):
        init(self, layer, columns, tp)
        self.full_rowsum = layer.weight.to(torch.int64).sum(dim=1)

    def full_rows(self):
        prepare(self)
        extra = self.input_offset.to(torch.int64) * (self.full_rowsum - self.weight.to(torch.int64).sum(dim=1))
        self.quant_bias = (self.quant_bias.to(torch.int64) - extra).to(torch.int32)

    return [mock.patch.object(RowParallelQuantLinear, "__init__", keep_full_rows),
            mock.patch.object(RowParallelQuantLinear, "prepare_for_inference", full_rows)]


def bias_on_every_rank():
    """Planted bug: every rank adds the bias before the all-reduce."""
    def forward(self, x, rows=None):
        return parallel.all_reduce(QuantLinear.forward(self, x) + self.bias, self.tp)
    return [mock.patch.object(RowParallelQuantLinear, "forward", forward)]


PLANTED = {"offset_correction_on_full_rows": offset_correction_on_full_rows, "bias_on_every_rank": bias_on_every_rank}


@contextlib.contextmanager
def planted(bug):
    with contextlib.ExitStack() as stack:
        for patch in [] if bug is None else PLANTED[bug]():
            stack.enter_context(patch)
        yield


def plan_of(model, name):
    return registry.entry_for_config(registry.get_entry(name.split("-")[0]), model.config).tp_plan


def outputs(model, batches):
    with torch.no_grad():
        return [run_method(model, batch) for batch in batches]


def worker(rank: int, port: int, cases: list, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tp = parallel.init_tensor_parallel(2, "cpu")
    results = {}
    for bug in (None, *PLANTED):
        with planted(bug):
            for name, scheme, model, batches in cases:
                if bug is not None and (name, scheme) != ("bert", "w8a8"):
                    continue
                split = parallel.apply_plan(copy.deepcopy(model), plan_of(model, name), tp)
                split = runtime.prepare_model(split, torch.device("cpu"), torch.float32)
                layers = {path: (type(module).__name__, tuple(module.weight.shape)) for path, module in
                          split.named_modules() if isinstance(module, (QuantLinear, torch.nn.Linear))}
                results[bug, name, scheme] = outputs(split, batches), layers
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    parallel.release_process_groups()


@torch.no_grad()
def with_biases(model):
    """init_weights leaves biases at zero: a bias added twice, or never, must show."""
    generator = torch.Generator().manual_seed(2)
    for name, param in model.named_parameters():
        if name.endswith("bias") and "norm" not in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def quantized_cases():
    cases = []
    for name in CASES:
        for scheme in SCHEMES:
            torch.manual_seed(0)  # the cases' inputs
            model, batches = build(name)
            with_biases(model)
            calibration = calibrate(model, batches, forward=run_method) if scheme == "w8a8" else None
            cases.append((name, scheme, quantize_model(model, scheme, calibration), batches))
    return cases


def relative_error(found, expected):
    return max(((f - e).norm() / e.norm()).item() for f, e in zip(found, expected))


@pytest.mark.filterwarnings(EXPECTED_WARNING)
def test_quantized_models_cut_for_tp2_compute_what_tp1_computes(tmp_path):
    cases = quantized_cases()
    mp.spawn(worker, args=(free_port(), cases, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(2)]
    errors = {}
    for name, scheme, model, batches in cases:
        whole = runtime.prepare_model(copy.deepcopy(model), torch.device("cpu"), torch.float32)
        expected = outputs(whole, batches)
        (found, layers), (found_1, layers_1) = ranks[0][None, name, scheme], ranks[1][None, name, scheme]
        for a, b in zip(found, found_1):  # the all-reduce hands both ranks the same sums
            assert torch.equal(a, b), (name, scheme)
        errors[name, scheme] = relative_error(found, expected)
        assert errors[name, scheme] < TOLERANCE[scheme], (name, scheme, errors[name, scheme])
        # every quantized layer is cut as a quantized layer: its rows (q/k/v, fc1) or columns (proj, fc2) shared
        for path, module in whole.named_modules():
            if isinstance(module, QuantLinear):
                (kind, shape), (kind_1, shape_1) = layers[path], layers_1[path]
                row_parallel = path.endswith(("proj", "fc2"))
                assert kind == kind_1 == ("RowParallelQuantLinear" if row_parallel else "QuantLinear"), path
                cut, kept = (1, 0) if row_parallel else (0, 1)
                assert shape[kept] == shape_1[kept] == module.weight.shape[kept], path
                assert 0 < shape[cut] < module.weight.shape[cut] == shape[cut] + shape_1[cut], path
    print({key: f"{error:.1e}" for key, error in errors.items()})  # the measured figures the docstring gives
    name, scheme, model, batches = next(case for case in cases if case[:2] == ("bert", "w8a8"))
    expected = outputs(runtime.prepare_model(copy.deepcopy(model), torch.device("cpu"), torch.float32), batches)
    for bug in PLANTED:
        error = relative_error(ranks[0][bug, name, scheme][0], expected)
        print(bug, f"{error:.1e}")
        assert error > 100 * TOLERANCE[scheme], bug


def test_the_offset_correction_is_shared_by_the_ranks_columns():
    """w8a8's quant_bias of the parts (no bias: it is added after the all-reduce) sum to the whole layer's
    offset correction, and every part keeps the whole input's scale and offset."""
    model, batches = build("bert")
    quantize_model(with_biases(model), "w8a8", calibrate(model, batches, forward=run_method))
    layer = model.blocks[0].mlp.fc2
    assert layer.input_offset.item() != 0  # a GELU output: the correction is not zero
    whole = copy.deepcopy(layer)
    whole.bias = None
    whole.prepare_for_inference()
    units = torch.arange(layer.in_features)
    parts = [RowParallelQuantLinear(layer, units[parallel.TensorParallel(r, 2).share(layer.in_features)],
                                    parallel.TensorParallel(r, 2)) for r in range(2)]
    for part in parts:
        part.prepare_for_inference()
        assert torch.equal(part.input_scale, layer.input_scale) and torch.equal(part.input_offset, layer.input_offset)
    assert torch.equal(sum(part.quant_bias.to(torch.int64) for part in parts), whole.quant_bias.to(torch.int64))


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_a_layer_the_plan_cannot_cut_is_refused_by_name():
    """A foreign quantized module (torch.ao's) is not copied into a float Linear: it is refused, by path."""
    model, _ = build("bert")
    model.blocks[0].mlp.fc1 = torch.ao.nn.quantized.dynamic.Linear(32, 37)
    with pytest.raises(UserError, match=r"blocks\.0\.mlp\.fc1 is a torch\.ao\..*Linear, which tensor parallelism "
                                        r"cannot cut"):
        parallel.apply_plan(model, plan_of(model, "bert"), parallel.TensorParallel(0, 2))


def test_a_model_cut_for_tensor_parallelism_is_neither_calibrated_nor_quantized():
    """Its row-parallel layers are no Linears any more: they would stay float, or see a share of their input."""
    model, batches = build("bert")
    parallel.apply_plan(model, plan_of(model, "bert"), parallel.TensorParallel(0, 2))
    with pytest.raises(UserError, match="cut for tensor parallelism: calibrate and quantize the whole model"):
        calibrate(model, batches, forward=run_method)
    with pytest.raises(UserError, match="cut for tensor parallelism"):
        quantize_model(model, "w8a16")


# ---- the commands: weights_tools.verify --quant and eval.bench --quant under --tp ---------------------------


def calibrated_after_the_cut(tp):
    """Planted bug: verify builds the model cut for `tp`, then calibrates and quantizes it (the refusal of a cut
    model lifted): the row-parallel layers, no Linears any more, stay float."""
    build_model, cut_model = registry.build_model, registry.cut_model
    built_cut = lambda entry, checkpoint, **_: build_model(entry, checkpoint, tp=tp)  # noqa: E731
    cut_once = lambda entry, model, tp: model if hasattr(model, "tensor_parallel") else cut_model(entry, model, tp)  # noqa: E731
    return [mock.patch.object(registry, "build_model", built_cut), mock.patch.object(registry, "cut_model", cut_once),
            mock.patch.object(parallel, "is_cut", lambda model: False)]


def calibrated_on_each_ranks_share(tp):
    """Planted bug: each rank calibrates on its own share of the fixture's examples, so the ranks cut different
    quantized models (their row-parallel parts quantize with different activation scales)."""
    quantized_model = verify.quantized_model

    def own_share(entry, checkpoint, scheme, inputs, tp):
        return quantized_model(entry, checkpoint, scheme, {k: v[tp.rank::tp.size] for k, v in inputs.items()}, tp)
    return [mock.patch.object(verify, "quantized_model", own_share)]


COMMAND_BUGS = {"calibrated_after_the_cut": calibrated_after_the_cut,
                "calibrated_on_each_ranks_share": calibrated_on_each_ranks_share}


def verify_worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the command, as a user runs it under torchrun
        status = verify_command(["--model", "bert", str(BERT_FIXTURE), "--quant", "w8a8", "--tp", "2"])
    results = {"status": status, "printed": printed.getvalue(), None: verify.verify("bert", BERT_FIXTURE, tp=2,
                                                                                      quant="w8a8")}
    tp = parallel.init_tensor_parallel(2, "cpu")
    for bug, patches in COMMAND_BUGS.items():
        with contextlib.ExitStack() as stack:
            for patch in patches(tp):
                stack.enter_context(patch)
            results[bug] = verify.verify("bert", BERT_FIXTURE, tp=2, quant="w8a8")
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    parallel.release_process_groups()


def largest_difference(rows, expected):
    """The largest change of a row's figures (max abs diff, relative diff) against the same row of `expected`."""
    assert [r["name"] for r in rows] == [r["name"] for r in expected]
    return max(abs(r[key] - e[key]) for r, e in zip(rows, expected) for key in ("max_abs_diff", "relative_diff"))


def test_verify_quant_w8a8_under_tp2_passes_and_equals_tp1(tmp_path):
    """`weights_tools.verify --quant w8a8 --tp 2` on two gloo ranks: every rank quantizes the whole model on the
    fixture's inputs, then cuts it, and passes; both ranks' rows (the full outputs) are the tp=1 run's up to float
    summation order (measured: identical), and the planted bugs move them (measured: 3.6e-2 after the cut, 6.1e-2
    on each rank's share)."""
    mp.spawn(verify_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{rank}.pt", weights_only=False) for rank in range(2)]
    assert [r["status"] for r in ranks] == [0, 0]
    summary = [line for r in ranks for line in r["printed"].splitlines() if line.startswith("verify:")]
    assert len(summary) == 1 and summary[0].startswith("verify: 5/5 tensors within tolerance")  # rank 0 reports
    expected = verify.verify("bert", BERT_FIXTURE, quant="w8a8")
    for rank in ranks:
        assert all(r["ok"] for r in rank[None])
        error = largest_difference(rank[None], expected)
        print(f"tp=2 against tp=1 {error:.1e}")  # the measured figure the docstring gives
        assert error < 1e-6, error
    for bug in COMMAND_BUGS:
        error = largest_difference(ranks[0][bug], expected)
        print(bug, f"{error:.1e}")
        assert error > 1e-4, bug


def test_bench_quant_w8a8_under_tp2_times_the_cut_int8_model(tmp_path):
    """`eval.bench --quant none,w8a8 --tp 2` on the BERT fixture: beside the float rows (split and whole), an int8
    row at tp=2 holding each rank's share, whose output against the whole peer is the tp=1 int8 row's up to float
    summation order (measured: 5.8e-2 both, 4.8e-7 apart; calibrating after the cut made it 4.6e-2)."""
    pytest.importorskip("transformers")
    args = ["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu", "--batch-sizes", "2",
            "--seq-len", "16", "--modes", "eager", "--warmup", "0", "--iters", "1"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "eval.bench", *args, "--quant", "none,w8a8", "--tp", "2",
                             "--json", str(tmp_path / "tp2.json")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, whole, int8, peer = json.loads((tmp_path / "tp2.json").read_text())
    assert [(r["impl"], r["quant"], r["tp"]) for r in (ours, whole, int8, peer)] == [
        ("ours", "none", 2), ("ours", "none", 1), ("ours", "w8a8", 2), ("peer", "none", 1)]
    cli.main([*args, "--quant", "w8a8", "--json", str(tmp_path / "tp1.json")])
    int8_whole, _ = json.loads((tmp_path / "tp1.json").read_text())
    assert (int8_whole["quant"], int8_whole["tp"]) == ("w8a8", 1)
    assert int8["max_abs_diff_vs_peer"] > 1e-4  # int8, not float
    print(f'int8 diff vs peer: tp=2 {int8["max_abs_diff_vs_peer"]!r}, tp=1 {int8_whole["max_abs_diff_vs_peer"]!r}')
    # the same int8 model (summation order aside) against the same peer
    assert int8["max_abs_diff_vs_peer"] == pytest.approx(int8_whole["max_abs_diff_vs_peer"], abs=1e-5)
    assert 0.5 * int8_whole["param_mb_per_rank"] < int8["param_mb_per_rank"] < 0.75 * int8_whole["param_mb_per_rank"]
