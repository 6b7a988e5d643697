"""python -m weights_tools.quantize: calibration through the model's own eval command on the first examples
of --calib, a directory every eval command runs, and requests refused before the model is read."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval import imagenet, retrieval, sst2, vqa
from npu_models.errors import UserError
from tests.conftest import BERT_FIXTURE, FIXTURES
from tests.imagenet_layout import make_flat_layout
from weights_tools.quantize import CalibrationWarning, quantize
from weights_tools.quantize import main as quantize_main

REFERENCE = FIXTURES / "reference"
SST2_SAMPLE = Path(__file__).parent.parent / "eval" / "samples" / "sst2" / "dev.tsv"
# (model, float checkpoint, data its eval command reads, the command, extra flags)
CASES = {
    "bert": ("bert", BERT_FIXTURE / "checkpoint", SST2_SAMPLE, sst2, []),
    "vlmo": ("vlmo", REFERENCE / "vqa-vlmo" / "vqa_checkpoint.pt", REFERENCE / "vqa-vlmo", vqa, []),
    "blip": ("blip", REFERENCE / "retrieval-blip" / "checkpoint.pth", REFERENCE / "retrieval-blip", retrieval, []),
    "vilbert": ("vilbert", REFERENCE / "vqa-vilbert" / "model.tar.gz", REFERENCE / "vqa-vilbert", vqa, []),
}


def run_quantize(out, model, checkpoint, scheme="w8a8", calib=None, samples=4, *extra):
    argv = ["--model", model, "--checkpoint", str(checkpoint), "--scheme", scheme, "--out", str(out), *extra]
    if calib is not None:
        argv += ["--calib", str(calib), "--calib-samples", str(samples)]
    assert quantize_main(argv) == 0
    return out


@pytest.mark.parametrize("case", [*CASES, "vit"])
def test_every_eval_command_runs_a_quantized_checkpoint_and_records_its_scheme(tmp_path, case):
    if case == "vit":  # ImageNet's layout is made here: six synthetic images with their devkit files
        data = tmp_path / "val"
        make_flat_layout(data, [0, 1, 2, 3, 4, 5])
        CASES["vit"] = ("vit", REFERENCE / "vit" / "checkpoint_timm.safetensors", data, imagenet, ["--num-workers", "0"])
    model, checkpoint, data, command, extra = CASES.pop("vit") if case == "vit" else CASES[case]
    out = run_quantize(tmp_path / "quantized", model, checkpoint, "w8a8", data, 4)
    config = json.loads((out / "config.json").read_text())
    assert config["quant"]["scheme"] == "w8a8" and config["quant"]["calibration"]["samples"] == 4
    assert load_file(str(out / "model.safetensors"))  # the layout itself: tests/test_quant_checkpoint.py
    results = tmp_path / "results.json"
    command.main(["--model", model, "--checkpoint", str(out), "--data", str(data), "--device", "cpu",
                  "--output", str(results), *extra])
    assert json.loads(results.read_text())["quant"] == "w8a8"


def test_calibration_reads_the_first_examples_through_the_eval_commands_reader(tmp_path, monkeypatch):
    """The sentences sst2's reader returns, cut to --calib-samples, are what the model saw: a different count
    gives other ranges, and the reader is the command's own."""
    read = []
    original = sst2.read_sst2
    monkeypatch.setattr(sst2, "read_sst2", lambda path: read.append(Path(path)) or original(path))
    seen = []
    original_classify = sst2.classify
    monkeypatch.setattr(sst2, "classify", lambda loop, model, todo, *a: seen.append(len(todo)) or original_classify(
        loop, model, todo, *a))
    scales = {}
    for samples in (1, 40):
        out = run_quantize(tmp_path / f"q{samples}", "bert", BERT_FIXTURE / "checkpoint", "w8a8", SST2_SAMPLE, samples)
        state = load_file(str(out / "model.safetensors"))
        scales[samples] = torch.stack([state[k].float() for k in sorted(state) if k.endswith(".input_scale")])
    assert read == [SST2_SAMPLE, SST2_SAMPLE] and seen == [1, 40]
    assert not torch.equal(scales[1], scales[40])  # one sentence's ranges are not forty's


def test_calibration_records_the_examples_it_used_and_warns_when_the_data_held_fewer(tmp_path, capsys):
    """--calib-samples 256 on the 40 sentences of the sample: 40 are used, 40 are recorded, and the user is told
    in one line (no source line of ours), not left to believe 256 were."""
    out = run_quantize(tmp_path / "q", "bert", BERT_FIXTURE / "checkpoint", "w8a8", SST2_SAMPLE, 256)
    assert json.loads((out / "config.json").read_text())["quant"]["calibration"]["samples"] == 40
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "calibration" in line or "warn" in line] == [
        f"warning: {SST2_SAMPLE} holds 40 calibration examples, fewer than the 256 asked for (--calib-samples); "
        "calibrated on those 40."], err
    with pytest.warns(CalibrationWarning, match=r"fewer than the 41 asked for \(calib_samples=...\)"):
        quantize("bert", BERT_FIXTURE / "checkpoint", "w8a8", tmp_path / "python", SST2_SAMPLE, 41)


def test_schemes_without_calibration_need_no_data(tmp_path):
    out = run_quantize(tmp_path / "w8a16", "bert", BERT_FIXTURE / "checkpoint", "w8a16")
    config = json.loads((out / "config.json").read_text())
    assert config["quant"] == {"scheme": "w8a16", "dtype": "float16"}
    assert (out / "vocab.txt").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--scheme", "w8a8"], ["w8a8 fixes each layer's activation range", "--calib"]),
    (["--scheme", "w4a8"], ["unknown --scheme w4a8", "w8a8, w8a8-dynamic, w8a16"]),
    (["--scheme", "w8a16", "--dtype", "int4"], ["unknown --dtype int4"]),
    (["--scheme", "w8a8", "--calib", "/nowhere/dev.tsv"], ["--calib /nowhere/dev.tsv does not exist"]),
    (["--scheme", "w8a8", "--calib", str(SST2_SAMPLE), "--calib-samples", "0"],
     ["--calib-samples 0: calibrate on at least one example"]),
    (["--scheme", "w8a16", "--out", str(BERT_FIXTURE / "checkpoint")], ["--out must differ from --checkpoint"]),
    (["--scheme", "w8a8", "--calib", "/nowhere/dev.tsv", "--checkpoint", "/nowhere/ckpt"],
     ["these paths do not exist: --checkpoint /nowhere/ckpt; --calib /nowhere/dev.tsv."]),
])
def test_bad_requests_are_refused_before_the_model_is_read(tmp_path, monkeypatch, capsys, argv, words):
    from npu_models import registry
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: pytest.fail("the model was read"))
    with pytest.raises(SystemExit) as exited:
        quantize_main(["--model", "bert", "--checkpoint", str(BERT_FIXTURE / "checkpoint"), "--out",
                       str(tmp_path / "out"), *argv])
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert all(w in message for w in words), message


def test_a_quantized_checkpoint_is_not_quantized_again(tmp_path):
    out = run_quantize(tmp_path / "once", "bert", BERT_FIXTURE / "checkpoint", "w8a16")
    with pytest.raises(UserError, match="quantized already"):
        from weights_tools.quantize import quantize
        quantize("bert", out, "w8a16", tmp_path / "twice")
