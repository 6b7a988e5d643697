"""Load-time settings on Ascend (runtime.settings), through the torch_npu stand-in: binary kernels, Linear
weights in FRACTAL_NZ on the 310P (every rank its own share), and the one report of them."""
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import npu_models
from npu_models import parallel, registry, runtime
from npu_models.models.bert.model import Bert, BertConfig
from npu_models.errors import UserError
from npu_models.runtime import settings as settings_module
from tests.conftest import BERT_FIXTURE
from tests.npu_standin import FORMAT_FRACTAL_NZ, FORMAT_ND, NPU0


def small_bert():
    config = BertConfig(vocab_size=99, embed_dim=32, depth=2, num_heads=2, mlp_dim=40, max_positions=16)
    return Bert(config).init_weights(seed=1).half().eval().requires_grad_(False)


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {name: module.weight for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, parallel.RowParallelLinear))}


def test_no_settings_off_ascend():
    assert runtime.device_settings(torch.device("cpu")) == {}
    assert runtime.device_settings(torch.device("cuda", 0)) == {}
    model = small_bert()
    assert runtime.apply_device_settings(model, torch.device("cpu")) is model


@pytest.mark.parametrize("chip, nz", [("Ascend310P3", True), ("Ascend910B2", False)])
def test_binary_kernels_everywhere_and_nz_weights_on_310p_only(ascend_chip, monkeypatch, chip, nz):
    monkeypatch.delenv("NPU_MODELS_JIT_COMPILE", raising=False)
    monkeypatch.delenv("NPU_MODELS_NZ_WEIGHTS", raising=False)
    monkeypatch.setenv("PYTORCH_NPU_ALLOC_CONF", "expandable_segments:True")
    standin = ascend_chip(chip)
    expected = {"jit_compile": False, "nz_weights": nz, "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True"}
    assert runtime.device_settings(NPU0) == expected
    model = small_bert()
    ids = torch.randint(1, 99, (2, 7))
    before = model(ids, torch.ones_like(ids), torch.zeros_like(ids))
    runtime.apply_device_settings(model, NPU0)
    assert standin.jit_compile is False
    weights = linear_weights(model)
    assert len(weights) == 2 * 4 + 2  # qkv, proj, fc1, fc2 per layer; pooler, classifier
    assert {name: standin.npu_format(w) for name, w in weights.items()} == {
        name: FORMAT_FRACTAL_NZ if nz else FORMAT_ND for name in weights}
    others = [p for p in model.parameters() if all(p is not w for w in weights.values())]
    assert others and all(standin.npu_format(p) == FORMAT_ND for p in others)  # embeddings, norms, biases
    torch.testing.assert_close(model(ids, torch.ones_like(ids), torch.zeros_like(ids)), before, rtol=0, atol=0)
    described = runtime.device_description(NPU0)
    assert "Ascend" in described and f"jit_compile=False, nz_weights={nz}, PYTORCH_NPU_ALLOC_CONF=" in described


@pytest.mark.parametrize("variable, value, key, expected", [
    ("NPU_MODELS_JIT_COMPILE", "1", "jit_compile", True), ("NPU_MODELS_JIT_COMPILE", "0", "jit_compile", False),
    ("NPU_MODELS_NZ_WEIGHTS", "0", "nz_weights", False), ("NPU_MODELS_NZ_WEIGHTS", "on", "nz_weights", True),
])
def test_environment_switches(ascend_chip, monkeypatch, variable, value, key, expected):
    standin = ascend_chip("Ascend310P3")
    monkeypatch.setenv(variable, value)
    assert runtime.device_settings(NPU0)[key] is expected
    model = runtime.apply_device_settings(small_bert(), NPU0)
    if key == "jit_compile":
        assert standin.jit_compile is expected
    else:
        assert {standin.npu_format(w) for w in linear_weights(model).values()} == {
            FORMAT_FRACTAL_NZ if expected else FORMAT_ND}


def test_a_switch_that_is_not_on_or_off_is_refused_by_name(ascend_chip, monkeypatch):
    ascend_chip("Ascend310P3")
    monkeypatch.setenv("NPU_MODELS_NZ_WEIGHTS", "maybe")
    with pytest.raises(UserError, match=r"NPU_MODELS_NZ_WEIGHTS='maybe' is not an on/off switch: set it to 1 or 0"):
        runtime.device_settings(NPU0)


def test_each_rank_casts_its_own_share_after_the_tp_cut(ascend_chip):
    standin = ascend_chip("Ascend310P3")
    whole = small_bert()
    shapes = {name: w.shape for name, w in linear_weights(whole).items()}
    share = parallel.apply_plan(small_bert(), registry.get_entry("bert").tp_plan, parallel.TensorParallel(1, 2))
    runtime.apply_device_settings(share, NPU0)
    weights = linear_weights(share)
    assert all(standin.npu_format(w) == FORMAT_FRACTAL_NZ for w in weights.values())
    split = {name for name in weights if name.endswith(("qkv", "proj", "fc1", "fc2"))}
    assert len(split) == 2 * 4
    for name, weight in weights.items():  # the cast tensors are the rank's halves, not the whole layers
        halved = [size // 2 if name in split and dim == (1 if name.endswith(("proj", "fc2")) else 0) else size
                  for dim, size in enumerate(shapes[name])]
        assert list(weight.shape) == halved, name


def test_load_model_applies_the_settings_to_the_loaded_weights(ascend_chip, monkeypatch):
    """The production path: load_model -> prepare_model -> the settings, after the checkpoint is read (and
    cut). The CPU is given the 310P's settings: the stand-in's ops run on CPU tensors."""
    standin = ascend_chip("Ascend310P3")
    monkeypatch.setattr(settings_module, "device_settings",
                        lambda device: {"jit_compile": False, "nz_weights": True, "PYTORCH_NPU_ALLOC_CONF": None})
    model = npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu")
    assert standin.jit_compile is False
    assert all(standin.npu_format(w) == FORMAT_FRACTAL_NZ for w in linear_weights(model).values())
    inputs = load_file(str(BERT_FIXTURE / "inputs.safetensors"))
    expected = load_file(str(BERT_FIXTURE / "outputs.safetensors"))["logits"]
    with torch.no_grad():
        logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_eval_results_record_and_show_the_settings(ascend_chip):
    from eval.options import run_metadata
    ascend_chip("Ascend310P3")
    args = SimpleNamespace(model="bert", checkpoint=None, graph=True, batch_size=4)
    metadata = run_metadata(args, NPU0, torch.float16, model=None)
    assert metadata["device_settings"] == runtime.device_settings(NPU0)
    assert "nz_weights=True" in metadata["device"]
