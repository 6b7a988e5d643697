"""Image-text retrieval on the COCO Karpathy test split: TR/IR recall@1/5/10.

    python -m eval.retrieval --model blip --checkpoint model_base_retrieval_coco.pth --data coco --vocab vocab.txt
    python -m eval.retrieval --model vlmo --checkpoint vlmo_base_patch16_384_coco.pt --data coco --vocab vocab.txt

--data holds val2014/ (the images) and coco_karpathy_test.json (BLIP's file) or dataset_coco.json
(Karpathy's). Image and caption embeddings are computed once, in batches, and the similarity matrix is
formed on the device. VLMo ranks by that similarity (ITC); BLIP then re-ranks each query's top --k-test
candidates with its ITM head in both directions (score = ITM logit + ITC similarity), the slow part, which
is batched across queries. --predictions gets one JSON line per query (each image's top-10 captions, each
caption's top-10 images; BLIP's lines also hold the re-ranked candidates and their scores), written as
they are ranked and resumed from there.

Under torchrun with more processes than --tp, each data-parallel rank embeds its share of the image and
caption batches and re-ranks its share of each step's query chunks; every rank gathers all of them in one
process's order, so each holds the whole similarity matrix and computes the same metrics.
"""
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from eval import metrics
from eval.batching import batch_positions, plan_batches
from eval.cli import add_common_args, command_parser, parse_options, run_eval
from eval.data.images import ImageDataset, collate
from eval.data.retrieval import RetrievalSplit, read_retrieval
from eval.loop import EvalLoop
from eval.samples import SAMPLES_DIR
from eval.options import (EvalOptions, bert_uncased_vocab, command_model, content_hash, demo_banner,
                          run_metadata, run_record)
from eval.store import PredictionStore
from npu_models import registry, runtime
from npu_models.cli import cli_main, note
from npu_models.errors import UserError
from npu_models.tasks import score_matrix
from npu_models.tokenizer import check_vocab_fits

SAMPLE = SAMPLES_DIR / "retrieval"
TOP = 10  # candidates listed per query in --predictions


@dataclass
class RetrievalOptions(EvalOptions):
    task: ClassVar[str] = "retrieval"
    prediction_key: ClassVar[str] = "key"
    input_paths: ClassVar[tuple[str, ...]] = EvalOptions.input_paths + ("vocab",)
    batch_size: int = 64
    split: str = "test"
    vocab: Path | None = None         # bert-base-uncased vocab.txt; None: in --data or beside the checkpoint
    k_test: int | None = None         # re-ranking models: candidates re-ranked per query; None: the model's
    num_workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))


def parse_args(argv) -> RetrievalOptions:
    parser = command_parser("python -m eval.retrieval", __doc__)
    add_common_args(parser, RetrievalOptions)
    parser.add_argument("--split", help="(default test)")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (default: in --data or beside the checkpoint)")
    parser.add_argument("--k-test", type=int, help="BLIP: candidates re-ranked by ITM per query (default: the "
                        "model's, 256 as the reference)")
    parser.add_argument("--num-workers", type=int)
    return parse_options(parser, RetrievalOptions, argv)


