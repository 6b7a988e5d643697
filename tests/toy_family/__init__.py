"""A sixth model family, shaped as npu_models/models/<family>/ is: model.py, checkpoint.py and, here, its
spec with its TP plan, task, bench parts and the named outputs verify compares. tests/test_adding_a_model.py
registers it with one line and finds every tool using it."""
import torch

from npu_models.recording import recording
from npu_models.spec import Benchmark, ModelSpec
from npu_models.tasks import TextClassification
from tests.toy_family.checkpoint import read_toy
from tests.toy_family.model import ToyClassifier, ToyConfig, toy_tiny

TP_PLAN = {"blocks.*.attn": "heads", "blocks.*.mlp": "mlp"}


def toy_inputs(config, batch_size, seq_len, device):
    generator = torch.Generator().manual_seed(batch_size)
    ids = torch.randint(1, config.vocab_size, (batch_size, seq_len), generator=generator)
    return (ids.to(device), torch.ones_like(ids).to(device), torch.zeros_like(ids).to(device)), seq_len


def toy_outputs(model, input_ids, attention_mask):
    with recording(model, {"embeddings": "embeddings", "pooled": "head:input"}) as out:
        out["logits"] = model(input_ids, attention_mask)
    return out


SPECS = [
    ModelSpec("toy-classifier", "toy", "toy", ToyConfig, toy_tiny, ToyClassifier, read_toy, TextClassification(),
              tp_plan=TP_PLAN, benchmarks={"": Benchmark(toy_inputs)}, outputs=toy_outputs),
]
