"""Pre-cut shards hold, and give each rank, exactly its own share: tensor for tensor against the plan applied
to the full model, and per example under torchrun against one process on the full checkpoint.

Sizes alone cannot tell rank 0's half from rank 1's (an even split has the same shapes on every rank), and
aggregate metrics of a fixture that answers one class cannot tell a wrong model from the right one."""
import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import npu_models
from npu_models import parallel, registry
from npu_models.checkpoints.io import read_converted, shard_file
from tests.conftest import BERT_FIXTURE, FIXTURES
from weights_tools.shard import shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TP = 2
SST2_SAMPLE = os.path.join(ROOT, "eval", "samples", "sst2", "dev.tsv")

# one checkpoint a family; between them every style of plan: heads and mlp (all), heads over fused q/k/v
# with separate q/v biases, multiway MLPs and per-head bias columns (vlmo), cross-attention with separate
# q and kv (blip's text encoder, vilbert's co-attention), and 3 heads shared 1 + 2 (blip)
CHECKPOINTS = {"bert": BERT_FIXTURE / "checkpoint", "vit": FIXTURES / "reference" / "vit" / "checkpoint.npz",
               "blip": FIXTURES / "reference" / "blip" / "checkpoint.pth",
               "vlmo": FIXTURES / "reference" / "vlmo" / "vqa_checkpoint.pt",
               "vilbert": FIXTURES / "reference" / "vilbert" / "model.tar.gz"}


def plan_applied(full: torch.nn.Module, model_name: str, rank: int) -> dict[str, torch.Tensor]:
    """What rank `rank` of TP ranks should hold: the model's plan applied to a copy of the full model."""
    plan = registry.get_entry(model_name).tp_plan
    return parallel.apply_plan(copy.deepcopy(full), plan, parallel.TensorParallel(rank, TP)).state_dict()


def assert_same_tensors(found: dict, expected: dict, what: str) -> None:
    assert sorted(found) == sorted(expected), what
    for key, tensor in expected.items():
        assert found[key].shape == tensor.shape and torch.equal(found[key], tensor), f"{what}: {key}"


@pytest.mark.parametrize("family", list(CHECKPOINTS))
def test_each_ranks_shard_is_the_plan_applied_to_the_full_model(tmp_path, family):
    out = shard(family, CHECKPOINTS[family], TP, tmp_path / "shards")
    model_name = json.loads((out / "config.json").read_text())["model"]
    full = npu_models.load_model(family, CHECKPOINTS[family], device="cpu")
    expected = [plan_applied(full, model_name, rank) for rank in range(TP)]
    # the ranks' shares differ, so a file or a reader that hands every rank one rank's share cannot pass
    assert any(not torch.equal(expected[0][k], expected[1][k]) for k in expected[0] if
               expected[0][k].shape == expected[1][k].shape)
    for rank in range(TP):
        assert_same_tensors(load_file(str(out / shard_file(rank, TP))), expected[rank], f"rank {rank}'s file")
        _, state = read_converted(out, rank, TP, model=model_name)  # what the loader hands this rank
        assert_same_tensors(state, expected[rank], f"rank {rank}'s read")


def sst2_probs(argv: list[str], predictions, torchrun: bool = False) -> torch.Tensor:
    """Per-sentence probabilities of an eval.sst2 run (its --predictions records), in dataset order."""
    argv = ["--data", str(SST2_SAMPLE), "--device", "cpu", "--batch-size", "8", *argv, "--predictions", str(predictions)]
    if torchrun:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 str(TP), "-m", "eval.sst2", "--tp", str(TP), *argv],
                                capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    else:
        from eval import sst2
        sst2.main(argv)
    records = sorted((json.loads(line) for line in predictions.read_text().splitlines()), key=lambda r: r["index"])
    return torch.tensor([r["probs"] for r in records])


def split_classifier(source, directory):
    """A copy of the BERT fixture (a Hugging Face directory) whose classifier bias is moved so that half the
    sample's sentences come out positive (the fixture alone calls every one positive)."""
    shutil.copytree(source, directory)
    margins = sst2_probs(["--checkpoint", str(source)], directory.parent / "margins.jsonl").log().diff(dim=-1)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    state["classifier.bias"][1] -= margins.median() + 1e-4
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def test_tp2_on_pre_cut_shards_gives_every_sentence_the_probabilities_of_one_process(tmp_path):
    checkpoint = split_classifier(BERT_FIXTURE / "checkpoint", tmp_path / "split")
    expected = sst2_probs(["--checkpoint", str(checkpoint)], tmp_path / "one.jsonl")
    assert 0 < int(expected.argmax(-1).sum()) < len(expected)  # both classes are predicted
    shards = shard("bert", checkpoint, TP, tmp_path / "shards")
    found = sst2_probs(["--checkpoint", str(shards)], tmp_path / "tp2.jsonl", torchrun=True)
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)
    assert found.argmax(-1).tolist() == expected.argmax(-1).tolist()
