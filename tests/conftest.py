import sys
from pathlib import Path

import pytest
import torch

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
