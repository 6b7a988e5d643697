"""VQAv2 accuracy (the official metric) and the reference repo's VQA score.

    python -m eval.vqa --model vlmo --checkpoint vlmo_base_patch16_480_vqa.pt --data VQAv2 \
        --answers answer2label.txt --vocab vocab.txt --device npu:0

--data holds v2_OpenEnded_mscoco_<split>_questions.json, v2_mscoco_<split>_annotations.json and the
<split>/COCO_<split>_*.jpg images. On splits without annotations (test-dev2015, test2015) it writes the
EvalAI submission [{question_id, answer}] instead of scores.
"""
import argparse
import dataclasses
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import npu_models
from eval import metrics
from eval.common import (SAMPLES_DIR, LatencyMeter, PredictionStore, add_common_args, demo_banner, run_eval,
                         run_metadata, write_json_atomic)
from eval.data.images import ImageDataset, collate
from eval.data.vqa import build_answer_vocabulary, read_answer2label, read_vqa
from npu_models import registry
from npu_models.errors import UserError, cli_main
from npu_models.tokenizer import bert_tokenizer, encode_padded

SAMPLE = SAMPLES_DIR / "vqa"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.vqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, default_model="vlmo-base-vqa")
    parser.add_argument("--split", default="val2014", help="question split (default val2014; test-dev2015 ...)")
    parser.add_argument("--answers", type=Path, help="answer2label.txt (JSON lines); default: the one in --data or "
                        "beside the checkpoint, else rebuilt from the train2014+val2014 annotations in --data")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (default: beside the checkpoint)")
    parser.add_argument("--submission", type=Path, help="EvalAI answer file to write (default on test splits: "
                        "vqa_submission_<split>.json)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    return parser.parse_args(argv)


def beside(args, data: Path, name: str) -> Path | None:
    """A file in the data directory or beside the checkpoint, in that order."""
    for directory in (data, args.checkpoint.parent if args.checkpoint else None):
        if directory is not None and (directory / name).is_file():
            return directory / name
    return None


def load_answers(args, data: Path) -> list[str]:
    path = args.answers or beside(args, data, "answer2label.txt")
    return read_answer2label(path) if path else build_answer_vocabulary(data)


def load_vqa_model(args, num_answers: int):
    entry = registry.get_entry(args.model, task="vqa")
    # Random weights get as many answer classes as the answer list has.
    config = dataclasses.replace(entry.default_config(), num_answers=num_answers) if args.checkpoint is None else None
    model = npu_models.load_model(entry.name, args.checkpoint, args.device, args.dtype, args.graph, args.tp,
                                  task="vqa", config=config)
    if model.config.head != "vqa":
        raise UserError(f"{args.checkpoint} is a {model.config.head} checkpoint; VQA needs the VQA fine-tune.")
    if model.config.num_answers != num_answers:
        raise UserError(f"{args.checkpoint} predicts {model.config.num_answers} answers but the answer list has "
                        f"{num_answers}; pass the --answers file made for this checkpoint.")
    return model


def evaluate(args) -> dict:
    if args.checkpoint is None:
        demo_banner("vlmo-base-vqa with random weights on " + ("the bundled VQAv2 sample." if args.data is None
                                                                 else f"{args.data}."))
    data = args.data or SAMPLE
    examples = read_vqa(data, args.split)[: args.limit]
    answers = load_answers(args, data)
    vocab = args.vocab or beside(args, data, "vocab.txt")
    if vocab is None:
        raise UserError("no vocab.txt in --data or beside the checkpoint; pass --vocab with bert-base-uncased's vocab.txt.")
    model = load_vqa_model(args, len(answers))
    config = model.config
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype

    store = PredictionStore(args.predictions, key="question_id")
    todo = store.pending(examples, field="question")
    tokenizer = bert_tokenizer(vocab, config.do_lower_case, config.max_text_len)
    text_ids, text_masks = encode_padded(tokenizer, [e.question for e in todo], config.max_text_len)
    loader = torch.utils.data.DataLoader(ImageDataset([e.path for e in todo], config.transform), batch_size=args.batch_size,
                                         num_workers=args.num_workers, collate_fn=collate)
    meter, unreadable = LatencyMeter(device), []
    try:
        for positions, pixels, failed in tqdm(loader, desc="vqa", unit="batch", disable=None):
            for position, error in failed:
                unreadable.append({"question_id": todo[position].question_id, "image": str(todo[position].path),
                                   "error": error})
                print(f"skipped question {todo[position].question_id}: unreadable image {todo[position].path}: {error}",
                      file=sys.stderr)
            if pixels is None:
                continue
            ids, masks = text_ids[positions], text_masks[positions]
            if args.graph and len(positions) < args.batch_size:  # one static shape for the compiled graph
                fill = args.batch_size - len(positions)
                pixels = torch.cat([pixels, pixels[:1].expand(fill, -1, -1, -1)])
                ids, masks = torch.cat([ids, ids[:1].expand(fill, -1)]), torch.cat([masks, masks[:1].expand(fill, -1)])
            with meter, torch.no_grad():
                logits = model(pixels.to(device, dtype), ids.to(device), masks.to(device)).float()[: len(positions)]
                labels = logits.argmax(dim=-1).cpu().tolist()
            meter.samples += len(positions)
            records = []
            for position, label in zip(positions, labels):
                example = todo[position]
                record = {"question_id": example.question_id, "question": example.question, "answer": answers[label],
                          "label": label}
                if example.answers is not None:
                    record["accuracy"] = metrics.vqa_accuracy(answers[label], example.answers)
                    record["score"] = metrics.vqa_soft_score(answers[label], example.answers)
                records.append(record)
            store.add(records)
    finally:
        store.close()

    done = [store.done[e.question_id] for e in examples if e.question_id in store.done]
    scored = [r for r in done if "accuracy" in r]
    results = {
        "vqa_accuracy": sum(r["accuracy"] for r in scored) / len(scored) if scored else None,
        "vqa_score": sum(r["score"] for r in scored) / len(scored) if scored else None,
        "num_examples": len(scored), "num_questions": len(examples), "num_computed": meter.samples,
        "num_unreadable": len(unreadable), "unreadable": unreadable, "split": args.split, "data": str(data),
        "num_answers": len(answers), **meter.summary(), **run_metadata(args, device, dtype),
    }
    submission = args.submission or (Path(f"vqa_submission_{args.split}.json") if not scored and done else None)
    if submission is not None:
        write_json_atomic(submission, [{"question_id": r["question_id"], "answer": r["answer"]} for r in done])
        results["submission"] = str(submission)
        print(f"wrote the EvalAI answer file {submission} ({len(done)} answers)", file=sys.stderr)
    return results


@cli_main
def main(argv=None):
    shown = ["vqa_accuracy", "vqa_score", "num_examples", "num_unreadable", "samples_per_second",
             "latency_ms_p50", "latency_ms_p90", "device", "dtype", "batch_size"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
