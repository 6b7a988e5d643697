"""The ModelZoo SST-2 flow, the padded baseline `eval.bench --end-to-end` sets eval.sst2 against: transformers'
tokenizer pads every sentence to seq_len, batches have one static size (the last one filled with empty rows,
as a static-shape OM takes it), transformers' model gives the logits.

The bench imports it for the in-process row and runs this file as its own process for the whole-process row
(`run_as_process`). Run so, it imports torch and transformers only, as the ModelZoo flow's process does: not
npu_models, whose OpenMP settings would change the peer's threads.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def modelzoo_tokenizer(vocab: Path, lower_case: bool):
    import transformers
    return transformers.BertTokenizer(str(vocab), do_lower_case=lower_case)


def modelzoo_flow(run, tokenizer, sentences, batch_size, seq_len, device):
    """Class probabilities per sentence and the token rows computed. `run(input_ids, attention_mask,
    token_type_ids)` returns the logits."""
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    predictions, token_rows = [], 0
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            batch = [encoded[k][start:start + batch_size] for k in ("input_ids", "attention_mask", "token_type_ids")]
            count = len(batch[0])
            batch = [torch.cat([t, t.new_zeros(batch_size - count, seq_len)]).to(device) for t in batch]
            predictions += run(*batch)[:count].float().softmax(dim=-1).tolist()
            token_rows += batch_size * seq_len
    return predictions, token_rows


def run_as_process(command: list[str]) -> list[str]:
    """The command line that runs this file's main in a fresh Python with `command` as its arguments. Through
    runpy from -c, so the process's first import path is its working directory, not eval/bench/ (whose
    module names, such as load and options, would shadow others')."""
    return [sys.executable, "-c", "import runpy, sys; del sys.argv[0]; runpy.run_path(sys.argv[0], run_name='__main__')",
            __file__, *command]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="The ModelZoo SST-2 flow over a list of sentences.")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a Hugging Face BERT classifier directory")
    parser.add_argument("--sentences", type=Path, required=True, help="a JSON list of sentences")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--lower-case", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--out", type=Path, required=True, help="write {probs, token_rows} here as JSON")
    args = parser.parse_args(argv)
    import transformers
    model = transformers.BertForSequenceClassification.from_pretrained(args.checkpoint)
    model = model.to(args.device, DTYPES[args.dtype]).eval()

    def run(input_ids, attention_mask, token_type_ids):
        return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    sentences = json.loads(args.sentences.read_text(encoding="utf-8"))
    tokenizer = modelzoo_tokenizer(args.checkpoint / "vocab.txt", args.lower_case)
    probs, token_rows = modelzoo_flow(run, tokenizer, sentences, args.batch_size, args.seq_len, args.device)
    args.out.write_text(json.dumps({"probs": probs, "token_rows": token_rows}))


if __name__ == "__main__":
    main()
