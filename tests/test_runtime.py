import sys
from types import SimpleNamespace

import pytest
import torch

from npu_models import runtime
from npu_models.runtime.saved_graphs import SavedGraphs
from npu_models.errors import UserError
from npu_models.runtime import device as device_module

# torch.device("npu") only parses once torch_npu has registered the device type.
NPU0 = SimpleNamespace(type="npu", index=0)


def test_cpu_and_auto_resolve_on_a_machine_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "npu_available", lambda: False)
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "npu:x", "cuda:-1", "tpu:0", ""])
def test_malformed_device_names_the_accepted_forms(spec):
    with pytest.raises(UserError, match="auto, npu, npu:N, cuda, cuda:N or cpu"):
        runtime.resolve_device(spec)


def test_npu_without_torch_npu_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # makes `import torch_npu` raise ImportError
    device_module.import_torch_npu.cache_clear()
    with pytest.raises(UserError, match=r"torch_npu.*pip install -e \.\[npu\]"):
        runtime.resolve_device("npu:0")
    device_module.import_torch_npu.cache_clear()


def test_missing_cuda_device_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no cuda device is visible"):
        runtime.resolve_device("cuda:1")


@pytest.mark.parametrize("chip, expected", [("Ascend310P3", torch.float16), ("Ascend910B2", torch.bfloat16),
                                            ("Ascend910_9392", torch.bfloat16)])
def test_dtype_policy_per_ascend_chip(monkeypatch, chip, expected):
    monkeypatch.setattr(device_module, "npu_chip_name", lambda device: chip)
    assert runtime.default_dtype(NPU0) == expected
    assert runtime.parse_dtype("auto", NPU0) == expected


def test_dtype_policy_cpu_cuda_and_explicit_names(monkeypatch):
    assert runtime.default_dtype(torch.device("cpu")) == torch.float32
    assert runtime.default_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert runtime.parse_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert runtime.parse_dtype(None, torch.device("cpu")) == torch.float32
    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        runtime.parse_dtype("fp8", torch.device("cpu"))
    monkeypatch.setattr(device_module, "npu_chip_name", lambda device: "Ascend310P3")
    with pytest.raises(UserError, match="no bf16 support"):
        runtime.parse_dtype("bf16", NPU0)


def test_length_buckets_are_bounded_and_cover_the_maximum():
    assert runtime.length_buckets(128) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert runtime.length_buckets(100) == [16, 32, 48, 64, 80, 96, 100]
    assert runtime.length_buckets(8) == [8]
    buckets = runtime.length_buckets(128)
    assert [runtime.bucket_for(n, buckets) for n in (1, 16, 17, 64, 65, 128)] == [16, 16, 32, 64, 80, 128]
    with pytest.raises(ValueError):
        runtime.bucket_for(129, buckets)


def test_prepare_model_gives_every_layer_the_device_kernels_once(ascend_chip):
    from npu_kernels import PORTABLE
    from npu_models.models.vit.model import ViT, ViTConfig
    model = ViT(ViTConfig(image_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_dim=128, num_classes=3))
    prepared = runtime.prepare_model(model, torch.device("cpu"), torch.bfloat16)
    assert not prepared.training and all(not p.requires_grad and p.dtype == torch.bfloat16 for p in prepared.parameters())
    plans = [m.kernel_plan for m in prepared.modules() if hasattr(m, "kernel_plan")]
    assert len(plans) == 2 * 2 and all(plan is PORTABLE for plan in plans)  # Attention and Mlp per layer
    ascend_chip("Ascend310P3")
    runtime.configure_kernels(prepared, runtime.kernel_plan(NPU0))
    assert {m.kernel_plan.ascend_attention.name for m in prepared.modules() if hasattr(m, "kernel_plan")} == {
        "npu_prompt_flash_attention"}


def test_model_inputs_take_the_model_dtype_only_when_floating():
    pixels, ids = torch.rand(1, 3, 4, 4), torch.tensor([[1, 2]])
    assert runtime.to_model_input(pixels, torch.device("cpu"), torch.float16).dtype == torch.float16
    assert runtime.to_model_input(ids, torch.device("cpu"), torch.float16).dtype == torch.int64


def test_graph_mode_on_cuda_captures_cuda_graphs_and_outputs_survive_the_next_replay(monkeypatch):
    """No GPU here: torch.compile is replaced by a stand-in that behaves as a CUDA-graph replay does,
    writing every output into the same static buffer."""
    requested, steps = {}, []
    static_output = torch.zeros(2)

    def fake_compile(fn, **options):
        requested.update(options)

        def replay(x):
            static_output.copy_(fn(x))
            return {"logits": static_output}
        return replay

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)  # compile_s timing; no GPU here
    model = torch.nn.Identity()
    model.config = "the model's config"
    compiled = runtime.compile_model(model, torch.device("cuda"))
    assert requested == {"fullgraph": True, "dynamic": False, "mode": "reduce-overhead"}
    first = compiled(torch.tensor([1.0, 2.0]))["logits"]
    second = compiled(torch.tensor([3.0, 4.0]))["logits"]
    assert first.tolist() == [1.0, 2.0] and second.tolist() == [3.0, 4.0]  # the first is not overwritten
    assert len(steps) == 2  # each call starts a new step of the graph tree
    assert compiled.config == "the model's config"


def test_graph_mode_on_cpu_compiles_without_capture(monkeypatch, tmp_path):
    requested = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **options: requested.update(options) or fn)
    runtime.compile_model(torch.nn.Identity(), torch.device("cpu"), compile_cache="off")
    assert requested == {"fullgraph": True, "dynamic": False}
    # with a compile cache, each shape is compiled on its first call and saved (tests/test_saved_graphs.py)
    saved = runtime.compile_model(torch.nn.Identity(), torch.device("cpu"), compile_cache=tmp_path)
    assert isinstance(saved.run, SavedGraphs) and saved.run.method == "forward"
