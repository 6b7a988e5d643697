"""eval.loop.EvalLoop, as rank 0 of two data-parallel ranks whose partner is scripted: every gather the other
rank makes must be matched here, whatever the body does, or a real run waits for ever."""
import json

import pytest
import torch

from eval import loop as eval_loop
from eval.loop import EvalLoop, RankFailed
from eval.store import PredictionStore
from npu_models import parallel
from npu_models.errors import UserError

CPU = torch.device("cpu")


class ScriptedPartner(parallel.DataParallel):
    """Rank 0 of 2; `partner` gives rank 1's value for each gather (it sees what rank 0 sends)."""

    def __init__(self, partner):
        super().__init__(0, 2)
        self.partner, self.sent = partner, []

    def gather(self, value):
        self.sent.append(value)
        return [value, self.partner(len(self.sent) - 1, value)]


@pytest.fixture
def two_ranks(monkeypatch):
    """Install a scripted partner: rank 1 plans the same batches, then records `<rank 1 batch>` per step."""
    def install(partner=None):
        def default(number, value):
            if isinstance(value, int):  # the plan: the number of batches
                return value
            if isinstance(value, tuple) and value and isinstance(value[0], list):  # a step's records
                return [{"index": f"rank1-{number}"}], []
            return (0, [])  # the meter: no samples
        dp = ScriptedPartner(partner or default)
        monkeypatch.setattr(eval_loop.parallel, "data_parallel", lambda tp: dp)
        return dp
    return install


def test_steps_gather_every_step_in_one_process_order_also_those_without_a_batch(two_ranks):
    dp = two_ranks()
    store = PredictionStore(None)
    with EvalLoop(CPU, store=store) as loop:
        seen = []
        for batch in loop.steps([[0], [1], [2], [3], [4]]):  # rank 0 runs [0] [2] [4]: 3 steps
            seen.append(batch)
            with loop.timed(len(batch)):
                pass
            loop.add([{"index": batch[0]}])
    assert seen == [[0], [2], [4]]
    assert list(store.done) == [0, "rank1-1", 2, "rank1-2", 4, "rank1-3"]  # gather 0 was the plan
    assert len(dp.sent) == 1 + 3 + 1  # the plan, three steps, the meters
    assert loop.meter.samples == 3


def test_a_body_that_leaves_a_pass_early_still_takes_part_in_its_gathers(two_ranks):
    dp = two_ranks()
    with EvalLoop(CPU) as loop:
        for batch in loop.steps([[0], [1], [2], [3], [4], [5]]):
            loop.add([{"index": batch[0]}])
            break
    assert len(dp.sent) == 1 + 3 + 1
    assert list(loop.store.done) == [0, "rank1-1", "rank1-2", "rank1-3"]


def test_an_error_is_sent_to_the_other_rank_in_place_of_the_next_gather(two_ranks, tmp_path):
    dp = two_ranks()
    store = PredictionStore(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="bad batch"):
        with EvalLoop(CPU, store=store) as loop:
            for batch in loop.steps([[0], [1], [2], [3]]):
                loop.add([{"index": batch[0]}])
                if batch == [2]:
                    raise ValueError("bad batch")
    assert dp.sent[-1] == RankFailed(0, "bad batch", user_error=False)
    assert len(dp.sent) == 1 + 1 + 1  # the plan, step 0, then the failure where step 1's gather would be
    assert store._file is None  # closed
    assert [json.loads(line)["index"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == [0, "rank1-1"]


def test_the_other_ranks_error_stops_this_rank_at_the_same_gather(two_ranks):
    def partner(number, value):
        if number == 2:
            return RankFailed(1, "image x.jpg cannot be read", user_error=True)
        return value if isinstance(value, int) else ([], [])
    dp = two_ranks(partner)
    with pytest.raises(UserError, match="image x.jpg cannot be read"):
        with EvalLoop(CPU) as loop:
            for batch in loop.steps([[0], [1], [2], [3], [4], [5]]):
                loop.add([{"index": batch[0]}])
    assert len(dp.sent) == 3  # nothing more is sent: every rank has stopped
