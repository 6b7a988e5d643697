"""VQAv2 accuracy (the official metric) and the reference repo's VQA score.

    python -m eval.vqa --model vlmo --checkpoint vlmo_base_patch16_480_vqa.pt --data VQAv2 \
        --answers answer2label.txt --vocab vocab.txt --device npu:0

--data holds v2_OpenEnded_mscoco_<split>_questions.json, v2_mscoco_<split>_annotations.json and the
<split>/COCO_<split>_*.jpg images. On splits without annotations (test-dev2015, test2015) it writes the
EvalAI submission [{question_id, answer}] instead of scores.

    python -m eval.vqa --score results.json --data VQAv2 [--split val2014] [--output scores.json]

scores an EvalAI-format results file against the split's annotations, as the official vqaEval.py does,
without a model.
"""
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from eval import metrics
from eval.batching import batch_positions, pad_columns, pad_rows, plan_batches, static_rows
from eval.cli import add_common_args, command_parser, parse_options, run_eval
from eval.data.images import ImageDataset, collate
from eval.data.region_features import (RegionFeatureDataset, collate_regions, extract_missing_features,
                                       feature_path)
from eval.data.vqa import annotations_file, build_answer_vocabulary, read_answer2label, read_vqa
from eval.loop import EvalLoop
from eval.samples import SAMPLES_DIR
from eval.options import (EvalOptions, bert_uncased_vocab, command_model, content_hash, demo_banner,
                          find_beside, run_metadata, run_record)
from eval.store import PredictionStore, write_json_atomic
from npu_models import parallel, registry, runtime
from npu_models.checkpoints.io import read_json
from npu_models.cli import cli_main
from npu_models.errors import UserError
from npu_models.tokenizer import check_vocab_fits

SAMPLE = SAMPLES_DIR / "vqa"


@dataclass
class VQAOptions(EvalOptions):
    task: ClassVar[str] = "vqa"
    prediction_key: ClassVar[str] = "question_id"
    input_paths: ClassVar[tuple[str, ...]] = EvalOptions.input_paths + ("answers", "vocab", "detector_weights", "score")
    split: str = "val2014"
    answers: Path | None = None           # answer2label.txt; None: the checkpoint's list, one found beside, or rebuilt
    vocab: Path | None = None             # bert-base-uncased vocab.txt; None: in --data or beside the checkpoint
    features: Path | None = None          # region-feature models: the feature cache; None: features/ in --data
    detector_weights: Path | None = None  # region-feature models: compute missing features with this detector
    submission: Path | None = None        # EvalAI answer file; None: vqa_submission_<split>.json on test splits
    num_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    score: Path | None = None             # score this EvalAI results file instead of running a model


def parse_args(argv) -> VQAOptions:
    parser = command_parser("python -m eval.vqa", __doc__)
    add_common_args(parser, VQAOptions)
    parser.add_argument("--split", help="question split (default val2014; test-dev2015 ...)")
    parser.add_argument("--answers", type=Path, help="answer2label.txt (JSON lines); default: the one in --data or "
                        "beside the checkpoint, else rebuilt from the train2014+val2014 annotations in --data")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (default: beside the checkpoint)")
    parser.add_argument("--features", type=Path, help="region-feature models (ViLBERT): cached region features, one "
                        "<image stem>.safetensors per image (default: features/ in --data)")
    parser.add_argument("--detector-weights", type=Path, help="region-feature models: torchvision fasterrcnn_resnet50_fpn COCO "
                        "weights (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth) to compute missing region features")
    parser.add_argument("--submission", type=Path, help="EvalAI answer file to write (default on test splits: "
                        "vqa_submission_<split>.json)")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--score", type=Path, metavar="RESULTS.json", help="score this EvalAI results file "
                        "([{question_id, answer}], every question of --split) against the annotations; no model")
    return parse_options(parser, VQAOptions, argv)


def load_answers(options: VQAOptions, data: Path, task) -> list[str]:
    """--answers; else the list the checkpoint carries (if its format has one, or answer2label.txt in our
    converted or quantized directory); else answer2label.txt in --data or beside the checkpoint; else the
    vocabulary rebuilt from the annotations."""
    checkpoint = options.checkpoint
    inside = checkpoint / "answer2label.txt" if checkpoint and checkpoint.is_dir() else None  # converted, quantized
    if options.answers is None and not (inside and inside.is_file()) and task.answers_in_checkpoint and checkpoint:
        return task.answers_in_checkpoint(checkpoint)
    path = options.answers or (inside if inside and inside.is_file() else find_beside(options, data, "answer2label.txt"))
    return read_answer2label(path) if path else build_answer_vocabulary(data)


