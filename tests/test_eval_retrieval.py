import json
import shutil

import pytest
import torch

import npu_models
from eval import metrics, retrieval
from eval.data.retrieval import read_retrieval
from npu_models.errors import UserError
from npu_models.tokenizer import bert_tokenizer, encode_padded
from npu_models.transforms import preprocess
from tests.conftest import FIXTURES
from tests.imagenet_layout import synthetic_image

VLMO_FIXTURE = FIXTURES / "reference" / "vlmo"
VQA_VLMO = FIXTURES / "reference" / "vqa-vlmo"
CAPTIONS = [["two circles on blue", "a blue picture", "round shapes", "what is this", "some color"],
            ["a red square", "the edge of a table", "stripes and gradient", "a little woman", "big train"],
            ["orange center", "green stripe", "standing at the edge", "wearing a hat", "a gradient"]]


def test_recall_hand_computed():
    # 3 images x 4 captions; image 0 owns captions 0-1, image 1 owns 2, image 2 owns 3.
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.0],    # image 0: its caption 0 ranks first            -> TR rank 0
                           [0.7, 0.6, 0.5, 0.4],    # image 1: its caption 2 ranks third            -> TR rank 2
                           [0.1, 0.2, 0.3, 0.05]])  # image 2: its caption 3 ranks last (fourth)    -> TR rank 3
    image_to_texts, text_to_image = [[0, 1], [2], [3]], [0, 0, 1, 2]
    # IR ranks per caption (column): c0 -> image 0 first (0); c1 -> image 1 beats image 0 (1);
    # c2 -> image 0 beats image 1 (1); c3 -> image 1 beats image 2 (1)
    out = metrics.retrieval_recall(scores, scores.T, image_to_texts, text_to_image)
    assert (out["txt_r1"], out["txt_r5"], out["txt_r10"]) == (1 / 3, 1.0, 1.0)  # fractions, as every metric
    assert (out["img_r1"], out["img_r5"], out["img_r10"]) == (0.25, 1.0, 1.0)
    assert out["r_mean"] == pytest.approx(((1 / 3 + 2) / 3 + 2.25 / 3) / 2)


