import json
import shutil

import pytest

from eval import metrics, vqa
from eval.data.vqa import build_answer_vocabulary, normalize_word, read_answer2label
from eval.vqa_normalize import normalize_answer, process_punctuation
from tests.conftest import FIXTURES

VQA_VLMO = FIXTURES / "reference" / "vqa-vlmo"


def test_reference_dataset_reproduces_expected_json_exactly(tmp_path):
    out, predictions = tmp_path / "out.json", tmp_path / "p.jsonl"
    vqa.main(["--model", "vlmo", "--checkpoint", str(VQA_VLMO / "vqa_checkpoint.pt"), "--data", str(VQA_VLMO),
              "--device", "cpu", "--batch-size", "8", "--num-workers", "0", "--output", str(out),
              "--predictions", str(predictions)])
    results, expected = json.loads(out.read_text()), json.loads((VQA_VLMO / "expected.json").read_text())
    assert results["vqa_accuracy"] == expected["vqa_accuracy"]
    assert results["vqa_score"] == expected["vqa_score"]
    assert results["num_examples"] == expected["num_examples"]
    records = {r["question_id"]: r for r in map(json.loads, predictions.read_text().splitlines())}
    for row in expected["per_question"]:
        got = records[row["question_id"]]
        assert (got["answer"], got["label"], got["accuracy"], got["score"]) == (
            row["answer"], row["label"], row["accuracy"], row["score"])


