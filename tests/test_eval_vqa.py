import json
import re
import shutil
from decimal import ROUND_HALF_UP, Decimal

import pytest

from eval import metrics, vqa
from eval.data.vqa import build_answer_vocabulary, normalize_word, read_answer2label, read_vqa
from eval.vqa_normalize import normalize_answer, process_punctuation
from npu_models.errors import UserError
from tests.conftest import FIXTURES

VQA_VLMO = FIXTURES / "reference" / "vqa-vlmo"


def test_reference_dataset_reproduces_expected_json_exactly(tmp_path):
    # expected.json's accuracies are vqaEval.py's: its HEAD (a013f00, run under Python 2.7 on expected.json's
    # predictions) gives every per-question value here, and so does the version before it (every prediction
    # is "yes", which neither version's normalisation changes). OFFICIAL_CASES below tells the two apart.
    out, predictions = tmp_path / "out.json", tmp_path / "p.jsonl"
    vqa.main(["--model", "vlmo", "--checkpoint", str(VQA_VLMO / "vqa_checkpoint.pt"), "--data", str(VQA_VLMO),
              "--device", "cpu", "--batch-size", "8", "--num-workers", "0", "--output", str(out),
              "--predictions", str(predictions)])
    results, expected = json.loads(out.read_text()), json.loads((VQA_VLMO / "expected.json").read_text())
    assert results["vqa_accuracy"] == expected["vqa_accuracy"]
    assert results["vqa_score"] == expected["vqa_score"]
    assert results["num_examples"] == expected["num_examples"]
    # what vqaEval.py (a013f00, Python 2.7) prints for the predictions of expected.json
    assert {k: official_figure(v) for k, v in results["per_answer_type"].items()} == {
        "number": 0.0, "other": 0.0, "yes/no": 76.0}
    assert {k: official_figure(v) for k, v in results["per_question_type"].items() if v} == {
        "are all": 100.0, "are there": 90.0, "do you": 30.0, "is the": 87.5, "is there a": 100.0, "is this a": 90.0}
    assert len(results["per_question_type"]) == 18
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
    assert process_punctuation("a." * 40) == "a" * 32 + "a." * 8  # re.UNICODE passed as re.sub's count: 32
    assert process_punctuation("\uff11,\uff12") == "\uff11 \uff12"  # Python 2's \\d: ASCII digits only


def test_vqa_accuracy_hand_computed():
    # 3 of 10 humans said "circle": leaving one of those three out leaves 2 matches (2/3), else 3 (1.0).
    answers = ["circle"] * 3 + ["oval"] * 4 + ["round"] * 3
    assert metrics.vqa_accuracy("circle", answers) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)
    assert metrics.vqa_accuracy("a circle", answers) == metrics.vqa_accuracy("circle", answers)
    assert metrics.vqa_accuracy("square", answers) == 0.0
    # humans who disagree are normalised like the prediction (vqaEval.py at HEAD, "Fixed processing answers
    # bug"): "two" and "2" are the same answer on both sides
    assert metrics.vqa_accuracy("2", ["two"] * 5 + ["2"] * 5) == 1.0
    assert metrics.vqa_accuracy("two", ["two"] * 5 + ["2"] * 5) == 1.0
    assert metrics.vqa_accuracy("two", ["two"] * 9 + ["three"]) == 1.0
    # when all ten humans agree nothing is normalised: "a dog" does not match "dog", "yes" not "Yes"
    assert metrics.vqa_accuracy("a dog", ["dog"] * 10) == 0.0
    assert metrics.vqa_accuracy("dog", ["dog"] * 10) == 1.0
    assert metrics.vqa_accuracy("yes", ["Yes"] * 10) == 0.0


