import argparse
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from npu_models import runtime
from tests.conftest import BERT_FIXTURE, FIXTURES
from tests.test_bert import padded_inputs, random_hf_model
from weights_tools import verify

transformers = pytest.importorskip("transformers")


def run_verify(directory):
    return subprocess.run([sys.executable, "-m", "weights_tools.verify", "--model", "bert", str(directory)],
                          capture_output=True, text=True, timeout=300)


def test_verify_cli_passes_on_the_reference_fixture():
    result = run_verify(BERT_FIXTURE)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert sum(" PASS" in line for line in lines) == 5
    assert lines[-1].startswith("verify: 5/5 tensors within tolerance, max abs diff ")


def make_fixture(directory, seed=11):
    """A fixture in the documented layout, with other sizes and another checkpoint directory name."""
    hf_model = random_hf_model(seed)
    hf_model.save_pretrained(directory / "some-other-name")
    input_ids, attention_mask, token_type_ids = padded_inputs(hf_model.config, length=9)
    with torch.no_grad():
        out = hf_model(input_ids, attention_mask, token_type_ids, output_hidden_states=True)
    save_file({"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids},
              str(directory / "inputs.safetensors"))
    outputs = {"logits": out.logits, "last_hidden_state": out.hidden_states[-1],
               "a_tensor_we_do_not_produce": torch.zeros(3)}
    save_file(outputs, str(directory / "outputs.safetensors"))
    return outputs


def test_verify_does_not_depend_on_fixture_sizes_or_names(tmp_path):
    make_fixture(tmp_path)
    result = run_verify(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: 2/2 tensors within tolerance" in result.stdout


def test_verify_fails_when_an_output_is_off_by_a_gelu_approximation_sized_error(tmp_path):
    outputs = make_fixture(tmp_path)
    outputs["logits"] = outputs["logits"] + 5e-5
    save_file(outputs, str(tmp_path / "outputs.safetensors"))
    result = run_verify(tmp_path)
    assert result.returncode == 1
    assert [line.split()[0] for line in result.stdout.splitlines() if "FAIL" in line] == ["logits"]
    assert "verify: 1/2 tensors within tolerance" in result.stdout


def test_verify_reports_missing_fixture_files(tmp_path):
    shutil.copytree(BERT_FIXTURE / "checkpoint", tmp_path / "checkpoint")
    result = run_verify(tmp_path)
    assert result.returncode == 2 and "has no inputs.safetensors" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("device, message", [
    ("cuda", "no cuda device is visible; check the driver installation or choose --device cpu."),
    ("npu", "needs the Ascend PyTorch adapter torch_npu"),
])
def test_verify_refuses_a_device_this_machine_lacks_before_reading_anything(tmp_path, capsys, no_accelerators, device,
                                                                          message):
    with pytest.raises(SystemExit) as info:
        verify.main(["--model", "bert", str(tmp_path), "--device", device])  # an empty directory: no fixture
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "inputs.safetensors" not in err


def test_find_checkpoints_ignores_fixture_files():
    assert verify.find_checkpoints(BERT_FIXTURE) == [BERT_FIXTURE / "checkpoint"]


def test_convert_refuses_to_overwrite_its_source(tmp_path, capsys):
    from weights_tools.convert import main
    shutil.copytree(BERT_FIXTURE / "checkpoint", tmp_path / "ckpt")
    with pytest.raises(SystemExit):
        main(["--model", "bert", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "ckpt")])
    assert "--out must differ from --checkpoint" in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "pytorch_model.bin").is_file()


