"""VQAv2 in its released layout: v2_OpenEnded_mscoco_<split>_questions.json, v2_mscoco_<split>_annotations.json
(absent for test splits) and <images>/COCO_<images>_<image id, 12 digits>.jpg; plus the answer vocabulary."""
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from eval.vqa_normalize import normalize_answer
from eval.data.fields import required
from npu_models.checkpoints.io import read_json
from npu_models.errors import UserError

# test-dev questions refer to the test2015 images
IMAGE_FOLDER = {"test-dev2015": "test2015"}


@dataclass
class VQAExample:
    question_id: int
    image_id: int
    question: str
    path: Path
    answers: list[str] | None          # the ten raw human answers; None on test splits
    answer_type: str | None = None     # "yes/no", "number" or "other"; None on test splits
    question_type: str | None = None   # the annotation's question_type, e.g. "what color is the"


def questions_file(root: Path, split: str) -> Path:
    return root / f"v2_OpenEnded_mscoco_{split}_questions.json"


def annotations_file(root: Path, split: str) -> Path:
    return root / f"v2_mscoco_{split}_annotations.json"


def read_vqa(root, split: str = "val2014") -> list[VQAExample]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"VQAv2 directory {root} does not exist; pass --data with the question/annotation files.")
    if not questions_file(root, split).is_file():
        found = sorted(p.name for p in root.glob("v2_OpenEnded_mscoco_*_questions.json"))
        raise UserError(f"{questions_file(root, split)} does not exist (--split {split}); found: "
                        f"{', '.join(found) or 'no question files'}.")
    questions = read_json(questions_file(root, split)).get("questions")
    if not questions:
        raise UserError(f"{questions_file(root, split)} holds no 'questions'.")
    annotations = read_annotations(annotations_file(root, split))
    folder = IMAGE_FOLDER.get(split, split)
    examples = []
    for number, q in enumerate(questions):
        question_id, image_id, text = (required(q, key, questions_file(root, split), f"question {number}")
                                       for key in ("question_id", "image_id", "question"))
        if annotations and question_id not in annotations:
            raise UserError(f"question {question_id} has no entry in {annotations_file(root, split)}.")
        path = root / folder / f"COCO_{folder}_{image_id:012d}.jpg"
        example = VQAExample(question_id, image_id, text, path, None)
        if annotations:
            example.answers, example.answer_type, example.question_type = annotations[q["question_id"]]
        examples.append(example)
    return examples


def read_annotations(path: Path) -> dict[int, tuple[list[str], str, str]]:
    """question id -> (the raw human answers, answer_type, question_type); empty when the split has no
    annotations file (test splits)."""
    if not path.is_file():
        return {}
    annotations = {}
    for number, annotation in enumerate(required(read_json(path), "annotations", path, "the file")):
        question_id = required(annotation, "question_id", path, f"annotation {number}")
        missing = [key for key in ("answers", "answer_type", "question_type") if key not in annotation]
        if missing:
            raise UserError(f"{path}: the annotation of question {question_id} has no "
                            f"{' or '.join(missing)}; VQAv2 annotation files give every question all three.")
        answers = [required(a, "answer", path, f"an answer of question {question_id}") for a in annotation["answers"]]
        annotations[question_id] = (answers, annotation["answer_type"], annotation["question_type"])
    return annotations


def normalize_word(answer: str) -> str:
    """ViLT/VLMo's glossary.normalize_word: the VQA normalisation, then commas removed."""
    return normalize_answer(answer).replace(",", "")


def build_answer_vocabulary(root: Path, min_count: int = 9) -> list[str]:
    """Rebuilt as the reference does: normalised multiple-choice answers of train2014 then val2014,
    kept when seen at least `min_count` times, in order of first occurrence."""
    files = [annotations_file(root, split) for split in ("train2014", "val2014")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"rebuilding the answer vocabulary needs {' and '.join(missing)}; or pass --answers "
                        "answer2label.txt (the JSON-lines file the ModelZoo guide writes).")
    counts = Counter(normalize_word(a["multiple_choice_answer"])
                     for f in files for a in read_json(f)["annotations"])
    return [answer for answer, count in counts.items() if count >= min_count]


def answer2label_text(answers: list[str]) -> str:
    """The answer list in answer2label.txt's format (read_answer2label reads it back)."""
    return "".join(json.dumps({"answer": answer, "label": label}) + "\n" for label, answer in enumerate(answers))


def answer_files(task, checkpoint: Path) -> dict[str, str]:
    """For a checkpoint file that carries its answer list inside (ViLBERT's archive): that list as
    answer2label.txt, to write beside converted, cut or quantized weights, where eval.vqa looks for it."""
    read_answers = getattr(task, "answers_in_checkpoint", None)
    if read_answers is None or not Path(checkpoint).is_file():
        return {}
    return {"answer2label.txt": answer2label_text(read_answers(checkpoint))}


def read_answer2label(path: Path) -> list[str]:
    """answer2label.txt: one JSON object {"answer": ..., "label": ...} per line -> answers by label."""
    if not path.is_file():
        raise UserError(f"answer list {path} does not exist; pass --answers answer2label.txt.")
    by_label = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            by_label[int(entry["label"])] = entry["answer"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{path}:{line_number}: expected a JSON object with 'answer' and 'label'.") from None
    if sorted(by_label) != list(range(len(by_label))):
        raise UserError(f"{path}: labels must run from 0 to {len(by_label) - 1} without gaps.")
    return [by_label[i] for i in range(len(by_label))]
