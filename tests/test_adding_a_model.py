"""A new model is one folder plus one registry line: the toy family (tests/toy_family/, shaped as
npu_models/models/<family>/ is) registered by one line is found, built, split, timed and verified by the
tools as they stand, with no other edit anywhere."""
import pytest
import torch
from safetensors.torch import save_file

import npu_models
from eval.bench import throughput as bench
from npu_models import parallel, registry
from npu_models.checkpoints.rename import official_names
from tests import toy_family
from tests.toy_family.checkpoint import TABLE
from tests.toy_family.model import ToyClassifier
from weights_tools import verify


@pytest.fixture
def toy_registered(monkeypatch):
    """The one registry line: `*toy.SPECS` in registry.REGISTRY's list."""
    for spec in toy_family.SPECS:
        monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    return registry.get_entry("toy")


def test_a_registered_family_is_looked_up_by_name_short_name_and_task(toy_registered):
    assert toy_registered.name == "toy-classifier" and toy_registered.family == "toy"
    assert registry.get_entry("toy-classifier", task="sst2") is toy_registered
    assert registry.default_entry("sst2").name == "bert-base-cased-sst2"  # registered later: not the default


def test_load_model_builds_it_with_random_weights(toy_registered):
    with pytest.warns(npu_models.RandomWeightsWarning):
        model = npu_models.load_model("toy", device="cpu", task="sst2")
    assert isinstance(model, ToyClassifier) and not model.training
    eager = ToyClassifier(toy_registered.default_config()).init_weights()  # the registry's recipe, by hand
    ids = torch.randint(1, 64, (3, 7))
    torch.testing.assert_close(model(ids), eager.eval()(ids))


def test_its_tp_plan_is_applied(toy_registered):
    config = toy_registered.default_config()
    split = registry.meta_model(toy_registered, config, parallel.TensorParallel(rank=1, size=2))
    for block in split.blocks:
        assert block.attn.num_heads == 1 and block.attn.qkv.out_features == 3 * config.embed_dim // 2
        assert block.mlp.fc1.out_features == config.mlp_dim // 2
        assert isinstance(block.attn.proj, parallel.RowParallelLinear) and isinstance(block.mlp.fc2,
                                                                                      parallel.RowParallelLinear)


def test_eval_bench_finds_its_parts(toy_registered):
    model = toy_registered.build(toy_registered.default_config()).init_weights().eval()
    (name, part), = bench.benchmarks_of(toy_registered).items()
    inputs, seq_len = part.make_inputs(model.config, 2, 5, torch.device("cpu"))
    assert name == "toy-classifier" and seq_len == 5 and part.timed_part(model)(*inputs).shape == (2, 2)


def test_verify_converts_its_official_layout_and_compares_its_named_outputs(toy_registered, tmp_path):
    reference = toy_registered.build(toy_registered.default_config()).init_weights(seed=3).eval()
    official_name = official_names(TABLE, {})  # our key -> the toy's "official" key
    save_file({official_name(k): v for k, v in reference.state_dict().items()}, str(tmp_path / "toy.safetensors"))
    ids, mask = torch.randint(1, 64, (2, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    save_file({"input_ids": ids, "attention_mask": mask}, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        outputs = {"logits": reference(ids, mask), "embeddings": reference.embeddings(ids)}
    save_file(outputs, str(tmp_path / "outputs.safetensors"))
    rows = verify.verify("toy", tmp_path)
    assert sorted(r["name"] for r in rows) == ["embeddings", "logits"] and all(r["ok"] for r in rows), rows

    save_file({"logits": outputs["logits"] + 1e-3}, str(tmp_path / "outputs.safetensors"))  # a wrong reference
    assert not verify.verify("toy", tmp_path)[0]["ok"]