# (prediction, the ten human answers, answer_type, question_type, vqaEval.py's per-question accuracy in percent).
# The percentages are what the unmodified vqaEval.py (GT-Vision-Lab/VQA a013f00, run under Python 2.7) printed
# for exactly these answers; the comment says why.
OFFICIAL_CASES = [
    # number words: all ten become digits, "2" x9 -> every leave-one-out keeps >= 3 matches
    ("two", ["two"] * 9 + ["three"], "number", "how many", 100.0),
    # "two" x2 + "2" -> three "2"s: leaving one of them out leaves 2 matches (2/3), else 1: (3 * 2/3 + 7) / 10
    ("2", ["two"] * 2 + ["2"] + ["three"] * 7, "number", "how many", 90.0),
    ("0", ["none"] * 3 + ["1"] * 7, "number", "how many", 90.0),                    # "none" is "0"
    ("dog", ["the dog"] * 6 + ["dogs"] * 4, "other", "what animal is", 100.0),       # articles dropped
    ("yes", ["Yes"] * 9 + ["no"], "yes/no", "is the", 100.0),                        # lowercased
    ("yes", ["Yes"] * 10, "yes/no", "is the", 0.0),                                  # unanimous: compared as written
    ("a dog", ["dog"] * 10, "other", "what animal is", 0.0),                         # unanimous: no article rule
    # newlines, tabs and outer spaces go always, so these ten humans agree and " dog\n" is "dog"
    (" dog\n", ["dog "] * 5 + ["dog"] * 4 + ["\tdog"], "other", "what animal is", 100.0),
    ("dont know", ["don't know"] * 2 + ["dont know"] + ["yes"] * 7, "other", "what is the", 90.0),  # contraction
    # a digit,digit anywhere: every punctuation mark is deleted, so "1,000" is "1000"
    ("1000", ["1,000"] * 2 + ["1000"] + ["one thousand"] * 7, "number", "how many", 90.0),
    ("yes", ["yes."] * 3 + ["no"] * 7, "yes/no", "is the", 90.0),                    # a period not before a digit
    ("t shirt", ["t-shirt"] * 4 + ["shirt"] * 6, "other", "what is the", 100.0),     # inside a word: a space
    ("red white", ["red, white"] * 3 + ["red"] * 7, "other", "what color is the", 90.0),  # beside a space: deleted
    ("yes!", ["yes"] * 5 + ["no"] * 5, "yes/no", "is the", 100.0),                   # the prediction is normalised too
    ("  hot   dog ", ["hot dog"] * 3 + ["pizza"] * 7, "other", "what is the", 90.0),  # runs of spaces become one
    # 2 matches: leaving out a "circle" leaves 1 (1/3), else 2 (2/3): (2/3 + 8 * 2/3) / 10 = 0.6
    ("circle", ["circle"] * 2 + ["oval"] * 8, "other", "what is the", 60.0),
    ("square", ["circle"] * 2 + ["oval"] * 8, "other", "what is the", 0.0),
    ("2.5", ["2.5"] * 3 + ["2"] * 7, "number", "how many", 90.0),                    # a period before a digit stays
]
# vqaEval.py's summary of OFFICIAL_CASES (its accuracy dict, printed by the same run)
OFFICIAL_SUMMARY = {
    "overall": 76.67,
    "perAnswerType": {"number": 92.0, "other": 70.0, "yes/no": 72.5},
    "perQuestionType": {"how many": 92.0, "is the": 72.5, "what animal is": 66.67, "what color is the": 90.0,
                        "what is the": 68.0},
}


def official_figure(fraction: float) -> float:
    """vqaEval.py's figure for one of our fractions: 100x, rounded to 2 places with Python 2's round (halves
    away from zero, on the binary value). vqaEval.py computes (100 * sum) / n where we compute sum / n; the
    two can differ in the last bit, which would matter only for a value exactly on a rounding half."""
    return float(Decimal(100 * fraction).quantize(Decimal("0.01"), ROUND_HALF_UP))


@pytest.mark.parametrize("predicted, humans, answer_type, question_type, percent", OFFICIAL_CASES)
def test_vqa_accuracy_equals_the_official_evaluator(predicted, humans, answer_type, question_type, percent):
    assert official_figure(metrics.vqa_accuracy(predicted, humans)) == percent
    assert metrics.vqa_accuracy(predicted, humans) == pytest.approx(percent / 100)


def write_vqa_split(root, cases, split="val2014"):
    """Question and annotation files for (prediction, humans, answer_type, question_type, ...) cases, question
    ids 1000, 1001, ...; returns the EvalAI results of the predictions."""
    annotations, questions, results = [], [], []
    for offset, (predicted, humans, answer_type, question_type, *_) in enumerate(cases):
        question_id = 1000 + offset
        annotations.append({"question_id": question_id, "image_id": 1, "answer_type": answer_type,
                            "question_type": question_type, "multiple_choice_answer": humans[0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                        for i, a in enumerate(humans)]})
        questions.append({"question_id": question_id, "image_id": 1, "question": "what is it?"})
        results.append({"question_id": question_id, "answer": predicted})
    root.mkdir(exist_ok=True)
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({"questions": questions}))
    return results


