import sys
from pathlib import Path

import pytest

try:
    import torch
except ImportError:  # a clear word instead of a collection error in every test module
    pytest.exit("torch is not installed here: run the README's Quickstart first (pip install torch==2.14.1 "
                "torchvision==0.29.1 && pip install -e \".[test]\"), then python -m pytest -q.", returncode=4)

FIXTURES = Path(__file__).parent / "fixtures"
BERT_FIXTURE = FIXTURES / "reference" / "bert"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture
def ascend_chip(monkeypatch):
    """Install the torch_npu/torchair stand-in (tests/npu_standin.py) as a given chip: ascend_chip("Ascend310P3")."""
    from npu_models.runtime import device as device_module
    from tests import npu_standin

    yield lambda chip: npu_standin.install(monkeypatch, chip)
    device_module.import_torch_npu.cache_clear()
    torch._dynamo.reset()


@pytest.fixture(autouse=True, scope="session")
def _own_compile_cache(tmp_path_factory):
    """Graph mode's default compile cache ($XDG_CACHE_HOME/npu-models/compile) in a folder of this test session:
    the tests neither read graphs an earlier run saved nor write into the user's cache. Subprocesses inherit it
    (a subprocess resolves its default cache afresh, from XDG_CACHE_HOME unless TORCHINDUCTOR_CACHE_DIR is set)."""
    from npu_models.runtime import compile_cache
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        # as if the user had not set TORCHINDUCTOR_CACHE_DIR (torch writes it itself once inductor has chosen one)
        patch.setattr(compile_cache, "_USER_INDUCTOR_DIR", None)
        yield


@pytest.fixture
def compiled_graphs():
    """What graph mode really compiled during the test: () -> (graphs, graph breaks).

    Comparing graph mode with eager passes when nothing was compiled; a graph-mode test also asserts
    this count (one graph per distinct input shape, no break), so a no-op compile fails it. A graph is one that
    Dynamo traced, or one loaded from a saved graph (runtime.saved_graphs: an earlier test of the session may
    have compiled the same model and shape into the session's compile cache).
    """
    from torch._dynamo.utils import counters

    from npu_models import runtime
    torch._dynamo.reset()
    counters.clear()
    loaded_before = runtime.graph_counts()["graphs_loaded"]
    yield lambda: (counters["stats"]["unique_graphs"] + runtime.graph_counts()["graphs_loaded"] - loaded_before,
                   sum(counters["graph_break"].values()))
    torch._dynamo.reset()


@pytest.fixture
def no_accelerators(monkeypatch):
    """This machine as one without CUDA devices and without torch_npu, whatever it has."""
    from npu_models.runtime import device as device_module
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # makes `import torch_npu` raise ImportError
    device_module.import_torch_npu.cache_clear()
    yield
    device_module.import_torch_npu.cache_clear()