def load_vqa_model(options: VQAOptions, entry, num_answers: int, model=None):
    """options.checkpoint's model, or the ready `model`; either must have one logit per answer of the list."""
    # Random weights get as many answer classes as the answer list has.
    config = dataclasses.replace(entry.default_config(), num_answers=num_answers) if options.checkpoint is None else None
    model = command_model(options, model, config=config)
    if model.config.num_answers != num_answers:
        raise UserError(f"{options.checkpoint or 'the model given'} predicts {model.config.num_answers} answers but "
                        f"the answer list has {num_answers}; pass the --answers file made for this checkpoint.")
    return model


def evaluate(options: VQAOptions, model=None) -> dict:
    """The command's work. A ready `model` (a quantized model being calibrated, a model already in memory)
    replaces loading options.checkpoint, which may still be given for the vocab.txt, answer2label.txt or
    answer list it carries."""
    if options.score is not None:
        return score_results_file(options)
    entry = registry.get_entry(options.model, task="vqa")
    task = entry.task
    if options.checkpoint is None and model is None:
        demo_banner(f"{entry.name} with random weights on " + ("the bundled VQAv2 sample." if options.data is None
                                                                 else f"{options.data}."))
    data = options.data or SAMPLE
    examples = read_vqa(data, options.split)[: options.limit]
    answers = load_answers(options, data, task)
    vocab = bert_uncased_vocab(options, data)
    model = load_vqa_model(options, entry, len(answers), model)
    check_vocab_fits(vocab, model)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    run = run_record(options, dtype, model, split=options.split, vocab=content_hash(vocab),
                     answers=content_hash(answers))
    store = PredictionStore(options.predictions, key="question_id", run=run)
    with EvalLoop(device, options.tp, options.started_at, store) as loop:
        answer_questions(loop, model, task, store.pending(examples, field="question"), vocab, answers, data, options)
    done = [store.done[e.question_id] for e in examples if e.question_id in store.done]
    results = {**vqa_scores(examples, done, task.multi_label), "num_questions": len(examples),
               "num_computed": loop.meter.samples, "num_unreadable": len(loop.unreadable), "unreadable": loop.unreadable,
               "split": options.split, "data": str(data), "num_answers": len(answers), **loop.meter.summary(),
               **run_metadata(options, device, dtype, model), **reference_f1(done, task.multi_label)}
    write_submission(options, done, results)
    return results


def question_batches(text, text_masks, batch_size: int, buckets: list[int]) -> list[list[int]]:
    """Batches of positions: in order for models that pad every question to its maximum, else questions of
    one length together (most batches then have no padding at all)."""
    if text.pad_to_max:
        return batch_positions(len(text_masks), batch_size)
    lengths = text_masks.sum(dim=1).tolist()
    return [positions for positions, _ in plan_batches(lengths, batch_size, buckets)]


def visual_batches(options: VQAOptions, task, config, todo, batches: list[list[int]], data: Path, device):
    """(positions into todo, visual tensors, failures) for each of `batches`: decoded images, or cached region
    features."""
    if task.visual == "pixels":
        dataset, collate_fn = ImageDataset([e.path for e in todo], config.transform), collate
    else:
        features_dir = options.features or data / "features"
        if options.detector_weights is not None:  # this rank's images only: ranks never write the same file
            mine = [todo[position].path for batch in batches for position in batch]
            unreadable = extract_missing_features(mine, features_dir, options.detector_weights, device)
            if unreadable:
                print(f"{len(unreadable)} image(s) could not be read; their questions are skipped", file=sys.stderr)
        dataset = RegionFeatureDataset([feature_path(features_dir, e.path) for e in todo])
        collate_fn = collate_regions
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=options.num_workers,
                                         collate_fn=collate_fn, pin_memory=device.type != "cpu")
    for positions, visual, failed in loader:  # visual is None when every example of the batch failed
        yield positions, (visual,) if isinstance(visual, torch.Tensor) else visual, failed


