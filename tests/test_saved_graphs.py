"""Saved graphs (runtime.saved_graphs) and weights_tools.compile: graph mode on the CPU compiles each shape once
into the compile cache, and a later process loads it without tracing; a graph made for another torch, dtype,
model configuration or source of ours, or a damaged file, is refused in one line and compiled again; the graphs
weights_tools.compile makes are the ones each eval command loads (it compiles nothing)."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import npu_models
from eval.commands import EVAL_COMMANDS
from npu_models import runtime
from npu_models.models.bert import BertConfig
from npu_models.runtime import saved_graphs
from npu_models.runtime.saved_graphs import StaleGraphWarning
from tests.conftest import BERT_FIXTURE, FIXTURES
from tests.test_eval_commands import SETUPS
from weights_tools import compile as compile_tool

CHECKPOINT = BERT_FIXTURE / "checkpoint"
REPO = Path(__file__).resolve().parents[1]


def bert(cache, dtype=None, config=None, checkpoint=CHECKPOINT):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", npu_models.RandomWeightsWarning)
        return npu_models.load_model("bert", checkpoint, device="cpu", dtype=dtype, config=config, graph=True,
                                     compile_cache=cache)


def inputs(batch=2, length=16):
    ids = torch.randint(1, 90, (batch, length), generator=torch.Generator().manual_seed(length))
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def run(model, *args):
    with torch.no_grad():
        return model(*args), model.original(*args)


def stale_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, StaleGraphWarning)]


def test_a_new_process_loads_the_saved_graph_without_tracing_and_with_its_own_weights(tmp_path, compiled_graphs):
    first = bert(tmp_path)
    graphed, eager = run(first, *inputs())
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    assert len(first.run.compiled) == 1 and first.run.loaded == [] and compiled_graphs() == (1, 0)
    [saved] = (tmp_path / "graphs").rglob("*.graph")
    sidecar = json.loads(saved.with_suffix(".json").read_text())
    assert sidecar["key"]["torch"] == torch.__version__ and sidecar["key"]["dtype"] == "float32"

    torch._dynamo.reset()  # nothing compiled in memory, as in a new process
    second = bert(tmp_path)
    with torch.no_grad():
        for parameter in second.parameters():  # another checkpoint of the same configuration
            parameter.mul_(1.05)
    traced_before = counters["stats"]["unique_graphs"]
    graphed, eager = run(second, *inputs())
    assert second.run.loaded == first.run.compiled and second.run.compiled == []
    assert counters["stats"]["unique_graphs"] == traced_before, "Dynamo traced the model: the saved graph was not loaded"
    assert compiled_graphs() == (2, 0)  # one compiled, one loaded
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)  # its own weights, not the first model's
    assert not torch.allclose(graphed, run(first, *inputs())[1], atol=1e-3)


def set_aside(cache: Path) -> None:
    """Make the saved graph look as if made for another key: file names no longer match this key's digest."""
    for path in [p for p in (cache / "graphs").rglob("*") if p.is_file()]:
        path.rename(path.with_name("0" * 20 + path.suffix))


