"""A busy machine on demand: `--load idle,busy` times every row twice, the second time with every core also running
a pure-Python loop in a process of its own. That is how a test run, a tokenizer pool or another user's job shares a
machine, and how int8 once fell behind float: OpenMP threads that spin while they wait steal the cores from the
threads that work (docs/performance.md). The loops are started before the timed calls and killed after them."""
import contextlib
import os
import subprocess
import sys
import time

LOADS = ("idle", "busy")
SPIN = "while True:\n    pass\n"


@contextlib.contextmanager
def competing_load(load: str):
    """Nothing for "idle"; for "busy", one spinning Python process per core while the block runs."""
    if load == "idle":
        yield
        return
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL)
                for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # every loop running before the first timed call
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
