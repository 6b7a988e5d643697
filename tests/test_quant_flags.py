"""Int8 without a file (issue 21 item 5): `weights_tools.verify --quant S` quantizes each fixture's model on the
fly, calibrated on the fixture's inputs, and judges it by relative error (npu_models.verify.QUANT_TOLERANCE);
`eval.bench --quant S` times the quantized model beside the float one."""
import json

import pytest

from eval.bench import cli, report
from eval.bench.report import COLUMNS
from npu_kernels.quant_matmul import SCHEMES
from npu_models.layers.quant import QuantLinear
from npu_models.verify import QUANT_TOLERANCE
from tests.conftest import BERT_FIXTURE, FIXTURES
from weights_tools import verify

MODELS = ["bert", "vit", "blip", "vlmo", "vilbert"]


def test_every_scheme_has_a_tolerance():
    assert set(QUANT_TOLERANCE) == set(SCHEMES)


# VLMo's retrieval fixture never runs its joint layers' text/image experts, ViLBERT never runs its text layers
# after the last co-attention: those stay in float.
@pytest.mark.parametrize("model", MODELS)
def test_verify_quant_w8a8_passes_every_shipped_fixture(model, capsys):
    """...and says nothing of the layers the fixture never runs (they stay float; no output compared passes
    them): the doctor runs this for every fixture, and its report used to open with those warnings."""
    assert verify.main(["--model", model, str(FIXTURES / "reference" / model), "--quant", "w8a8"]) == 0
    captured = capsys.readouterr()
    assert f"{QUANT_TOLERANCE['w8a8']:g} * max|ref|" in captured.out and "max relative diff" in captured.out
    assert "warning" not in captured.err.lower() and "never ran during calibration" not in captured.err


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_quant_really_quantizes(scheme, monkeypatch):
    """The relative errors are those of int8 (not 0: the model ran quantized) and within the scheme's bound."""
    made = []
    original = QuantLinear.from_float
    monkeypatch.setattr(QuantLinear, "from_float", classmethod(lambda cls, *a, **k: made.append(original(*a, **k))
                                                               or made[-1]))
    rows = verify.verify("bert", BERT_FIXTURE, quant=scheme)
    assert len(made) == 3 * 4  # the fixture's three layers: q/k/v, proj, fc1, fc2
    assert all(r["ok"] for r in rows)
    worst = max(r["relative_diff"] for r in rows)
    assert 1e-3 < worst <= QUANT_TOLERANCE[scheme]
    assert not all(r["ok"] for r in verify.verify("bert", BERT_FIXTURE, quant=scheme, relative=worst / 2))