@pytest.mark.parametrize("change, expected", [
    ("dtype", "was made for dtype float32 (this is dtype bfloat16)"),
    ("config", "was made for another model configuration (digest "),
    ("source", "was made for other npu_models sources (fingerprint "),
    ("torch", "was made for torch 2.0.0 (this is torch " + torch.__version__ + ")"),
])
def test_a_graph_made_for_another_key_is_refused_in_one_line_and_compiled_again(tmp_path, monkeypatch, change,
                                                                                 expected):
    run(bert(tmp_path), *inputs())
    torch._dynamo.reset()
    dtype, config = ("bf16" if change == "dtype" else None), None
    if change == "config":  # the same inputs, another model: one layer fewer, random weights
        config = BertConfig(**{**npu_models.load_model("bert", CHECKPOINT, device="cpu").config.__dict__, "depth": 1})
    if change == "source":
        monkeypatch.setattr(saved_graphs, "code_fingerprint", lambda: "f" * 16)
    if change == "torch":
        [sidecar] = (tmp_path / "graphs").rglob("*.json")
        record = json.loads(sidecar.read_text())
        record["key"]["torch"] = "2.0.0"
        sidecar.write_text(json.dumps(record))
        set_aside(tmp_path)
    model = bert(tmp_path, dtype=dtype, config=config, checkpoint=None if config else CHECKPOINT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed, eager = run(model, *inputs())
    [message] = stale_warnings(caught)
    assert expected in message and message.endswith(": compiling it again.") and "\n" not in message
    assert "Bert.forward for inputs [(2, 16), (2, 16), (2, 16)]" in message
    assert len(model.run.compiled) == 1 and model.run.loaded == []
    torch.testing.assert_close(graphed, eager, rtol=2e-2 if dtype else 1e-5, atol=2e-2 if dtype else 1e-5)


def test_a_damaged_file_is_compiled_again_and_replaced(tmp_path):
    run(bert(tmp_path), *inputs())
    [saved] = (tmp_path / "graphs").rglob("*.graph")
    saved.write_bytes(b"not a graph")
    torch._dynamo.reset()
    model = bert(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed, eager = run(model, *inputs())
    [message] = stale_warnings(caught)
    assert message.startswith(f"the saved graph {saved} is not used: it cannot be read (") and "compiling it again" in message
    assert len(model.run.compiled) == 1
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    again = bert(tmp_path)
    run(again, *inputs())
    assert len(again.run.loaded) == 1  # the file was replaced by a good one


def test_a_forward_that_cannot_be_saved_still_runs_compiled(tmp_path, compiled_graphs):
    """nn.Sequential's forward cannot be called back with its module as first argument: it is compiled the usual
    way (inductor's cache), and nothing is saved."""
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(2, 8)
    graphed = runtime.compile_model(net, torch.device("cpu"), compile_cache=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(graphed(x), net(x))
    assert len(graphed.run.graphs) == 1 and graphed.run.compiled == [] and compiled_graphs()[0] >= 1
    assert not list((tmp_path / "graphs").rglob("*.graph"))


def test_without_a_cache_nothing_is_saved(tmp_path, compiled_graphs):
    model = bert("off")
    run(model, *inputs())
    assert not isinstance(model.run, saved_graphs.SavedGraphs) and compiled_graphs() == (1, 0)


COMMAND_CASES = {  # task: (model, extra options, token lengths to compile: the ones the data uses)
    "sst2": ("bert", {"seq_len": 32}, [16, 32]),
    "imagenet": ("vit", {}, None),
    "vqa": ("vlmo", {}, None),  # the fixture's VLMo reads at most 12 tokens: its one bucket
}


@pytest.mark.parametrize("task", COMMAND_CASES)
def test_each_command_loads_what_weights_tools_compile_made_and_compiles_nothing(tmp_path, task):
    name, extra, lengths = COMMAND_CASES[task]
    _, options, examples = SETUPS[task](tmp_path)
    # graph mode's batch: --batch-size rows, or every example of a smaller run (eval.batching.static_rows)
    options = {**options, **extra, "batch_size": min(options["batch_size"], len(examples))}
    cache = tmp_path / "cache"
    rows = compile_tool.compile_graphs(name, options["checkpoint"], "cpu", batch_sizes=[options["batch_size"]],
                                       seq_lens=lengths, out=cache)
    assert [row["how"] for row in rows] == ["compiled"] * len(rows) and len(rows) == len(lengths or [1])
    torch._dynamo.reset()
    command = EVAL_COMMANDS[task]
    results = {}
    for mode in ("graph", "eager"):
        results[mode] = command.evaluate(command.options(model=name, device="cpu", graph=mode == "graph",
                                                         compile_cache=cache, predictions=tmp_path / f"{mode}.jsonl",
                                                         **options))
    assert results["graph"]["graphs_compiled"] == 0 and results["graph"]["graphs_loaded"] == len(rows)
    assert (tmp_path / "graph.jsonl").read_text().count("\n") == (tmp_path / "eager.jsonl").read_text().count("\n")


def test_vilbert_regions_load_what_weights_tools_compile_made(tmp_path):
    data = FIXTURES / "reference" / "vqa-vilbert"
    cache = tmp_path / "cache"
    rows = compile_tool.compile_graphs("vilbert", data / "model.tar.gz", "cpu", batch_sizes=[4], seq_lens=[16],
                                       out=cache)
    assert [(row["how"], row["shape"].split(" (")[0]) for row in rows] == [("compiled", "regions")]
    torch._dynamo.reset()
    command = EVAL_COMMANDS["vqa"]
    results = command.evaluate(command.options(model="vilbert", checkpoint=data / "model.tar.gz", data=data,
                                               device="cpu", graph=True, compile_cache=cache, batch_size=4,
                                               num_workers=0, predictions=tmp_path / "p.jsonl"))
    assert results["graphs_compiled"] == 0 and results["graphs_loaded"] == 1


def test_the_compile_command_then_eval_sst2_in_a_new_process(tmp_path):
    """The whole flow as a user runs it: two processes, the second compiling nothing."""
    _, options, _ = SETUPS["sst2"](tmp_path)
    cache = tmp_path / "cache"
    assert compile_tool.main(["--model", "bert", "--checkpoint", str(options["checkpoint"]), "--batch-sizes", "4",
                              "--seq-lens", "16", "32", "--out", str(cache)]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "eval.sst2", "--checkpoint", str(options["checkpoint"]), "--data",
                    str(options["data"]), "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--graph",
                    "--compile-cache", str(cache), "--output", str(tmp_path / "out.json")],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["graphs_compiled"] == 0 and results["graphs_loaded"] == 2 and results["compile_s"] > 0


def test_the_compile_command_refuses_what_has_no_graph(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compile_tool.main(["--model", "blip", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "eval.retrieval runs eagerly, so it has no graph to compile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compile_tool.main(["--model", "bert", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert f"--checkpoint {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compile_tool.main(["--model", "vlmo", "--checkpoint", str(FIXTURES / "reference" / "vqa-vlmo" /
                                                                   "vqa_checkpoint.pt"), "--seq-lens", "16", "--out",
                           str(tmp_path)])
    assert "--seq-lens 16 goes past the 12 tokens vlmo-base-vqa reads at most: give lengths up to 12" in \
        capsys.readouterr().err
