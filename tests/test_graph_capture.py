"""Graph capture (runtime.graph.CapturedGraphs) and the choice of graph backend per device, through the
torch_npu stand-in's NPUGraph (tests/npu_standin.py). The same capture class runs torch.cuda.graph: with no
GPU here, that path is checked with the stand-in's graph classes behind torch.cuda's names."""
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from eval import sst2
from npu_models import registry, runtime
from npu_models.errors import UserError
from npu_models.runtime import graph as graph_module
from tests.npu_standin import NPU0, AscendContractError, StreamContext


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x, scale: float = 1.0):
        return {"logits": self.fc2(torch.relu(self.fc1(x))) * scale}


def model():
    return TwoLayers().eval().requires_grad_(False)


def test_replays_match_eager_and_kept_outputs_survive_the_next_replay(ascend_chip):
    standin = ascend_chip("Ascend310P3")
    net, x1, x2 = model(), torch.randn(3, 8), torch.randn(3, 8)
    graphed = runtime.compile_model(net, NPU0)
    first = graphed(x1)["logits"]
    second = graphed(x2)["logits"]
    assert len(standin.captures) == 1 and standin.replays == 2
    torch.testing.assert_close(first, net(x1)["logits"], rtol=0, atol=0)
    torch.testing.assert_close(second, net(x2)["logits"], rtol=0, atol=0)


def test_an_output_kept_without_the_copy_is_overwritten_by_the_next_replay(ascend_chip, monkeypatch):
    """What copy_out prevents: with the copy disabled, the first call's output changes under its holder."""
    ascend_chip("Ascend310P3")
    monkeypatch.setattr(graph_module, "copy_out", lambda outputs: outputs)
    net, x1, x2 = model(), torch.randn(3, 8), torch.randn(3, 8)
    graphed = runtime.compile_model(net, NPU0)
    first = graphed(x1)["logits"]
    kept = first.clone()
    graphed(x2)
    assert not torch.equal(first, kept)
    torch.testing.assert_close(first, net(x2)["logits"], rtol=0, atol=0)  # it holds the second call's result


@pytest.mark.parametrize("host_sync", [
    lambda y: y * y.sum().item(),                 # a scalar read on the host
    lambda y: y.cpu() + 1,                        # a copy to the host
    lambda y: y[y.sum(dim=-1).nonzero()[:, 0]],   # a shape read from the values
    lambda y: y * float(y.max()),
    lambda y: y + torch.tensor(y.tolist()),
    lambda y: y.to("cpu") * 2,
    lambda y: y if bool((y > 0).any()) else -y,   # Python control flow on a tensor value
])
def test_a_forward_that_waits_for_the_host_fails_capture(ascend_chip, host_sync):
    standin = ascend_chip("Ascend310P3")
    net = model()
    graphed = runtime.compile_model(lambda x: host_sync(net(x)["logits"]), NPU0)
    with pytest.raises(RuntimeError, match=r"graph capture of .* for inputs \[\(3, 8\)\] failed: .*host") as caught:
        graphed(torch.randn(3, 8))
    assert isinstance(caught.value.__cause__, AscendContractError)
    assert standin.captures == []


def test_the_stand_in_refuses_capture_on_the_default_stream(ascend_chip):
    ascend_chip("Ascend310P3")
    with pytest.raises(AscendContractError, match="default stream"):
        torch.npu.NPUGraph().capture_begin()


def test_a_new_shape_is_warmed_up_on_a_side_stream_then_captured_on_another(ascend_chip):
    standin = ascend_chip("Ascend310P3")
    streams = []

    def forward(x):
        streams.append(torch.npu.current_stream())
        return x * 2

    graphed = runtime.compile_model(forward, NPU0)
    graphed(torch.ones(2))
    graphed(torch.ones(2))  # a replay does not run the Python forward
    assert len(streams) == 2 and standin.default_stream not in streams and streams[0] is not streams[1]


