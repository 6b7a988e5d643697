"""How verify compares our outputs with a reference fixture's: values within atol + rtol*|ref|, and ranking
outputs (candidate indices) by the rule in `compare_ranking`. Each comparison is one row:
{name, shape, max_abs_diff, tolerance, ok, note}.

A bf16/fp16 run is judged per tensor by cosine similarity, relative L2 error and max error over the tensor's
scale (`LowPrecisionBounds`, from the dtype's epsilon and the model's depth), as Ascend's accuracy tools report.

A quantized model is judged by relative error instead (`compare_outputs(..., relative=r)`): every cell within
r * max|ref| of the reference tensor, i.e. max|ours - ref| / max|ref| <= r, and ranking near ties within
r * max|scores|: int8 rounding moves every output by a fraction of its scale, not of each cell."""
import math
from dataclasses import dataclass

import torch

from npu_models.spec import Ranking


def shape_mismatch(row: dict, ours: torch.Tensor, reference: torch.Tensor) -> dict | None:
    """The failed row when our tensor's shape is not the reference's; None when they match."""
    if tuple(ours.shape) == tuple(reference.shape):
        return None
    return {**row, "max_abs_diff": float("inf"), "ok": False, "note": f"our shape {list(ours.shape)}"}


def compared_cells(ours: torch.Tensor, reference: torch.Tensor, excluded: torch.Tensor | None,
                   why_excluded: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Both tensors as float64 vectors of the cells compared (those the bool mask `excluded` marks left out), and
    the note that says so."""
    ours, reference = ours.detach().double().cpu().flatten(), reference.double().flatten()
    if excluded is None or not excluded.any():
        return ours, reference, ""
    keep = ~excluded.flatten()
    return ours[keep], reference[keep], f"{int(excluded.sum())} cell(s) left out: {why_excluded}"


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float, rtol: float,
            excluded: torch.Tensor | None = None, why_excluded: str = "") -> dict:
    """Element-wise comparison; cells where the bool mask `excluded` is True are left out."""
    row = {"name": name, "shape": list(reference.shape), "tolerance": f"{atol:g} + {rtol:g}*|ref|"}
    if (mismatch := shape_mismatch(row, ours, reference)) is not None:
        return mismatch
    ours, reference, note = compared_cells(ours, reference, excluded, why_excluded)
    diff = (ours - reference).abs()
    within = diff <= atol + rtol * reference.abs()
    return {**row, "max_abs_diff": diff.max().item() if diff.numel() else 0.0, "ok": bool(within.all()), "note": note}


def compare_ranking(name: str, ours: torch.Tensor, reference: torch.Tensor, reference_scores: torch.Tensor,
                    atol: float, rtol: float) -> tuple[dict, list[set[int]]]:
    """Candidate indices [R, k] against the reference's, judged by the reference's scores [R, N].

    Our index at position j may differ from the reference's when the reference score of our candidate is
    within atol + rtol*|s| of the reference score s of the reference's candidate at j (a near tie, the
    k-th boundary included: our candidate need not be among the reference's). max_abs_diff is the largest
    such score gap. Returns the row and, per query row, the candidates whose scattered cells an accepted
    swap moved (empty for a row with any real difference, so its cells stay compared)."""
    row = {"name": name, "shape": list(reference.shape), "tolerance": f"{atol:g} + {rtol:g}*|ref|"}  # ref: the reference score
    moved = [set() for _ in range(len(reference))]
    if tuple(ours.shape) != tuple(reference.shape):
        return {**row, "max_abs_diff": float("inf"), "ok": False, "note": f"our shape {list(ours.shape)}"}, moved
    ours, scores = ours.detach().cpu().long(), reference_scores.double()
    if ours.numel() and (ours.min() < 0 or ours.max() >= scores.shape[1]):
        return {**row, "max_abs_diff": float("inf"), "ok": False, "note": "index out of range"}, moved
    ours_scores, reference_scores_at = scores.gather(1, ours), scores.gather(1, reference.long())
    gap = (ours_scores - reference_scores_at).abs().masked_fill(ours == reference, 0.0)
    near_tie = gap <= atol + rtol * reference_scores_at.abs()
    distinct = torch.tensor([len(set(r.tolist())) == len(r) for r in ours], dtype=torch.bool)
    flipped = int((ours != reference).sum())
    ok = bool(near_tie.all() and distinct.all())
    for i, (mine, theirs) in enumerate(zip(ours.tolist(), reference.tolist())):
        if near_tie[i].all() and distinct[i]:
            moved[i] = set(mine) ^ set(theirs)
    note = f"{flipped} near-tie flip(s) accepted" if ok and flipped else ""
    if not distinct.all():
        note = "a candidate repeated within a row"
    return {**row, "max_abs_diff": gap.max().item() if gap.numel() else 0.0, "ok": ok, "note": note}, moved


# ---- low precision, judged per tensor as Ascend's accuracy tools (msprobe) judge it -------------------------

# Unit roundoff of each low-precision dtype: 8 and 11 significant bits.
EPSILON = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
# Multiples of eps * sqrt(depth) allowed. On the five shipped fixtures (2-12 attention layers) correct bf16/fp16
# runs reach at most 2.25 (relative L2) and 4.45 (max error / max|ref|); one attention output projection with
# its rows reversed reaches at least 8.8 and 31 on every fixture. Rounding errors of independent layers add like
# a random walk, hence the square root of the depth.
RELATIVE_L2_FACTOR, MAX_ERROR_FACTOR = 4.0, 10.0


@dataclass(frozen=True)
class LowPrecisionBounds:
    """What a tensor computed in `dtype` by a model `depth` attention layers deep may differ from the fp32
    reference by: its relative L2 error, its largest error relative to the tensor's scale (max|ref|), and the
    cosine similarity those imply."""
    relative_l2: float
    max_error: float

    @classmethod
    def for_model(cls, dtype: torch.dtype, depth: int) -> "LowPrecisionBounds":
        scale = EPSILON[dtype] * math.sqrt(max(depth, 1))
        return cls(RELATIVE_L2_FACTOR * scale, MAX_ERROR_FACTOR * scale)

    @property
    def cosine(self) -> float:
        return 1.0 - self.relative_l2 ** 2 / 2  # an error of relative norm e at right angles turns the tensor by this

    def describe(self) -> str:
        return f"cos>={self.cosine:.6f} relL2<={self.relative_l2:.1e} max<={self.max_error:.1e}*max|ref|"


def compare_low_precision(name: str, ours: torch.Tensor, reference: torch.Tensor, bounds: LowPrecisionBounds,
                          excluded: torch.Tensor | None = None, why_excluded: str = "") -> dict:
    """One tensor by the metrics an accuracy comparison tool reports: cosine similarity, relative L2 error and
    the largest error relative to the tensor's scale. Element-wise bounds fail near-zero entries of correct
    runs and pass wrong large ones; these judge the tensor as a whole, as rounding affects it."""
    row = {"name": name, "shape": list(reference.shape), "tolerance": bounds.describe()}
    if (mismatch := shape_mismatch(row, ours, reference)) is not None:
        return mismatch
    ours, reference, note = compared_cells(ours, reference, excluded, why_excluded)
    diff = ours - reference
    scale, norm = reference.abs().max().item() if reference.numel() else 0.0, reference.norm().item()
    relative_l2 = diff.norm().item() / norm if norm else diff.norm().item()
    max_error = diff.abs().max().item() / scale if scale else (diff.abs().max().item() if diff.numel() else 0.0)
    cosine = torch.nn.functional.cosine_similarity(ours, reference, dim=0).item() if norm and ours.norm() else 1.0
    ok = relative_l2 <= bounds.relative_l2 and max_error <= bounds.max_error and cosine >= bounds.cosine
    return {**row, "max_abs_diff": diff.abs().max().item() if diff.numel() else 0.0, "ok": ok, "note": note,
            "cosine": cosine, "relative_l2": relative_l2, "max_error": max_error}


def relative_bounds(reference: torch.Tensor, atol: float, rtol: float, relative: float | None) -> tuple[float, float]:
    """(atol, rtol) for one reference tensor: as given, or for a relative bound r, (r * max|ref|, 0). Integer
    outputs (indices, labels) stay compared as given: exactly."""
    if relative is None or not reference.is_floating_point():
        return atol, rtol
    return relative * (reference.double().abs().max().item() if reference.numel() else 0.0), 0.0


def relative_row(row: dict, reference: torch.Tensor, relative: float | None) -> dict:
    """A row judged by a relative bound says so, with its relative error max|ours - ref| / max|ref|."""
    if relative is None or not reference.is_floating_point():
        return row
    scale = reference.double().abs().max().item() if reference.numel() else 0.0
    return {**row, "tolerance": f"{relative:g} * max|ref|",
            "relative_diff": row["max_abs_diff"] / scale if scale else row["max_abs_diff"]}


def compare_outputs(produced: dict, references: dict, rankings: dict[str, Ranking], atol: float, rtol: float,
                    prefix: str = "", relative: float | None = None,
                    low_precision: LowPrecisionBounds | None = None) -> list[dict]:
    """One row per reference tensor we produce, in the reference's order. `relative` (a quantized model): each
    tensor within relative * max|ref| (rankings: of the scores), which replaces atol and rtol. `low_precision` (a
    bf16/fp16 run): each float tensor judged by compare_low_precision, rankings' near ties within twice its max
    error."""
    if low_precision is not None:  # two scores, each within the max error, can close a gap of twice it
        relative = 2 * low_precision.max_error
    ranking_rows, excluded = {}, {}
    for name, ranking in rankings.items():
        if name not in produced or name not in references or ranking.scores not in references:
            continue  # nothing to judge a swap by: the indices are compared as values, exactly as before
        scores = references[ranking.scores].T if ranking.transposed else references[ranking.scores]
        row, moved = compare_ranking(prefix + name, produced[name], references[name], scores,
                                     *relative_bounds(scores, atol, rtol, relative))
        ranking_rows[name] = relative_row(row, scores, relative)
        for scattered in ranking.scattered:
            if scattered in references:
                mask = torch.zeros(references[scattered].shape, dtype=torch.bool)
                for i, columns in enumerate(moved):
                    mask[i, sorted(columns)] = True
                excluded[scattered] = (mask, f"near-tie flips in {name}")
    rows = []
    for name, reference in references.items():
        if name in ranking_rows:
            rows.append(ranking_rows[name])
        elif name in produced and low_precision is not None and reference.is_floating_point():
            rows.append(compare_low_precision(prefix + name, produced[name], reference, low_precision,
                                              *excluded.get(name, (None, ""))))
        elif name in produced:
            row = compare(prefix + name, produced[name], reference, *relative_bounds(reference, atol, rtol, relative),
                          *excluded.get(name, (None, "")))
            rows.append(relative_row(row, reference, relative))
    return rows
