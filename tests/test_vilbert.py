import json
import shutil
import tarfile

import pytest
import torch

import npu_models
from eval import metrics, vqa
from npu_models.errors import UserError
from npu_models.models.vilbert.model import ViLBERT, ViLBERTConfig
from tests.conftest import FIXTURES
from npu_models.models.vilbert import checkpoint as vilbert_weights
from npu_models.checkpoints.io import check_state_dict, expected_shapes
from weights_tools.verify import verify

VILBERT_FIXTURE = FIXTURES / "reference" / "vilbert"
VQA_VILBERT = FIXTURES / "reference" / "vqa-vilbert"


def test_fixture_parity_every_tensor_of_the_live_layers():
    rows = verify("vilbert", VILBERT_FIXTURE)
    names = {r["name"] for r in rows}
    # text layer 3 and image layer 1 come after the last co-attention layer: the reference runs and
    # discards them, we do not run them, so they are not compared
    assert names == {"text_embeddings", "image_embeddings", "text_layer_0_out", "text_layer_1_out", "text_layer_2_out",
                     "image_layer_0_out", "coattn_0_text_out", "coattn_0_image_out", "coattn_1_text_out",
                     "coattn_1_image_out", "encoded_text_final", "encoded_image_final", "pooled_text", "pooled_image",
                     "pooled_fused", "logits", "probs"}
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


def test_every_official_key_maps_onto_the_full_size_model():
    official = json.loads((VILBERT_FIXTURE / "official_keys.json").read_text())
    with torch.device("meta"):
        state = {k["key"]: torch.empty([10026 if s == "num_answers" else s for s in k["shape"]])
                 for k in official["keys"]}
        ours, origin, unexpected = vilbert_weights.rename(state)
        model = ViLBERT(ViLBERTConfig())
    check_state_dict(ours, expected_shapes(model), lambda key: origin.get(key, key), unexpected, "official_keys.json")
    classifier = sum(p.numel() for p in model.classifier.parameters())
    assert sum(p.numel() for p in model.parameters()) - classifier == official["num_params_excluding_classifier"]


def test_answer_count_and_text_config_come_from_the_archive_and_its_sidecar():
    config = npu_models.load_model("vilbert", VILBERT_FIXTURE / "model.tar.gz", device="cpu").config
    assert config.num_answers == 23 and config.text.embed_dim == 48 and config.fusion == "mul"
    assert vilbert_weights.read_answers(VILBERT_FIXTURE / "model.tar.gz")[:2] == ["@@PADDING@@", "@@UNKNOWN@@"]


def test_an_unknown_text_model_asks_for_its_config(tmp_path):
    shutil.copy(VILBERT_FIXTURE / "model.tar.gz", tmp_path / "model.tar.gz")  # no text_model_config.json beside it
    with pytest.raises(UserError, match="'fixture-tiny-bert-A', whose config is not built in"):
        npu_models.load_model("vilbert", tmp_path / "model.tar.gz", device="cpu")
    model = npu_models.load_model("vilbert", tmp_path / "model.tar.gz", device="cpu",
                                  config_file=VILBERT_FIXTURE / "text_model_config.json")
    assert model.config.text.depth == 4


def test_a_broken_archive_is_named(tmp_path):
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as archive:
        archive.add(VILBERT_FIXTURE / "text_model_config.json", arcname="config.json")
    with pytest.raises(UserError, match="lacks weights.th"):
        npu_models.load_model("vilbert", tmp_path / "model.tar.gz", device="cpu")


def test_dead_layers_do_not_change_the_logits():
    model = npu_models.load_model("vilbert", VILBERT_FIXTURE / "model.tar.gz", device="cpu")
    from safetensors.torch import load_file
    inputs = load_file(str(VILBERT_FIXTURE / "inputs.safetensors"))
    args = [inputs[k] for k in ("box_features", "box_coordinates", "box_mask", "token_ids", "mask", "type_ids")]
    with torch.no_grad():
        before = model(*args)
        torch.nn.init.normal_(model.text_layers[3].mlp.fc1.weight)
        torch.nn.init.normal_(model.image_layers[1].mlp.fc1.weight)
        assert torch.equal(model(*args), before)


def test_graph_mode_matches_eager(compiled_graphs):
    model = npu_models.load_model("vilbert", VILBERT_FIXTURE / "model.tar.gz", device="cpu")
    from safetensors.torch import load_file
    inputs = load_file(str(VILBERT_FIXTURE / "inputs.safetensors"))
    args = [inputs[k] for k in ("box_features", "box_coordinates", "box_mask", "token_ids", "mask", "type_ids")]
    compiled = npu_models.runtime.compile_model(model, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), model(*args), atol=1e-5, rtol=1e-5)
    assert compiled_graphs() == (1, 0)


def test_eval_vqa_reproduces_expected_json(tmp_path):
    out, predictions = tmp_path / "out.json", tmp_path / "p.jsonl"
    vqa.main(["--model", "vilbert", "--checkpoint", str(VQA_VILBERT / "model.tar.gz"), "--data", str(VQA_VILBERT),
              "--device", "cpu", "--num-workers", "0", "--batch-size", "7", "--output", str(out),
              "--predictions", str(predictions)])
    results, expected = json.loads(out.read_text()), json.loads((VQA_VILBERT / "expected.json").read_text())
    for key in ("vqa_accuracy", "vqa_score", "precision", "recall", "fscore", "num_examples"):
        assert results[key] == expected[key], key
    records = {r["question_id"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    for row in expected["per_question"]:
        got = records[row["question_id"]]
        assert (got["answer"], got["label"]) == (row["answer"], row["label"])
        # expected.json rounds per-question values to 6 places
        assert (got["accuracy"], got["score"]) == pytest.approx((row["vqa_accuracy"], row["vqa_score"]), abs=1e-6)


def test_missing_region_features_are_reported_and_skipped(tmp_path, capsys):
    data = tmp_path / "vqa"
    shutil.copytree(VQA_VILBERT, data)
    missing = sorted((data / "features").iterdir())[0]
    missing.unlink()
    out = tmp_path / "out.json"
    vqa.main(["--model", "vilbert", "--checkpoint", str(data / "model.tar.gz"), "--data", str(data), "--device", "cpu",
              "--num-workers", "0", "--output", str(out)])
    results = json.loads(out.read_text())
    assert results["num_unreadable"] > 0 and results["num_examples"] == 30 - results["num_unreadable"]
    assert missing.name in capsys.readouterr().err


def test_label_weights_use_the_normalised_answers():
    index = {"@@PADDING@@": 0, "@@UNKNOWN@@": 1, "2": 2, "dog": 3, "red white": 4}
    weights = metrics.answer_label_weights(["two", "2", "a dog", "dog", "Dog", "red, white", "cat", "2", "2", "2"], index)
    assert weights == {2: 1.0, 3: 1.0, 4: 1 / 3}
    assert metrics.micro_precision_recall_f1(2, 4, 5) == pytest.approx((0.5, 0.4, 4 / 9))
