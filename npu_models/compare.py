"""How verify compares our outputs with a reference fixture's: values within atol + rtol*|ref|, and ranking
outputs (candidate indices) by the rule in `compare_ranking`. Each comparison is one row:
{name, shape, max_abs_diff, tolerance, ok, note}.

A quantized model is judged by relative error instead (`compare_outputs(..., relative=r)`): every cell within
r * max|ref| of the reference tensor, i.e. max|ours - ref| / max|ref| <= r, and ranking near ties within
r * max|scores|: int8 rounding moves every output by a fraction of its scale, not of each cell."""
import torch

from npu_models.spec import Ranking


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float, rtol: float,
            excluded: torch.Tensor | None = None, why_excluded: str = "") -> dict:
    """Element-wise comparison; cells where the bool mask `excluded` is True are left out."""
    row = {"name": name, "shape": list(reference.shape), "tolerance": f"{atol:g} + {rtol:g}*|ref|"}
    if tuple(ours.shape) != tuple(reference.shape):
        return {**row, "max_abs_diff": float("inf"), "ok": False, "note": f"our shape {list(ours.shape)}"}
    ours, reference = ours.detach().double().cpu(), reference.double()
    diff = (ours - reference).abs()
    within = diff <= atol + rtol * reference.abs()
    note = ""
    if excluded is not None and excluded.any():
        diff, within = diff.masked_fill(excluded, 0.0), within | excluded
        note = f"{int(excluded.sum())} cell(s) left out: {why_excluded}"
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
                    prefix: str = "", relative: float | None = None) -> list[dict]:
    """One row per reference tensor we produce, in the reference's order. `relative` (a quantized model): each
    tensor within relative * max|ref| (rankings: of the scores), which replaces atol and rtol."""
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
        elif name in produced:
            row = compare(prefix + name, produced[name], reference, *relative_bounds(reference, atol, rtol, relative),
                          *excluded.get(name, (None, "")))
            rows.append(relative_row(row, reference, relative))
    return rows