def double_on_quantizing(monkeypatch, attribute: str) -> None:
    """Plant a bug: every QuantLinear made from now on has its `attribute` (a scale) doubled."""
    original = QuantLinear.from_float

    def doubled(cls, *args, **kwargs):
        layer = original(*args, **kwargs)
        setattr(layer, attribute, getattr(layer, attribute) * 2)
        return layer

    monkeypatch.setattr(QuantLinear, "from_float", classmethod(doubled))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_quant_fails_a_model_whose_weight_scales_are_off_by_2x(scheme, monkeypatch, capsys):
    double_on_quantizing(monkeypatch, "weight_scale")
    assert verify.main(["--model", "bert", str(BERT_FIXTURE), "--quant", scheme]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_quant_fails_a_static_input_scale_off_by_2x(monkeypatch):
    """w8a8's calibrated activation scale, the one piece of state the other schemes lack."""
    double_on_quantizing(monkeypatch, "input_scale")
    assert not all(r["ok"] for r in verify.verify("bert", BERT_FIXTURE, quant="w8a8"))


@pytest.mark.parametrize("args, message", [(["--quant", "int4"], "unknown --quant int4"),
                                           (["--quant", "w8a8", "--tp", "2"], "--tp 2 needs 2 processes: run under torchrun"),
                                           (["--relative", "0.1"], "give --quant too")])
def test_verify_refuses_an_unknown_scheme_and_quant_under_tp_without_torchrun(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        verify.main(["--model", "bert", str(BERT_FIXTURE), *args])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_bench_times_float_and_int8_side_by_side(tmp_path, capsys, monkeypatch):
    """--quant none,w8a8 on the BERT fixture: a row per quantization, the int8 one from a model whose encoder
    Linears are QuantLinears that really ran (calibrated on the bench's inputs), the peer's row float."""
    pytest.importorskip("transformers")
    calls = []
    original = QuantLinear.forward
    monkeypatch.setattr(QuantLinear, "forward", lambda self, *a, **k: calls.append(self) or original(self, *a, **k))
    out = tmp_path / "bench.json"
    cli.main(["--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--device", "cpu", "--batch-sizes", "2",
              "--seq-len", "8", "--modes", "eager", "--warmup", "0", "--iters", "1", "--quant", "none,w8a8",
              "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["impl"], r["quant"]) for r in rows] == [("ours", "none"), ("ours", "w8a8"), ("peer", "none")]
    assert set(COLUMNS) <= set(rows[1])
    ours, int8, peer = rows
    # every encoder Linear of the fixture's 3 layers ran as a w8a8 QuantLinear (calibration covered them all)
    assert len({id(layer) for layer in calls}) == 3 * 4 and {layer.scheme for layer in calls} == {"w8a8"}
    assert 1e-4 < int8["max_abs_diff_vs_peer"] < 1 and peer["max_abs_diff_vs_peer"] < 1e-5
    assert int8["gflop_per_batch"] == pytest.approx(ours["gflop_per_batch"], rel=1e-3)  # int8 GEMMs counted too
    assert int8["param_mb_per_rank"] < ours["param_mb_per_rank"]  # int8 weights: a quarter of fp32's
    # each row against its own peak, both measured in this run: int8 GEMMs run on integer units, several times
    # the fp32 rate, so set against the fp32 matmul an int8 row read over 100%
    assert (ours["peak"], int8["peak"], peer["peak"]) == ("fp32 matmul", "int8 GEMM", "fp32 matmul")
    int8_peak = int8["tflops"] / int8["fraction_of_peak"]
    float_peak = ours["tflops"] / ours["fraction_of_peak"]
    assert int8_peak != pytest.approx(float_peak, rel=1e-6) and 0 < int8["fraction_of_peak"] < 1
    streamed = capsys.readouterr().out
    assert "quant" in streamed.splitlines()[streamed.splitlines().index("bert-base-cased-sst2") + 1]
    assert any(line.split()[:4] == ["ours", "eager", "idle", "w8a8"] for line in streamed.splitlines())
    assert "bert-base-cased-sst2: w8a8 / float, eager, idle, batch 2: " in streamed


def test_bench_markdown_table_shows_float_and_int8_against_the_peer():
    def row(impl, quant, rate):
        return {"model": "m", "impl": impl, "quant": quant, "mode": "eager", "load": "idle", "batch_size": 8, "seq_len": 128,
                "samples_per_second": rate, "latency_ms_p50": 1.0, "tflops": 1.0, "fraction_of_peak": 0.5,
                "ceiling_fraction_of_peak": 0.6, "fraction_of_ceiling": 0.83, "tp": 1,
                "device": "cpu", "dtype": "fp32", "date": "2026-12-01", "max_abs_diff_vs_peer": None}
    table = report.markdown_table([row("ours", "none", 10.0), row("ours", "w8a8", 25.0), row("peer", "none", 8.0)])
    assert "| m | ours | w8a8 | eager | idle | 8 |" in table
    assert "int8 rows against the int8 GEMM (torch._int_mm) measured in the same run" in table
    assert "| m | 8 | idle | none | eager, 10.0/s | eager, 8.0/s | 1.25x |" in table
    assert "| m | 8 | idle | w8a8 | eager, 25.0/s | eager, 8.0/s | 3.12x |" in table


@pytest.mark.parametrize("args, message", [(["--quant", "int4"], "--quant takes a comma list"),
                                           (["--quant", "w8a8", "--tp", "2"], "--tp 2 needs 2 processes: run under torchrun"),
                                           (["--quant", "w8a8", "--end-to-end"], "--end-to-end runs float")])
def test_bench_refuses_unknown_schemes_quant_with_end_to_end_and_tp_without_torchrun(args, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--device", "cpu", *args])
    assert exit.value.code == 2 and message in capsys.readouterr().err
