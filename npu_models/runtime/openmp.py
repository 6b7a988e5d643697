"""How long CPU threads spin while they wait, set before torch loads its OpenMP runtime.

torch's CPU kernels run in OpenMP parallel regions; between regions, GNU OpenMP (libgomp, which the PyPI wheels
use) spins for GOMP_SPINCOUNT = 300,000 iterations before it sleeps. On an idle machine that saves a wake-up
per region. On a busy one each spinning thread takes a core from a thread with work, and a model made of many
short regions stalls: measured 2026-12-06 on this 2-core CPU, BERT-base batch 8 x 128 eager, with one spinning
Python process per core beside it, w8a8 (six regions per linear) fell to 0.62-0.85x float, which has two. With a
spin count of 10,000 it kept 2.0x float both idle and busy, and float kept its batch-1 latency; waiting
passively (OMP_WAIT_POLICY=PASSIVE) also fixed the busy case but made float at batch 1 20-30% slower.
docs/performance.md has the figures (`eval.bench --load idle,busy`).

libgomp reads its settings once, when torch is first imported: importing npu_models before torch (every command
does) sets them; a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY is left alone, and so is a process that has
imported torch already.
"""
import os
import sys

SPIN_COUNT = "10000"
_SET_HERE: dict[str, str] = {}  # what this process set in os.environ, so a peer's process can start without it


def prefer_short_spin_waits() -> None:
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["GOMP_SPINCOUNT"] = _SET_HERE["GOMP_SPINCOUNT"] = SPIN_COUNT


def users_environment() -> dict[str, str]:
    """os.environ as the user set it, without what prefer_short_spin_waits added: for a child process timed as
    another library's user would run it (eval.bench's whole-process peer)."""
    return {key: value for key, value in os.environ.items() if _SET_HERE.get(key) != value}