def evaluate(options: RetrievalOptions, model=None) -> dict:
    """The command's work. A ready `model` (a quantized model being calibrated, a model already in memory)
    replaces loading options.checkpoint, which may still be given for the vocab.txt beside it."""
    entry = registry.get_entry(options.model, task="retrieval")
    task = entry.task
    if options.checkpoint is None and model is None:
        demo_banner(f"{entry.name} with random weights on " + (
            "the bundled retrieval sample." if options.data is None else f"{options.data}."))
    if options.graph:
        note("eval.retrieval runs eagerly; --graph is not used here")
    data = options.data or SAMPLE
    split = first_images(read_retrieval(data, options.split), options.limit)
    model = command_model(options, model, graph=False)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    vocab = bert_uncased_vocab(options, data)
    check_vocab_fits(vocab, model)
    k = None if task.rerank is None else min(options.k_test or task.rerank_k(model.config), len(split.image_paths),
                                             len(split.texts))
    run = run_record(options, dtype, model, split=options.split, vocab=content_hash(vocab),
                     **({} if k is None else {"k_test": k}))
    with EvalLoop(device, options.tp, options.started_at, PredictionStore(options.predictions, "key", run)) as loop:
        queries = query_names(loop.store, split)
        ids, masks = model.config.text_input.encode(vocab, split.texts)
        image_embeds, memory = image_pass(loop, lambda pixels: task.encode_images(model, pixels), split, options,
                                          model.config.transform, dtype)
        text_embeds = text_pass(loop, lambda i, m: task.encode_texts(model, i, m), ids, masks, options.batch_size,
                                device)
        sims = image_embeds.float() @ text_embeds.float().T
        if k is None:
            scores = rank_by_similarity(loop.store, sims, queries)
        else:
            scores = rerank_pass(loop, task, model, sims, memory, ids, masks, k, options.batch_size, queries)
    results = {} if k is None else {"k_test": k}
    results.update(metrics.retrieval_recall(scores["i2t"].cpu(), scores["t2i"].cpu(), split.image_to_texts,
                                            split.text_to_image))
    results.update({"num_images": len(split.image_paths), "num_texts": len(split.texts), "data": str(data),
                    **loop.meter.summary(), **run_metadata(options, device, dtype, model)})
    return results


def first_images(split: RetrievalSplit, limit: int | None) -> RetrievalSplit:
    """The first `limit` images and their captions."""
    if not limit:
        return split
    return RetrievalSplit(split.image_paths[:limit], [t for t, i in zip(split.texts, split.text_to_image) if i < limit],
                          [i for i in split.text_to_image if i < limit])


def query_names(store: PredictionStore, split: RetrievalSplit) -> dict[str, list[str]]:
    """What each query's record names it by (image file, caption): a file written for other data is refused."""
    queries = {"i2t": [path.name for path in split.image_paths], "t2i": split.texts}
    keys = {f"{direction}:{row}": name for direction, names in queries.items() for row, name in enumerate(names)}
    for key, name in keys.items():
        store.check_matches(key, "query", name)
    store.say_resuming(sum(key in store.done for key in keys), len(keys))
    return queries


def for_gather(tensor, loop: EvalLoop):
    """gloo carries CPU tensors (a device tensor would arrive on the sender's device); one process keeps them
    where they are."""
    return tensor.cpu() if loop.dp.size > 1 and tensor is not None else tensor


def image_pass(loop: EvalLoop, encode, split: RetrievalSplit, options: RetrievalOptions, transform, dtype):
    """`encode` (pixels -> (embeddings, memory or None)) over every image of the split: each data-parallel rank
    embeds its share of the batches and every rank gets all of them, in image order, on the device."""
    device = loop.device
    dataset = ImageDataset(split.image_paths, transform)

    def load(mine):
        return torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=options.num_workers,
                                           collate_fn=collate, pin_memory=device.type != "cpu")

    parts = []
    batches = batch_positions(len(split.image_paths), options.batch_size)
    for positions, pixels, failed in loop.steps(batches, load, sink=parts.extend, desc="images", unit="batch"):
        if failed:  # every image has a row in the score matrices: a missing one cannot be skipped
            position, error = failed[0]
            raise UserError(f"image {split.image_paths[position]} cannot be read ({error}); retrieval needs every "
                            "image of the split.")
        with loop.timed(len(positions)):
            embeds, memory = encode(pixels.to(device, dtype, non_blocking=True))
        loop.add([(for_gather(embeds, loop), for_gather(memory, loop))])
    memory = None if parts[0][1] is None else torch.cat([memory for _, memory in parts]).to(device)
    return torch.cat([embeds for embeds, _ in parts]).to(device), memory


