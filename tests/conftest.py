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
def fake_torch_npu(monkeypatch):
    """A stand-in `torch_npu` module; tests put the few ops they need on it.

    It implements documented semantics in plain torch, so what it checks is our side of the call:
    argument names, layouts, and the mask convention.
    """
    import types

    from npu_models.runtime import device as device_module
    import kernels.attention_backends as attention_module

    module = types.ModuleType("torch_npu")
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    device_module.import_torch_npu.cache_clear()
    attention_module._keyword_for_scale.cache_clear()
    yield module
    device_module.import_torch_npu.cache_clear()
    attention_module._keyword_for_scale.cache_clear()
