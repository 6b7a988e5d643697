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
import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

import npu_models
from eval import metrics
from eval.common import (SAMPLES_DIR, LatencyMeter, PredictionStore, StepGather, add_common_args, batch_positions,
                         bert_uncased_vocab, content_hash, demo_banner, find_beside, pad_rows, plan_batches, progress,
                         run_eval, run_metadata, run_record, write_json_atomic)
from eval.data.images import ImageDataset, collate
from eval.data.region_features import (RegionFeatureDataset, collate_regions, extract_missing_features,
                                       feature_path)
from eval.data.vqa import annotations_file, build_answer_vocabulary, read_answer2label, read_vqa
from npu_models import parallel, registry, runtime
from npu_models.checkpoints.io import read_json
from npu_models.errors import UserError, cli_main

SAMPLE = SAMPLES_DIR / "vqa"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.vqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "vqa", prediction_key="question_id")
    parser.add_argument("--split", default="val2014", help="question split (default val2014; test-dev2015 ...)")
    parser.add_argument("--answers", type=Path, help="answer2label.txt (JSON lines); default: the one in --data or "
                        "beside the checkpoint, else rebuilt from the train2014+val2014 annotations in --data")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (default: beside the checkpoint)")
    parser.add_argument("--features", type=Path, help="region-feature models (ViLBERT): cached region features, one "
                        "<image stem>.safetensors per image (default: features/ in --data)")
    parser.add_argument("--detector-weights", type=Path, help="region-feature models: torchvision fasterrcnn_resnet50_fpn COCO "
                        "weights (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth) to compute missing region features")
    parser.add_argument("--submission", type=Path, help="EvalAI answer file to write (default on test splits: "
                        "vqa_submission_<split>.json)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--score", type=Path, metavar="RESULTS.json", help="score this EvalAI results file "
                        "([{question_id, answer}], every question of --split) against the annotations; no model")
    return parser.parse_args(argv)


def load_answers(args, data: Path, task) -> list[str]:
    """--answers; else the list the checkpoint carries (if its format has one); else answer2label.txt in
    --data or beside the checkpoint; else the vocabulary rebuilt from the annotations."""
    if args.answers is None and task.answers_in_checkpoint is not None and args.checkpoint is not None:
        return task.answers_in_checkpoint(args.checkpoint)
    path = args.answers or find_beside(args, data, "answer2label.txt")
    return read_answer2label(path) if path else build_answer_vocabulary(data)


def load_vqa_model(args, entry, num_answers: int):
    # Random weights get as many answer classes as the answer list has.
    config = dataclasses.replace(entry.default_config(), num_answers=num_answers) if args.checkpoint is None else None
    model = npu_models.load_model(entry.name, args.checkpoint, args.device, args.dtype, args.graph, args.tp,
                                  task="vqa", config=config, config_file=args.config)
    if model.config.num_answers != num_answers:
        raise UserError(f"{args.checkpoint} predicts {model.config.num_answers} answers but the answer list has "
                        f"{num_answers}; pass the --answers file made for this checkpoint.")
    return model


def visual_batches(args, task, config, todo, batches: list[list[int]], data: Path, device):
    """(positions into todo, visual tensors, failures) for each of `batches`: decoded images, or cached region
    features."""
    if task.visual == "pixels":
        dataset, collate_fn = ImageDataset([e.path for e in todo], config.transform), collate
    else:
        features_dir = args.features or data / "features"
        if args.detector_weights is not None:  # this rank's images only: ranks never write the same file
            mine = [todo[position].path for batch in batches for position in batch]
            unreadable = extract_missing_features(mine, features_dir, args.detector_weights, device)
            if unreadable:
                print(f"{len(unreadable)} image(s) could not be read; their questions are skipped", file=sys.stderr)
        dataset = RegionFeatureDataset([feature_path(features_dir, e.path) for e in todo])
        collate_fn = collate_regions
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=args.num_workers,
                                         collate_fn=collate_fn, pin_memory=device.type != "cpu")
    for positions, visual, failed in loader:  # visual is None when every example of the batch failed
        yield positions, (visual,) if isinstance(visual, torch.Tensor) else visual, failed


def score(record: dict, label: int, gold: list[str], answers, answer_index, multi_label):
    """The official VQA accuracy, and the reference repository's own score for its kind of head."""
    answer = answers[label]
    record["accuracy"] = metrics.vqa_accuracy(answer, gold)
    if multi_label:  # the label-weight score
        weights = metrics.answer_label_weights(gold, answer_index)
        record["score"] = weights.get(label, 0.0)
        record["gold_labels"] = sorted(w for w in weights if w > 1)
    else:
        record["score"] = metrics.vqa_soft_score(answer, gold)


