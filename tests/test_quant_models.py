"""All five models quantized with every scheme (npu_models/quantization.py): which layers become int8, the
calibration, the outputs against float on CPU, and the Ascend int8 ops through the stand-in, eagerly and in
graph mode. The small random-weight models and their production methods are tests/test_ascend.py's.

Relative error of every production output against the float model (Frobenius norm), measured on these
models: w8a8 3e-5 to 4.4e-3, w8a8-dynamic 2e-5 to 5.6e-3, w8a16 1e-5 to 2.2e-3 (ViT the largest).
"""
import copy
import fnmatch

import pytest
import torch
from torch import nn

from npu_kernels import EAGER, plan_for_ascend_chip
from npu_kernels.quant_matmul import SCHEMES
from npu_models import runtime
from npu_models.errors import UserError
from npu_models.layers.quant import QuantLinear
from npu_models.quantization import calibrate, quantizable_linears, quantize_model
from tests.npu_standin import CHIPS, NPU0
from tests.test_ascend import CASES
from weights_tools.verify import DEFAULT_TOLERANCE

# What every model quantizes (module paths, '*' any part) and what stays float.
QUANTIZED = {
    "bert": ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"],
    "vit": ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"],
    "vlmo": ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.ffn.mlps.*.fc1", "blocks.*.ffn.mlps.*.fc2"],
    "blip": ["*.blocks.*.attn.qkv", "*.blocks.*.attn.proj", "*.blocks.*.mlp.fc*", "text_encoder.blocks.*.cross_attn.q",
             "text_encoder.blocks.*.cross_attn.kv", "text_encoder.blocks.*.cross_attn.proj"],
    "vilbert": ["*_layers.*.attn.qkv", "*_layers.*.attn.proj", "*_layers.*.mlp.fc*", "co_layers.*.*.cross_attn.q",
                "co_layers.*.*.cross_attn.kv", "co_layers.*.*.cross_attn.proj", "co_layers.*.*.mlp.fc*"],
}
FLOAT = {"bert": ["pooler", "classifier"], "vit": ["head"], "vlmo-vqa": ["pooler", "vqa_head.0", "vqa_head.3"],
         "vlmo-retrieval": ["pooler", "text_proj", "image_proj"],
         "blip": ["vision_proj", "text_proj", "itm_head"],
         "vilbert": ["image_embeddings.features", "image_embeddings.locations", "text_pooler", "image_pooler",
                     "classifier"]}


def build(name):
    model, methods = CASES[name]()
    return model.init_weights(seed=1).eval(), [(method, args) for method, args, _ in methods]


def run_method(model, batch):
    method, args = batch
    return getattr(model, method)(*args)


def float_linears(model):
    return {path for path, module in model.named_modules() if type(module) is nn.Linear}


def prepare(model, plan):
    """runtime.prepare_model's plan and constants, for the stand-in's device (tensors stay on the CPU)."""
    model.eval().requires_grad_(False)
    runtime.configure_kernels(model, plan)
    for module in model.modules():
        if hasattr(module, "prepare_for_inference"):
            module.prepare_for_inference()
    return model


@pytest.mark.parametrize("name", CASES)
def test_every_encoder_linear_and_no_head_is_quantized(name):
    model, methods = build(name)
    family = name.split("-")[0]
    before = float_linears(model)
    quantize_model(model, "w8a16")
    quantized = {path for path, module in model.named_modules() if isinstance(module, QuantLinear)}
    assert quantized and quantized == before - float_linears(model)
    assert all(any(fnmatch.fnmatchcase(path, p) for p in QUANTIZED[family]) for path in quantized), quantized
    for pattern in QUANTIZED[family]:  # every kind of encoder linear, in every layer that has it
        expected = {path for path in before if fnmatch.fnmatchcase(path, pattern)}
        assert expected and expected <= quantized, pattern
    assert set(FLOAT.get(name, FLOAT.get(family))) <= float_linears(model)  # heads, poolers, embedding projections


# VLMo's tasks skip some experts and ViLBERT never runs the layers after its last co-attention: calibration
# warns that those stay in float.
EXPECTED_WARNING = "ignore:.*never ran during calibration:UserWarning"


@pytest.mark.filterwarnings(EXPECTED_WARNING)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", CASES)
def test_quantized_models_stay_close_to_float_on_cpu(name, scheme):
    model, batches = build(name)
    calibration = calibrate(model, batches, forward=run_method) if scheme == "w8a8" else None
    quantized = quantize_model(copy.deepcopy(model), scheme, calibration)
    quantized = runtime.prepare_model(quantized, torch.device("cpu"), torch.float32)
    assert quantized.quant_scheme == scheme
    for batch in batches:
        expected, out = run_method(model, batch), run_method(quantized, batch)
        error = ((out - expected).norm() / expected.norm()).item()
        assert 1e-6 < error < 1e-2, f"{name}.{batch[0]} {scheme}: relative error {error:.2e}"