@pytest.mark.parametrize("damage", ["overwritten start", "truncated"])
def test_a_damaged_bin_is_called_corrupt_and_never_advised_to_load_unsafely(tmp_path, damage):
    """A .bin whose first bytes were overwritten fails torch's weights-only unpickler as a pickle holding objects
    does; it is a broken file, and weights_only=False would neither help nor be safe advice."""
    from npu_models.errors import UserError
    from npu_models.checkpoints.io import read_state_dict

    data = bytearray((BERT_FIXTURE / "checkpoint" / "pytorch_model.bin").read_bytes())
    if damage == "overwritten start":
        data[:16] = bytes(16)
    else:
        data = data[: len(data) // 3]
    (tmp_path / "pytorch_model.bin").write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        read_state_dict(tmp_path / "pytorch_model.bin")
    message = str(info.value)
    assert "is not a readable checkpoint" in message and "corrupt or truncated" in message, message
    assert "weights_only" not in message and "beyond tensors" not in message


def test_pickled_objects_are_refused_not_executed(tmp_path):
    from npu_models.errors import UserError
    from npu_models.checkpoints.io import read_state_dict

    torch.save({"weight": torch.zeros(2), "hparams": argparse.Namespace(lr=0.1)}, tmp_path / "evil.bin")
    with pytest.raises(UserError, match="Python objects beyond tensors"):
        read_state_dict(tmp_path / "evil.bin")


@pytest.mark.parametrize("model, checkpoint", [("vit", "vit/checkpoint.npz"), ("blip", "blip/checkpoint.pth"),
                                               ("vilbert", "vilbert/model.tar.gz")])
def test_converted_directories_reproduce_the_official_checkpoint(tmp_path, model, checkpoint):
    import npu_models
    from weights_tools.convert import convert
    source = FIXTURES / "reference" / checkpoint
    out = convert(model, source, tmp_path / model)
    direct, converted = npu_models.load_model(model, source, device="cpu"), npu_models.load_model(out, device="cpu")
    assert converted.config == direct.config
    assert all(torch.equal(a, b) for a, b in zip(direct.state_dict().values(), converted.state_dict().values()))


def reversed_first_attention_output(monkeypatch):
    """A planted wrong layer: the first attention's output projection with its rows reversed (a layout bug), in
    every model verify builds."""
    from npu_models import registry
    from npu_models.layers.attention import Attention
    build = registry.build_model

    def planted(*args, **kwargs):
        model = build(*args, **kwargs)
        first = next(m for m in model.modules() if isinstance(m, Attention))
        with torch.no_grad():
            first.proj.weight.copy_(first.proj.weight.flip(0))
        return model
    monkeypatch.setattr(registry, "build_model", planted)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model", ["bert", "vit", "vlmo", "blip", "vilbert"])
def test_low_precision_passes_every_fixture_and_fails_a_planted_wrong_layer(model, dtype, monkeypatch):
    """bf16/fp16 judged per tensor (cosine, relative L2, max error over the tensor's scale, bounds from the dtype's
    epsilon and the model's depth): every correct run passes, and one layer with its output rows reversed fails,
    on every fixture and in both dtypes."""
    rows = verify.verify(model, FIXTURES / "reference" / model, dtype=runtime.dtype_name(dtype))
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    floats = [r for r in rows if "cosine" in r]
    assert floats and all(r["tolerance"].startswith("cos>=") for r in floats)
    # it really ran in low precision: the outputs are off the fp32 reference by more than fp32 rounding
    assert max(r["relative_l2"] for r in floats) > 1e-4
    reversed_first_attention_output(monkeypatch)
    planted = verify.verify(model, FIXTURES / "reference" / model, dtype=runtime.dtype_name(dtype))
    assert not all(r["ok"] for r in planted)


def test_verify_cli_prints_the_accuracy_metrics_per_tensor_and_takes_explicit_tolerances(capsys):
    assert verify.main(["--model", "bert", str(BERT_FIXTURE), "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "cos>=" in out and "relL2 " in out and "max/|ref| " in out and "lowest cos" in out
    # explicit tolerances keep the element-wise judgement
    assert verify.main(["--model", "bert", str(BERT_FIXTURE), "--dtype", "bf16", "--atol", "1e-6", "--rtol", "0"]) == 1
    assert "1e-06 + 0*|ref|" in capsys.readouterr().out
