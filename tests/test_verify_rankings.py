"""verify judges ranking outputs (BLIP's top-k candidates and the score matrices scattered from them) by the
reference's scores: a swap between near-tied candidates passes in low precision, a real rank error fails."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from npu_models.compare import compare_outputs
from npu_models.spec import Ranking
from npu_models.verify import verify
from tests.conftest import FIXTURES

BLIP_FIXTURE = FIXTURES / "reference" / "blip"
RANKINGS = {"idx": Ranking("scores", scattered=("matrix",))}


def rows_by_name(rows):
    return {r["name"]: r for r in rows}


def fixture_with_reference_candidate(tmp_path, name, row, position, candidate):
    """A copy of the BLIP fixture whose reference picked `candidate` at (row, position) of output `name`,
    its score matrix moved along (the reference's score for the old candidate now sits at the new one)."""
    directory = tmp_path / "blip"
    shutil.copytree(BLIP_FIXTURE, directory)
    outputs = load_file(str(directory / "outputs.safetensors"))
    matrix = outputs[name.replace("topk", "score_matrix").replace("_idx", "")]
    old = int(outputs[name][row, position])
    outputs[name][row, position] = candidate
    matrix[row, candidate], matrix[row, old] = matrix[row, old].clone(), matrix[row, candidate].clone()
    save_file(outputs, str(directory / "outputs.safetensors"))
    return directory


def test_a_near_tie_flip_in_bf16_is_accepted_and_counted(tmp_path):
    # image 0's ITC similarities to texts 0 and 2 are 0.388 and 0.342: 0.046 apart, within what bf16 may move two
    # scores by (twice the max error bound, 9.6e-2 of the scores' scale 0.39 each: 0.074)
    directory = fixture_with_reference_candidate(tmp_path, "topk_i2t_idx", row=0, position=1, candidate=2)
    rows = rows_by_name(verify("blip", directory, dtype="bf16"))
    assert all(r["ok"] for r in rows.values()), [r for r in rows.values() if not r["ok"]]
    assert rows["topk_i2t_idx"]["note"] == "1 near-tie flip(s) accepted"
    assert 0.04 < rows["topk_i2t_idx"]["max_abs_diff"] < 0.05  # the reference-score gap of the flip
    assert rows["score_matrix_i2t"]["note"] == "2 cell(s) left out: near-tie flips in topk_i2t_idx"
    assert rows["topk_t2i_idx"]["note"] == "" and rows["score_matrix_t2i"]["note"] == ""


def test_a_real_rank_error_fails_in_bf16(tmp_path):
    # text 0's similarity to image 2 (0.290) is clearly below its top candidate, image 0 (0.388): 0.098 apart
    directory = fixture_with_reference_candidate(tmp_path, "topk_t2i_idx", row=0, position=0, candidate=2)
    rows = rows_by_name(verify("blip", directory, dtype="bf16"))
    failing = {name for name, r in rows.items() if not r["ok"]}
    assert failing == {"topk_t2i_idx", "score_matrix_t2i"}
    assert rows["topk_t2i_idx"]["max_abs_diff"] > 0.09


def test_fp32_stays_exact(tmp_path):
    rows = rows_by_name(verify("blip", BLIP_FIXTURE))
    for name in ("topk_i2t_idx", "topk_t2i_idx", "score_matrix_i2t", "score_matrix_t2i"):
        assert rows[name]["ok"] and rows[name]["note"] == "", rows[name]
    assert rows["topk_i2t_idx"]["max_abs_diff"] == rows["topk_t2i_idx"]["max_abs_diff"] == 0.0
    # the flip bf16 accepts is a real difference at fp32's tolerance
    directory = fixture_with_reference_candidate(tmp_path, "topk_i2t_idx", row=0, position=1, candidate=2)
    rows = rows_by_name(verify("blip", directory))
    assert not rows["topk_i2t_idx"]["ok"] and not rows["score_matrix_i2t"]["ok"]


SCORES = torch.tensor([[0.50, 0.40, 0.39, 0.10]])
REFERENCE = {"scores": SCORES, "idx": torch.tensor([[0, 1]]), "matrix": torch.tensor([[5.0, 4.0, -100, -100]])}


@pytest.mark.parametrize("ours, matrix, ok, matrix_ok", [
    ([[0, 2]], [[5.0, -100, 3.9, -100]], True, True),     # a tie at the k-th boundary: 2 was not a candidate
    ([[1, 0]], [[5.0, 4.0, -100, -100]], False, True),    # 0.50 vs 0.40 is no tie at atol 0.02 (same set)
    ([[0, 3]], [[5.0, -100, -100, 1.0]], False, False),   # candidate 3 scores clearly lower: cells compared
    ([[0, 0]], [[5.0, -100, -100, -100]], False, False),  # not a ranking: a candidate twice
])
def test_the_ranking_rule(ours, matrix, ok, matrix_ok):
    produced = {"scores": SCORES, "idx": torch.tensor(ours), "matrix": torch.tensor(matrix)}
    rows = rows_by_name(compare_outputs(produced, REFERENCE, RANKINGS, atol=0.02, rtol=0.0))
    assert rows["idx"]["ok"] is ok and rows["scores"]["ok"]
    assert ("1 near-tie flip(s) accepted" == rows["idx"]["note"]) is ok
    assert rows["matrix"]["ok"] is matrix_ok
    assert ("2 cell(s) left out" in rows["matrix"]["note"]) is ok


def test_a_matrix_cell_off_for_another_reason_still_fails():
    produced = {"scores": SCORES, "idx": torch.tensor([[0, 2]]), "matrix": torch.tensor([[4.0, -100, 3.9, -100]])}
    rows = rows_by_name(compare_outputs(produced, REFERENCE, RANKINGS, atol=0.02, rtol=0.0))
    assert rows["idx"]["ok"] and not rows["matrix"]["ok"] and rows["matrix"]["max_abs_diff"] == 1.0