def test_shapes_past_the_cap_run_eagerly_with_one_warning(ascend_chip):
    standin = ascend_chip("Ascend310P3")
    net = model()
    graphed = graph_module.CapturedGraphs(net, graph_module.graph_api("npu"), max_graphs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (1, 2, 3, 4, 1, 3):
            x = torch.randn(batch, 8)
            torch.testing.assert_close(graphed(x)["logits"], net(x)["logits"], rtol=0, atol=0)
    assert len(standin.captures) == 2 and standin.replays == 3  # batches 1, 2, and 1 again
    assert [str(w.message) for w in caught if "cap of 2 captured shapes" in str(w.message)] == [
        "graph mode holds its cap of 2 captured shapes already: inputs [(3, 8)] and any further new shape run "
        "eagerly (pad to fewer shapes to capture them all)."]


def test_other_arguments_are_part_of_what_a_graph_is_captured_for(ascend_chip):
    standin = ascend_chip("Ascend310P3")
    net, x = model(), torch.randn(3, 8)
    graphed = runtime.compile_model(net, NPU0)
    torch.testing.assert_close(graphed(x, scale=2.0)["logits"], net(x, scale=2.0)["logits"], rtol=0, atol=0)
    torch.testing.assert_close(graphed(x, scale=3.0)["logits"], net(x, scale=3.0)["logits"], rtol=0, atol=0)
    assert len(standin.captures) == 2


def test_the_captured_model_shows_the_original_attributes(ascend_chip):
    ascend_chip("Ascend310P3")
    net = model()
    net.config = "the model's config"
    assert runtime.compile_model(net, NPU0).config == "the model's config"


def test_cuda_capture_runs_the_same_class_over_torch_cuda(ascend_chip, monkeypatch):
    """No GPU here: torch.cuda's graph, stream and pool names are given the stand-in's classes, which behave as
    NPUGraph does; the capture then goes through torch.cuda.CUDAGraph / torch.cuda.graph."""
    standin = ascend_chip("Ascend310P3")
    npu = torch.npu
    for cuda_name, stand_in in [("CUDAGraph", npu.NPUGraph), ("graph", npu.graph), ("Stream", npu.Stream),
                                ("stream", StreamContext), ("current_stream", npu.current_stream),
                                ("graph_pool_handle", npu.graph_pool_handle)]:
        monkeypatch.setattr(torch.cuda, cuda_name, stand_in)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)  # compile_s timing; no GPU here
    net, x = model(), torch.randn(3, 8)
    graphed = runtime.compile_model(net, torch.device("cuda"), "capture")
    assert isinstance(graphed.run, graph_module.CapturedGraphs) and graphed.run.api.graph_class is npu.NPUGraph
    torch.testing.assert_close(graphed(x)["logits"], net(x)["logits"], rtol=0, atol=0)
    assert len(standin.captures) == 1 and standin.replays == 1


@pytest.mark.parametrize("chip, expected", [("Ascend310P3", "capture"), ("Ascend910B2", "npugraph_ex"),
                                            ("Ascend910_9392", "npugraph_ex"), ("Ascend910A", "ge")])
def test_the_default_graph_backend_per_ascend_chip(ascend_chip, chip, expected):
    ascend_chip(chip)
    assert runtime.graph_backend_for(NPU0, True) == expected
    assert runtime.graph_backend_for(NPU0, True, "ge") == "ge"  # torchair's GE on every Ascend chip
    assert runtime.graph_backend_for(NPU0, False) is None


def test_cuda_and_cpu_keep_torch_compile_by_default():
    assert runtime.graph_backend_for(torch.device("cuda", 0), True) == "inductor"
    assert runtime.graph_backend_for(torch.device("cuda", 0), True, "capture") == "capture"
    assert runtime.graph_backend_for(torch.device("cpu"), True) == "inductor"


@pytest.mark.parametrize("chip, device, backend, message", [
    (None, torch.device("cpu"), "ge", "graph backend 'ge' cannot run on cpu: torchair compiles for Ascend NPUs only. "
                                      "Use auto or one of inductor."),
    (None, torch.device("cpu"), "capture", "no device graphs to capture on the CPU"),
    ("Ascend310P3", NPU0, "npugraph_ex", "npugraph_ex for Atlas A2/A3 only (vLLM-Ascend: not supported on 300I "
                                         "Duo). Use auto or one of capture, ge."),
    ("Ascend910B2", NPU0, "inductor", "Use auto or one of capture, npugraph_ex, ge."),
    (None, torch.device("cpu"), "cudagraphs", "unknown graph backend 'cudagraphs': use one of auto, capture"),
])
def test_a_backend_the_device_cannot_run_is_refused_by_name(ascend_chip, chip, device, backend, message):
    if chip:
        ascend_chip(chip)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        runtime.graph_backend_for(device, True, backend)


def test_a_backend_without_graph_mode_is_refused():
    with pytest.raises(UserError, match=r"graph_backend='ge' chooses how graph mode runs: add graph=True") as caught:
        runtime.graph_backend_for(torch.device("cpu"), False, "ge")
    assert "--graph-backend ge chooses how graph mode runs: add --graph," in caught.value.command_line_message()


@pytest.mark.parametrize("argv, message", [
    (["--graph", "--graph-backend", "ge"], "graph backend 'ge' cannot run on cpu"),
    (["--graph-backend", "capture"], "chooses how graph mode runs: add --graph"),
])
def test_eval_passes_graph_backend_to_load_model_which_refuses_it_before_building(capsys, monkeypatch, argv,
                                                                                   message):
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before the random-weights warning
        with pytest.raises(SystemExit) as exit_info:
            sst2.main(argv + ["--device", "cpu", "--limit", "1"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_eval_results_record_the_device_settings():
    from eval.options import run_metadata
    args = SimpleNamespace(model="bert", checkpoint=None, graph=False, batch_size=4)
    assert run_metadata(args, torch.device("cpu"), torch.float32, model=None)["device_settings"] == {}
