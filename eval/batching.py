"""How examples become batches: in order, or sorted by length and padded to a bucket; graph mode's one
static batch shape."""
import torch

from npu_models import runtime
from npu_models.errors import UserError


def batch_positions(count: int, batch_size: int) -> list[list[int]]:
    """Positions 0..count-1 cut into batches in order (the batches one process would run)."""
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


def plan_batches(lengths: list[int], batch_size: int, buckets: list[int]) -> list[tuple[list[int], int]]:
    """Sort by length and cut into batches, each padded to the smallest bucket that holds its longest.

    Returns (positions into `lengths`, padded length) per batch.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks = [[order[i] for i in positions] for positions in batch_positions(len(order), batch_size)]
    return [(chunk, runtime.bucket_for(max(lengths[i] for i in chunk), buckets)) for chunk in chunks]


def pad_columns(tokens: torch.Tensor, columns: int) -> torch.Tensor:
    """Token ids or a mask [N, L] padded with 0 ([PAD], masked out) to `columns` columns."""
    return torch.nn.functional.pad(tokens, (0, columns - tokens.shape[1])) if tokens.shape[1] < columns else tokens


def static_rows(batch_size: int, count: int) -> int:
    """Graph mode's one batch shape: --batch-size rows, or all `count` examples of a run that has fewer (the VQA
    demo's 4 questions run a graph of 4 rows, not 32 rows of which 28 are filler)."""
    return max(1, min(batch_size, count))


def pad_rows(tensors: tuple, rows: int) -> tuple:
    """Repeat each tensor's first row until it has `rows` rows: graph mode's one static batch shape (the
    filler rows are real examples, so no attention row is empty)."""
    return tuple(torch.cat([t, t[:1].expand(rows - len(t), *t.shape[1:])]) if len(t) < rows else t for t in tensors)