def test_score_a_results_file_as_the_official_evaluator(tmp_path, capsys):
    results = write_vqa_split(tmp_path / "vqa", OFFICIAL_CASES)
    (tmp_path / "results.json").write_text(json.dumps(results[::-1]))  # any order
    out = tmp_path / "scores.json"
    # no --checkpoint, and no model is built: an unknown device would fail if one were
    vqa.main(["--score", str(tmp_path / "results.json"), "--data", str(tmp_path / "vqa"), "--output", str(out),
              "--device", "no-such-device"])
    scores = json.loads(out.read_text())
    assert scores["num_examples"] == len(OFFICIAL_CASES)
    assert official_figure(scores["vqa_accuracy"]) == OFFICIAL_SUMMARY["overall"]
    assert {k: official_figure(v) for k, v in scores["per_answer_type"].items()} == OFFICIAL_SUMMARY["perAnswerType"]
    assert {k: official_figure(v) for k, v in scores["per_question_type"].items()} == OFFICIAL_SUMMARY[
        "perQuestionType"]
    assert scores["vqa_accuracy"] == pytest.approx(sum(c[-1] for c in OFFICIAL_CASES) / 100 / len(OFFICIAL_CASES))
    assert scores["per_answer_type"]["yes/no"] == pytest.approx((100 + 0 + 90 + 100) / 4 / 100)
    assert "vqa_accuracy" in capsys.readouterr().out


def test_score_reproduces_the_reference_fixture_from_its_predictions(tmp_path):
    expected = json.loads((VQA_VLMO / "expected.json").read_text())
    results = [{"question_id": int(q), "answer": a} for q, a in expected["predictions"].items()]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "scores.json"
    vqa.main(["--score", str(tmp_path / "results.json"), "--data", str(VQA_VLMO), "--output", str(out)])
    scores = json.loads(out.read_text())
    assert scores["vqa_accuracy"] == expected["vqa_accuracy"]
    # what vqaEval.py (a013f00, Python 2.7) prints for these predictions
    assert official_figure(scores["vqa_accuracy"]) == 27.14
    assert {k: official_figure(v) for k, v in scores["per_answer_type"].items()} == {
        "number": 0.0, "other": 0.0, "yes/no": 76.0}


@pytest.mark.parametrize("results, message", [
    (None, r"--score \S*results.json does not exist"),
    ("not json", r"results.json is not valid JSON"),
    ({"1000": "yes"}, r"holds a JSON dict; a VQA results file is a JSON array of"),
    ([{"question_id": "1000", "answer": "yes"}], r"entry 0 is .*a VQA results file is a JSON array"),
    ([{"question_id": 1000}], r"entry 0 is"),
    ([{"question_id": 1000, "answer": "yes"}] * 2 + [{"question_id": 1001, "answer": "no"}],
     r"answers 1 question\(s\) more than once \(e.g. 1000\)"),
    ([{"question_id": 1000, "answer": "yes"}, {"question_id": 1001, "answer": "no"}, {"question_id": 7, "answer": "no"}],
     r"1 question id\(s\) that are not in the val2014 questions \(e.g. 7\)"),
    ([{"question_id": 1000, "answer": "yes"}],
     r"no answer for 1 of the 2 val2014 questions \(e.g. 1001\); the official evaluator requires an answer for "
     r"every question"),
])
def test_score_errors_say_what_is_wrong(tmp_path, capsys, results, message):
    write_vqa_split(tmp_path / "vqa", OFFICIAL_CASES[:2])
    path = tmp_path / "results.json"
    if results is not None:
        path.write_text(results if isinstance(results, str) else json.dumps(results))
    with pytest.raises(SystemExit) as exit:
        vqa.main(["--score", str(path), "--data", str(tmp_path / "vqa")])
    assert exit.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_score_needs_annotations_and_no_model_options(tmp_path, capsys):
    results = write_vqa_split(tmp_path / "vqa", OFFICIAL_CASES[:2])
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(SystemExit):
        vqa.main(["--score", str(tmp_path / "results.json"), "--data", str(tmp_path / "vqa")])
    assert "--score needs the annotations of --split val2014" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vqa.main(["--score", str(tmp_path / "results.json"), "--data", str(tmp_path / "vqa"), "--checkpoint",
                  str(tmp_path / "results.json")])  # a path that exists: the option itself is refused
    assert "--checkpoint cannot be used with it" in capsys.readouterr().err


def test_annotations_without_answer_or_question_type_are_refused(tmp_path):
    write_vqa_split(tmp_path, OFFICIAL_CASES[:2])
    path = tmp_path / "v2_mscoco_val2014_annotations.json"
    annotations = json.loads(path.read_text())
    del annotations["annotations"][1]["question_type"]
    path.write_text(json.dumps(annotations))
    with pytest.raises(UserError, match=r"v2_mscoco_val2014_annotations.json: the annotation of question 1001 has "
                                        r"no question_type"):
        read_vqa(tmp_path)


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
