"""The calls an eval command makes on a graph-mode model, one per static shape, on placeholder inputs: what
`python -m weights_tools.compile` runs to compile (and save) every graph a later command will load.

Each is built by the command's own batch code (eval.sst2.make_batch, eval.batching.pad_rows, the region
padding of eval.data.region_features, runtime.to_model_input), so its argument structure, shapes and dtypes are
the command's: a saved graph is keyed by exactly these (runtime.saved_graphs). tests/test_saved_graphs.py runs
each command after weights_tools.compile and proves it compiled nothing.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from eval.batching import pad_rows
from eval.data.region_features import MAX_BOXES, pad_regions
from eval.sst2 import SST2Options, make_batch
from npu_models import runtime, tasks


@dataclass(frozen=True)
class GraphCall:
    """One static shape of a command: `run()` calls the model as the command does."""
    shape: str
    run: Callable[[], object]


def longest_text(task, config) -> int | None:
    """The most tokens the command (or the server) pads a text of this model to; None for images alone."""
    if isinstance(task, tasks.ImageClassification):
        return None
    if isinstance(task, tasks.TextClassification):
        return config.max_positions  # eval.sst2's --seq-len goes up to it
    return config.text_input.max_length


def default_lengths(task, config) -> list[int]:
    """The token lengths a command pads texts to in graph mode by default: its 16-token buckets (up to eval.sst2's
    default --seq-len for BERT, up to the model's maximum otherwise), or the one maximum of a model that pads every
    text to it; none for images alone."""
    if isinstance(task, tasks.ImageClassification):
        return []
    if isinstance(task, tasks.TextClassification):
        return runtime.length_buckets(min(SST2Options.seq_len, config.max_positions))
    text = config.text_input
    return [text.max_length] if text.pad_to_max else runtime.length_buckets(text.max_length)


def graph_calls(task, model, batch_size: int, lengths: list[int]) -> list[GraphCall]:
    """Every call the command of `task` (sst2, imagenet or vqa: retrieval runs eagerly, and weights_tools.compile
    refuses it) makes on `model` in graph mode with --batch-size `batch_size`, for each of `lengths` (token
    lengths; ignored for images alone)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype

    def to_model(*tensors):
        return tuple(runtime.to_model_input(t, device, dtype) for t in tensors)

    if isinstance(task, tasks.ImageClassification):
        size = model.config.transform.size
        pixels = to_model(torch.zeros(batch_size, 3, size, size))
        return [GraphCall(f"pixels {tuple(pixels[0].shape)}", lambda: model(*pixels))]
    calls = []
    for length in lengths:
        text = [[1] * length] * batch_size  # placeholder token ids, every row of the full length
        if isinstance(task, tasks.TextClassification):
            batch = pad_rows(make_batch(text, length, device), batch_size)
            calls.append(GraphCall(f"tokens ({batch_size}, {length})", lambda batch=batch: model(*batch)))
            continue
        ids, masks = torch.ones(batch_size, length, dtype=torch.long), torch.ones(batch_size, length, dtype=torch.long)
        if task.visual == "pixels":
            size = model.config.transform.size
            visual = (torch.zeros(batch_size, 3, size, size),)
        else:
            regions = [pad_regions(torch.zeros(1, model.config.image_feature_dim), torch.zeros(1, 4))] * batch_size
            visual = tuple(torch.stack([r[i] for r in regions]) for i in range(3))
        inputs = pad_rows(to_model(*visual, ids, masks), batch_size)
        shape = f"{task.visual} {tuple(visual[0].shape)}" + (f" ({MAX_BOXES} boxes)" if task.visual == "regions" else "")
        calls.append(GraphCall(f"{shape}, tokens ({batch_size}, {length})",
                               lambda inputs=inputs: task.answer_logits(model, *inputs)))
    return calls
