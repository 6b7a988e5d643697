"""Tensor parallelism over two gloo processes on CPU, compared with one process."""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import npu_models
from npu_models import parallel, registry
from npu_models.errors import UserError
from tests.conftest import BERT_FIXTURE, FIXTURES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model", ["bert", "vit", "vlmo", "blip", "vilbert"])
def test_verify_passes_with_tp2_under_torchrun(model):
    """The documented command, as a user runs it: two ranks, every fixture tensor within 1e-5."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "weights_tools.verify", "--tp", "2", "--model", model,
                             str(FIXTURES / "reference" / model)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = [line for line in result.stdout.splitlines() if line.startswith("verify:")]
    assert len(summary) == 1  # rank 0 alone prints
    passed, total = summary[0].split()[1].split("/")
    assert passed == total


def bert_worker(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    model = npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu", tp=2)
    inputs = load_file(str(BERT_FIXTURE / "inputs.safetensors"))
    args = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    with torch.no_grad():
        logits = model(*args)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(*args)  # the all-reduce traces
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    torch.save({"logits": logits, "compiled": compiled, "sizes": sizes}, os.path.join(out_dir, f"{rank}.pt"))


def test_two_ranks_hold_half_of_every_split_layer_and_match_one_process(tmp_path):
    mp.spawn(bert_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    single = npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu")
    inputs = load_file(str(BERT_FIXTURE / "inputs.safetensors"))
    with torch.no_grad():
        expected = single(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    full = {name: p.numel() for name, p in single.named_parameters()}
    for result in ranks:
        torch.testing.assert_close(result["logits"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["compiled"], expected, atol=1e-5, rtol=1e-5)
    for name, numel in full.items():
        split = any(part in name for part in ("attn.qkv", "mlp.fc1", "attn.proj.weight", "mlp.fc2.weight"))
        halves = [result["sizes"][name] for result in ranks]
        if split:
            assert halves == [numel // 2, numel // 2], name
        else:  # embeddings, norms, pooler, classifier and the row-parallel biases are replicated
            assert halves == [numel, numel], name


def test_heads_are_shared_unevenly_and_too_few_heads_are_refused_by_layer():
    config = registry.get_entry("vilbert").default_config()
    tp = parallel.TensorParallel(rank=1, size=3)
    assert [parallel.TensorParallel(r, 3).share(8) for r in range(3)] == [slice(0, 2), slice(2, 5), slice(5, 8)]
    model = registry.get_entry("vilbert").build(config.__class__(**{**config.__dict__, "coattention_heads": 2}))
    with pytest.raises(UserError, match=r"co_layers\.0\.text\.cross_attn has 2 attention heads, fewer than tp=3"):
        parallel.apply_plan(model, registry.get_entry("vilbert").tp_plan, tp)


def test_every_attention_and_mlp_is_in_its_models_plan():
    """A plan that forgets a layer would leave it replicated: correct, but not what the plan promises."""
    import fnmatch
    for entry in registry.REGISTRY.values():
        with torch.device("meta"):
            model = entry.build(entry.default_config())
        for path, module in model.named_modules():
            if type(module).__name__ in ("Attention", "Mlp"):
                assert any(path.count(".") == p.count(".") and fnmatch.fnmatchcase(path, p) for p in entry.tp_plan), (
                    entry.name, path)


def test_tp_without_torchrun_says_how_to_launch(monkeypatch):
    for name in ("WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="tp=2 needs 2 processes: run under torchrun --standalone --nproc_per_node 2"):
        parallel.init_tensor_parallel(2, "cpu")


def test_eval_vqa_with_tp2_reproduces_the_reference_metrics(tmp_path):
    import json
    data = FIXTURES / "reference" / "vqa-vlmo"
    out, predictions = tmp_path / "out.json", tmp_path / "p.jsonl"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "eval.vqa", "--model", "vlmo", "--tp", "2", "--checkpoint",
                             str(data / "vqa_checkpoint.pt"), "--data", str(data), "--device", "cpu", "--num-workers",
                             "0", "--output", str(out), "--predictions", str(predictions)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results, expected = json.loads(out.read_text()), json.loads((data / "expected.json").read_text())
    assert (results["vqa_accuracy"], results["vqa_score"]) == (expected["vqa_accuracy"], expected["vqa_score"])
    assert len(predictions.read_text().splitlines()) == expected["num_examples"]  # rank 0 alone writes
    assert result.stdout.count("vqa_accuracy") == 1


def test_eval_refuses_processes_that_are_not_tp_times_data_parallel(monkeypatch, capsys):
    from eval import sst2
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit) as info:
        sst2.main(["--device", "cpu", "--tp", "2"])
    assert info.value.code == 2 and "3 processes for --tp 2" in capsys.readouterr().err


def test_eval_with_tp_and_one_process_says_how_to_launch(monkeypatch, capsys):
    from eval import sst2
    for name in ("WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as info:
        sst2.main(["--device", "cpu", "--tp", "2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--tp 2 needs 2 processes: run under torchrun --standalone --nproc_per_node 2" in err
    assert "1 processes" not in err


@pytest.fixture(scope="module")
def vlmo_shards(tmp_path_factory):
    from weights_tools.shard import main as shard_main
    out = tmp_path_factory.mktemp("shards") / "vlmo-tp2"
    assert shard_main(["--model", "vlmo", "--tp", "2", "--checkpoint",
                       str(FIXTURES / "reference" / "vqa-vlmo" / "vqa_checkpoint.pt"), "--out", str(out)]) == 0
    return out


def test_shards_hold_each_ranks_half_and_record_the_cut(vlmo_shards):
    import json
    config = json.loads((vlmo_shards / "config.json").read_text())
    assert (config["model"], config["tp"], config["source"]["name"]) == ("vlmo-base-vqa", 2, "vqa_checkpoint.pt")
    ranks = [load_file(str(vlmo_shards / f"model-rank{r}-of-2.safetensors")) for r in range(2)]
    full = npu_models.load_model("vlmo", FIXTURES / "reference" / "vqa-vlmo" / "vqa_checkpoint.pt", device="cpu",
                                 task="vqa").state_dict()
    for key, tensor in full.items():
        sizes = [rank[key].numel() for rank in ranks]
        if any(part in key for part in ("attn.qkv.weight", "q_bias", "v_bias", "fc1", "attn.proj.weight", "fc2.weight",
                                        "relative_position_bias_table")):
            assert sizes == [tensor.numel() // 2] * 2, key
        else:
            assert sizes == [tensor.numel()] * 2, key


def test_shards_of_another_degree_or_model_are_refused(vlmo_shards):
    with pytest.raises(UserError, match="cut for tp=2, and this run uses tp=1: cut it again for tp=1"):
        npu_models.load_model("vlmo", vlmo_shards, device="cpu", task="vqa")
    with pytest.raises(UserError, match="holds a converted 'vlmo-base-vqa' model, not 'bert-base-cased-sst2'"):
        npu_models.load_model("bert", vlmo_shards, device="cpu")


def test_eval_vqa_on_pre_cut_shards_reproduces_the_reference_metrics(tmp_path, vlmo_shards):
    import json
    data = FIXTURES / "reference" / "vqa-vlmo"
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "eval.vqa", "--model", "vlmo", "--tp", "2", "--checkpoint", str(vlmo_shards),
                             "--data", str(data), "--device", "cpu", "--num-workers", "0", "--output", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results, expected = json.loads(out.read_text()), json.loads((data / "expected.json").read_text())
    assert (results["vqa_accuracy"], results["vqa_score"]) == (expected["vqa_accuracy"], expected["vqa_score"])


def test_a_rank_that_dies_ends_the_job_instead_of_hanging(tmp_path):
    import time
    script = tmp_path / "die.py"
    script.write_text(
        "import os, torch, npu_models\n"
        "from safetensors.torch import load_file\n"
        "from tests.conftest import BERT_FIXTURE\n"
        "model = npu_models.load_model('bert', BERT_FIXTURE / 'checkpoint', device='cpu', tp=2)\n"
        "if os.environ['RANK'] == '1':\n"
        "    os._exit(3)  # rank 1 dies before the first all-reduce\n"
        "inputs = load_file(str(BERT_FIXTURE / 'inputs.safetensors'))\n"
        "model(inputs['input_ids'], inputs['attention_mask'], inputs['token_type_ids'])\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT, "NPU_MODELS_DIST_TIMEOUT": "30"})
    assert result.returncode != 0 and time.monotonic() - start < 100
    assert "exitcode  : 3" in result.stderr  # torchrun names the rank that failed
