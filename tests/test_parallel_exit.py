"""A tensor-parallel process ends its process groups before the interpreter tears down.

A gloo group left to teardown keeps worker threads; one that drops the last reference to a finished
collective's tensor then needs the GIL, Python ends it with pthread_exit, and the rank dies with SIGABRT
("terminate called without an active exception") after all its work passed: seen about once in 30 runs of
`torchrun ... -m weights_tools.verify --tp 2 --model vit`. The race itself is too rare to test; what it needs,
a group's threads alive at teardown, is checked directly."""
import json
import os
import subprocess
import sys

import pytest

from npu_models import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A user's script: the split model is a module global, so it is still alive when the interpreter exits. The
# atexit hook registered here, before the group is joined, runs after the product's (atexit is last in, first
# out) and reports the threads left for teardown.
SCRIPT = """
import atexit, json, os, sys, torch, npu_models
from safetensors.torch import load_file
from tests.conftest import BERT_FIXTURE

def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))

def report(**seen):  # one file a rank: the two ranks' prints would interleave
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(seen, f)

before = threads()
atexit.register(lambda: report(before=before, joined=joined, at_exit=threads(),
                               group_at_exit=torch.distributed.is_initialized()))
model = npu_models.load_model("bert", BERT_FIXTURE / "checkpoint", device="cpu", tp=2)
inputs = load_file(str(BERT_FIXTURE / "inputs.safetensors"))
with torch.no_grad():
    model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
joined = threads()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads the process's threads from /proc")
def test_both_ranks_end_their_groups_and_threads_before_teardown(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in range(2):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert any("gloo" in name for name in seen["joined"]), seen  # the group had threads: not a vacuous check
        assert not seen["group_at_exit"], seen
        assert not any("gloo" in name for name in seen["at_exit"]) and len(seen["at_exit"]) <= len(seen["before"]), seen


def test_a_failing_process_exits_without_destroying_its_groups(monkeypatch):
    """After an uncaught exception a rank exits at once, as before: its peers may still wait in a collective."""
    released = []
    monkeypatch.setattr(parallel, "release_process_groups", lambda: released.append(True))
    monkeypatch.setattr(sys, "last_value", ValueError("a rank failed"), raising=False)
    parallel.release_at_exit()
    assert released == []
    monkeypatch.delattr(sys, "last_value")
    parallel.release_at_exit()
    assert released == [True]