def write_dataset(root, karpathy: bool):
    (root / "val2014").mkdir(parents=True)
    for i in range(3):
        synthetic_image(300 + i).save(root / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    if karpathy:
        images = [{"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "split": "test",
                   "sentences": [{"raw": c, "tokens": c.split()} for c in caps]} for i, caps in enumerate(CAPTIONS)]
        images.insert(1, {"filepath": "train2014", "filename": "x.jpg", "split": "train", "sentences": [{"raw": "x"}]})
        (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    else:
        (root / "coco_karpathy_test.json").write_text(json.dumps(
            [{"image": f"val2014/COCO_val2014_{i:012d}.jpg", "caption": caps} for i, caps in enumerate(CAPTIONS)]))
    shutil.copy(VLMO_FIXTURE / "retrieval_checkpoint.pt", root / "retrieval.pt")
    shutil.copy(VLMO_FIXTURE / "config.json", root / "config.json")
    shutil.copy(VQA_VLMO / "vocab.txt", root / "vocab.txt")


@pytest.mark.parametrize("karpathy", [True, False])
def test_both_annotation_formats_read_the_same_split(tmp_path, karpathy):
    write_dataset(tmp_path, karpathy)
    split = read_retrieval(tmp_path)
    assert [p.name for p in split.image_paths] == [f"COCO_val2014_{i:012d}.jpg" for i in range(3)]
    assert split.texts == [c for caps in CAPTIONS for c in caps]
    assert split.image_to_texts == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]


def direct_vlmo_scores(directory):
    """The VLMo retrieval model of `directory`, its split, the preprocessed images and the image x caption
    similarities computed directly, without the eval loop."""
    model = npu_models.load_model("vlmo", directory / "retrieval.pt", device="cpu", task="retrieval")
    split = read_retrieval(directory)
    pixels = torch.stack([preprocess(p, model.config.transform) for p in split.image_paths])
    ids, masks = encode_padded(bert_tokenizer(directory / "vocab.txt", True, 12), split.texts, 12)
    with torch.no_grad():
        return model, split, pixels, model.image_embeds(pixels) @ model.text_embeds(ids, masks).T


def test_eval_equals_recall_of_directly_computed_embeddings(tmp_path):
    write_dataset(tmp_path, karpathy=True)
    out = tmp_path / "out.json"
    retrieval.main(["--model", "vlmo", "--checkpoint", str(tmp_path / "retrieval.pt"), "--data", str(tmp_path),
                    "--device", "cpu", "--batch-size", "2", "--num-workers", "0", "--output", str(out)])
    results = json.loads(out.read_text())
    model, split, pixels, scores = direct_vlmo_scores(tmp_path)
    expected = metrics.retrieval_recall(scores, scores.T, split.image_to_texts, split.text_to_image)
    assert {k: results[k] for k in expected} == expected
    assert (results["num_images"], results["num_texts"]) == (3, 15)
    # the embeddings are what the reference computes: unit vectors from the projection of the class token
    assert torch.allclose(model.image_embeds(pixels).norm(dim=-1), torch.ones(3))


def test_missing_annotations_and_images_are_explained(tmp_path, capsys):
    with pytest.raises(UserError, match="no retrieval annotations"):
        read_retrieval(tmp_path)
    write_dataset(tmp_path, karpathy=False)
    (tmp_path / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(SystemExit):
        retrieval.main(["--checkpoint", str(tmp_path / "retrieval.pt"), "--data", str(tmp_path), "--device", "cpu",
                        "--num-workers", "0"])
    assert "COCO_val2014_000000000001.jpg cannot be read" in capsys.readouterr().err


def test_a_vqa_checkpoint_is_refused_for_retrieval(tmp_path, capsys):
    write_dataset(tmp_path, karpathy=False)
    shutil.copy(VLMO_FIXTURE / "vqa_checkpoint.pt", tmp_path / "vqa.pt")
    with pytest.raises(SystemExit):
        retrieval.main(["--model", "vlmo", "--checkpoint", str(tmp_path / "vqa.pt"), "--data", str(tmp_path),
                        "--device", "cpu", "--num-workers", "0"])
    assert "is a vqa checkpoint (vlmo-base-vqa); retrieval needs a retrieval fine-tune" in capsys.readouterr().err


def test_an_empty_split_is_explained(tmp_path):
    (tmp_path / "coco_karpathy_test.json").write_text("[]")
    with pytest.raises(UserError, match="the test split in .* has no images"):
        read_retrieval(tmp_path)
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps([{"image": "val2014/a.jpg", "caption": []}]))
    with pytest.raises(UserError, match="image a.jpg has no captions"):
        read_retrieval(tmp_path)


def test_captions_run_sorted_and_cut_to_each_batchs_longest_then_come_back_in_order():
    from eval.loop import EvalLoop
    lengths = [5, 2, 7, 3, 2]
    masks = (torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = masks * torch.arange(1, 6)[:, None]  # caption i's tokens are all i + 1
    widths = []

    def encode(batch_ids, batch_masks):
        widths.append(batch_ids.shape[1])
        assert bool(batch_masks[:, -1].any())  # no batch keeps a column of padding only
        return batch_ids.float().amax(dim=1, keepdim=True)  # which caption: its token value

    with EvalLoop(torch.device("cpu")) as loop:
        embeds = retrieval.text_pass(loop, encode, ids, masks, 2, torch.device("cpu"))
    assert embeds.flatten().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # caption order
    assert widths == [2, 5, 7]  # lengths sorted (2, 2 | 3, 5 | 7), each batch as wide as its longest


def run_vlmo(tmp_path, *extra) -> dict:
    out = tmp_path / "out.json"
    retrieval.main(["--model", "vlmo", "--checkpoint", str(tmp_path / "retrieval.pt"), "--data", str(tmp_path),
                    "--device", "cpu", "--batch-size", "2", "--num-workers", "0", "--output", str(out), *extra])
    return {k: v for k, v in json.loads(out.read_text()).items()
            if k not in ("samples_per_second", "latency_ms_p50", "latency_ms_p90", "time_to_first_batch_s")}


def test_vlmo_predictions_list_each_querys_top10_as_json_lines_and_resume(tmp_path, capsys):
    write_dataset(tmp_path, karpathy=False)
    predictions = tmp_path / "p.jsonl"
    first = run_vlmo(tmp_path, "--predictions", str(predictions))
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    model, split, pixels, scores = direct_vlmo_scores(tmp_path)
    assert [r["key"] for r in records] == [f"i2t:{i}" for i in range(3)] + [f"t2i:{t}" for t in range(15)]
    assert [r["query"] for r in records] == [p.name for p in split.image_paths] + split.texts
    assert [r["top10"] for r in records[:3]] == scores.topk(10, dim=1).indices.tolist()  # 10 of 15 captions
    assert [r["top10"] for r in records[3:]] == scores.T.topk(3, dim=1).indices.tolist()  # all 3 images
    assert json.loads((tmp_path / "p.jsonl.run.json").read_text())["command"] == "retrieval"

    full = predictions.read_text()
    lines = full.splitlines(keepends=True)
    predictions.write_text("".join(lines[:7]) + lines[7][:10])  # an interruption: 7 lines and a cut-off one
    assert run_vlmo(tmp_path, "--predictions", str(predictions)) == first
    assert predictions.read_text() == full
    assert "resuming: 7 of 18 predictions already in" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # fewer images: other candidates for the same queries
        run_vlmo(tmp_path, "--predictions", str(predictions), "--limit", "2")
    assert "holds rankings of another run" in capsys.readouterr().err


def test_retrieval_predictions_of_other_data_are_refused(tmp_path, capsys):
    write_dataset(tmp_path, karpathy=False)
    predictions = tmp_path / "p.jsonl"
    run_vlmo(tmp_path, "--predictions", str(predictions))
    annotations = tmp_path / "coco_karpathy_test.json"
    annotations.write_text(annotations.read_text().replace("two circles on blue", "two squares on red"))
    with pytest.raises(SystemExit):
        run_vlmo(tmp_path, "--predictions", str(predictions))
    assert "t2i:0 with a different query ('two circles on blue' vs 'two squares on red')" in capsys.readouterr().err
