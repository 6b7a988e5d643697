"""ViLBERT for VQA (AllenNLP's vqa_vilbert) on detected regions: modules in model.py, the AllenNLP archive
reader in checkpoint.py, what eval.bench times in bench.py, what verify compares in outputs.py; the spec the
registry lists, here."""
import torch

from npu_models.models.vilbert.bench import vilbert_inputs
from npu_models.models.vilbert.checkpoint import read_answers, read_vilbert
from npu_models.models.vilbert.model import ViLBERT, ViLBERTConfig, vilbert_vqa
from npu_models.models.vilbert.outputs import vilbert_outputs
from npu_models.spec import Benchmark, ModelSpec
from npu_models.tasks import VQATask

# Both streams' attention split by heads and MLPs by hidden units, the co-attention layers likewise
# (npu_models.parallel).
TP_PLAN = {"text_layers.*.attn": "heads", "text_layers.*.mlp": "mlp", "image_layers.*.attn": "heads",
           "image_layers.*.mlp": "mlp", "co_layers.*.*.cross_attn": "heads", "co_layers.*.*.mlp": "mlp"}


def answer_logits(model, features, boxes, box_mask, ids, masks):
    """Questions are one segment: token type 0 throughout."""
    return model(features, boxes, box_mask, ids, None if masks is None else masks.bool(), torch.zeros_like(ids))


VQA = VQATask("regions", answer_logits, multi_label=True, answers_in_checkpoint=read_answers)

SPECS = [
    ModelSpec("vilbert-vqa", "vilbert", "vilbert", ViLBERTConfig, vilbert_vqa, ViLBERT, read_vilbert, VQA,
              assets=("answer2label.txt",), tp_plan=TP_PLAN, benchmarks={"": Benchmark(vilbert_inputs)}, outputs=vilbert_outputs),
]