def answer_questions(loop: EvalLoop, model, task, todo, vocab: Path, answers: list[str], data: Path,
                     options: VQAOptions) -> None:
    """Every question of `todo` answered in the loop, its record (with its scores where the split has
    annotations) stored; questions whose visual input cannot be read are listed as unreadable."""
    config, text = model.config, model.config.text_input
    text_ids, text_masks = text.encode(vocab, [e.question for e in todo])
    if options.graph:  # buckets up to the model's maximum, whatever the data: the same shapes for every dataset
        text_ids, text_masks = (pad_columns(t, text.max_length) for t in (text_ids, text_masks))
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    answer_index = {answer: label for label, answer in enumerate(answers)}
    buckets = runtime.length_buckets(text_ids.shape[1], runtime.length_step(options.graph))
    batches = question_batches(text, text_masks, options.batch_size, buckets)

    def load(mine):
        return visual_batches(options, task, config, todo, mine, data, device)

    for positions, visual, failed in loop.steps(batches, load, desc="vqa", unit="batch"):
        for position, error in failed:
            print(f"skipped question {todo[position].question_id}: {error}", file=sys.stderr)
        loop.add([], [{"question_id": todo[position].question_id, "error": error} for position, error in failed])
        if visual is None:
            continue
        ids, masks = text_ids[positions], text_masks[positions]
        if not text.pad_to_max:  # pad the batch to the bucket of its longest question
            length = runtime.bucket_for(int(masks.sum(dim=1).max()), buckets)
            ids, masks = ids[:, :length], masks[:, :length]
        inputs = tuple(runtime.to_model_input(t, device, dtype) for t in (*visual, ids, masks))
        if options.graph:  # one static batch shape for the compiled graph
            inputs = pad_rows(inputs, static_rows(options.batch_size, len(todo)))
        elif bool(masks.all()):  # no padded key in the batch: attention runs without a mask
            inputs = (*inputs[:-1], None)
        with loop.timed(len(positions)):
            logits = task.answer_logits(model, *inputs).float()[: len(positions)].cpu()
        loop.add([answer_record(todo[p], row, answers, answer_index, task.multi_label)
                  for p, row in zip(positions, logits)])


def answer_record(example, logits, answers: list[str], answer_index: dict, multi_label: bool) -> dict:
    label = int(logits.argmax())
    record = {"question_id": example.question_id, "question": example.question, "answer": answers[label],
              "label": label}
    if multi_label:  # every answer whose logit passes 0.5, PAD and UNK left out
        record["positive_labels"] = [i for i in (logits > 0.5).nonzero().flatten().tolist() if i > 1]
    if example.answers is not None:
        score_record(record, label, example.answers, answers, answer_index, multi_label)
    return record


def score_record(record: dict, label: int, gold: list[str], answers, answer_index, multi_label):
    """The official VQA accuracy, and the reference repository's own score for its kind of head."""
    answer = answers[label]
    record["accuracy"] = metrics.vqa_accuracy(answer, gold)
    if multi_label:  # the label-weight score
        weights = metrics.answer_label_weights(gold, answer_index)
        record["score"] = weights.get(label, 0.0)
        record["gold_labels"] = sorted(w for w in weights if w > 1)
    else:
        record["score"] = metrics.vqa_soft_score(answer, gold)


def vqa_scores(examples, done: list[dict], multi_label: bool) -> dict:
    """The official accuracy (overall and by type) and the reference's own score, over the records that have them."""
    scored = [r for r in done if "accuracy" in r]
    return {
        **accuracy_by_type(examples, {r["question_id"]: r["accuracy"] for r in scored}),
        "vqa_score": (metrics.float32_mean([r["score"] for r in scored]) if multi_label
                      else sum(r["score"] for r in scored) / len(scored)) if scored else None,
        "num_examples": len(scored),
    }


def reference_f1(done: list[dict], multi_label: bool) -> dict:
    """A multi-label head's micro precision/recall/F1 over answers, PAD and UNK excluded, as the reference reports."""
    scored = [r for r in done if "accuracy" in r]
    if not (multi_label and scored):
        return {}
    predicted = [set(r["positive_labels"]) for r in scored]
    gold = [set(r["gold_labels"]) for r in scored]
    precision, recall, fscore = metrics.micro_precision_recall_f1(
        sum(len(p & g) for p, g in zip(predicted, gold)), sum(map(len, predicted)), sum(map(len, gold)))
    return {"precision": precision, "recall": recall, "fscore": fscore}


