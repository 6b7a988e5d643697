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


@pytest.fixture
def compiled_graphs():
    """What torch.compile really compiled during the test: () -> (graphs, graph breaks).

    Comparing graph mode with eager passes when nothing was compiled; a graph-mode test also asserts
    this count (one graph per distinct input shape, no break), so a no-op compile fails it.
    """
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    yield lambda: (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))
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
