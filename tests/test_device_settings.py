"""Load-time settings on Ascend (runtime.settings), through the torch_npu stand-in: binary kernels, Linear
weights and npu_quant_matmul's int8 weights in FRACTAL_NZ on the 310P (every rank its own share), and the one
report of them."""
import copy
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import npu_models
from npu_models import parallel, registry, runtime
from npu_models.models.bert.model import Bert, BertConfig
from npu_models.errors import UserError
from npu_models.layers.quant import QuantLinear
from npu_models.runtime import settings as settings_module
from tests.conftest import BERT_FIXTURE
from tests.npu_standin import FORMAT_FRACTAL_NZ, FORMAT_ND, NPU0, AscendContractError
from tests.test_ascend import CASES
from tests.test_quant_models import EXPECTED_WARNING


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


# ---- int8 weights (QuantLinear) on the 310P ----------------------------------------------------------------


def quantized(name, scheme):
    """A small model of tests/test_ascend.py quantized with `scheme`, and its batches in fp16."""
    from npu_models.quantization import calibrate, quantize_model
    from tests.test_quant_models import build, run_method

    model, batches = build(name)
    calibration = calibrate(model, batches, forward=run_method) if scheme == "w8a8" else None
    batches = [(method, [a.half() if a.is_floating_point() else a for a in args]) for method, args in batches]
    return quantize_model(model, scheme, calibration), batches


def prepare_on_310p(model, monkeypatch, nz_switch=None):
    """runtime.prepare_model with the 310P's kernel plan and load-time settings (NPU_MODELS_NZ_WEIGHTS=`nz_switch`,
    unset for None), in fp16; the stand-in's ops run on CPU tensors."""
    from npu_models.runtime import kernels as kernels_module

    if nz_switch is None:
        monkeypatch.delenv("NPU_MODELS_NZ_WEIGHTS", raising=False)
    else:
        monkeypatch.setenv("NPU_MODELS_NZ_WEIGHTS", nz_switch)
    real_settings = settings_module.device_settings
    monkeypatch.setattr(kernels_module, "kernel_plan", lambda device: runtime.kernel_plan(NPU0))
    monkeypatch.setattr(settings_module, "device_settings", lambda device: real_settings(NPU0))
    return runtime.prepare_model(model, torch.device("cpu"), torch.float16)


def quant_layers(model) -> dict[str, QuantLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}


@pytest.mark.filterwarnings(EXPECTED_WARNING)
@pytest.mark.parametrize("name", CASES)
def test_310p_w8a8_weights_in_nz_give_the_nd_outputs_eager_and_captured(ascend_chip, monkeypatch, name):
    """npu_quant_matmul's 310P layout: the contiguous [N, K] int8 rows cast to NZ, passed transposed; the stand-in
    refuses any other NZ weight (untransposed, or a range of rows: ViT's, VLMo's and BLIP's cls_only q rows)."""
    standin = ascend_chip("Ascend310P3")
    model, batches = quantized(name, "w8a8")
    nd = prepare_on_310p(copy.deepcopy(model), monkeypatch, nz_switch="0")
    nz = prepare_on_310p(model, monkeypatch)
    assert {standin.npu_format(layer.weight) for layer in quant_layers(nd).values()} == {FORMAT_ND}
    assert quant_layers(nz)
    for path, layer in quant_layers(nz).items():
        assert standin.npu_format(layer.weight) == FORMAT_FRACTAL_NZ and layer.weight_blocked, path
        assert layer.weight.dtype == torch.int8 and layer.weight.shape == (layer.out_features, layer.in_features)
        torch.testing.assert_close(layer.weight, quant_layers(nd)[path].weight, rtol=0, atol=0)
    assert {standin.npu_format(w) for w in linear_weights(nz).values()} == {FORMAT_FRACTAL_NZ}  # float ones too
    for method, args in batches:
        expected = getattr(nd, method)(*args)
        standin.calls.clear()
        torch.testing.assert_close(getattr(nz, method)(*args), expected, rtol=0, atol=0)
        assert standin.calls["npu_quant_matmul"] > 0, method
        captures = len(standin.captures)
        captured = runtime.compile_model(getattr(nz, method), NPU0)(*args)
        (capture,) = standin.captures[captures:]
        assert any(str(func).startswith("npu.npu_quant_matmul") for func, *_ in capture._records), method
        torch.testing.assert_close(captured, expected, rtol=0, atol=0)


def test_a_range_of_nz_rows_is_refused_where_the_layer_does_not_know_its_weight_is_blocked(ascend_chip, monkeypatch):
    """The planted bug for the rows: ViT's cls_only cuts its last q/k/v rows, which an NZ weight cannot give."""
    ascend_chip("Ascend310P3")
    model, [(method, args)] = quantized("vit", "w8a8")
    model = prepare_on_310p(model, monkeypatch)
    for layer in quant_layers(model).values():
        layer.weight_blocked = False
    with pytest.raises(AscendContractError, match="part of a FRACTAL_NZ tensor"):
        getattr(model, method)(*args)


def test_310p_keeps_w8a16_weights_nd_which_its_op_takes_in_nz_in_graph_mode_only(ascend_chip, monkeypatch):
    standin = ascend_chip("Ascend310P3")
    model, [(method, args)] = quantized("bert", "w8a16")
    model = prepare_on_310p(model, monkeypatch)
    layers = quant_layers(model)
    assert layers and {standin.npu_format(layer.weight) for layer in layers.values()} == {FORMAT_ND}
    assert not any(layer.weight_blocked for layer in layers.values())
    assert {standin.npu_format(w) for w in linear_weights(model).values()} == {FORMAT_FRACTAL_NZ}
    expected = getattr(model, method)(*args)
    for layer in layers.values():  # what the settings do not do: an eager call refuses it
        layer.weight = torch.ops.npu.npu_format_cast(layer.weight, FORMAT_FRACTAL_NZ)
        layer.weight_blocked = True
    with pytest.raises(AscendContractError, match="graph mode only"):
        getattr(model, method)(*args)
    torch.testing.assert_close(runtime.compile_model(getattr(model, method), NPU0, "ge")(*args), expected,
                               rtol=0, atol=0)
    assert len(standin.graphs) == 1


def test_each_rank_casts_its_own_int8_share(ascend_chip):
    """Cut before the cast (load_model's order): every rank's w8a8 weights, its share of the whole, in NZ."""
    standin = ascend_chip("Ascend310P3")
    model, _ = quantized("bert", "w8a8")
    whole = {name: layer.weight.numel() for name, layer in quant_layers(model).items()}
    shares = {name: 0 for name in whole}
    for rank in range(2):
        share = parallel.apply_plan(copy.deepcopy(model), registry.get_entry("bert").tp_plan,
                                    parallel.TensorParallel(rank, 2))
        runtime.configure_kernels(share.half(), runtime.kernel_plan(NPU0))
        runtime.apply_device_settings(share, NPU0)
        layers = quant_layers(share)
        assert layers.keys() == whole.keys()
        for name, layer in layers.items():
            assert standin.npu_format(layer.weight) == FORMAT_FRACTAL_NZ and layer.weight.numel() < whole[name], name
            shares[name] += layer.weight.numel()
    assert shares == whole
