"""Image-text retrieval on the COCO Karpathy test split: TR/IR recall@1/5/10.

    python -m eval.retrieval --model blip --checkpoint model_base_retrieval_coco.pth --data coco --vocab vocab.txt
    python -m eval.retrieval --model vlmo --checkpoint vlmo_base_patch16_384_coco.pt --data coco --vocab vocab.txt

--data holds val2014/ (the images) and coco_karpathy_test.json (BLIP's file) or dataset_coco.json
(Karpathy's). Image and caption embeddings are computed once, in batches, and the similarity matrix is
formed on the device. VLMo ranks by that similarity (ITC); BLIP then re-ranks each query's top --k-test
candidates with its ITM head in both directions (score = ITM logit + ITC similarity), the slow part, which
is batched across queries, streamed to --predictions and resumed from there.

Under torchrun with more processes than --tp, each data-parallel rank embeds its share of the image and
caption batches and re-ranks its share of each step's query chunks; every rank gathers all of them in one
process's order, so each holds the whole similarity matrix and computes the same metrics.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

import npu_models
from eval import metrics
from eval.common import (SAMPLES_DIR, LatencyMeter, PredictionStore, StepGather, add_common_args, batch_positions,
                         bert_uncased_vocab, content_hash, demo_banner, plan_batches, progress, run_eval, run_metadata,
                         run_record, write_json_atomic)
from eval.data.images import ImageDataset, collate
from eval.data.retrieval import read_retrieval
from npu_models import parallel, registry, runtime
from npu_models.tasks import score_matrix
from npu_models.errors import UserError, cli_main

SAMPLE = SAMPLES_DIR / "retrieval"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.retrieval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "retrieval", default_batch_size=64)
    parser.add_argument("--split", default="test")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (default: in --data or beside the checkpoint)")
    parser.add_argument("--k-test", type=int, help="BLIP: candidates re-ranked by ITM per query (default: the "
                        "model's, 256 as the reference)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    return parser.parse_args(argv)


def for_gather(tensor, dp):
    """gloo carries CPU tensors (a device tensor would arrive on the sender's device); one process keeps them
    where they are."""
    return tensor.cpu() if dp.size > 1 and tensor is not None else tensor


def image_pass(encode, split, dp, batch_size, num_workers, transform, device, dtype, meter):
    """`encode` (pixels -> (embeddings, memory or None)) over every image of the split: each data-parallel rank
    embeds its share of the batches and every rank gets all of them, in image order, on the device."""
    batches = batch_positions(len(split.image_paths), batch_size)
    loader = torch.utils.data.DataLoader(ImageDataset(split.image_paths, transform), batch_sampler=dp.share(batches),
                                         num_workers=num_workers, collate_fn=collate, pin_memory=device.type != "cpu")

    def mine():
        for positions, pixels, failed in progress(loader, desc="images", unit="batch"):
            if failed:  # sent to every rank, which all stop at the same step instead of waiting on this one
                yield None, None, failed[0]
                return
            with meter, torch.no_grad():
                embeds, memory = encode(pixels.to(device, dtype, non_blocking=True))
            meter.samples += len(positions)
            yield for_gather(embeds, dp), for_gather(memory, dp), None

    embeds, memory = [], []
    for batch_embeds, batch_memory, failed in dp.in_order(mine(), len(batches)):
        if failed:  # every image has a row in the score matrices: a missing one cannot be skipped
            position, error = failed
            raise UserError(f"image {split.image_paths[position]} cannot be read ({error}); retrieval needs every "
                            "image of the split.")
        embeds.append(batch_embeds)
        memory.append(batch_memory)
    return torch.cat(embeds).to(device), None if memory[0] is None else torch.cat(memory).to(device)


def text_pass(encode, ids, masks, dp, batch_size, device, meter) -> torch.Tensor:
    """Like image_pass, for the captions: sorted by length, each batch cut to its longest caption (a padded
    key is a masked one, so the embeddings are unchanged), then put back in caption order."""
    lengths = masks.sum(dim=1).tolist()
    batches = plan_batches(lengths, batch_size, runtime.length_buckets(ids.shape[1], runtime.length_step(False)))

    def mine():
        for positions, length in progress(dp.share(batches), desc="texts", unit="batch"):
            with meter, torch.no_grad():
                embeds = encode(ids[positions, :length].to(device), masks[positions, :length].to(device))
            meter.samples += len(positions)
            yield for_gather(embeds, dp)

    sorted_embeds = torch.cat(list(dp.in_order(mine(), len(batches)))).to(device)
    order = torch.tensor([position for positions, _ in batches for position in positions], device=device)
    return torch.empty_like(sorted_embeds).index_copy_(0, order, sorted_embeds)


def rerank_pass(rerank, model, sims, memory, ids, masks, k, dp, batch_size, store, meter):
    """Both directions, a chunk of query rows per re-ranking pass, the chunks shared over the data-parallel
    ranks; rows already in the store are not recomputed. Returns {direction: (candidate indices, scores)}."""
    device = sims.device
    ids, masks = ids.to(device), masks.to(device)
    ranked = {}
    for direction, num_rows in (("i2t", sims.shape[0]), ("t2i", sims.shape[1])):
        todo = [row for row in range(num_rows) if f"{direction}:{row}" not in store.done]
        chunk = max(1, batch_size // k)
        chunks = [todo[start:start + chunk] for start in range(0, len(todo), chunk)]
        gathered = StepGather(dp, store, len(chunks))
        for rows in progress(dp.share(chunks), desc=f"rerank {direction}", unit="chunk"):
            with meter:
                indices, scores = rerank(model, sims, memory, ids, masks, direction, rows, k)
            meter.samples += len(rows) * k
            gathered.add([{"key": f"{direction}:{row}", "indices": i, "scores": s}
                          for row, i, s in zip(rows, indices.tolist(), scores.tolist())], [])
        gathered.finish()
        records = [store.done[f"{direction}:{row}"] for row in range(num_rows)]
        expected_top = (sims if direction == "i2t" else sims.T).topk(k, dim=1).indices.tolist()
        if any(r["indices"] != top for r, top in zip(records, expected_top)):
            raise UserError(f"{store.path} holds re-ranking results of another run (other candidates for the same "
                            "queries); delete it or pass another --predictions file.")
        ranked[direction] = (torch.tensor([r["indices"] for r in records]), torch.tensor([r["scores"] for r in records]))
    return ranked


def evaluate(args) -> dict:
    entry = registry.get_entry(args.model, task="retrieval")
    task = entry.task
    if args.checkpoint is None:
        demo_banner(f"{entry.name} with random weights on " + (
            "the bundled retrieval sample." if args.data is None else f"{args.data}."))
    if args.graph:
        print("note: eval.retrieval runs eagerly; --graph is not used here", file=sys.stderr)
    data = args.data or SAMPLE
    split = read_retrieval(data, args.split)
    if args.limit:
        split = type(split)(split.image_paths[: args.limit],
                            [t for t, i in zip(split.texts, split.text_to_image) if i < args.limit],
                            [i for i in split.text_to_image if i < args.limit])
    model = npu_models.load_model(entry.name, args.checkpoint, args.device, args.dtype, False, args.tp, task="retrieval",
                                  config_file=args.config)
    config = model.config
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    vocab = bert_uncased_vocab(args, data)
    ids, masks = config.text_input.encode(vocab, split.texts)

    dp = parallel.data_parallel(args.tp)
    meter = LatencyMeter(device, args.started_at)
    image_embeds, memory = image_pass(lambda pixels: task.encode_images(model, pixels), split, dp, args.batch_size,
                                      args.num_workers, config.transform, device, dtype, meter)
    text_embeds = text_pass(lambda i, m: task.encode_texts(model, i, m), ids, masks, dp, args.batch_size, device,
                            meter)
    sims = image_embeds.float() @ text_embeds.float().T
    results = {}
    if task.rerank is not None:
        k = min(args.k_test or task.rerank_k(config), *sims.shape)
        run = run_record(args, dtype, split=args.split, vocab=content_hash(vocab), k_test=k)
        store = PredictionStore(args.predictions, key="key", run=run)
        try:
            ranked = rerank_pass(task.rerank, model, sims, memory, ids, masks, k, dp, args.batch_size, store, meter)
        finally:
            store.close()
        scores_i2t = score_matrix(ranked["i2t"], tuple(sims.shape), task.unselected_score)
        scores_t2i = score_matrix(ranked["t2i"], tuple(sims.T.shape), task.unselected_score)
        results["k_test"] = k
    else:
        scores_i2t, scores_t2i = sims, sims.T
        if args.predictions and parallel.is_main_process():
            write_json_atomic(args.predictions, {"i2t_top10": sims.topk(min(10, sims.shape[1]), dim=1).indices.tolist(),
                                                 "t2i_top10": sims.T.topk(min(10, sims.shape[0]), dim=1).indices.tolist()})
    meter.gather(dp)
    results.update(metrics.retrieval_recall(scores_i2t.cpu(), scores_t2i.cpu(), split.image_to_texts, split.text_to_image))
    results.update({"num_images": len(split.image_paths), "num_texts": len(split.texts), "data": str(data),
                    **meter.summary(), **run_metadata(args, device, dtype)})
    return results


@cli_main
def main(argv=None):
    shown = ["txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "num_images",
             "num_texts", "samples_per_second", "time_to_first_batch_s", "device", "dtype"]
    return run_eval(parse_args, evaluate, shown, argv)


if __name__ == "__main__":
    sys.exit(main())