def text_pass(loop: EvalLoop, encode, ids, masks, batch_size: int, device) -> torch.Tensor:
    """Like image_pass, for the captions: sorted by length, each batch cut to its longest caption (a padded
    key is a masked one, so the embeddings are unchanged), then put back in caption order."""
    lengths = masks.sum(dim=1).tolist()
    batches = plan_batches(lengths, batch_size, runtime.length_buckets(ids.shape[1], runtime.length_step(False)))
    parts = []
    for positions, length in loop.steps(batches, sink=parts.extend, desc="texts", unit="batch"):
        with loop.timed(len(positions)):
            embeds = encode(ids[positions, :length].to(device), masks[positions, :length].to(device))
        loop.add([for_gather(embeds, loop)])
    sorted_embeds = torch.cat(parts).to(device)
    order = torch.tensor([position for positions, _ in batches for position in positions], device=device)
    return torch.empty_like(sorted_embeds).index_copy_(0, order, sorted_embeds)


def top_candidates(scores: torch.Tensor) -> list[list[int]]:
    """Each row's best TOP columns, best first."""
    return scores.topk(min(TOP, scores.shape[1]), dim=1).indices.tolist()


def rank_by_similarity(store: PredictionStore, sims, queries: dict) -> dict:
    """Models that rank by similarity alone: every rank holds the whole matrix, so the records are made here
    (the store writes on the main process only), those already in the store checked instead."""
    scores = {"i2t": sims, "t2i": sims.T}
    for direction, matrix in scores.items():
        top = top_candidates(matrix)
        check_candidates(store, direction, "top10", top)
        store.add([{"key": f"{direction}:{row}", "query": queries[direction][row], "top10": candidates}
                   for row, candidates in enumerate(top) if f"{direction}:{row}" not in store.done])
    return scores


def rerank_pass(loop: EvalLoop, task, model, sims, memory, ids, masks, k: int, batch_size: int, queries) -> dict:
    """Both directions, a chunk of query rows per re-ranking pass, the chunks shared over the data-parallel
    ranks; rows already in the store are not recomputed. Returns each direction's score matrix."""
    ids, masks = ids.to(sims.device), masks.to(sims.device)
    scores = {}
    for direction, matrix in (("i2t", sims), ("t2i", sims.T)):
        check_candidates(loop.store, direction, "indices", matrix.topk(k, dim=1).indices.tolist())
        todo = [row for row in range(len(matrix)) if f"{direction}:{row}" not in loop.store.done]
        chunk = max(1, batch_size // k)
        chunks = [todo[start:start + chunk] for start in range(0, len(todo), chunk)]
        for rows in loop.steps(chunks, desc=f"rerank {direction}", unit="chunk"):
            with loop.timed(len(rows) * k):
                ranked = task.rerank(model, sims, memory, ids, masks, direction, rows, k)
            top = top_candidates(score_matrix(ranked, (len(rows), matrix.shape[1]), task.unselected_score))
            indices, row_scores = (t.tolist() for t in ranked)
            loop.add([{"key": f"{direction}:{row}", "query": queries[direction][row], "indices": indices[i],
                       "scores": row_scores[i], "top10": top[i]} for i, row in enumerate(rows)])
        records = [loop.store.done[f"{direction}:{row}"] for row in range(len(matrix))]
        ranked = (torch.tensor([r["indices"] for r in records]), torch.tensor([r["scores"] for r in records]))
        scores[direction] = score_matrix(ranked, tuple(matrix.shape), task.unselected_score)
    return scores


def check_candidates(store: PredictionStore, direction: str, field: str, expected: list[list[int]]) -> None:
    """Records read back must rank what this run ranks: other candidates for the same queries mean another
    run (another --limit, or data changed beside the same query names)."""
    for row, candidates in enumerate(expected):
        record = store.done.get(f"{direction}:{row}")
        if record is not None and record.get(field) != candidates:
            raise UserError(f"{store.path} holds rankings of another run (other candidates for the same queries, as "
                            "another --limit gives); delete it or pass another --predictions file.")


@cli_main
def main(argv=None):
    shown = ["txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "num_images",
             "num_texts", "samples_per_second", "time_to_first_batch_s", "device", "dtype"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