def test_resume_and_evalai_submission_on_a_split_without_annotations(tmp_path):
    data = tmp_path / "vqa"
    shutil.copytree(VQA_VLMO, data)
    questions = json.loads((data / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    questions["data_subtype"] = "test-dev2015"
    (data / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(json.dumps(questions))
    (data / "val2014").rename(data / "test2015")
    for image in (data / "test2015").iterdir():
        image.rename(image.with_name(image.name.replace("val2014", "test2015")))
    predictions, submission = tmp_path / "p.jsonl", tmp_path / "submit.json"
    args = ["--model", "vlmo", "--checkpoint", str(data / "vqa_checkpoint.pt"), "--data", str(data), "--split",
            "test-dev2015", "--device", "cpu", "--num-workers", "0", "--batch-size", "5", "--predictions",
            str(predictions), "--submission", str(submission), "--output", str(tmp_path / "out.json")]
    vqa.main(args)
    first = json.loads(submission.read_text())
    predictions.write_text("".join(predictions.read_text().splitlines(keepends=True)[:10]))
    vqa.main(args)
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["num_computed"] == 18 and results["vqa_accuracy"] is None
    assert sorted(json.loads(submission.read_text()), key=lambda r: r["question_id"]) == sorted(
        first, key=lambda r: r["question_id"])
    expected = json.loads((VQA_VLMO / "expected.json").read_text())["predictions"]
    assert {str(r["question_id"]): r["answer"] for r in first} == expected
    assert set(first[0]) == {"question_id", "answer"}


@pytest.mark.parametrize("text, normalized", [
    ("a circle", "circle"), ("The Circle", "circle"), ("three", "3"), ("none", "0"), ("dont", "don't"),
    ("yes!", "yes"), ("red, white", "red white"), ("1,000", "1000"), ("t-shirt", "t shirt"), ("2.5", "2.5"),
    ("end.", "end"), ("hot dog's", "hot dog's"),
])
def test_answer_normalisation(text, normalized):
    assert normalize_answer(text) == normalized


def test_punctuation_quirks_of_the_official_code():
    assert process_punctuation("a - b") == "a  b"     # touching a space: deleted
    assert process_punctuation("a-b") == "a b"        # inside a word: a space
    assert process_punctuation("1,5 a-b") == "15 ab"  # a digit,digit anywhere: every mark deleted


def test_vqa_accuracy_hand_computed():
    # 3 of 10 humans said "circle": leaving one of those three out leaves 2 matches (2/3), else 3 (1.0).
    answers = ["circle"] * 3 + ["oval"] * 4 + ["round"] * 3
    assert metrics.vqa_accuracy("circle", answers) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)
    assert metrics.vqa_accuracy("a circle", answers) == metrics.vqa_accuracy("circle", answers)
    assert metrics.vqa_accuracy("square", answers) == 0.0
    # human answers lose only punctuation, so "two" among them never matches the normalised "2"
    assert metrics.vqa_accuracy("2", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)
    assert metrics.vqa_accuracy("two", ["two"] * 5 + ["2"] * 5) == pytest.approx(1.0)
    # ...and a predicted "two" becomes "2", so it misses nine humans who wrote "two" (a quirk of vqaEval.py)
    assert metrics.vqa_accuracy("two", ["two"] * 9 + ["three"]) == 0.0
    # when all ten humans agree nothing is normalised: "a dog" does not match "dog"
    assert metrics.vqa_accuracy("a dog", ["dog"] * 10) == 0.0
    assert metrics.vqa_accuracy("dog", ["dog"] * 10) == 1.0


def test_vqa_soft_score_table():
    assert [metrics.vqa_soft_score("yes", ["yes"] * n + ["no"] * (10 - n)) for n in range(6)] == [
        0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert metrics.vqa_soft_score("yes", ["Yes"] * 10) == 0.0  # raw strings, no normalisation


def test_answer_vocabulary_rebuilt_as_the_reference_does(tmp_path):
    def annotations(answers):
        return {"annotations": [{"multiple_choice_answer": a, "answers": []} for a in answers]}
    train = ["two"] * 5 + ["yes"] * 12 + ["a dog"] * 4 + ["cat"] * 8
    val = ["2"] * 4 + ["dog"] * 5 + ["cat"] + ["no"] * 9
    (tmp_path / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(annotations(train)))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations(val)))
    assert build_answer_vocabulary(tmp_path) == ["2", "yes", "dog", "cat", "no"]  # first-occurrence order
    assert normalize_word("1,000") == "1000" and normalize_word("red, white") == "red white"


def test_answer2label_errors_name_the_line(tmp_path):
    bad = tmp_path / "answer2label.txt"
    bad.write_text('{"answer": "yes", "label": 0}\nnot json\n')
    with pytest.raises(Exception, match=r"answer2label.txt:2: expected a JSON object"):
        read_answer2label(bad)
    assert read_answer2label(VQA_VLMO / "answer2label.txt")[:3] == ["no", "2", "yes"]


def test_answer_count_mismatch_is_explained(tmp_path, capsys):
    answers = tmp_path / "answer2label.txt"
    answers.write_text("".join(json.dumps({"answer": str(i), "label": i}) + "\n" for i in range(5)))
    with pytest.raises(SystemExit):
        vqa.main(["--checkpoint", str(VQA_VLMO / "vqa_checkpoint.pt"), "--data", str(VQA_VLMO), "--device", "cpu",
                  "--answers", str(answers), "--num-workers", "0"])
    assert "predicts 17 answers but the answer list has 5" in capsys.readouterr().err


def test_unreadable_images_skip_their_questions_even_a_whole_batch(tmp_path):
    data = tmp_path / "vqa"
    shutil.copytree(VQA_VLMO, data)
    images = sorted((data / "val2014").iterdir())
    images[0].write_bytes(b"not a jpeg")
    out = tmp_path / "out.json"
    vqa.main(["--model", "vlmo", "--checkpoint", str(data / "vqa_checkpoint.pt"), "--data", str(data),
              "--device", "cpu", "--batch-size", "1", "--num-workers", "0", "--output", str(out)])
    results = json.loads(out.read_text())
    questions = json.loads((data / "v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    image_id = int(images[0].stem.rsplit("_", 1)[1])
    skipped = sum(q["image_id"] == image_id for q in questions)
    assert skipped and results["num_unreadable"] == skipped
    assert results["num_examples"] == len(questions) - skipped
