"""Int8 without a file (issue 21 item 5): `weights_tools.verify --quant S` quantizes each fixture's model on the
fly, calibrated on the fixture's inputs, and judges it by relative error (npu_models.verify.QUANT_TOLERANCE);
`eval.bench --quant S` times the quantized model beside the float one."""
import pytest

from kernels.quant_matmul import SCHEMES
from npu_models.layers.quant import QuantLinear
from npu_models.verify import QUANT_TOLERANCE
from tests.conftest import BERT_FIXTURE, FIXTURES
from weights_tools import verify

MODELS = ["bert", "vit", "blip", "vlmo", "vilbert"]


def test_every_scheme_has_a_tolerance():
    assert set(QUANT_TOLERANCE) == set(SCHEMES)


# VLMo's retrieval fixture never runs its joint layers' text/image experts, ViLBERT never runs its text layers
# after the last co-attention: calibration warns that those stay in float.
@pytest.mark.filterwarnings("ignore:.*never ran during calibration:UserWarning")
@pytest.mark.parametrize("model", MODELS)
def test_verify_quant_w8a8_passes_every_shipped_fixture(model, capsys):
    assert verify.main(["--model", model, str(FIXTURES / "reference" / model), "--quant", "w8a8"]) == 0
    out = capsys.readouterr().out
    assert f"{QUANT_TOLERANCE['w8a8']:g} * max|ref|" in out and "max relative diff" in out


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
    assert 1e-3 < max(r["relative_diff"] for r in rows) <= QUANT_TOLERANCE[scheme]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_verify_quant_fails_a_model_whose_weight_scales_are_off_by_2x(scheme, monkeypatch, capsys):
    original = QuantLinear.from_float

    def doubled(cls, *args, **kwargs):
        layer = original(*args, **kwargs)
        layer.weight_scale *= 2
        return layer

    monkeypatch.setattr(QuantLinear, "from_float", classmethod(doubled))
    assert verify.main(["--model", "bert", str(BERT_FIXTURE), "--quant", scheme]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_quant_fails_a_static_input_scale_off_by_2x(monkeypatch):
    """w8a8's calibrated activation scale, the one piece of state the other schemes lack."""
    original = QuantLinear.from_float

    def doubled(cls, *args, **kwargs):
        layer = original(*args, **kwargs)
        layer.input_scale *= 2
        return layer

    monkeypatch.setattr(QuantLinear, "from_float", classmethod(doubled))
    assert not all(r["ok"] for r in verify.verify("bert", BERT_FIXTURE, quant="w8a8"))


@pytest.mark.parametrize("args, message", [(["--quant", "int4"], "unknown --quant 'int4'"),
                                           (["--quant", "w8a8", "--tp", "2"], "tp=1 only")])
def test_verify_refuses_an_unknown_scheme_and_quant_under_tp(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        verify.main(["--model", "bert", str(BERT_FIXTURE), *args])
    assert info.value.code == 2 and message in capsys.readouterr().err