def evaluate(args) -> dict:
    if args.score is not None:
        return score_results_file(args)
    entry = registry.get_entry(args.model, task="vqa")
    task = entry.task
    if args.checkpoint is None:
        demo_banner(f"{entry.name} with random weights on " + ("the bundled VQAv2 sample." if args.data is None
                                                                 else f"{args.data}."))
    data = args.data or SAMPLE
    examples = read_vqa(data, args.split)[: args.limit]
    answers = load_answers(args, data, task)
    answer_index = {answer: label for label, answer in enumerate(answers)}
    vocab = bert_uncased_vocab(args, data)
    model = load_vqa_model(args, entry, len(answers))
    config = model.config
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype

    run = run_record(args, dtype, split=args.split, vocab=content_hash(vocab), answers=content_hash(answers))
    store = PredictionStore(args.predictions, key=args.prediction_key, run=run)
    todo = store.pending(examples, field="question")
    text = config.text_input
    text_ids, text_masks = text.encode(vocab, [e.question for e in todo])
    dp = parallel.data_parallel(args.tp)
    buckets = runtime.length_buckets(text_ids.shape[1], runtime.length_step(args.graph))
    if text.pad_to_max:
        batches = batch_positions(len(todo), args.batch_size)
    else:  # questions of one length together: most batches then have no padding at all
        lengths = text_masks.sum(dim=1).tolist()
        batches = [positions for positions, _ in plan_batches(lengths, args.batch_size, buckets)]
    mine = dp.share(batches)
    meter, gathered = LatencyMeter(device, args.started_at), StepGather(dp, store, len(batches))
    try:
        batches_in = visual_batches(args, task, config, todo, mine, data, device)
        for positions, visual, failed in progress(batches_in, desc="vqa", unit="batch", total=len(mine)):
            for position, error in failed:
                print(f"skipped question {todo[position].question_id}: {error}", file=sys.stderr)
            unreadable = [{"question_id": todo[position].question_id, "error": error} for position, error in failed]
            if visual is None:
                gathered.add([], unreadable)
                continue
            ids, masks = text_ids[positions], text_masks[positions]
            if not text.pad_to_max:  # pad the batch to the bucket of its longest question
                length = runtime.bucket_for(int(masks.sum(dim=1).max()), buckets)
                ids, masks = ids[:, :length], masks[:, :length]
            inputs = tuple(runtime.to_model_input(t, device, dtype) for t in (*visual, ids, masks))
            if args.graph:  # one static batch shape for the compiled graph
                inputs = pad_rows(inputs, args.batch_size)
            elif bool(masks.all()):  # no padded key in the batch: attention runs without a mask
                inputs = (*inputs[:-1], None)
            with meter, torch.no_grad():
                logits = task.answer_logits(model, *inputs).float()[: len(positions)].cpu()
            meter.samples += len(positions)
            records = []
            for position, row in zip(positions, logits):
                example, label = todo[position], int(row.argmax())
                record = {"question_id": example.question_id, "question": example.question, "answer": answers[label],
                          "label": label}
                if task.multi_label:  # every answer whose logit passes 0.5, PAD and UNK left out
                    record["positive_labels"] = [i for i in (row > 0.5).nonzero().flatten().tolist() if i > 1]
                if example.answers is not None:
                    score(record, label, example.answers, answers, answer_index, task.multi_label)
                records.append(record)
            gathered.add(records, unreadable)
        gathered.finish()
    finally:
        store.close()
    meter.gather(dp)
    unreadable = gathered.unreadable

    done = [store.done[e.question_id] for e in examples if e.question_id in store.done]
    scored = [r for r in done if "accuracy" in r]
    results = {
        **accuracy_by_type(examples, {r["question_id"]: r["accuracy"] for r in scored}),
        "vqa_score": (metrics.float32_mean([r["score"] for r in scored]) if task.multi_label
                      else sum(r["score"] for r in scored) / len(scored)) if scored else None,
        "num_examples": len(scored), "num_questions": len(examples), "num_computed": meter.samples,
        "num_unreadable": len(unreadable), "unreadable": unreadable, "split": args.split, "data": str(data),
        "num_answers": len(answers), **meter.summary(), **run_metadata(args, device, dtype),
    }
    if task.multi_label and scored:  # the reference's micro precision/recall/F1 over answers, PAD and UNK excluded
        predicted = [set(r["positive_labels"]) for r in scored]
        gold = [set(r["gold_labels"]) for r in scored]
        results["precision"], results["recall"], results["fscore"] = metrics.micro_precision_recall_f1(
            sum(len(p & g) for p, g in zip(predicted, gold)), sum(map(len, predicted)), sum(map(len, gold)))
    submission = args.submission or (Path(f"vqa_submission_{args.split}.json") if not scored and done else None)
    if submission is not None and parallel.is_main_process():
        write_json_atomic(submission, [{"question_id": r["question_id"], "answer": r["answer"]} for r in done])
        results["submission"] = str(submission)
        print(f"wrote the EvalAI answer file {submission} ({len(done)} answers)", file=sys.stderr)
    return results


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


def score_results_file(args) -> dict:
    """--score: the official accuracy of an EvalAI results file; no model is built."""
    given = [option for option, value in (("--checkpoint", args.checkpoint), ("--limit", args.limit),
                                          ("--predictions", args.predictions), ("--submission", args.submission))
             if value is not None]
    if given:
        raise UserError(f"--score scores a results file without running a model; {', '.join(given)} "
                        "cannot be used with it.")
    data = args.data or SAMPLE
    examples = read_vqa(data, args.split)
    if examples[0].answers is None:
        raise UserError(f"{annotations_file(Path(data), args.split)} does not exist: --score needs the annotations "
                        f"of --split {args.split} (test splits are scored only by the EvalAI server).")
    answers = read_results_file(args.score, examples, args.split)
    accuracy = {e.question_id: metrics.vqa_accuracy(answers[e.question_id], e.answers) for e in examples}
    return {**accuracy_by_type(examples, accuracy), "num_examples": len(examples), "split": args.split,
            "data": str(data), "results": str(args.score)}


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
             "num_unreadable", "samples_per_second", "time_to_first_batch_s", "latency_ms_p50", "latency_ms_p90",
             "device", "dtype", "batch_size"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
