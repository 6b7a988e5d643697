"""eval.vqa per question, on a model whose answers vary: what it predicts must equal the model run on the
question tokenised by transformers' reference tokenizer with its attention mask (aggregates alone, on a
model that answers "yes" to everything, cannot see a tokenisation or mask bug)."""
import json
import shutil

import pytest
import torch
from PIL import Image

import npu_models
from eval import vqa
from tests.conftest import FIXTURES

transformers = pytest.importorskip("transformers")
VQA_VLMO = FIXTURES / "reference" / "vqa-vlmo"


@pytest.fixture
def varied_vqa(tmp_path):
    """The fixture dataset with a checkpoint whose answer head reads the small differences between the
    questions' pooled features (a randomly initialised encoder makes them nearly equal), so answers spread."""
    data = tmp_path / "vqa"
    shutil.copytree(VQA_VLMO, data)
    questions = json.loads((data / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    model = npu_models.load_model("vlmo", data / "vqa_checkpoint.pt", device="cpu", task="vqa")
    with torch.no_grad():
        features = model.joint_cls_feats(*reference_inputs(model, data, questions))
    generator = torch.Generator().manual_seed(5)
    checkpoint = torch.load(data / "vqa_checkpoint.pt", weights_only=True)
    state = checkpoint["state_dict"]
    first = torch.randn(state["vqa_classifier.0.weight"].shape, generator=generator) / features.std(dim=0)
    state["vqa_classifier.0.weight"], state["vqa_classifier.0.bias"] = first, -first @ features.mean(dim=0)
    state["vqa_classifier.3.weight"] = torch.randn(state["vqa_classifier.3.weight"].shape, generator=generator)
    torch.save(checkpoint, data / "vqa_checkpoint.pt")
    return data


def reference_inputs(model, data, questions):
    """Images through the model's transform; questions through transformers' BertTokenizer (uncased), padded
    to max_text_len with their attention mask."""
    tokenizer = transformers.BertTokenizer(str(data / "vocab.txt"), do_lower_case=True)
    text = tokenizer([q["question"] for q in questions], padding="max_length", truncation=True,
                     max_length=model.config.max_text_len, return_tensors="pt")
    transform = model.config.transform.build()
    images = torch.stack([transform(Image.open(data / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg").convert("RGB"))
                          for q in questions])
    return images, text["input_ids"], text["attention_mask"]


def reference_labels(data, questions) -> list[int]:
    model = npu_models.load_model("vlmo", data / "vqa_checkpoint.pt", device="cpu", task="vqa")
    with torch.no_grad():
        return model(*reference_inputs(model, data, questions)).argmax(-1).tolist()


def test_each_answer_equals_the_model_on_reference_tokenised_questions(tmp_path, varied_vqa):
    predictions = tmp_path / "p.jsonl"
    vqa.main(["--model", "vlmo", "--checkpoint", str(varied_vqa / "vqa_checkpoint.pt"), "--data", str(varied_vqa),
              "--device", "cpu", "--batch-size", "8", "--num-workers", "0", "--predictions", str(predictions)])
    questions = json.loads((varied_vqa / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    records = {r["question_id"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    ours = [records[q["question_id"]]["label"] for q in questions]
    assert len(set(ours)) >= 4  # the answers spread, so a changed input changes some of them
    assert ours == reference_labels(varied_vqa, questions)