def test_skip_patterns_keep_layers_in_float():
    model, _ = build("bert")
    quantize_model(model, "w8a8-dynamic", skip=("blocks.1.*", "*.fc2"))
    quantized = {path for path, module in model.named_modules() if isinstance(module, QuantLinear)}
    assert quantized == {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1"}


def test_calibration_records_each_layers_input_range():
    model, batches = build("bert")
    seen = {}

    def record(path):
        def hook(module, args, output):
            low, high = seen.get(path, (float("inf"), float("-inf")))
            seen[path] = (min(low, args[0].min().item()), max(high, args[0].max().item()))
        return hook

    # The ranges the layers' inputs really have: proj and the MLP layers are called as modules; the fused
    # q/k/v projection reads the attention layer's input.
    modules = dict(model.named_modules())
    for path in quantizable_linears(model):
        owner, _, child = path.rpartition(".")
        (modules[owner] if child == "qkv" else modules[path]).register_forward_hook(record(path))
    ranges = calibrate(model, batches * 2, forward=run_method)
    assert ranges.keys() == seen.keys() == quantizable_linears(model).keys()
    for path, (low, high) in ranges.items():
        assert (low, high) == pytest.approx(seen[path]), path
    assert ranges["blocks.0.mlp.fc2"][0] > -0.2  # a GELU output: the asymmetric range the offset serves

    clipped = calibrate(model, batches, method="percentile", percentile=99.0, forward=run_method)
    assert all(ranges[path][0] <= low < high <= ranges[path][1] for path, (low, high) in clipped.items())
    # inside the min-max range where a layer sees enough values (the last block's layers after attention see
    # only the 3 [CLS] rows: their 1% is their min)
    assert all(ranges[path][0] < low < high < ranges[path][1] for path, (low, high) in clipped.items()
               if path.startswith("blocks.0."))


def test_calibration_leaves_out_layers_the_task_never_runs():
    model, batches = build("vlmo-vqa")  # the joint layer runs only its vision-language expert
    ranges = calibrate(model, batches, forward=run_method)
    assert "blocks.2.ffn.mlps.vl.fc1" in ranges and "blocks.2.ffn.mlps.text.fc1" not in ranges
    with pytest.warns(UserWarning, match="never ran during calibration"):
        quantize_model(model, "w8a8", ranges)
    assert isinstance(model.blocks[2].ffn.mlps["text"].fc1, nn.Linear)
    assert isinstance(model.blocks[2].ffn.mlps["vl"].fc1, QuantLinear)


def test_separate_q_and_v_biases_fold_into_the_quantized_projection():
    model, batches = build("vlmo-vqa")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_bias.normal_(0, 0.5)
            block.attn.v_bias.normal_(0, 0.5)
    expected = run_method(model, batches[0])
    quantized = runtime.prepare_model(quantize_model(copy.deepcopy(model), "w8a16"), torch.device("cpu"), torch.float32)
    attention = quantized.blocks[0].attn
    assert not hasattr(attention, "q_bias") and attention.qkv.bias is not None
    torch.testing.assert_close(attention.qkv.bias, model.blocks[0].attn.qkv_bias())
    error = (run_method(quantized, batches[0]) - expected).norm() / expected.norm()
    assert error < 1e-2


def test_quantization_errors_name_the_fix():
    model, _ = build("bert")
    with pytest.raises(UserError, match="unknown quantization scheme 'w4a4'"):
        quantize_model(model, "w4a4")
    with pytest.raises(UserError, match="calibrate the float model first"):
        quantize_model(model, "w8a8")
    with pytest.raises(UserError, match="calibration method"):
        calibrate(model, [], method="entropy")
    with torch.no_grad():
        model.blocks[1].mlp.fc2.bias[3] = 1e6  # no int32 holds it in units of a (1e-3 range) x (weight) scale
    ranges = {path: (-1e-3, 1e-3) for path in quantizable_linears(model)}
    with pytest.raises(UserError, match=r"blocks\.1\.mlp\.fc2 cannot be quantized with w8a8.*skip=\('blocks.1.mlp.fc2',\)"):
        quantize_model(model, "w8a8", ranges)
    assert not any(isinstance(module, QuantLinear) for module in model.modules())  # nothing half-done
    quantize_model(model, "w8a8-dynamic")
    with pytest.raises(UserError, match="per-token activation scales"):  # refused when the model is loaded
        prepare(model, plan_for_ascend_chip("Ascend310P3"))


def test_a_quantized_model_saves_its_int8_state_and_loads_it_back():
    model, batches = build("bert")
    quantize_model(model, "w8a8", calibrate(model, batches, forward=run_method))
    state = model.state_dict()
    assert state["blocks.0.attn.qkv.weight"].dtype == torch.int8
    assert {f"blocks.0.attn.qkv.{name}" for name in ("weight_scale", "input_scale", "input_offset")} <= state.keys()
    prepared = runtime.prepare_model(model, torch.device("cpu"), torch.float32)
    assert "blocks.0.attn.qkv.deq_scale" not in prepared.state_dict()  # derived per device, not saved
    fresh, _ = build("bert")
    fresh = quantize_model(fresh, "w8a8", {path: (0.0, 1.0) for path in quantizable_linears(fresh)})
    fresh.load_state_dict(state)
    fresh = runtime.prepare_model(fresh, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(run_method(fresh, batches[0]), run_method(prepared, batches[0]), atol=0, rtol=0)


# ---- Ascend, through the stand-in ---------------------------------------------------------------------------

# 910B's static w8a8 differs from the 310P's only in dtype (bf16, fp32 deq_scale): test_quant_kernels has it.
ASCEND_CASES = [(name, "310P", scheme) for name in CASES for scheme in ("w8a8", "w8a16")] + [
    (name, "910B", scheme) for name in CASES for scheme in ("w8a8-dynamic", "w8a16")]
MATMUL = {"w8a8": "npu_quant_matmul", "w8a8-dynamic": "npu_quant_matmul", "w8a16": "npu_weight_quant_batchmatmul"}


def count_quant_layer_calls(model):
    calls = []
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.register_forward_hook(lambda *unused: calls.append(1))
    return calls


@pytest.mark.filterwarnings(EXPECTED_WARNING)
@pytest.mark.parametrize("name, profile, scheme", ASCEND_CASES)
def test_quantized_models_on_ascend_int8_ops_eager_and_compiled(ascend_chip, compiled_graphs, name, profile, scheme):
    """Every quantized layer's call is one call of the chip's int8 matmul (310P: static w8a8 through
    npu_quant_matmul), eagerly and inside the one graph torchair is handed, equal to the eager math."""
    chip, dtype = CHIPS[profile]
    standin = ascend_chip(chip)
    model, batches = build(name)
    calibration = calibrate(model, batches, forward=run_method) if scheme == "w8a8" else None
    model = quantize_model(model, scheme, calibration).to(dtype)
    reference = prepare(copy.deepcopy(model), EAGER)
    model = prepare(model, runtime.kernel_plan(NPU0))
    layer_calls = count_quant_layer_calls(model)
    atol, rtol = DEFAULT_TOLERANCE[dtype]
    for method, args in batches:
        args = [a.to(dtype) if a.is_floating_point() else a for a in args]
        standin.calls.clear()
        layer_calls.clear()
        eager = getattr(model, method)(*args)
        layers_run = len(layer_calls)
        assert layers_run and standin.calls[MATMUL[scheme]] == layers_run, method
        torch.testing.assert_close(eager.float(), getattr(reference, method)(*args).float(), atol=atol, rtol=rtol)

        graphs_before, captures_before = len(standin.graphs), len(standin.captures)
        compiled = runtime.compile_model(getattr(model, method), NPU0)(*args)
        if standin.inference_card:  # the 310P captures the eager forward as an NPUGraph
            (capture,) = standin.captures[captures_before:]
            in_graph = sum(str(func).split(".")[:2] == ["npu", MATMUL[scheme]] for func, *_ in capture._records)
        else:  # A2/A3: torchair's graph
            (graph,) = standin.graphs[graphs_before:]
            in_graph = sum(str(node.target).split(".")[:2] == ["npu", MATMUL[scheme]] for node in graph.graph.nodes)
        assert in_graph == layers_run, method
        torch.testing.assert_close(compiled.float(), eager.float(), atol=atol, rtol=rtol)
    graphs, breaks = compiled_graphs()
    if standin.inference_card:  # captured, not traced: one NPUGraph per method's shape
        assert len(standin.captures) == len(batches) and graphs == 0
    else:
        assert graphs == len(batches) and breaks == 0


def test_a_quantized_model_compiles_on_cpu_into_one_graph(compiled_graphs):
    """Graph mode on CPU (inductor) takes the int8 layers whole: one graph, no break, the eager result."""
    model, batches = build("bert")
    model = quantize_model(model, "w8a8", calibrate(model, batches, forward=run_method))
    model = runtime.prepare_model(model, torch.device("cpu"), torch.float32)
    (method, args), = batches
    compiled = runtime.compile_model(model, torch.device("cpu"))(*args)
    assert compiled_graphs() == (1, 0)
    torch.testing.assert_close(compiled, run_method(model, batches[0]), atol=1e-5, rtol=1e-5)
