"""Image-text retrieval on the COCO Karpathy test split: TR/IR recall@1/5/10.

    python -m eval.retrieval --model vlmo --checkpoint vlmo_base_patch16_384_coco.pt --data coco --vocab vocab.txt

--data holds val2014/ (the images) and coco_karpathy_test.json (BLIP's file) or dataset_coco.json
(Karpathy's). Image and caption embeddings are computed once, in batches; the similarity matrix is formed
on the device. With neither --checkpoint nor --data it runs a demo on the bundled sample.
"""
import argparse
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import npu_models
from eval import metrics
from eval.common import SAMPLES_DIR, LatencyMeter, add_common_args, demo_banner, print_results, run_metadata, write_json_atomic
from eval.data.images import ImageDataset, collate
from eval.data.retrieval import read_retrieval
from npu_models.errors import UserError, cli_main
from npu_models.tokenizer import bert_tokenizer, encode_padded

SAMPLE = SAMPLES_DIR / "retrieval"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m eval.retrieval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, default_model="vlmo-base-coco-retrieval", default_batch_size=64)
    parser.add_argument("--split", default="test")
    parser.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (default: beside the checkpoint)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    return parser.parse_args(argv)


def embed_images(model, split, batch_size, num_workers, device, dtype, meter) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(ImageDataset(split.image_paths, model.config.transform),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    embeddings = []
    for positions, pixels, failed in tqdm(loader, desc="images", unit="batch", disable=None):
        if failed:  # every image has a row in the similarity matrix: a missing one cannot be skipped
            position, error = failed[0]
            raise UserError(f"image {split.image_paths[position]} cannot be read ({error}); retrieval needs every "
                            "image of the split.")
        with meter, torch.no_grad():
            embeddings.append(model.image_embeds(pixels.to(device, dtype)))
        meter.samples += len(positions)
    return torch.cat(embeddings)


def embed_texts(model, split, tokenizer, batch_size, device, meter) -> torch.Tensor:
    ids, masks = encode_padded(tokenizer, split.texts, model.config.max_text_len)
    embeddings = []
    for start in tqdm(range(0, len(split.texts), batch_size), desc="texts", unit="batch", disable=None):
        with meter, torch.no_grad():
            embeddings.append(model.text_embeds(ids[start:start + batch_size].to(device),
                                                masks[start:start + batch_size].to(device)))
        meter.samples += min(batch_size, len(split.texts) - start)
    return torch.cat(embeddings)


def evaluate(args) -> dict:
    if args.checkpoint is None:
        demo_banner("vlmo-base-coco-retrieval with random weights on " + (
            "the bundled retrieval sample." if args.data is None else f"{args.data}."))
    data = args.data or SAMPLE
    split = read_retrieval(data, args.split)
    if args.limit:
        keep = set(range(args.limit))
        split = type(split)(split.image_paths[: args.limit],
                            [t for t, i in zip(split.texts, split.text_to_image) if i in keep],
                            [i for i in split.text_to_image if i in keep])
    model = npu_models.load_model(args.model, args.checkpoint, args.device, args.dtype, False, args.tp,
                                  task="retrieval")
    if model.config.head != "retrieval":
        raise UserError(f"{args.checkpoint} is a {model.config.head} checkpoint; retrieval needs the COCO retrieval "
                        "fine-tune.")
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    vocab = args.vocab or next((d / "vocab.txt" for d in (data, args.checkpoint.parent if args.checkpoint else None)
                                if d is not None and (d / "vocab.txt").is_file()), None)
    if vocab is None:
        raise UserError("no vocab.txt in --data or beside the checkpoint; pass --vocab with bert-base-uncased's vocab.txt.")
    tokenizer = bert_tokenizer(vocab, model.config.do_lower_case, model.config.max_text_len)
    meter = LatencyMeter(device)
    image_embeds = embed_images(model, split, args.batch_size, args.num_workers, device, dtype, meter)
    text_embeds = embed_texts(model, split, tokenizer, args.batch_size, device, meter)
    scores = (image_embeds.float() @ text_embeds.float().T).cpu()
    results = metrics.retrieval_recall(scores, scores.T, split.image_to_texts, split.text_to_image)
    results.update({"num_images": len(split.image_paths), "num_texts": len(split.texts), "data": str(data),
                    **meter.summary(), **run_metadata(args, device, dtype)})
    if args.predictions:
        write_json_atomic(args.predictions, {"i2t_top10": scores.topk(min(10, scores.shape[1]), dim=1).indices.tolist(),
                                             "t2i_top10": scores.T.topk(min(10, scores.shape[0]), dim=1).indices.tolist()})
    return results


@cli_main
def main(argv=None):
    args = parse_args(argv)
    results = evaluate(args)
    if args.output:
        write_json_atomic(args.output, results)
    print_results(results, ["txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "num_images",
                            "num_texts", "samples_per_second", "device", "dtype"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