def write_submission(options: VQAOptions, done: list[dict], results: dict) -> None:
    """The EvalAI answer file: where --submission asks, or by default when nothing could be scored (test splits)."""
    scored = results["num_examples"] > 0
    submission = options.submission or (Path(f"vqa_submission_{options.split}.json") if not scored and done else None)
    if submission is not None and parallel.is_main_process():
        write_json_atomic(submission, [{"question_id": r["question_id"], "answer": r["answer"]} for r in done])
        results["submission"] = str(submission)
        print(f"wrote the EvalAI answer file {submission} ({len(done)} answers)", file=sys.stderr)


def accuracy_by_type(examples, accuracy: dict[int, float]) -> dict:
    """vqa_accuracy, per_answer_type and per_question_type (fractions) over the examples that have an accuracy;
    None when none has. Sums run in the questions file's order, vqaEval.py's in the annotations file's: the
    same order in the VQAv2 files we know (both fixtures, the sample), and any other order moves a mean by
    at most a few bits, below its 2-place rounding unless the mean sits on a rounding half."""
    scored = [e for e in examples if e.question_id in accuracy]
    if not scored:
        return {"vqa_accuracy": None, "per_answer_type": None, "per_question_type": None}
    return metrics.vqa_accuracy_by_type([accuracy[e.question_id] for e in scored],
                                        [e.answer_type for e in scored], [e.question_type for e in scored])


def score_results_file(options: VQAOptions) -> dict:
    """--score: the official accuracy of an EvalAI results file; no model is built."""
    given = [option for option, value in (("--checkpoint", options.checkpoint), ("--limit", options.limit),
                                          ("--predictions", options.predictions), ("--submission", options.submission))
             if value is not None]
    if given:
        raise UserError(f"--score scores a results file without running a model; {', '.join(given)} "
                        "cannot be used with it.")
    data = options.data or SAMPLE
    examples = read_vqa(data, options.split)
    if examples[0].answers is None:
        raise UserError(f"{annotations_file(Path(data), options.split)} does not exist: --score needs the annotations "
                        f"of --split {options.split} (test splits are scored only by the EvalAI server).")
    answers = read_results_file(options.score, examples, options.split)
    accuracy = {e.question_id: metrics.vqa_accuracy(answers[e.question_id], e.answers) for e in examples}
    return {**accuracy_by_type(examples, accuracy), "num_examples": len(examples), "split": options.split,
            "data": str(data), "results": str(options.score)}


def read_results_file(path: Path, examples, split: str) -> dict[int, str]:
    """question id -> answer from an EvalAI results file; like vqaEval.py it must answer every question of the
    split and no other. Duplicates are refused (vqaEval.py would silently keep the last)."""
    results = read_json(path)
    shape = 'a JSON array of {"question_id": <int>, "answer": <str>} objects, one per question'
    if not isinstance(results, list):
        raise UserError(f"{path} holds a JSON {type(results).__name__}; a VQA results file is {shape}.")
    answers, duplicates = {}, []
    for position, entry in enumerate(results):
        if not (isinstance(entry, dict) and type(entry.get("question_id")) is int
                and isinstance(entry.get("answer"), str)):
            raise UserError(f"{path}: entry {position} is {json.dumps(entry)[:100]}; a VQA results file is {shape}.")
        if entry["question_id"] in answers:
            duplicates.append(entry["question_id"])
        answers[entry["question_id"]] = entry["answer"]
    if duplicates:
        raise UserError(f"{path} answers {len(duplicates)} question(s) more than once (e.g. {few(duplicates)}); "
                        "give one answer per question.")
    wanted = {e.question_id for e in examples}
    unknown = [q for q in answers if q not in wanted]
    if unknown:
        raise UserError(f"{path} answers {len(unknown)} question id(s) that are not in the {split} questions "
                        f"(e.g. {few(unknown)}); is it the results file for --split {split}?")
    missing = [e.question_id for e in examples if e.question_id not in answers]
    if missing:
        raise UserError(f"{path} has no answer for {len(missing)} of the {len(examples)} {split} questions "
                        f"(e.g. {few(missing)}); the official evaluator requires an answer for every question of "
                        "the split, so a partial results file cannot be scored.")
    return answers


def few(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:5]))


@cli_main
def main(argv=None):
    shown = ["vqa_accuracy", "per_answer_type", "vqa_score", "precision", "recall", "fscore", "num_examples",
             "num_unreadable", "samples_per_second", "time_to_first_batch_s", "compile_s", "latency_ms_p50",
             "latency_ms_p90", "device", "dtype", "batch_size"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
